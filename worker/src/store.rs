//! Storing one job: its record through the chat-system's idempotent
//! `PUT`s, then its number taken out of flight in Redis so the counter may
//! expire again (the release half of `shared::counters`).
//!
//! A job counts as stored only when both happened. If the release fails the
//! job is retried: the `PUT` answers 200 the second time and the release is
//! idempotent.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use reqwest::{StatusCode, Url};
use shared::counters::{self, Keys, Release};
use shared::job::{Job, Record};
use shared::trace::TraceParent;
use tokio::time::Instant;

use crate::retry::{Failure, Reason, StoreError, classify};

pub(crate) struct Storage {
    client: reqwest::Client,
    base: Url,
    redis: ConnectionManager,
    keys: Keys,
    release: Script,
    counter_ttl: Duration,
}

impl Storage {
    pub(crate) fn new(
        chat_system: &shared::config::ChatSystem,
        redis: ConnectionManager,
        keys: Keys,
        counter_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let base = Url::parse(&chat_system.chat_system_url)
            .map_err(|error| anyhow::anyhow!("CHAT_SYSTEM_URL is not a URL: {error}"))?;
        let timeout = Duration::from_millis(chat_system.chat_system_timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(256)
            .no_proxy()
            .build()?;
        Ok(Self {
            client,
            base,
            redis,
            keys,
            release: Script::new(counters::RELEASE),
            counter_ttl,
        })
    }

    /// Stores the job's record and releases its number.
    pub(crate) async fn store(&self, job: &Job) -> Result<(), Failure> {
        let started = Instant::now();
        let stored = self.store_record(job).await;
        metrics::histogram!("worker_store_duration_seconds", "kind" => job.kind().as_str())
            .record(started.elapsed().as_secs_f64());
        stored?;
        self.release_number(job).await
    }

    async fn store_record(&self, job: &Job) -> Result<(), Failure> {
        let chat = job.chat_number().to_string();
        let request = match &job.record {
            Record::Message { number, body, .. } => {
                let number = number.to_string();
                let url = self.url(&[
                    "applications",
                    &job.token,
                    "chats",
                    &chat,
                    "messages",
                    &number,
                ]);
                self.client
                    .put(url)
                    .json(&serde_json::json!({ "body": body }))
            }
            Record::Chat { .. } => {
                self.client
                    .put(self.url(&["applications", &job.token, "chats", &chat]))
            }
        };
        // The chat-system's request is a child of the job's trace (a new
        // trace for a job queued without one).
        let trace = job
            .trace
            .map_or_else(TraceParent::root, |trace| trace.child());
        let response = request
            .header("x-job-id", job.id.to_string())
            .header(shared::publish::TRACEPARENT, trace.to_string())
            .send()
            .await
            .map_err(|error| Failure::Transient(StoreError::Unreachable(error)))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status == StatusCode::NOT_FOUND {
            return Err(self.not_found(job).await);
        }
        classify(status, body)
    }

    /// A 404 on a chat means its application is unknown: permanent. On a
    /// message it usually means its chat's job has not been stored yet (the
    /// api hands out message numbers for a chat at once): transient, unless
    /// the application itself is unknown.
    async fn not_found(&self, job: &Job) -> Failure {
        let unknown = || Failure::Permanent {
            reason: Reason::UnknownApplication,
            error: StoreError::UnknownApplication,
        };
        let Record::Message { chat, .. } = job.record else {
            return unknown();
        };
        match self
            .client
            .get(self.url(&["applications", &job.token]))
            .send()
            .await
        {
            Ok(response) if response.status() == StatusCode::NOT_FOUND => unknown(),
            Ok(response) if response.status().is_success() => {
                Failure::Transient(StoreError::ChatNotStored(chat))
            }
            Ok(response) => Failure::Transient(StoreError::Status {
                status: response.status(),
                body: String::new(),
            }),
            Err(error) => Failure::Transient(StoreError::Unreachable(error)),
        }
    }

    async fn release_number(&self, job: &Job) -> Result<(), Failure> {
        let number = job.number();
        let released: Result<i64, _> = self
            .release
            .key(self.keys.release_keys(job.scope(), number))
            .arg(number)
            .arg(self.counter_ttl.as_millis().to_string())
            .arg(Release::Stored.as_arg())
            .invoke_async(&mut self.redis.clone())
            .await;
        released
            .map(|_| ())
            .map_err(|error| Failure::Transient(StoreError::Release(error)))
    }

    /// For `/readyz`.
    pub(crate) async fn ready(&self) -> bool {
        let redis: Result<String, _> = redis::cmd("PING")
            .query_async(&mut self.redis.clone())
            .await;
        let chat_system = self.client.get(self.url(&["readyz"])).send().await;
        redis.is_ok() && chat_system.is_ok_and(|response| response.status().is_success())
    }

    fn url(&self, segments: &[&str]) -> Url {
        shared::config::endpoint(&self.base, segments)
    }
}
