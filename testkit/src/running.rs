//! A server or worker running in a task of the test, the way each binary's
//! `run_until_stopped(shutdown)` is driven: stopped gracefully on demand,
//! aborted when dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The shutdown signal handed to `run_until_stopped`: resolves on
/// [`Running::stop`] (or when the `Running` is dropped).
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(context).map(|_| ())
    }
}

pub struct Running {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Running {
    /// Spawns `run(shutdown)`; it must end `Ok` once `shutdown` resolves.
    pub fn spawn<F, Fut>(what: &'static str, run: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let running = run(Shutdown(stopped));
        let task = tokio::spawn(async move {
            if let Err(error) = running.await {
                panic!("{what} failed: {error:?}");
            }
        });
        Self {
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Sends the shutdown signal and waits until it has run to its end.
    pub async fn stop(&self) {
        if let Some(stop) = self.stop.lock().expect("stop lock").take() {
            let _ = stop.send(());
        }
        let task = self.task.lock().expect("task lock").take();
        if let Some(task) = task {
            task.await.expect("it stops without panicking");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().expect("task lock").take() {
            task.abort();
        }
    }
}
