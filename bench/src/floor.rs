//! The floor of each stage a record passes: what Redis, RabbitMQ and
//! PostgreSQL spend on the work a record needs from them, with nothing of
//! ours around it, as server CPU per record (from `/proc`), so that
//! `scripts/bench` can set each stage's cost in the end-to-end run beside
//! its floor.
//!
//! - `redis`: the draw script, `concurrency` calls in flight over one
//!   multiplexed connection, then the releases of `batch` records at a
//!   time in one call per slot, an entry per scope (the worker's shape).
//! - `rabbitmq`: batch messages of `batch` jobs published persistent,
//!   mandatory and confirmed on `publishers` channels, and consumed from
//!   the same quorum queue with manual acks, `multiple` every `ack_every`.
//! - `postgres`: the bulk insert of messages on the real schema (search
//!   vector, GIN index, unique key), `batch` rows per committed
//!   transaction, `concurrency` transactions at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use redis::Script;
use shared::amqp::batch::jobs_message;
use shared::amqp::connection::connect;
use shared::amqp::{publish, topology};
use shared::counters::{self, DRAW, Keys, RELEASE_MANY, Release, Scope};
use shared::job::Job;

use crate::cpu::Processes;
use crate::servers::{PUBLISH_TIMEOUT, Servers};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    stage: Stage,
    #[command(flatten)]
    run: Run,
}

/// What every stage's run takes.
#[derive(clap::Args)]
struct Run {
    #[arg(long, global = true, default_value_t = 10)]
    seconds: u64,
    /// Records per release pipeline, per message, or per insert.
    #[arg(long, global = true, default_value_t = 64)]
    batch: usize,
    /// `name=pid` of the servers whose CPU counts (Redis: each node);
    /// PostgreSQL and RabbitMQ are found by name.
    #[arg(long = "process", global = true)]
    processes: Vec<String>,
}

#[derive(clap::Subcommand)]
enum Stage {
    Redis(RedisArgs),
    Rabbitmq(RabbitmqArgs),
    Postgres(PostgresArgs),
}

#[derive(clap::Args)]
struct RedisArgs {
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 64)]
    applications: usize,
    #[arg(long, default_value_t = 4)]
    chats: i64,
    #[command(flatten)]
    servers: Servers,
}

#[derive(clap::Args)]
struct RabbitmqArgs {
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    #[arg(long, default_value_t = 256)]
    prefetch: u16,
    #[arg(long, default_value_t = 64)]
    ack_every: usize,
    #[command(flatten)]
    servers: Servers,
}

#[derive(clap::Args)]
struct PostgresArgs {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
}

/// The message body of every floor, the bench's own.
const BODY: &str = "hello, world \"bench\" / ü";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let processes = Processes::new(&args.run.processes)?;
    let run = (&args.run, &processes);
    match args.stage {
        Stage::Redis(stage) => redis(run, stage).await,
        Stage::Rabbitmq(stage) => rabbitmq(run, stage).await,
        Stage::Postgres(stage) => postgres(run, stage).await,
    }
}

/// The CPU µs that the processes named `server` spent per record while
/// `work` ran, and what `work` returned (the records it handled).
async fn measured<F>(processes: &Processes, server: &str, work: F) -> anyhow::Result<(f64, usize)>
where
    F: std::future::Future<Output = anyhow::Result<usize>>,
{
    let before = processes.cpu()?;
    let records = work.await?;
    let spent = processes.cpu()?.minus(&before);
    let spent = spent
        .get(server)
        .with_context(|| format!("no {server} process was measured"))?;
    ensure!(records > 0, "no record went through {server}");
    Ok((spent.as_secs_f64() * 1e6 / records as f64, records))
}

async fn redis((run, processes): (&Run, &Processes), stage: RedisArgs) -> anyhow::Result<()> {
    let (prefix, _) = stage.servers.private("floor");
    let outcome = redis_floor(run, processes, &stage, &prefix).await;
    // Its keys go whatever happened.
    let cleaned = stage.servers.cleanup(&prefix).await;
    outcome?;
    cleaned
}

async fn redis_floor(
    run: &Run,
    processes: &Processes,
    stage: &RedisArgs,
    prefix: &str,
) -> anyhow::Result<()> {
    let redis = stage.servers.redis()?;
    let keys = Keys::new(prefix);
    let concurrency = stage.concurrency.max(1);
    let scopes: Vec<(String, i64)> = (0..stage.applications.max(1))
        .flat_map(|n| (1..=stage.chats.max(1)).map(move |chat| (format!("floor{n}"), chat)))
        .collect();
    for (token, chat) in &scopes {
        let scope = Scope::Messages { token, chat: *chat };
        let _: () = redis::cmd("SET")
            .arg(keys.counter(scope))
            .arg(0)
            .query_async(&mut redis.clone())
            .await?;
    }
    let draw = Arc::new(Script::new(DRAW));
    let scopes = Arc::new(scopes);

    // Draws: each loop takes the next scope in turn, as wrk's connections
    // do; each number is kept with the index of its scope.
    let duration = Duration::from_secs(run.seconds);
    let mut drawn: Vec<(usize, i64)> = Vec::new();
    let (draw_us, draws) = measured(processes, "redis", async {
        let ends = Instant::now() + duration;
        let mut tasks = Vec::new();
        for index in 0..concurrency {
            let (mut redis, keys, draw, scopes) =
                (redis.clone(), keys.clone(), draw.clone(), scopes.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut next = index;
                while Instant::now() < ends {
                    let drawn_from = next % scopes.len();
                    next += concurrency;
                    let (token, chat) = &scopes[drawn_from];
                    let scope = Scope::Messages { token, chat: *chat };
                    let number = crate::ceiling::draw(&draw, &mut redis, &keys, scope).await?;
                    mine.push((drawn_from, number));
                }
                anyhow::Ok(mine)
            }));
        }
        for task in tasks {
            drawn.extend(task.await??);
        }
        Ok(drawn.len())
    })
    .await?;

    // Releases as the worker sends them: the drawn numbers in batches, an
    // entry per scope of a batch in one call per slot (one on a single
    // node), a batch's calls at once, two batches at a time.
    let release = Script::new(RELEASE_MANY);
    let _: String = release
        .prepare_invoke()
        .load_async(&mut redis.clone())
        .await?;
    let batches = drawn.chunks(run.batch.max(1)).map(|batch| {
        let mut by_scope: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        for &(scope, number) in batch {
            by_scope.entry(scope).or_default().push(number);
        }
        let mut groups: HashMap<_, redis::ScriptInvocation<'_>> = HashMap::new();
        for (scope, numbers) in by_scope {
            let (token, chat) = &scopes[scope];
            let call = keys.release(
                Scope::Messages { token, chat: *chat },
                &numbers,
                Duration::from_secs(60),
                Release::Stored,
            );
            let invocation = groups
                .entry(redis.pipeline_of(&call.keys[0]))
                .or_insert_with(|| release.prepare_invoke());
            counters::add_entry(invocation, &call.keys, &call.args);
        }
        (groups.into_values().collect::<Vec<_>>(), batch.len())
    });
    let (release_us, released) = measured(processes, "redis", async {
        let mut sent = futures::stream::iter(batches)
            .map(|(groups, records)| {
                let redis = redis.clone();
                async move {
                    futures::future::try_join_all(groups.iter().map(|invocation| {
                        let mut redis = redis.clone();
                        async move { invocation.invoke_async::<()>(&mut redis).await }
                    }))
                    .await?;
                    anyhow::Ok(records)
                }
            })
            .buffer_unordered(2);
        let mut released = 0;
        while let Some(records) = sent.next().await {
            released += records?;
        }
        Ok(released)
    })
    .await?;
    // The releases did the real work: nothing of the floor is in flight.
    for (token, chat) in scopes.iter() {
        let left: i64 = redis::cmd("SCARD")
            .arg(keys.in_flight(Scope::Messages { token, chat: *chat }))
            .query_async(&mut redis.clone())
            .await?;
        ensure!(
            left == 0,
            "{left} numbers of {token}/{chat} are still in flight"
        );
    }
    println!(
        "floor stage=redis draws={draws} draw_cpu_us={draw_us:.1} released={released} \
         release_cpu_us={release_us:.1} cpu_us={:.1}",
        draw_us + release_us
    );
    Ok(())
}

async fn rabbitmq((run, processes): (&Run, &Processes), stage: RabbitmqArgs) -> anyhow::Result<()> {
    let (prefix, topology) = stage.servers.private("floor");
    let outcome = rabbitmq_floor(run, processes, &stage, &topology).await;
    // Its queues and exchanges go whatever happened.
    let cleaned = stage.servers.cleanup(&prefix).await;
    outcome?;
    cleaned
}

async fn rabbitmq_floor(
    run: &Run,
    processes: &Processes,
    stage: &RabbitmqArgs,
    topology: &topology::Topology,
) -> anyhow::Result<()> {
    let connection = connect(&stage.servers.amqp_url, "bench-floor").await?;
    topology
        .declare(&connection.create_channel().await?, &[])
        .await?;
    let job = Job::message("floor".into(), 1, 1, BODY.into());
    let (payload, properties) = (job.encode(), publish::job_properties(&job));
    let jobs: Vec<(&[u8], &lapin::BasicProperties)> = (0..run.batch.max(1))
        .map(|_| (&payload[..], &properties))
        .collect();
    let message = jobs_message(topology.jobs_exchange(), &jobs);
    let per_message = jobs.len();

    let consumed = Arc::new(AtomicUsize::new(0));
    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(stage.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            topology.jobs_queue().as_str().into(),
            "floor".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    let (counting, ack_every) = (consumed.clone(), stage.ack_every.max(1));
    let mut consuming = tokio::spawn(async move {
        let mut unacked = 0;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            unacked += 1;
            counting.fetch_add(per_message, Ordering::Relaxed);
            if unacked >= ack_every {
                delivery
                    .acker
                    .ack(BasicAckOptions { multiple: true })
                    .await?;
                unacked = 0;
            }
        }
        anyhow::Ok(())
    });

    let duration = Duration::from_secs(run.seconds);
    let measuring = measured(processes, "rabbitmq", async {
        let ends = Instant::now() + duration;
        let mut tasks = Vec::new();
        for _ in 0..stage.publishers.max(1) {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let message = message.clone();
            tasks.push(tokio::spawn(async move {
                let mut jobs = 0;
                while Instant::now() < ends {
                    publish::publish(&channel, message.clone(), PUBLISH_TIMEOUT).await?;
                    jobs += per_message;
                }
                anyhow::Ok(jobs)
            }));
        }
        let mut published = 0;
        for task in tasks {
            published += task.await??;
        }
        // Consumed and acked too: the floor is a job's whole way through.
        let waiting = Instant::now();
        while consumed.load(Ordering::Relaxed) < published {
            ensure!(
                waiting.elapsed() < Duration::from_secs(120),
                "the consumer did not keep up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(published)
    });
    // A consumer that fails ends the run with its error.
    let (cpu_us, published) = tokio::select! {
        measured = measuring => measured?,
        ended = &mut consuming => {
            ended??;
            anyhow::bail!("the consumer stopped before every job was consumed")
        }
    };
    consuming.abort();
    let _ = connection.close(200, "done".into()).await;
    println!(
        "floor stage=rabbitmq jobs={published} jobs_per_message={per_message} cpu_us={cpu_us:.1}"
    );
    Ok(())
}

async fn postgres((run, processes): (&Run, &Processes), stage: PostgresArgs) -> anyhow::Result<()> {
    let concurrency = stage.concurrency.max(1);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(concurrency as u32)
        .connect(&stage.database_url)
        .await
        .context("connecting to the bench's database")?;
    let token = format!("floor_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let application: i64 = sqlx::query_scalar(
        "INSERT INTO applications (token, name) VALUES ($1, 'floor') RETURNING id",
    )
    .bind(&token)
    .fetch_one(&pool)
    .await
    .context("the chat-system's schema is not there")?;
    let outcome = postgres_floor(run, processes, &pool, application, concurrency).await;
    // Its rows go whatever happened (chats and messages cascade).
    let cleaned = sqlx::query("DELETE FROM applications WHERE id = $1")
        .bind(application)
        .execute(&pool)
        .await;
    outcome?;
    cleaned?;
    Ok(())
}

async fn postgres_floor(
    run: &Run,
    processes: &Processes,
    pool: &sqlx::PgPool,
    application: i64,
    concurrency: usize,
) -> anyhow::Result<()> {
    // As many chats as writers, so that they do not wait on each other's
    // unique keys.
    let chat_ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO chats (application_id, number) SELECT $1, n FROM generate_series(1, $2) n RETURNING id",
    )
    .bind(application)
    .bind(concurrency as i64)
    .fetch_all(pool)
    .await?;
    let (duration, batch) = (Duration::from_secs(run.seconds), run.batch.max(1));
    let (cpu_us, rows) = measured(processes, "postgres", async {
        let ends = Instant::now() + duration;
        let mut tasks = Vec::new();
        for chat_id in chat_ids {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let (chats, bodies) = (vec![chat_id; batch], vec![BODY; batch]);
                let mut rows = 0;
                let mut next = 1_i64;
                while Instant::now() < ends {
                    let numbers: Vec<i64> = (next..next + batch as i64).collect();
                    next += batch as i64;
                    let mut transaction = pool.begin().await?;
                    let inserted = sqlx::query(
                        "INSERT INTO messages (chat_id, number, body)
                         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])
                         ON CONFLICT (chat_id, number) DO NOTHING",
                    )
                    .bind(&chats)
                    .bind(&numbers)
                    .bind(&bodies)
                    .execute(&mut *transaction)
                    .await?;
                    transaction.commit().await?;
                    rows += inserted.rows_affected() as usize;
                }
                anyhow::Ok(rows)
            }));
        }
        let mut rows = 0;
        for task in tasks {
            rows += task.await??;
        }
        Ok(rows)
    })
    .await?;
    println!("floor stage=postgres rows={rows} rows_per_write={batch} cpu_us={cpu_us:.1}");
    Ok(())
}
