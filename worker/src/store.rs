//! Where jobs are stored: their records through the chat-system's bulk
//! write (`POST /records`, a result per record), then their numbers taken
//! out of flight in Redis, all in one round trip, so the counters may
//! expire again (the release half of `shared::counters`).
//!
//! A job counts as stored only when both happened. If the release fails the
//! job is retried: the write answers `exists` the second time and the
//! release is idempotent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use redis::Script;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use shared::counters::{self, Keys, Release};
use shared::job::{Job, Record};
use shared::redis_client::{RedisClient, Slot, Wait};
use shared::secret::Secret;
use shared::trace::TraceParent;
use tokio::time::Instant;

use crate::retry::{Failure, Reason, StoreError, classify};

/// How many records, and how many bytes of them, one bulk request carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) records: usize,
    pub(crate) bytes: usize,
}

pub(crate) struct Storage {
    client: reqwest::Client,
    /// `CHAT_SYSTEM_WRITE_TOKEN`, sent as a bearer token.
    credential: Option<Secret>,
    records_url: Url,
    readyz_url: Url,
    redis: RedisClient,
    keys: Keys,
    release: Script,
    counter_ttl: Duration,
    /// Replicas a release must reach before it counts (a failover would
    /// otherwise put the number back in flight for good).
    wait: Wait,
    limits: Limits,
    /// Most bytes of records one request carries: `limits.bytes`, less
    /// once the chat-system refused a request as too large (413).
    request_bytes: AtomicUsize,
}

/// One record of the bulk request, borrowed from its job.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Out<'a> {
    Chat {
        token: &'a str,
        number: i64,
        job_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    Message {
        token: &'a str,
        chat: i64,
        number: i64,
        body: &'a str,
        job_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    Edit {
        token: &'a str,
        chat: i64,
        message: i64,
        revision: i64,
        body: &'a str,
        job_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
}

#[derive(Deserialize)]
struct Answer {
    results: Vec<RecordResult>,
}

#[derive(Deserialize)]
struct RecordResult {
    status: u16,
    result: String,
    #[serde(default)]
    error: Option<String>,
}

impl Storage {
    pub(crate) fn new(
        chat_system: &shared::config::ChatSystem,
        credential: Option<Secret>,
        redis: RedisClient,
        keys: Keys,
        counter_ttl: Duration,
        wait: Wait,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let base = Url::parse(&chat_system.chat_system_url)
            .map_err(|error| anyhow::anyhow!("CHAT_SYSTEM_URL is not a URL: {error}"))?;
        let timeout = Duration::from_millis(chat_system.chat_system_timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()?;
        Ok(Self {
            client,
            credential,
            records_url: shared::config::endpoint(&base, &["records"]),
            readyz_url: shared::config::endpoint(&base, &["readyz"]),
            redis,
            keys,
            release: Script::new(counters::RELEASE),
            counter_ttl,
            wait,
            limits,
            request_bytes: AtomicUsize::new(limits.bytes),
        })
    }

    /// Stores the jobs' records and releases their numbers: a result per
    /// job, in order. `traces` is the trace context each record carries on
    /// (its job's span in the worker), one per job.
    pub(crate) async fn store(
        &self,
        jobs: &[&Job],
        traces: &[Option<TraceParent>],
    ) -> Vec<Result<(), Failure>> {
        debug_assert_eq!(jobs.len(), traces.len(), "a trace context per job");
        let mut results = Vec::with_capacity(jobs.len());
        let records: Vec<Vec<u8>> = jobs
            .iter()
            .zip(traces)
            .map(|(job, trace)| record(job, *trace))
            .collect();
        let mut start = 0;
        while start < jobs.len() {
            let end = self.chunk_end(&records[start..]) + start;
            let body = bulk_body(&records[start..end]);
            let size = body.len();
            match self.post(body, end - start).await {
                Err(WholeFailure::Status(StatusCode::PAYLOAD_TOO_LARGE, _)) if end - start > 1 => {
                    self.shrink_requests(size);
                    continue;
                }
                answered => results.extend(answer_each(&jobs[start..end], answered)),
            }
            start = end;
        }
        self.release_stored(jobs, &mut results).await;
        let now = now_ms();
        for (job, result) in jobs.iter().zip(&results) {
            if result.is_ok() {
                let lag = now.saturating_sub(job.created_at_ms) as f64 / 1000.0;
                metrics::histogram!("worker_store_lag_seconds").record(lag);
            }
        }
        results
    }

    /// How many of `records` go in the next request: at least one, and
    /// no more than the limits allow.
    fn chunk_end(&self, records: &[Vec<u8>]) -> usize {
        let mut bytes = 0;
        let mut count = 0;
        for record in records.iter().take(self.limits.records.max(1)) {
            bytes += record.len() + 1;
            if count > 0 && bytes > self.request_bytes.load(Ordering::Relaxed) {
                break;
            }
            count += 1;
        }
        count
    }

    /// The chat-system refused a request of `size` bytes as too large
    /// (its `MAX_BODY_BYTES` is below `WORKER_BATCH_BYTES`): later
    /// requests carry at most half of it, the refused records included.
    fn shrink_requests(&self, size: usize) {
        let before = self.request_bytes.fetch_min(size / 2, Ordering::Relaxed);
        if before == self.limits.bytes {
            tracing::warn!(
                batch_bytes = self.limits.bytes,
                refused_bytes = size,
                "the chat-system refused a bulk write as too large: WORKER_BATCH_BYTES is above its MAX_BODY_BYTES; sending smaller ones"
            );
        }
    }

    /// One bulk request of `records` records.
    async fn post(&self, body: Vec<u8>, records: usize) -> Result<Answer, WholeFailure> {
        let started = Instant::now();
        let answered = self.send(body).await;
        metrics::histogram!("worker_store_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("worker_store_batch_records").record(records as f64);
        answered
    }

    async fn send(&self, body: Vec<u8>) -> Result<Answer, WholeFailure> {
        let mut request = self
            .client
            .post(self.records_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(credential) = &self.credential {
            request = request.bearer_auth(credential.expose());
        }
        let response = request.send().await.map_err(WholeFailure::unreachable)?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            return Err(WholeFailure::Status(status, body));
        }
        response
            .json::<Answer>()
            .await
            .map_err(WholeFailure::unreachable)
    }

    /// Takes the stored jobs' numbers out of flight, one script call per
    /// scope, in one pipeline per node (on a cluster, per hash slot: a
    /// batch mixes applications, whose keys live in different slots), the
    /// pipelines sent at once. If one cannot be sent, the jobs of its
    /// scopes fail transiently (their records are stored; the retry finds
    /// them) and the others are released as usual.
    async fn release_stored(&self, jobs: &[&Job], results: &mut [Result<(), Failure>]) {
        let mut scopes: BTreeMap<_, Vec<usize>> = BTreeMap::new();
        for (index, (job, result)) in jobs.iter().zip(results.iter()).enumerate() {
            if result.is_ok() {
                scopes.entry(job.scope()).or_default().push(index);
            }
        }
        let mut groups: HashMap<Option<Slot>, (redis::Pipeline, Vec<usize>)> = HashMap::new();
        for (scope, indices) in &scopes {
            let numbers: Vec<i64> = indices.iter().map(|&index| jobs[index].number()).collect();
            let call = self
                .keys
                .release(*scope, &numbers, self.counter_ttl, Release::Stored);
            let (pipeline, members) = groups
                .entry(self.redis.pipeline_of(&call.keys[0]))
                .or_insert_with(|| (redis::pipe(), Vec::new()));
            let mut invocation = self.release.key(call.keys);
            invocation.arg(call.args);
            pipeline.invoke_script(&invocation).ignore();
            members.extend(indices);
        }
        let sent = join_all(groups.into_values().map(|(pipeline, members)| async move {
            (self.send_release(&pipeline).await, members)
        }))
        .await;
        for (released, members) in sent {
            if let Err(error) = released {
                let error = Arc::new(error);
                for index in members {
                    results[index] = Err(Failure::Transient(StoreError::Release(error.clone())));
                }
            }
        }
    }

    /// One release pipeline, and `REDIS_WAIT_REPLICAS` confirming it;
    /// loads the script first if Redis lost it.
    async fn send_release(&self, pipeline: &redis::Pipeline) -> redis::RedisResult<()> {
        let released: redis::RedisResult<()> =
            self.redis.query_replicated(pipeline, self.wait).await;
        match released {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Not cached yet (Redis restarted, or a new master): load
                // it (on a cluster, redis-rs sends SCRIPT LOAD to every
                // node), then send again.
                let mut redis = self.redis.clone();
                let _: String = self.release.prepare_invoke().load_async(&mut redis).await?;
                self.redis.query_replicated(pipeline, self.wait).await
            }
            other => other,
        }
    }

    /// For `/readyz`: whether Redis and the chat-system answer.
    pub(crate) async fn ready(&self) -> Result<(), &'static str> {
        let redis: Result<String, _> = redis::cmd("PING")
            .query_async(&mut self.redis.clone())
            .await;
        if redis.is_err() {
            return Err("redis unavailable");
        }
        match self.client.get(self.readyz_url.clone()).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            _ => Err("chat-system unavailable"),
        }
    }
}

/// A failure of a whole bulk request: every record of it shares it.
enum WholeFailure {
    Unreachable(Arc<reqwest::Error>),
    Status(StatusCode, String),
}

impl WholeFailure {
    /// The URL is dropped from the error: it holds no token here, but
    /// every transport error leaves the worker without one.
    fn unreachable(error: reqwest::Error) -> Self {
        Self::Unreachable(Arc::new(error.without_url()))
    }

    fn for_each(&self) -> Failure {
        match self {
            Self::Unreachable(error) => Failure::Transient(StoreError::Unreachable(error.clone())),
            Self::Status(status, body) => {
                classify(*status, body.clone()).err().unwrap_or_else(|| {
                    Failure::Transient(StoreError::Status {
                        status: *status,
                        body: body.clone(),
                    })
                })
            }
        }
    }
}

/// The result of each of `jobs`, whose records went in one request.
fn answer_each(jobs: &[&Job], answered: Result<Answer, WholeFailure>) -> Vec<Result<(), Failure>> {
    match answered {
        Ok(answer) if answer.results.len() == jobs.len() => jobs
            .iter()
            .zip(answer.results)
            .map(|(job, result)| outcome(job, result))
            .collect(),
        Ok(answer) => {
            let body = format!(
                "{} results for {} records",
                answer.results.len(),
                jobs.len()
            );
            jobs.iter()
                .map(|_| {
                    Err(Failure::Transient(StoreError::Status {
                        status: StatusCode::OK,
                        body: body.clone(),
                    }))
                })
                .collect()
        }
        Err(failure) => jobs.iter().map(|_| Err(failure.for_each())).collect(),
    }
}

/// What a record's result means for its job. A message whose chat is not
/// stored yet is transient: the chat's job may still be on its way; so is
/// an edit of a message not stored yet. An edit superseded by a higher
/// revision is stored: its body was the current one for a while.
fn outcome(job: &Job, result: RecordResult) -> Result<(), Failure> {
    let status = StatusCode::from_u16(result.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = result.error.unwrap_or_default();
    match result.result.as_str() {
        "created" | "exists" | "superseded" => Ok(()),
        "unknown_application" => Err(Failure::Permanent {
            reason: Reason::UnknownApplication,
            error: StoreError::UnknownApplication,
        }),
        "unknown_chat" => Err(Failure::Transient(StoreError::ChatNotStored(
            job.chat_number(),
        ))),
        "unknown_message" => match job.record {
            Record::Edit { chat, message, .. } => {
                Err(Failure::Transient(StoreError::MessageNotStored {
                    chat,
                    message,
                }))
            }
            _ => classify(status, body),
        },
        _ => classify(status, body),
    }
}

/// A job as one record of the bulk request, in JSON, with the trace
/// context of the worker's span for it.
fn record(job: &Job, trace: Option<TraceParent>) -> Vec<u8> {
    let traceparent = trace.map(|trace| trace.to_string());
    let out = match &job.record {
        Record::Chat { number } => Out::Chat {
            token: &job.token,
            number: *number,
            job_id: job.id.to_string(),
            traceparent,
        },
        Record::Message { chat, number, body } => Out::Message {
            token: &job.token,
            chat: *chat,
            number: *number,
            body,
            job_id: job.id.to_string(),
            traceparent,
        },
        Record::Edit {
            chat,
            message,
            revision,
            body,
        } => Out::Edit {
            token: &job.token,
            chat: *chat,
            message: *message,
            revision: *revision,
            body,
            job_id: job.id.to_string(),
            traceparent,
        },
    };
    serde_json::to_vec(&out).expect("a record always serializes")
}

/// `{"records":[...]}` of records already in JSON.
fn bulk_body(records: &[Vec<u8>]) -> Vec<u8> {
    let length = records.iter().map(|record| record.len() + 1).sum::<usize>() + 16;
    let mut body = Vec::with_capacity(length);
    body.extend_from_slice(br#"{"records":["#);
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(record);
    }
    body.extend_from_slice(b"]}");
    body
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
