//! The overview: the queues' depths and consumers read from the broker at
//! each request, whether the broker blocks or cannot be reached, and the
//! last 15 minutes of the workers' rates (stored, retried and
//! dead-lettered per second, answer-to-stored p99), sampled from their
//! `/metrics` every few seconds.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection};
use serde::Serialize;
use shared::amqp::connection::connect;
use shared::amqp::headers::now_ms;
use shared::amqp::topology::{Topology, depth};
use shared::amqp::watch::watch;

/// How often the workers' metrics are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How far back the charts go.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The p99 of each point is over this much time before it.
const P99_OVER: Duration = Duration::from_secs(60);
/// A broker read waits at most this long.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The worker's store lag histogram: from the api accepting a record to
/// its record stored.
const LAG_BUCKET: &str = "worker_store_lag_seconds_bucket";
const JOBS: &str = "worker_jobs_total";

struct Link {
    connection: Connection,
    blocked: tokio::sync::watch::Receiver<bool>,
}

pub(crate) struct Overview {
    amqp_url: String,
    queues: Vec<(&'static str, String)>,
    link: tokio::sync::Mutex<Option<Link>>,
    worker_metrics: Vec<String>,
    samples: Mutex<VecDeque<Sample>>,
    http: reqwest::Client,
}

/// The workers' counters summed at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sample {
    pub(crate) at_ms: u64,
    pub(crate) stored: f64,
    pub(crate) retried: f64,
    pub(crate) dead_lettered: f64,
    /// Cumulative store-lag buckets: upper bound (s), count.
    pub(crate) lag: Vec<(f64, f64)>,
    /// Workers whose metrics could be read.
    pub(crate) workers_read: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct Queue {
    role: &'static str,
    name: String,
    messages: u32,
    consumers: u32,
}

/// One point of the charts: rates over the interval before `at_ms`.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Point {
    pub(crate) at_ms: u64,
    pub(crate) stored_per_s: f64,
    pub(crate) retried_per_s: f64,
    pub(crate) dead_lettered_per_s: f64,
    /// `None` when nothing was stored in the minute before.
    pub(crate) p99_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// `ok`, `blocked` or `unreachable`.
    broker: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    broker_error: Option<String>,
    queues: Vec<Queue>,
    workers_configured: usize,
    workers_read: usize,
    series: Vec<Point>,
}

impl Overview {
    pub(crate) fn new(
        amqp_url: &str,
        topology: &Topology,
        retry_delays: &[Duration],
        worker_metrics: Vec<String>,
    ) -> Self {
        let mut queues = vec![("jobs", topology.jobs_queue())];
        queues.extend(
            retry_delays
                .iter()
                .map(|delay| ("retry", topology.retry_queue(*delay))),
        );
        queues.push(("dead", topology.dead_queue()));
        queues.push(("discarded", topology.discarded_queue()));
        Self {
            amqp_url: amqp_url.to_owned(),
            queues,
            link: tokio::sync::Mutex::default(),
            worker_metrics,
            samples: Mutex::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client"),
        }
    }

    pub(crate) async fn report(&self) -> Report {
        let (broker, broker_error, queues) =
            match tokio::time::timeout(READ_TIMEOUT, self.read_queues()).await {
                Ok(Ok((blocked, queues))) => (if blocked { "blocked" } else { "ok" }, None, queues),
                Ok(Err(error)) => {
                    *self.link.lock().await = None;
                    ("unreachable", Some(error.to_string()), Vec::new())
                }
                Err(_) => {
                    *self.link.lock().await = None;
                    ("unreachable", Some("timed out".to_owned()), Vec::new())
                }
            };
        let mut samples = self.samples.lock().expect("samples lock");
        Report {
            broker,
            broker_error,
            queues,
            workers_configured: self.worker_metrics.len(),
            workers_read: samples.back().map_or(0, |sample| sample.workers_read),
            series: series(samples.make_contiguous()),
        }
    }

    /// Each queue's depth, on a connection kept between requests (and
    /// opened again after a failure), and whether the broker blocks it.
    async fn read_queues(&self) -> anyhow::Result<(bool, Vec<Queue>)> {
        let mut link = self.link.lock().await;
        if link
            .as_ref()
            .is_none_or(|link| !link.connection.status().connected())
        {
            let connection = connect(&self.amqp_url, "worker-console-overview").await?;
            let watched = watch(&connection);
            // RabbitMQ tells only publishing connections that it blocks
            // (https://www.rabbitmq.com/docs/connection-blocked): one
            // empty message that routes nowhere (dropped, never queued)
            // makes this one a publisher, so it hears of an alarm.
            let channel = connection.create_channel().await?;
            channel
                .basic_publish(
                    "".into(),
                    "worker-console-overview-probe".into(),
                    BasicPublishOptions::default(),
                    &[],
                    BasicProperties::default(),
                )
                .await?;
            let _ = channel.close(200, "probed".into()).await;
            *link = Some(Link {
                connection,
                blocked: watched.blocked,
            });
        }
        let link = link.as_ref().expect("a link");
        // A channel per read: a queue not declared yet closes it.
        let mut queues = Vec::new();
        for (role, name) in &self.queues {
            let channel = link.connection.create_channel().await?;
            let (messages, consumers) = match depth(&channel, name).await {
                Ok(read) => read,
                Err(_) => continue,
            };
            queues.push(Queue {
                role,
                name: name.clone(),
                messages,
                consumers,
            });
            let _ = channel.close(200, "read".into()).await;
        }
        Ok((*link.blocked.borrow(), queues))
    }

    /// Reads every worker's metrics and keeps their sum.
    async fn sample(&self) {
        let mut sample = Sample {
            at_ms: now_ms(),
            ..Sample::default()
        };
        for url in &self.worker_metrics {
            let text = match self.http.get(url).send().await {
                Ok(answer) if answer.status().is_success() => answer.text().await.ok(),
                _ => None,
            };
            let Some(text) = text else {
                tracing::debug!(url, "could not read a worker's metrics");
                continue;
            };
            sample.workers_read += 1;
            add(&mut sample, &text);
        }
        let mut samples = self.samples.lock().expect("samples lock");
        samples.push_back(sample);
        let window = (WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 1;
        while samples.len() > window {
            samples.pop_front();
        }
    }
}

impl Overview {
    /// Samples the workers until the task is aborted.
    pub(crate) async fn sample_forever(&self) {
        if self.worker_metrics.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            self.sample().await;
        }
    }
}

/// Adds one worker's `/metrics` text to `sample`.
pub(crate) fn add(sample: &mut Sample, text: &str) {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            JOBS => match label(labels, "outcome") {
                Some("stored") => sample.stored += value,
                Some("retried") => sample.retried += value,
                Some("dead_lettered") => sample.dead_lettered += value,
                _ => {}
            },
            LAG_BUCKET => {
                let Some(bound) = label(labels, "le").and_then(|le| match le {
                    "+Inf" => Some(f64::INFINITY),
                    le => le.parse().ok(),
                }) else {
                    continue;
                };
                match sample.lag.iter_mut().find(|(upper, _)| *upper == bound) {
                    Some((_, count)) => *count += value,
                    None => sample.lag.push((bound, value)),
                }
            }
            _ => {}
        }
    }
    sample.lag.sort_by(|a, b| a.0.total_cmp(&b.0));
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.trim_end_matches('}').split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// The charts' points: each pair of neighbouring samples a rate; a
/// counter that went down (a worker restarted) counts from zero.
pub(crate) fn series(samples: &[Sample]) -> Vec<Point> {
    let per_minute = (P99_OVER.as_secs() / SAMPLE_EVERY.as_secs()) as usize;
    samples
        .windows(2)
        .enumerate()
        .map(|(index, pair)| {
            let (before, after) = (&pair[0], &pair[1]);
            let seconds = (after.at_ms.saturating_sub(before.at_ms) as f64 / 1000.0).max(0.001);
            let rate = |now: f64, then: f64| increase(now, then) / seconds;
            let minute_before = &samples[(index + 1).saturating_sub(per_minute)];
            Point {
                at_ms: after.at_ms,
                stored_per_s: rate(after.stored, before.stored),
                retried_per_s: rate(after.retried, before.retried),
                dead_lettered_per_s: rate(after.dead_lettered, before.dead_lettered),
                p99_s: p99(&minute_before.lag, &after.lag),
            }
        })
        .collect()
}

fn increase(now: f64, then: f64) -> f64 {
    if now >= then { now - then } else { now }
}

/// The 99th percentile of what was observed between two cumulative
/// histograms: the upper bound of the first bucket holding 99 %.
pub(crate) fn p99(then: &[(f64, f64)], now: &[(f64, f64)]) -> Option<f64> {
    let before = |bound: f64| {
        then.iter()
            .find(|(upper, _)| *upper == bound)
            .map_or(0.0, |(_, count)| *count)
    };
    let deltas: Vec<(f64, f64)> = now
        .iter()
        .map(|(bound, count)| (*bound, increase(*count, before(*bound))))
        .collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    deltas
        .iter()
        .find(|(_, count)| *count >= total * 0.99)
        .map(|(bound, _)| *bound)
}

// Tests at the top level: a `tests` module would import its parent
// through `super`, which the architecture check reads as the console.
#[cfg(test)]
const METRICS: &str = "# TYPE worker_jobs_total counter\n\
worker_jobs_total{kind=\"chat\",outcome=\"stored\"} 10\n\
worker_jobs_total{kind=\"message\",outcome=\"stored\"} 30\n\
worker_jobs_total{kind=\"message\",outcome=\"retried\"} 4\n\
worker_jobs_total{kind=\"message\",outcome=\"dead_lettered\"} 2\n\
worker_store_lag_seconds_bucket{le=\"0.01\"} 30\n\
worker_store_lag_seconds_bucket{le=\"0.1\"} 39\n\
worker_store_lag_seconds_bucket{le=\"+Inf\"} 40\n";

#[cfg(test)]
#[test]
fn workers_metrics_are_summed_by_outcome_and_bucket() {
    let mut sample = Sample::default();
    add(&mut sample, METRICS);
    add(&mut sample, METRICS);
    assert_eq!(
        (sample.stored, sample.retried, sample.dead_lettered),
        (80.0, 8.0, 4.0)
    );
    assert_eq!(
        sample.lag,
        vec![(0.01, 60.0), (0.1, 78.0), (f64::INFINITY, 80.0)]
    );
}

#[cfg(test)]
#[test]
fn rates_come_from_neighbouring_samples_and_survive_a_restart() {
    let sample = |at_ms, stored, lag: Vec<(f64, f64)>| Sample {
        at_ms,
        stored,
        lag,
        ..Sample::default()
    };
    let samples = [
        sample(
            0,
            100.0,
            vec![(0.01, 0.0), (0.1, 0.0), (f64::INFINITY, 0.0)],
        ),
        sample(
            5000,
            600.0,
            vec![(0.01, 98.0), (0.1, 100.0), (f64::INFINITY, 100.0)],
        ),
        // Restarted: counters from zero.
        sample(
            10_000,
            50.0,
            vec![(0.01, 0.0), (0.1, 0.0), (f64::INFINITY, 0.0)],
        ),
    ];
    let points = series(&samples);
    assert_eq!(points.len(), 2);
    assert_eq!(points[0].stored_per_s, 100.0);
    // 99 of 100 under 0.1 s, 98 under 0.01 s: the p99 is 0.1 s.
    assert_eq!(points[0].p99_s, Some(0.1));
    assert_eq!(points[1].stored_per_s, 10.0);
}
