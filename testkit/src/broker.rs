//! RabbitMQ names of one's own: a queue prefix nobody else uses, the
//! queues under it deleted when the test ends.

use std::sync::Mutex;

use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use shared::job::Job;

/// The broker tests publish to; `TEST_AMQP_URL` overrides it.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The broker's address, for a [`crate::TcpProxy`] to forward to.
pub fn amqp_address() -> std::net::SocketAddr {
    crate::address_of(&amqp_url())
}

/// [`amqp_url`] reached through `address` (a proxy in front of it).
pub fn amqp_url_via(address: std::net::SocketAddr) -> String {
    crate::url_via(&amqp_url(), address)
}

pub struct TestBroker {
    pub prefix: String,
    queues: Mutex<Vec<String>>,
}

impl TestBroker {
    /// A fresh prefix; `{prefix}.jobs`, `{prefix}.dead` and
    /// `{prefix}.discarded` are cleaned up.
    pub fn new() -> Self {
        let prefix = crate::unique("t");
        let queues = vec![
            format!("{prefix}.jobs"),
            format!("{prefix}.dead"),
            format!("{prefix}.discarded"),
        ];
        Self {
            prefix,
            queues: Mutex::new(queues),
        }
    }

    /// Also delete `queue` at the end (retry queues, say).
    pub fn track(&self, queue: String) {
        self.queues.lock().expect("broker lock").push(queue);
    }

    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn discarded_queue(&self) -> String {
        format!("{}.discarded", self.prefix)
    }

    /// A channel on a connection of its own (closed when dropped).
    pub async fn channel(&self) -> (Connection, Channel) {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connecting to RabbitMQ");
        let channel = connection.create_channel().await.expect("a channel");
        (connection, channel)
    }

    /// Takes every message now in `queue`, acknowledged, and returns the
    /// jobs they hold in order (a batch message holds several).
    pub async fn take_jobs(&self, queue: &str) -> Vec<Job> {
        self.take_messages(queue)
            .await
            .into_iter()
            .flat_map(|message| message.jobs)
            .collect()
    }

    /// Takes every message now in `queue`, acknowledged: its AMQP `type`
    /// and the jobs it holds.
    pub async fn take_messages(&self, queue: &str) -> Vec<Taken> {
        let (_connection, channel) = self.channel().await;
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let properties = &message.delivery.properties;
            let kind = properties.kind().as_ref().map(|kind| kind.to_string());
            let jobs = shared::amqp::batch::unpack(kind.as_deref(), &message.delivery.data)
                .into_iter()
                .map(|unpacked| unpacked.job.expect("a valid job"))
                .collect();
            messages.push(Taken { kind, jobs });
        }
        messages
    }
}

/// A message taken off a queue.
#[derive(Debug)]
pub struct Taken {
    /// Its AMQP `type`: a job's kind, or `batch`.
    pub kind: Option<String>,
    pub jobs: Vec<Job>,
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().expect("broker lock"));
        let exchanges = [
            format!("{}.jobs", self.prefix),
            format!("{}.dead", self.prefix),
        ];
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let connection =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                for queue in queues {
                    channel
                        .queue_delete(queue.into(), QueueDeleteOptions::default())
                        .await?;
                }
                for exchange in exchanges {
                    channel
                        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .join();
    }
}
