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
use redis::{Script, ScriptInvocation};
use reqwest::StatusCode;
use shared::chat_system::{
    BulkAnswer, BulkRecord, ChatSystem, ChatSystemError, RecordResult, Written,
};
use shared::counters::{self, Keys, Release};
use shared::group_commit::{self, Limits, Weight};
use shared::job::{Job, Record};
use shared::redis_client::{RedisClient, Slot, Wait};
use shared::trace::TraceParent;
use tokio::time::Instant;

use crate::retry::{Failure, Reason, StoreError, classify};

/// How many records, and how many bytes of them, one bulk request carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BulkLimits {
    pub(crate) records: usize,
    pub(crate) bytes: usize,
}

pub(crate) struct Storage {
    /// With `CHAT_SYSTEM_WRITE_TOKEN`, sent as a bearer token.
    chat_system: ChatSystem,
    redis: RedisClient,
    keys: Keys,
    release: Script,
    counter_ttl: Duration,
    /// Replicas a release must reach before it counts (a failover would
    /// otherwise put the number back in flight for good).
    wait: Wait,
    limits: BulkLimits,
    /// Most bytes of records one request carries: `limits.bytes`, less
    /// once the chat-system refused a request as too large (413).
    request_bytes: AtomicUsize,
}

impl Storage {
    pub(crate) fn new(
        chat_system: ChatSystem,
        redis: RedisClient,
        keys: Keys,
        counter_ttl: Duration,
        wait: Wait,
        limits: BulkLimits,
    ) -> Self {
        Self {
            chat_system,
            redis,
            keys,
            release: Script::new(counters::RELEASE_MANY),
            counter_ttl,
            wait,
            limits,
            request_bytes: AtomicUsize::new(limits.bytes),
        }
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
                Err(ChatSystemError::Status {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    ..
                }) if end - start > 1 => {
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
        let limits = Limits {
            count: self.limits.records,
            size: self.request_bytes.load(Ordering::Relaxed),
        };
        group_commit::first_group(records, limits, |record| Weight {
            count: 1,
            size: record.len() + 1,
        })
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
    async fn post(&self, body: Vec<u8>, records: usize) -> Result<BulkAnswer, ChatSystemError> {
        let started = Instant::now();
        let answered = self.chat_system.store_records(body).await;
        metrics::histogram!("worker_store_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("worker_store_batch_records").record(records as f64);
        answered
    }

    /// Takes the stored jobs' numbers out of flight, in one script call
    /// ([`counters::RELEASE_MANY`], an entry per scope) per node (on a
    /// cluster, per hash slot: a batch mixes applications, whose keys live
    /// in different slots), the calls sent at once. If one cannot be
    /// sent, the jobs of its scopes fail transiently (their records are
    /// stored; the retry finds them) and the others are released as usual.
    async fn release_stored(&self, jobs: &[&Job], results: &mut [Result<(), Failure>]) {
        let mut scopes: BTreeMap<_, Vec<usize>> = BTreeMap::new();
        for (index, (job, result)) in jobs.iter().zip(results.iter()).enumerate() {
            if result.is_ok() {
                scopes.entry(job.scope()).or_default().push(index);
            }
        }
        let mut groups: HashMap<Option<Slot>, (ScriptInvocation<'_>, Vec<usize>)> = HashMap::new();
        for (scope, indices) in &scopes {
            let numbers: Vec<i64> = indices.iter().map(|&index| jobs[index].number()).collect();
            let call = self
                .keys
                .release(*scope, &numbers, self.counter_ttl, Release::Stored);
            let (invocation, members) = groups
                .entry(self.redis.pipeline_of(&call.keys[0]))
                .or_insert_with(|| (self.release.prepare_invoke(), Vec::new()));
            counters::add_entry(invocation, &call.keys, &call.args);
            members.extend(indices);
        }
        let sent = join_all(
            groups
                .into_values()
                .map(|(invocation, members)| async move {
                    let mut pipeline = redis::pipe();
                    pipeline.invoke_script(&invocation).ignore();
                    (self.send_release(&pipeline).await, members)
                }),
        )
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
        match self.chat_system.ready().await {
            Ok(_) => Ok(()),
            Err(_) => Err("chat-system unavailable"),
        }
    }
}

/// What a failure of a whole bulk request means for each of its records.
fn for_each(failure: &ChatSystemError) -> Failure {
    match failure {
        ChatSystemError::Unreachable(error) => {
            Failure::Transient(StoreError::Unreachable(error.clone()))
        }
        // Only the streamed reads time out so; a write's timeout is a
        // transport error. Transient all the same.
        ChatSystemError::TimedOut(_) => Failure::Transient(StoreError::Status {
            status: StatusCode::GATEWAY_TIMEOUT,
            body: failure.to_string(),
        }),
        ChatSystemError::Status { status, body } => {
            classify(*status, body.clone()).err().unwrap_or_else(|| {
                Failure::Transient(StoreError::Status {
                    status: *status,
                    body: body.clone(),
                })
            })
        }
    }
}

/// The result of each of `jobs`, whose records went in one request.
fn answer_each(
    jobs: &[&Job],
    answered: Result<BulkAnswer, ChatSystemError>,
) -> Vec<Result<(), Failure>> {
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
        Err(failure) => jobs.iter().map(|_| Err(for_each(&failure))).collect(),
    }
}

/// What a record's result means for its job. A message whose chat is not
/// stored yet is transient: the chat's job may still be on its way; so is
/// an edit of a message not stored yet. An edit superseded by a higher
/// revision is stored: its body was the current one for a while.
fn outcome(job: &Job, result: RecordResult) -> Result<(), Failure> {
    let status = StatusCode::from_u16(result.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = result.error.unwrap_or_default();
    match result.result {
        written if written.is_stored() => Ok(()),
        Written::UnknownApplication => Err(Failure::Permanent {
            reason: Reason::UnknownApplication,
            error: StoreError::UnknownApplication,
        }),
        Written::UnknownChat => Err(Failure::Transient(StoreError::ChatNotStored(
            job.chat_number(),
        ))),
        Written::UnknownMessage => match job.record {
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
    let traceparent = traceparent.as_deref();
    let job_id = job.id.to_string();
    let job_id = Some(job_id.as_str());
    let token = job.token.as_str();
    let out = match &job.record {
        Record::Chat { number } => BulkRecord::Chat {
            token,
            number: *number,
            job_id,
            traceparent,
        },
        Record::Message { chat, number, body } => BulkRecord::Message {
            token,
            chat: *chat,
            number: *number,
            body,
            job_id,
            traceparent,
        },
        Record::Edit {
            chat,
            message,
            revision,
            body,
        } => BulkRecord::Edit {
            token,
            chat: *chat,
            message: *message,
            revision: *revision,
            body,
            job_id,
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
