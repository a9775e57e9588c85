//! The bench's own small servers (`http-floor`, `otlp-sink`): one warp
//! route on a TCP address until SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use warp::{Filter, Reply};

pub(crate) async fn until_terminated<F>(route: F, addr: SocketAddr) -> anyhow::Result<()>
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    warp::serve(route)
        .incoming(listener)
        .graceful(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .run()
        .await;
    Ok(())
}
