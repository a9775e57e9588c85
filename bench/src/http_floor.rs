//! `http-floor`: the HTTP stage with nothing of ours around it, for
//! `scripts/bench`'s floor row: the same server stack the api runs on
//! (warp over hyper, the same tokio runtime), answering every `POST` with a
//! constant JSON body like a create's answer, no Redis, no broker, no state.
//! What the api spends beyond this per request is ours.

use std::net::SocketAddr;

use warp::Filter;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3105")]
    addr: SocketAddr,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let route = warp::post()
        .and(warp::body::bytes())
        .map(|_body: bytes::Bytes| {
            warp::http::Response::builder()
                .header("content-type", "application/json")
                .body(r#"{"message number":1}"#)
        });
    crate::serve::until_terminated(route, args.addr).await
}
