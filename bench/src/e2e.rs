//! The whole system under one load: the api, the workers and the
//! chat-system running together, JSON message creates spread over
//! `applications` applications of `chats` chats each. Once everything is
//! stored, what is left behind (numbers in flight, retry copies) must come
//! to 0 within 30 s.
//!
//! Closed loop: wrk at `connections` connections for `seconds`; then the
//! clock runs until every acknowledged record is stored. Reported: the
//! intake rate, the stored rate (acknowledged records over the time from
//! the first request to the last record stored), the backlog when the load
//! stopped, the api's latency, the time from a job's creation to its record
//! stored (the workers' `worker_store_lag_seconds`), and the CPU each
//! process spent per stored record (from `/proc/PID/stat`; PostgreSQL and
//! RabbitMQ are every process of theirs).
//!
//! Open loop: a fixed request rate (half the closed loop's stored rate by
//! default) for `open_loop_seconds`, latency measured from each request's
//! scheduled start, so a slow answer cannot hold back the requests behind
//! it (no coordinated omission).
//!
//! Edits: wrk `PUT`s new bodies of messages 1..16 of every chat for
//! `edit_seconds`; the clock runs until the workers have stored as many
//! edits as were acknowledged (`worker_jobs_total{kind="edit"}`). Reported
//! like the closed loop: intake and stored rates, latency, CPU per stored
//! edit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::client::ChatSystem;
use crate::cpu::Processes;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[arg(long, default_value = "http://127.0.0.1:3101")]
    api_url: String,
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    chat_system_url: String,
    /// `/metrics` base URL of each worker (`http://127.0.0.1:3110`).
    #[arg(long = "worker-metrics", required = true)]
    worker_metrics: Vec<String>,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Applications the load spreads over.
    #[arg(long, default_value_t = 64)]
    applications: usize,
    /// Chats of each application.
    #[arg(long, default_value_t = 4)]
    chats: i64,
    /// `name=pid` of each process whose CPU is counted besides PostgreSQL
    /// and RabbitMQ (found by name): `api=…`, `worker=…` (repeatable, summed),
    /// `chat-system=…`, `redis=…`.
    #[arg(long = "process")]
    processes: Vec<String>,
    /// Requests per second of the open-loop run; half the closed loop's
    /// stored rate when not given, none when 0.
    #[arg(long)]
    open_loop_rate: Option<f64>,
    #[arg(long, default_value_t = 20)]
    open_loop_seconds: u64,
    /// Seconds of the edit run; none when 0.
    #[arg(long, default_value_t = 10)]
    edit_seconds: u64,
    #[arg(long, default_value = "scripts/wrk/create.lua")]
    wrk_script: PathBuf,
    /// The run's queue prefix.
    #[arg(long, env = "QUEUE_PREFIX")]
    queue_prefix: String,
    /// The run's Redis key prefix.
    #[arg(long, env = "REDIS_PREFIX")]
    redis_prefix: String,
    #[command(flatten)]
    servers: crate::servers::Servers,
}

const BODY: &str = r#"{"body":"hello, world \"bench\" / ü"}"#;
const EDIT_BODY: &str = r#"{"body":"hello again, \"bench\" / ü, edited"}"#;

/// What wrk sends: `method` to `path` (with `{token}`, `{chat}` and
/// `{message}` taken in turn), `body`, for `seconds`.
struct Load<'a> {
    method: &'a str,
    path: &'a str,
    body: &'a str,
    seconds: u64,
}

const CREATES: Load<'static> = Load {
    method: "POST",
    path: "/applications/{token}/chats/{chat}/messages",
    body: BODY,
    seconds: 0,
};

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let chat_system = ChatSystem::new(&args.chat_system_url)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .build()?;
    let mut tokens = Vec::with_capacity(args.applications);
    for _ in 0..args.applications.max(1) {
        let token = chat_system.application("bench-e2e").await?;
        for _ in 0..args.chats {
            let answer = client
                .post(format!("{}/applications/{token}/chats", args.api_url))
                .send()
                .await?;
            ensure!(
                answer.status().is_success(),
                "creating a chat: {}",
                answer.status()
            );
        }
        tokens.push(token);
    }
    let counts = Counts {
        chat_system: &chat_system,
        tokens: &tokens,
    };
    counts.wait_for(0.0, Duration::from_secs(60)).await?;

    let processes = Processes::new(&args.processes)?;
    let cpu_before = processes.cpu()?;
    let lag_before = lag_histogram(&client, &args.worker_metrics).await?;
    let batches_before = BatchSizes::read(&client, &args).await?;
    let started = Instant::now();
    let creates = Load {
        seconds: args.seconds,
        ..CREATES
    };
    let wrk = wrk(&args, &tokens, &creates).await?;
    let load_secs = started.elapsed().as_secs_f64();
    let stored_when_stopped = counts.stored().await?;
    let acknowledged = field(&wrk, "acknowledged")?;
    counts
        .wait_for(acknowledged, Duration::from_secs(900))
        .await
        .context("waiting for every acknowledged record to be stored")?;
    let all_stored_secs = started.elapsed().as_secs_f64();
    let cpu_after = processes.cpu()?;
    let lag = lag_histogram(&client, &args.worker_metrics)
        .await?
        .minus(&lag_before);
    let stored_rps = acknowledged / all_stored_secs;
    let mut line = format!(
        "e2e acknowledged={acknowledged:.0} intake_rps={:.0} stored_rps={stored_rps:.0} \
         backlog={:.0} load_secs={load_secs:.1} all_stored_secs={all_stored_secs:.1} \
         api_p50_ms={} api_p99_ms={} errors={} lag_p50_ms={:.0} lag_p99_ms={:.0}",
        acknowledged / load_secs,
        (acknowledged - stored_when_stopped).max(0.0),
        text(&wrk, "p50_ms")?,
        text(&wrk, "p99_ms")?,
        text(&wrk, "errors")?,
        lag.quantile(0.50) * 1000.0,
        lag.quantile(0.99) * 1000.0,
    );
    line.push_str(&cpu_per(&cpu_after.minus(&cpu_before), acknowledged));
    println!("{line}");
    println!(
        "batches {}",
        BatchSizes::read(&client, &args)
            .await?
            .means_since(&batches_before)
    );

    let rate = args.open_loop_rate.unwrap_or(stored_rps / 2.0);
    if rate > 0.0 {
        let stored_before = counts.stored().await?;
        let lag_before = lag_histogram(&client, &args.worker_metrics).await?;
        let open = open_loop(&client, &args, &tokens, rate).await?;
        counts
            .wait_for(
                stored_before + open.acknowledged as f64,
                Duration::from_secs(300),
            )
            .await
            .context("waiting for the open-loop records to be stored")?;
        let lag = lag_histogram(&client, &args.worker_metrics)
            .await?
            .minus(&lag_before);
        println!(
            "openloop rate={rate:.0} requests={} errors={} p50_ms={:.2} p99_ms={:.2} lag_p50_ms={:.0} lag_p99_ms={:.0}",
            open.requests,
            open.errors,
            open.percentile(0.50),
            open.percentile(0.99),
            lag.quantile(0.50) * 1000.0,
            lag.quantile(0.99) * 1000.0,
        );
    }
    if args.edit_seconds > 0 {
        println!("{}", edits(&client, &args, &tokens, &processes).await?);
    }
    let prefixes = crate::leftovers::Prefixes {
        queues: &args.queue_prefix,
        keys: &args.redis_prefix,
    };
    let waited = Instant::now();
    let left =
        crate::leftovers::wait_for_none(&args.servers, prefixes, Duration::from_secs(30)).await?;
    println!(
        "leftovers in_flight={} retry_copies={} secs={:.1}",
        left.in_flight,
        left.retry_copies,
        waited.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The edit run: wrk's edits of messages 1..16 of every chat, then the
/// wait until the workers stored as many; its result line.
async fn edits(
    client: &reqwest::Client,
    args: &Args,
    tokens: &[String],
    processes: &Processes,
) -> anyhow::Result<String> {
    let load = Load {
        method: "PUT",
        path: "/applications/{token}/chats/{chat}/messages/{message}",
        body: EDIT_BODY,
        seconds: args.edit_seconds,
    };
    let stored_before = stored_edits(client, &args.worker_metrics).await?;
    let cpu_before = processes.cpu()?;
    let started = Instant::now();
    let wrk = wrk(args, tokens, &load).await?;
    let load_secs = started.elapsed().as_secs_f64();
    let acknowledged = field(&wrk, "acknowledged")?;
    let give_up = Instant::now() + Duration::from_secs(300);
    loop {
        let stored = stored_edits(client, &args.worker_metrics).await? - stored_before;
        if stored >= acknowledged {
            break;
        }
        ensure!(
            Instant::now() < give_up,
            "{stored} of {acknowledged} edits stored after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_stored_secs = started.elapsed().as_secs_f64();
    let cpu_after = processes.cpu()?;
    let mut line = format!(
        "edits acknowledged={acknowledged:.0} intake_rps={:.0} stored_rps={:.0} \
         api_p50_ms={} api_p99_ms={} errors={}",
        acknowledged / load_secs,
        acknowledged / all_stored_secs,
        text(&wrk, "p50_ms")?,
        text(&wrk, "p99_ms")?,
        text(&wrk, "errors")?,
    );
    line.push_str(&cpu_per(&cpu_after.minus(&cpu_before), acknowledged));
    Ok(line)
}

/// ` cpu_us_NAME=…` for each process and ` cpu_us_total=…`: the CPU
/// `spent` per one of `records`, in µs.
fn cpu_per(spent: &BTreeMap<String, Duration>, records: f64) -> String {
    let mut fields = String::new();
    let mut total = 0.0;
    for (name, spent) in spent {
        let per_record = spent.as_secs_f64() * 1e6 / records.max(1.0);
        total += per_record;
        fields.push_str(&format!(" cpu_us_{name}={per_record:.0}"));
    }
    fields.push_str(&format!(" cpu_us_total={total:.0}"));
    fields
}

/// The `/metrics` text at `base`; an error when it cannot be read.
async fn metrics_text(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{}/metrics", base.trim_end_matches('/')))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Edit jobs the workers stored: `worker_jobs_total{kind="edit",
/// outcome="stored"}`, summed; an error when a worker cannot be read.
async fn stored_edits(client: &reqwest::Client, workers: &[String]) -> anyhow::Result<f64> {
    let mut stored = 0.0;
    for worker in workers {
        let text = metrics_text(client, worker).await?;
        for line in text.lines() {
            if line.starts_with("worker_jobs_total{")
                && line.contains("kind=\"edit\"")
                && line.contains("outcome=\"stored\"")
            {
                let value = line.rsplit(' ').next().unwrap_or_default();
                stored += value
                    .parse::<f64>()
                    .with_context(|| format!("reading {line:?}"))?;
            }
        }
    }
    Ok(stored)
}

/// Runs wrk with `load` over every chat of every application in turn; its
/// result line.
async fn wrk(args: &Args, tokens: &[String], load: &Load<'_>) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("wrk")
        .args(["-t2", &format!("-c{}", args.connections)])
        .arg(format!("-d{}s", load.seconds))
        .arg("-s")
        .arg(&args.wrk_script)
        .arg(&args.api_url)
        .env("WRK_METHOD", load.method)
        .env("WRK_PATH", load.path)
        .env("WRK_TOKENS", tokens.join(","))
        .env("WRK_CHATS", args.chats.to_string())
        .env("WRK_MESSAGES", "16")
        .env("WRK_BODY", load.body)
        .output()
        .await
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().find(|line| line.starts_with("wrk ")) {
        Some(line) => Ok(line.to_owned()),
        None => bail!(
            "wrk printed no result: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn text<'a>(line: &'a str, key: &str) -> anyhow::Result<&'a str> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key} in {line:?}"))
}

fn field(line: &str, key: &str) -> anyhow::Result<f64> {
    Ok(text(line, key)?.parse()?)
}

/// The stored messages of the bench's applications.
struct Counts<'a> {
    chat_system: &'a ChatSystem,
    tokens: &'a [String],
}

impl Counts<'_> {
    async fn stored(&self) -> anyhow::Result<f64> {
        let counted = futures::future::try_join_all(
            self.tokens
                .iter()
                .map(|token| self.chat_system.stored_messages(token)),
        )
        .await?;
        Ok(counted.iter().sum::<i64>() as f64)
    }

    /// Waits until at least `count` messages are stored (and the chats
    /// themselves, which `messages_count` needs).
    async fn wait_for(&self, count: f64, deadline: Duration) -> anyhow::Result<()> {
        let give_up = Instant::now() + deadline;
        loop {
            match self.stored().await {
                Ok(stored) if stored >= count => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(stored) => bail!("{stored} of {count} stored after {deadline:?}"),
                Err(error) => return Err(error),
            }
        }
    }
}

/// A Prometheus histogram: cumulative counts by upper bound.
struct Histogram(Vec<(f64, f64)>);

impl Histogram {
    fn minus(&self, before: &Histogram) -> Histogram {
        Histogram(
            self.0
                .iter()
                .map(|&(bound, count)| {
                    let earlier = before
                        .0
                        .iter()
                        .find(|(other, _)| *other == bound)
                        .map_or(0.0, |(_, count)| *count);
                    (bound, count - earlier)
                })
                .collect(),
        )
    }

    /// The `q` quantile, interpolated within its bucket; 0 when empty.
    fn quantile(&self, q: f64) -> f64 {
        let Some(&(_, total)) = self.0.last() else {
            return 0.0;
        };
        if total <= 0.0 {
            return 0.0;
        }
        let wanted = q * total;
        let mut lower = (0.0, 0.0);
        for &(bound, count) in &self.0 {
            if count >= wanted {
                if bound.is_infinite() {
                    return lower.0;
                }
                let share = (wanted - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
                return lower.0 + (bound - lower.0) * share;
            }
            lower = (bound, count);
        }
        lower.0
    }
}

/// `worker_store_lag_seconds`, summed over the workers.
async fn lag_histogram(client: &reqwest::Client, workers: &[String]) -> anyhow::Result<Histogram> {
    let mut buckets: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for worker in workers {
        let text = metrics_text(client, worker).await?;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("worker_store_lag_seconds_bucket{le=\"") else {
                continue;
            };
            let Some((bound, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let value = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse()?
            };
            let entry = buckets.entry(bound.to_owned()).or_insert((value, 0.0));
            entry.1 += count.trim().parse::<f64>()?;
        }
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Histogram(sorted))
}

/// The sums and counts of the histograms of batch sizes, the api's and
/// the workers' (summed over the workers).
struct BatchSizes(BTreeMap<&'static str, (f64, f64)>);

impl BatchSizes {
    /// Histogram, and the name of its mean in the `batches` line.
    const HISTOGRAMS: [(&'static str, &'static str); 5] = [
        ("api_publish_batch_jobs", "jobs_per_message"),
        ("api_draw_round_size", "draws_per_round"),
        ("api_replicated_group_size", "draws_per_replica_wait"),
        ("worker_batch_deliveries", "deliveries_per_worker_batch"),
        ("worker_store_batch_records", "records_per_bulk_write"),
    ];

    /// One pass over each `/metrics`; every histogram must be exported by
    /// the api or a worker (they start at 0), so a misspelt name fails the
    /// run instead of printing `-`.
    async fn read(client: &reqwest::Client, args: &Args) -> anyhow::Result<Self> {
        let mut sums: BTreeMap<&'static str, (f64, f64)> = BTreeMap::new();
        for base in std::iter::once(&args.api_url).chain(&args.worker_metrics) {
            let text = metrics_text(client, base).await?;
            for line in text.lines() {
                let Some((name, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let name = name.split('{').next().unwrap_or(name);
                for (histogram, _) in Self::HISTOGRAMS {
                    match name.strip_prefix(histogram) {
                        Some("_sum") => {
                            sums.entry(histogram).or_default().0 += value.parse::<f64>()?
                        }
                        Some("_count") => {
                            sums.entry(histogram).or_default().1 += value.parse::<f64>()?
                        }
                        _ => {}
                    }
                }
            }
        }
        for (histogram, _) in Self::HISTOGRAMS {
            ensure!(
                sums.contains_key(histogram),
                "{histogram} is exported by neither the api nor a worker"
            );
        }
        Ok(Self(sums))
    }

    /// `name=mean` of each histogram since `before`; `-` where nothing
    /// was observed (no replica waits on a single node).
    fn means_since(&self, before: &Self) -> String {
        let mut line = Vec::new();
        for (histogram, name) in Self::HISTOGRAMS {
            let (sum, count) = self.0.get(histogram).copied().unwrap_or_default();
            let (sum_before, count_before) = before.0.get(histogram).copied().unwrap_or_default();
            let count = count - count_before;
            line.push(if count > 0.0 {
                format!("{name}={:.1}", (sum - sum_before) / count)
            } else {
                format!("{name}=-")
            });
        }
        line.join(" ")
    }
}

/// What an open-loop run saw.
struct OpenLoop {
    requests: usize,
    acknowledged: usize,
    errors: usize,
    latencies: Vec<Duration>,
}

impl OpenLoop {
    fn percentile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() as f64 * q) as usize).min(self.latencies.len() - 1);
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

async fn open_loop(
    client: &reqwest::Client,
    args: &Args,
    tokens: &[String],
    rate: f64,
) -> anyhow::Result<OpenLoop> {
    let count = (rate * args.open_loop_seconds as f64) as usize;
    let urls: Vec<String> = (0..count)
        .map(|index| {
            let token = &tokens[index % tokens.len()];
            let chat = (index / tokens.len()) as i64 % args.chats + 1;
            format!(
                "{}/applications/{token}/chats/{chat}/messages",
                args.api_url
            )
        })
        .collect();
    fixed_rate(client, urls, rate).await
}

/// Sends a JSON message create to each of `urls`, `rate` a second, each
/// timed from its scheduled start.
async fn fixed_rate(
    client: &reqwest::Client,
    urls: Vec<String>,
    rate: f64,
) -> anyhow::Result<OpenLoop> {
    let count = urls.len();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let body: serde_json::Value = serde_json::from_str(BODY)?;
    let body = Arc::new(body);
    let mut tasks = Vec::with_capacity(count);
    for (index, url) in urls.into_iter().enumerate() {
        let scheduled = start + interval.mul_f64(index as f64);
        let (client, body) = (client.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(scheduled).await;
            let answer = client
                .post(url)
                .json(&*body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let ok = matches!(&answer, Ok(response) if response.status().is_success());
            (ok, scheduled.elapsed())
        }));
    }
    let mut run = OpenLoop {
        requests: count,
        acknowledged: 0,
        errors: 0,
        latencies: Vec::with_capacity(count),
    };
    for task in tasks {
        let (ok, latency) = task.await?;
        if ok {
            run.acknowledged += 1;
        } else {
            run.errors += 1;
        }
        run.latencies.push(latency);
    }
    run.latencies.sort();
    Ok(run)
}

/// `bench steady`: one application's steady stream of message creates,
/// for the noisy-neighbour rows (the flood beside it is wrk's).
#[derive(clap::Args)]
pub(crate) struct SteadyArgs {
    #[arg(long, default_value = "http://127.0.0.1:3101")]
    api_url: String,
    /// The application, whose chat 1 exists.
    #[arg(long)]
    token: String,
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

pub(crate) async fn steady(args: SteadyArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .build()?;
    let url = format!(
        "{}/applications/{}/chats/1/messages",
        args.api_url.trim_end_matches('/'),
        args.token
    );
    let count = (args.rate * args.seconds as f64) as usize;
    let run = fixed_rate(&client, vec![url; count], args.rate).await?;
    println!(
        "steady rate={:.0} requests={} errors={} p50_ms={:.2} p99_ms={:.2}",
        args.rate,
        run.requests,
        run.errors,
        run.percentile(0.50),
        run.percentile(0.99),
    );
    Ok(())
}
