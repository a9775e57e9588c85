//! Redis draw + confirmed RabbitMQ publish, no HTTP, `concurrency` loops
//! at once for `seconds`: the ceiling the api is measured against.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use redis::Script;
use shared::amqp::connection::connect;
use shared::amqp::publish::{self, Message};
use shared::amqp::topology;
use shared::counters::{DRAW, Drawn, Keys, Scope};
use shared::job::Job;
use shared::redis_client::RedisClient;

use crate::servers::{PUBLISH_TIMEOUT, Servers};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    channels: usize,
    #[command(flatten)]
    servers: Servers,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (prefix, topology) = args.servers.private("ceiling");
    let connection = connect(&args.servers.amqp_url, "bench-ceiling").await?;
    let mut channels = Vec::new();
    for _ in 0..args.channels.max(1) {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    topology.declare(&channels[0], &[]).await?;

    let redis = args.servers.redis()?;
    let keys = Keys::new(&prefix);
    let token = "ceiling";
    let scope = Scope::Chats { token };
    let _: () = redis::cmd("SET")
        .arg(keys.counter(scope))
        .arg(0)
        .query_async(&mut redis.clone())
        .await?;

    let script = Arc::new(Script::new(DRAW));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let exchange = topology.jobs_exchange();
    let mut tasks = Vec::new();
    for index in 0..args.concurrency {
        let (mut redis, keys, script, exchange) = (
            redis.clone(),
            keys.clone(),
            script.clone(),
            exchange.clone(),
        );
        let channel = channels[index % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let number = draw(&script, &mut redis, &keys, scope).await?;
                let job = Job::chat(token.to_owned(), number);
                let message = Message {
                    exchange: exchange.clone(),
                    routing_key: topology::ROUTING_KEY.into(),
                    payload: job.encode(),
                    properties: publish::job_properties(&job),
                };
                publish::publish(&channel, message, PUBLISH_TIMEOUT).await?;
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "ceiling ops={} ops_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(0.50).as_secs_f64() * 1000.0,
        percentile(0.99).as_secs_f64() * 1000.0,
        percentile(0.999).as_secs_f64() * 1000.0,
    );

    let _ = connection.close(200, "done".into()).await;
    args.servers.cleanup(&prefix).await?;
    Ok(())
}

/// One run of the api's draw script on a seeded counter, as the bench's
/// own loops make it (no seed lock to take; its receipt, as the api's
/// draws leave one): the number drawn.
pub(crate) async fn draw(
    script: &Script,
    redis: &mut RedisClient,
    keys: &Keys,
    scope: Scope<'_>,
) -> anyhow::Result<i64> {
    let receipts = keys.receipts(scope, shared::amqp::headers::now_ms() / 1000);
    let call = keys.draw(scope, "lock", Duration::from_secs(5), &receipts);
    let reply: i64 = script
        .key(call.keys)
        .arg(call.args)
        .invoke_async(redis)
        .await?;
    match Drawn::from_reply(reply) {
        Some(Drawn::Number(number)) => Ok(number),
        _ => anyhow::bail!("the draw script answered {reply}"),
    }
}
