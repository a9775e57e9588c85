use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lapin::BasicProperties;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use shared::amqp::batch::jobs_message;
use shared::amqp::headers;
use shared::amqp::publish::{self, Message};
use shared::amqp::topology::{ROUTING_KEY, Topology};
use shared::job::Job;
use testkit::{HttpProxy, Running, TcpProxy, TestBroker, TestChatSystem, TestRedis, eventually};
use worker::retry::Policy;
use worker::{Status, Worker};

pub(crate) struct TestStack {
    pub(crate) chat_system: TestChatSystem,
    /// In front of the chat-system: faults on demand.
    pub(crate) upstream: HttpProxy,
    /// In front of RabbitMQ, for the workers: cut to drop their connection.
    pub(crate) amqp_proxy: TcpProxy,
    pub(crate) broker: TestBroker,
    pub(crate) redis: TestRedis,
}

/// A worker running in this process.
pub(crate) struct RunningWorker {
    pub(crate) status: Arc<Status>,
    running: Running,
}

impl RunningWorker {
    pub(crate) async fn stop(self) {
        self.running.stop().await;
    }
}

/// Retries fast enough for tests: 100 ms then 200 ms, and attempts enough
/// (40, some 8 s) that a transient wait (a chat stored late on a loaded
/// machine) never exhausts a job; a test about exhaustion sets its own.
pub(crate) const FAST_RETRIES: &[&str] = &[
    "--retry-max-attempts",
    "40",
    "--retry-initial-delay-ms",
    "100",
    "--retry-max-delay-ms",
    "200",
];

impl TestStack {
    pub(crate) async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A stack whose chat-system runs with `flags`.
    pub(crate) async fn start_with(flags: &[&str]) -> Self {
        testkit::logs::show();
        let chat_system = TestChatSystem::start_with(false, flags).await;
        let upstream = HttpProxy::start(&chat_system.url).await;
        let amqp_proxy = TcpProxy::start(testkit::amqp_address()).await;
        Self {
            chat_system,
            upstream,
            amqp_proxy,
            broker: TestBroker::new(),
            redis: TestRedis::new(),
        }
    }

    /// The command line of a worker of this stack, `extra` last.
    /// The command line of a worker of this stack: its defaults, but for
    /// the flags `extra` sets itself, then `extra`.
    pub(crate) fn worker_arguments(&self, extra: &[&str]) -> Vec<String> {
        let amqp_url = testkit::amqp_url_via(self.amqp_proxy.address());
        let redis_url = testkit::redis_url();
        let defaults = [
            ["--metrics-addr", "127.0.0.1:0"],
            ["--log", "warn"],
            ["--amqp-url", &amqp_url],
            ["--redis-url", &redis_url],
            ["--queue-prefix", &self.broker.prefix],
            ["--redis-prefix", &self.redis.prefix],
            ["--chat-system-url", &self.upstream.url],
            ["--chat-system-timeout-ms", "1000"],
            ["--chat-system-write-token", &self.chat_system.write_token],
        ];
        let fast_retries = FAST_RETRIES.chunks(2).map(|pair| [pair[0], pair[1]]);
        let mut arguments = Vec::new();
        for [flag, value] in defaults.into_iter().chain(fast_retries) {
            if !extra.contains(&flag) {
                arguments.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        arguments.extend(extra.iter().map(|argument| argument.to_string()));
        arguments
    }

    pub(crate) fn worker_config(&self, extra: &[&str]) -> worker::Config {
        let mut arguments = vec!["worker".to_owned()];
        arguments.extend(self.worker_arguments(extra));
        let config = worker::Cli::parse_from(arguments).config;
        self.track_retry_queues(&config);
        config
    }

    fn track_retry_queues(&self, config: &worker::Config) {
        let topology = Topology::new(&config.broker);
        let policy = Policy::new(
            config.retry_max_attempts,
            Duration::from_millis(config.retry_initial_delay_ms),
            Duration::from_millis(config.retry_max_delay_ms),
        );
        for delay in policy.queues() {
            self.broker.track(topology.retry_queue(delay));
        }
    }

    pub(crate) async fn worker(&self, extra: &[&str]) -> Worker {
        Worker::build(self.worker_config(extra))
            .await
            .expect("building a worker")
    }

    /// A worker of this stack, consuming, and the URL its `/metrics`,
    /// `/healthz` and `/readyz` are served at.
    pub(crate) async fn spawn_worker_served(&self, extra: &[&str]) -> (String, RunningWorker) {
        let worker = self.worker(extra).await;
        let url = format!("http://{}", worker.metrics_address());
        (url, self.run_worker(worker).await)
    }

    pub(crate) async fn spawn_worker(&self, extra: &[&str]) -> RunningWorker {
        let worker = self.worker(extra).await;
        self.run_worker(worker).await
    }

    async fn run_worker(&self, worker: Worker) -> RunningWorker {
        let status = worker.status();
        let running = Running::spawn("the worker", |shutdown| worker.run_until_stopped(shutdown));
        eventually("the worker to consume", Duration::from_secs(10), || async {
            status.connected().then_some(())
        })
        .await;
        RunningWorker { status, running }
    }

    /// The api on port 0, on this stack's prefixes, straight to RabbitMQ and
    /// the chat-system; stopped when the returned [`Running`] is dropped.
    pub(crate) async fn spawn_api(&self) -> (String, Running) {
        self.spawn_api_via(testkit::amqp_address(), &[]).await
    }

    /// The api as [`TestStack::spawn_api`] makes it, but reaching RabbitMQ
    /// at `amqp` (a proxy), with `flags` in place of the defaults they name.
    pub(crate) async fn spawn_api_via(
        &self,
        amqp: std::net::SocketAddr,
        flags: &[&str],
    ) -> (String, Running) {
        let redis_url = testkit::redis_url();
        let amqp_url = testkit::amqp_url_via(amqp);
        let defaults = [
            ["--addr", "127.0.0.1:0"],
            ["--log", "warn"],
            ["--redis-url", &redis_url],
            ["--redis-prefix", &self.redis.prefix],
            ["--amqp-url", &amqp_url],
            ["--queue-prefix", &self.broker.prefix],
            ["--chat-system-url", &self.chat_system.url],
            // The machine's Redis keeps nothing on disk.
            ["--redis-durability", "unsafe-none"],
            // Patient, as in the api's own tests: a loaded machine is slow,
            // and a 503 here would fail a test about the worker.
            ["--redis-timeout-ms", "5000"],
            ["--chat-system-timeout-ms", "5000"],
            ["--seed-wait-ms", "10000"],
            ["--publish-timeout-ms", "5000"],
        ];
        let mut arguments = vec!["api"];
        for [flag, value] in defaults {
            if !flags.contains(&flag) {
                arguments.extend([flag, value]);
            }
        }
        arguments.extend_from_slice(flags);
        let application = api::Application::build(api::Config::parse_from(arguments))
            .await
            .expect("an api");
        let url = format!("http://{}", application.address());
        let running = Running::spawn("the api", |shutdown| {
            application.run_until_stopped(shutdown)
        });
        let client = testkit::http::client();
        eventually("the api to be ready", Duration::from_secs(20), || async {
            let response = client.get(format!("{url}/readyz")).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        (url, running)
    }

    /// The worker binary, as a child process of its own.
    pub(crate) fn worker_process(&self, extra: &[&str]) -> tokio::process::Child {
        // Parsed for its retry queues, which the broker fixture then deletes.
        self.worker_config(extra);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .args(self.worker_arguments(extra))
            .kill_on_drop(true)
            .spawn()
            .expect("starting the worker binary")
    }

    /// Publishes messages to the jobs exchange, confirmed, declaring the
    /// topology first (as the api does).
    async fn publish_messages(&self, messages: Vec<(Vec<u8>, BasicProperties)>) {
        let exchange = Topology::new(&self.worker_config(&[]).broker).jobs_exchange();
        for (payload, properties) in messages {
            self.publish_message(Message {
                exchange: exchange.clone(),
                routing_key: ROUTING_KEY.into(),
                payload,
                properties,
            })
            .await;
        }
    }

    /// Publishes `message` as it is, confirmed, the topology declared.
    pub(crate) async fn publish_message(&self, message: Message) {
        let (_connection, channel) = self.broker.channel().await;
        let topology = Topology::new(&self.worker_config(&[]).broker);
        topology
            .declare(&channel, &[])
            .await
            .expect("declaring the topology");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        publish::publish(&channel, message, Duration::from_secs(10))
            .await
            .expect("a confirmed publish");
    }

    /// Publishes payloads as they are, one message each.
    pub(crate) async fn publish_raw(&self, payloads: &[Vec<u8>]) {
        let messages = payloads
            .iter()
            .map(|payload| (payload.clone(), publish::json_properties()))
            .collect();
        self.publish_messages(messages).await;
    }

    /// Publishes each job as a message of its own.
    pub(crate) async fn publish(&self, jobs: &[Job]) {
        let messages = jobs
            .iter()
            .map(|job| (job.encode(), publish::job_properties(job)))
            .collect();
        self.publish_messages(messages).await;
    }

    /// Publishes the jobs as the api does under load: batch messages of
    /// `per_message` jobs each.
    pub(crate) async fn publish_batches(&self, jobs: &[Job], per_message: usize) {
        for chunk in jobs.chunks(per_message) {
            let payloads: Vec<(Vec<u8>, BasicProperties)> = chunk
                .iter()
                .map(|job| (job.encode(), publish::job_properties(job)))
                .collect();
            self.publish_batch(&payloads).await;
        }
    }

    /// Publishes `payloads` (each with its properties; one may be no job
    /// at all) as one message, built as the api builds it.
    pub(crate) async fn publish_batch(&self, payloads: &[(Vec<u8>, BasicProperties)]) {
        let pairs: Vec<(&[u8], &BasicProperties)> = payloads
            .iter()
            .map(|(payload, properties)| (payload.as_slice(), properties))
            .collect();
        let exchange = Topology::new(&self.worker_config(&[]).broker).jobs_exchange();
        self.publish_message(jobs_message(exchange, &pairs)).await;
    }

    /// Messages waiting in `queue`.
    /// Panics when the queue cannot be read (a wrong name is a failed
    /// test, not an empty queue).
    pub(crate) async fn queue_len(&self, queue: &str) -> u32 {
        let (_connection, channel) = self.broker.channel().await;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap_or_else(|error| panic!("reading the length of {queue}: {error}"))
            .message_count()
    }

    /// Fails the test unless `queue` holds `expected` messages within 5 s.
    /// A quorum queue counts a publish, an ack or a return once its log has
    /// applied it, a moment after the confirm: a count read right away can
    /// still be the one before.
    pub(crate) async fn assert_queue_len(&self, queue: &str, expected: u32, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let length = self.queue_len(queue).await;
            if length == expected {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{what}: {queue} holds {length} messages, expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails the test unless, within a few seconds, nothing waits in the
    /// jobs, retry (of [`FAST_RETRIES`]) and dead-letter queues and no
    /// number is in flight in Redis: everything answered is stored and
    /// released.
    pub(crate) async fn assert_settled(&self) {
        let prefix = &self.broker.prefix;
        let queues = [
            self.broker.jobs_queue(),
            format!("{prefix}.retry.100ms"),
            format!("{prefix}.retry.200ms"),
            self.broker.dead_queue(),
        ];
        for queue in &queues {
            self.assert_queue_len(queue, 0, "settled").await;
        }
        let in_flight = eventually("nothing in flight", Duration::from_secs(10), || async {
            let sets = self.redis.in_flight().await;
            sets.values()
                .all(|numbers| numbers.is_empty())
                .then_some(sets)
        })
        .await;
        assert!(in_flight.values().all(|numbers| numbers.is_empty()));
    }

    /// The message at the head of `queue`, taken but not yet acked; fails
    /// the test when the queue is empty.
    pub(crate) async fn take_one(&self, queue: &str) -> Taken {
        let (connection, channel) = self.broker.channel().await;
        let message = channel
            .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
            .await
            .unwrap_or_else(|error| panic!("basic.get on {queue}: {error}"))
            .unwrap_or_else(|| panic!("nothing waiting in {queue}"));
        Taken {
            connection,
            _channel: channel,
            message,
        }
    }

    /// Sends a retry copy on as its queue's TTL would, without waiting for
    /// it: back to the jobs exchange (confirmed), then off its queue.
    pub(crate) async fn expire(&self, copy: Taken) {
        let delivery = &copy.message.delivery;
        self.publish_messages(vec![(delivery.data.clone(), delivery.properties.clone())])
            .await;
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .expect("taking the copy off its queue");
        // Closed, not dropped: a dropped connection may go before the ack
        // reached the broker, which then delivers the copy again.
        copy.connection
            .close(200, "copy sent on".into())
            .await
            .expect("closing the connection");
    }

    /// Every dead letter, taken off the queue: payload and headers.
    pub(crate) async fn dead_letters(&self) -> Vec<(Vec<u8>, FieldTable)> {
        let (_connection, channel) = self.broker.channel().await;
        let mut letters = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.broker.dead_queue().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            let headers = message
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            letters.push((message.delivery.data, headers));
        }
        letters
    }

    pub(crate) async fn wait_for_dead_letters(&self, count: u32) {
        let queue = self.broker.dead_queue();
        eventually(
            &format!("{count} dead letters"),
            Duration::from_secs(20),
            || async { (self.queue_len(&queue).await >= count).then_some(()) },
        )
        .await;
    }

    /// An application, registered directly in the chat-system.
    pub(crate) async fn application(&self) -> String {
        self.chat_system.create_application("test").await
    }

    pub(crate) async fn get(&self, path: &str) -> testkit::Answer {
        self.chat_system.get(path).await
    }

    /// `(number, body)` of every stored message of a chat, in order.
    pub(crate) async fn messages(&self, token: &str, chat: i64) -> Vec<(i64, String)> {
        self.chat_system.messages(token, chat).await
    }

    /// Waits until chat `chat` holds `count` messages.
    pub(crate) async fn wait_for_messages(
        &self,
        token: &str,
        chat: i64,
        count: usize,
    ) -> Vec<(i64, String)> {
        eventually(
            &format!("{count} stored messages"),
            Duration::from_secs(30),
            || async {
                let messages = self.messages(token, chat).await;
                (messages.len() >= count).then_some(messages)
            },
        )
        .await
    }

    pub(crate) async fn chats_count(&self, token: &str) -> i64 {
        self.chat_system.chats_count(token).await
    }
}

/// A message taken from a queue with `basic.get`, unacked: it goes back to
/// its queue if dropped.
pub(crate) struct Taken {
    connection: lapin::Connection,
    /// The message is unacked on this channel: it must stay open.
    _channel: lapin::Channel,
    pub(crate) message: lapin::message::BasicGetMessage,
}

impl Taken {
    pub(crate) fn payload(&self) -> &[u8] {
        &self.message.delivery.data
    }

    pub(crate) fn headers(&self) -> FieldTable {
        self.message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default()
    }
}

/// A header of a dead letter, as text.
pub(crate) fn header(headers: &FieldTable, name: &str) -> String {
    headers::get(Some(headers), name).unwrap_or_else(|| panic!("no header {name}"))
}

/// Jobs for chat 1 of `token` and `count` messages in it.
pub(crate) fn chat_with_messages(token: &str, count: i64) -> Vec<Job> {
    let mut jobs = vec![Job::chat(token.to_owned(), 1)];
    jobs.extend(
        (1..=count).map(|number| {
            Job::message(token.to_owned(), 1, number, format!("message {number}, ok"))
        }),
    );
    jobs
}

/// Waits until the application has `count` stored chats.
pub(crate) async fn eventually_chats(stack: &TestStack, token: &str, count: i64) {
    eventually(
        &format!("{count} stored chats"),
        Duration::from_secs(30),
        || async { (stack.chats_count(token).await >= count).then_some(()) },
    )
    .await;
}
