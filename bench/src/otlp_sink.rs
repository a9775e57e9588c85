//! `otlp-sink`: an OTLP/HTTP receiver for the bench's exporter-on run. It
//! takes every `POST /v1/traces` (protobuf or JSON), answers 200 with an
//! empty body (an empty `ExportTraceServiceResponse`), counts requests and
//! bytes, and prints them when stopped, so the bench can show that spans
//! really left the api while it measured the cost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use warp::Filter;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:4318")]
    addr: SocketAddr,
}

#[derive(Default)]
struct Received {
    requests: AtomicU64,
    bytes: AtomicU64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let received = Arc::new(Received::default());
    let counted = received.clone();
    let route = warp::path!("v1" / "traces")
        .and(warp::post())
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            counted.requests.fetch_add(1, Ordering::Relaxed);
            counted
                .bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            warp::http::StatusCode::OK
        });
    crate::serve::until_terminated(route, args.addr).await?;
    println!(
        "otlp_sink requests={} bytes={}",
        received.requests.load(Ordering::Relaxed),
        received.bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
