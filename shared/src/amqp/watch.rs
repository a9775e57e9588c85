//! Watching a connection: whether the broker blocks it, and its end.

use futures::StreamExt;
use lapin::Connection;

/// How a watched connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionLost {
    #[error("RabbitMQ connection failed")]
    Failed(#[source] lapin::Error),
    #[error("RabbitMQ connection closed")]
    Closed,
}

/// What happens to a connection: whether the broker blocks it, and its
/// end. lapin hands each connection event to one of its listeners only
/// (they share a queue), so one watcher per connection reads them all;
/// two would each miss what the other took.
pub struct Watched {
    /// Resolves when the connection fails (the broker went away, a
    /// heartbeat was missed) or closes. lapin does not always end a
    /// consumer's stream or answer a pending ack once its connection is
    /// dead, so whoever holds a connection watches this and gives up on
    /// the connection's work.
    pub lost: futures::future::BoxFuture<'static, ConnectionLost>,
    /// `true` while the broker blocks the connection (a memory or disk
    /// alarm: publishes on it wait).
    pub blocked: tokio::sync::watch::Receiver<bool>,
}

/// Starts watching `connection` (a task that lives as long as it does).
/// A connection that died before the call is reported lost at once:
/// lapin's I/O runs on a thread of its own, so that can happen between
/// connecting and watching.
pub fn watch(connection: &Connection) -> Watched {
    let mut events = connection.events_listener();
    // Checked after subscribing: an error from here on is in `events`.
    let dead_already = !connection.status().connected();
    let (blocked_sender, blocked) = tokio::sync::watch::channel(false);
    let (lost_sender, lost) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if dead_already {
            let _ = lost_sender.send(ConnectionLost::Closed);
            return;
        }
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::ConnectionBlocked(_) => {
                    blocked_sender.send_replace(true);
                }
                lapin::Event::ConnectionUnblocked => {
                    blocked_sender.send_replace(false);
                }
                lapin::Event::Error(error) => {
                    let _ = lost_sender.send(ConnectionLost::Failed(error));
                    return;
                }
                _ => {}
            }
        }
        let _ = lost_sender.send(ConnectionLost::Closed);
    });
    Watched {
        lost: Box::pin(async move { lost.await.unwrap_or(ConnectionLost::Closed) }),
        blocked,
    }
}
