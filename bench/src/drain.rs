//! The workers' drain rate: a backlog of `jobs` message jobs (for chats
//! already stored) is queued first under a private queue prefix; then
//! `workers` worker processes start and the clock runs until the
//! chat-system holds every message.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::ensure;
use futures::StreamExt;
use lapin::Channel;
use lapin::options::ConfirmSelectOptions;
use shared::amqp::connection::connect;
use shared::amqp::publish::{self, Message};
use shared::amqp::topology::{self, Topology};
use shared::job::Job;
use tokio::process::{Child, Command};

use crate::client::ChatSystem;
use crate::servers::{PUBLISH_TIMEOUT, Servers};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The worker binary.
    #[arg(long, default_value = "target/release/worker")]
    worker: PathBuf,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[arg(long, default_value_t = 100_000)]
    jobs: i64,
    #[arg(long, default_value_t = 64)]
    chats: i64,
    #[arg(long, env = "CHAT_SYSTEM_URL", default_value = "http://127.0.0.1:3000")]
    chat_system_url: String,
    #[command(flatten)]
    servers: Servers,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (prefix, topology) = args.servers.private("drain");
    let connection = connect(&args.servers.amqp_url, "bench-drain").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    topology.declare(&channel, &[]).await?;

    let chat_system = ChatSystem::new(&args.chat_system_url)?;
    let token = chat_system.application("bench-drain").await?;
    chat_system.chats(&token, args.chats).await?;
    let loading = Instant::now();
    backlog(&channel, &topology, &token, args.jobs, args.chats).await?;
    eprintln!(
        "drain: {} jobs queued in {:.1}s",
        args.jobs,
        loading.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        workers.push(spawn_worker(&args, &prefix)?);
    }
    let drained = wait_until_stored(&chat_system, &channel, &topology, &token, &args).await;
    let seconds = started.elapsed().as_secs_f64();
    for worker in &mut workers {
        stop(worker).await;
    }
    let _ = connection.close(200, "done".into()).await;
    args.servers.cleanup(&prefix).await?;
    drained?;
    println!(
        "drain workers={} jobs={} seconds={seconds:.2} jobs_per_sec={:.0}",
        args.workers,
        args.jobs,
        args.jobs as f64 / seconds
    );
    Ok(())
}

/// Publishes the jobs, many confirms in flight at once.
async fn backlog(
    channel: &Channel,
    topology: &Topology,
    token: &str,
    jobs: i64,
    chats: i64,
) -> anyhow::Result<()> {
    let exchange = topology.jobs_exchange();
    let publishes = futures::stream::iter(0..jobs)
        .map(|index| {
            let (chat, number) = (index % chats + 1, index / chats + 1);
            let job = Job::message(
                token.to_owned(),
                chat,
                number,
                format!("message {number}, ok"),
            );
            let message = Message {
                exchange: exchange.clone(),
                routing_key: topology::ROUTING_KEY.into(),
                payload: job.encode(),
                properties: publish::job_properties(&job),
            };
            publish::publish(channel, message, PUBLISH_TIMEOUT)
        })
        .buffer_unordered(512);
    futures::pin_mut!(publishes);
    while let Some(published) = publishes.next().await {
        published?;
    }
    Ok(())
}

fn spawn_worker(args: &Args, prefix: &str) -> anyhow::Result<Child> {
    Ok(Command::new(&args.worker)
        .env("QUEUE_PREFIX", prefix)
        .env("REDIS_PREFIX", prefix)
        .env(
            "QUEUE_TYPE",
            format!("{:?}", args.servers.queue_type).to_lowercase(),
        )
        .env("AMQP_URL", &args.servers.amqp_url)
        .env("REDIS_URL", &args.servers.redis_url)
        .env("CHAT_SYSTEM_URL", &args.chat_system_url)
        .env("WORKER_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?)
}

/// Polls the queue until it is empty, then the chat-system until every
/// message is there; gives up after ten minutes.
async fn wait_until_stored(
    chat_system: &ChatSystem,
    channel: &Channel,
    topology: &Topology,
    token: &str,
    args: &Args,
) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(600);
    loop {
        ensure!(
            Instant::now() < give_up,
            "the backlog was not drained in ten minutes"
        );
        if topology::depth(channel, &topology.jobs_queue()).await?.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        ensure!(
            Instant::now() < give_up,
            "the backlog was not stored in ten minutes"
        );
        let mut stored = 0;
        for chat in 1..=args.chats {
            stored += chat_system.messages_count(token, chat).await?;
        }
        if stored >= args.jobs {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(worker: &mut Child) {
    if let Some(pid) = worker.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .is_err()
    {
        let _ = worker.kill().await;
    }
}
