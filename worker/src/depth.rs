//! How deep the worker's queues are, read from the broker each time
//! `/metrics` is scraped: jobs waiting, copies waiting out a retry delay,
//! dead letters, and the consumers on the jobs queue. What a backlog alert
//! and an autoscaler watch.

use std::time::Duration;

use lapin::{Channel, Connection};
use shared::amqp::connection::connect;
use shared::amqp::topology::{Topology, depth};
use tokio::sync::Mutex;

/// A scrape waits at most this long for the broker.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Depths {
    amqp_url: String,
    /// The `queue` label and the queues it sums.
    queues: Vec<(&'static str, Vec<String>)>,
    link: Mutex<Option<(Connection, Channel)>>,
}

impl Depths {
    pub(crate) fn new(amqp_url: &str, topology: &Topology, retry_delays: &[Duration]) -> Self {
        let retry = retry_delays
            .iter()
            .map(|delay| topology.retry_queue(*delay))
            .collect();
        Self {
            amqp_url: amqp_url.to_owned(),
            queues: vec![
                ("jobs", vec![topology.jobs_queue()]),
                ("retry", retry),
                ("dead", vec![topology.dead_queue()]),
            ],
            link: Mutex::new(None),
        }
    }

    /// Sets the depth gauges from the broker; when it cannot be read, sets
    /// them to NaN (unknown, not zero) and reconnects on the next scrape.
    pub(crate) async fn refresh(&self) {
        let mut link = self.link.lock().await;
        match tokio::time::timeout(READ_TIMEOUT, self.read(&mut link)).await {
            Ok(Ok(())) => {}
            failure => {
                let why = match failure {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::debug!(error = why, "could not read the queues' depths");
                for (label, _) in &self.queues {
                    metrics::gauge!("worker_queue_messages", "queue" => *label).set(f64::NAN);
                }
                metrics::gauge!("worker_queue_consumers", "queue" => "jobs").set(f64::NAN);
                *link = None;
            }
        }
    }

    async fn read(&self, link: &mut Option<(Connection, Channel)>) -> lapin::Result<()> {
        let channel = match link {
            Some((_, channel)) => channel.clone(),
            None => {
                let connection = connect(&self.amqp_url, "worker-depths").await?;
                let channel = connection.create_channel().await?;
                link.insert((connection, channel)).1.clone()
            }
        };
        for (label, queues) in &self.queues {
            let mut messages = 0;
            for queue in queues {
                let (waiting, consumers) = depth(&channel, queue).await?;
                messages += waiting;
                if *label == "jobs" {
                    metrics::gauge!("worker_queue_consumers", "queue" => "jobs")
                        .set(f64::from(consumers));
                }
            }
            metrics::gauge!("worker_queue_messages", "queue" => *label).set(f64::from(messages));
        }
        Ok(())
    }

    /// Closes the broker connection, if one is open.
    pub(crate) async fn close(&self) {
        if let Some((connection, _)) = self.link.lock().await.take() {
            let closing = connection.close(200, "worker stopping".into());
            let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
        }
    }
}
