//! Polling with a deadline, for the few places a test must wait for
//! something that happens in the background.

use std::future::Future;
use std::time::Duration;

/// Calls `check` until it returns `Some`, every 20 ms, for at most
/// `deadline`; panics with `what` when time runs out, also when a check
/// itself hangs.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(deadline, poll).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}
