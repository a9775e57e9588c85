//! The floor of each stage a record passes: what Redis, RabbitMQ and
//! PostgreSQL spend on the work a record needs from them, with nothing of
//! ours around it, as server CPU per record (from `/proc`), so that
//! `scripts/bench` can set each stage's cost in the end-to-end run beside
//! its floor.
//!
//! - `redis`: the draw script, `concurrency` calls in flight over one
//!   multiplexed connection (the api's shape), then the release script in
//!   pipelines of `batch` records, one call per scope (the worker's shape).
//! - `rabbitmq`: batch messages of `batch` jobs published persistent,
//!   mandatory and confirmed on `publishers` channels, and consumed from
//!   the same quorum queue with manual acks, `multiple` every `ack_every`.
//! - `postgres`: the bulk insert of messages on the real schema (search
//!   vector, GIN index, unique key), `batch` rows per committed
//!   transaction, `concurrency` transactions at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use redis::Script;
use shared::counters::{DRAW, Drawn, Keys, RELEASE, Release, Scope};
use shared::job::Job;
use shared::publish;
use shared::topology;

use crate::cpu::Processes;
use crate::servers::{PUBLISH_TIMEOUT, Servers};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    stage: Stage,
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
    Redis {
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 64)]
        applications: usize,
        #[arg(long, default_value_t = 4)]
        chats: i64,
        #[command(flatten)]
        servers: Servers,
    },
    Rabbitmq {
        #[arg(long, default_value_t = 2)]
        publishers: usize,
        #[arg(long, default_value_t = 256)]
        prefetch: u16,
        #[arg(long, default_value_t = 64)]
        ack_every: usize,
        #[command(flatten)]
        servers: Servers,
    },
    Postgres {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
    },
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let processes = Processes::new(&args.processes)?;
    let deadline = Duration::from_secs(args.seconds);
    match args.stage {
        Stage::Redis {
            concurrency,
            applications,
            chats,
            servers,
        } => {
            redis(
                &servers,
                &processes,
                deadline,
                args.batch,
                concurrency,
                applications,
                chats,
            )
            .await
        }
        Stage::Rabbitmq {
            publishers,
            prefetch,
            ack_every,
            servers,
        } => {
            rabbitmq(
                &servers, &processes, deadline, args.batch, publishers, prefetch, ack_every,
            )
            .await
        }
        Stage::Postgres {
            database_url,
            concurrency,
        } => postgres(&database_url, &processes, deadline, args.batch, concurrency).await,
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

async fn redis(
    servers: &Servers,
    processes: &Processes,
    duration: Duration,
    batch: usize,
    concurrency: usize,
    applications: usize,
    chats: i64,
) -> anyhow::Result<()> {
    let (prefix, _) = servers.private("floor");
    let redis = servers.redis()?;
    let keys = Keys::new(&prefix);
    let tokens: Vec<String> = (0..applications.max(1))
        .map(|n| format!("floor{n}"))
        .collect();
    let scopes: Vec<(String, i64)> = tokens
        .iter()
        .flat_map(|token| (1..=chats.max(1)).map(move |chat| (token.clone(), chat)))
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

    // Draws: each loop takes the next scope in turn, as wrk's connections do.
    let drawn = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (draw_us, draws) = measured(processes, "redis", async {
        let ends = Instant::now() + duration;
        let mut tasks = Vec::new();
        for index in 0..concurrency.max(1) {
            let (mut redis, keys, draw, scopes, drawn) = (
                redis.clone(),
                keys.clone(),
                draw.clone(),
                scopes.clone(),
                drawn.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut next = index;
                let mut mine = Vec::new();
                while Instant::now() < ends {
                    let drawn_from = next % scopes.len();
                    next += concurrency;
                    let (token, chat) = &scopes[drawn_from];
                    let scope = Scope::Messages { token, chat: *chat };
                    let call = keys.draw(scope, "lock", Duration::from_secs(5), false);
                    let reply: i64 = draw
                        .key(call.keys)
                        .arg(call.args)
                        .invoke_async(&mut redis)
                        .await?;
                    let Some(Drawn::Number(number)) = Drawn::from_reply(reply) else {
                        anyhow::bail!("the draw script answered {reply}");
                    };
                    mine.push((drawn_from, number));
                }
                drawn.lock().expect("not poisoned").extend(mine);
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(drawn.lock().expect("not poisoned").len())
    })
    .await?;

    // Releases: the drawn numbers in batches, one call per scope of a
    // batch, a pipeline per batch (per slot on a cluster), two at once.
    let drawn = std::mem::take(&mut *drawn.lock().expect("not poisoned"));
    let release = Script::new(RELEASE);
    let _: String = release
        .prepare_invoke()
        .load_async(&mut redis.clone())
        .await?;
    let (release_us, released) = measured(processes, "redis", async {
        let pipelines = drawn.chunks(batch.max(1)).map(|chunk| {
            let mut by_scope: std::collections::BTreeMap<usize, Vec<i64>> = Default::default();
            for &(scope, number) in chunk {
                by_scope.entry(scope).or_default().push(number);
            }
            let mut groups: std::collections::HashMap<_, redis::Pipeline> = Default::default();
            for (scope, numbers) in by_scope {
                let (token, chat) = &scopes[scope];
                let call = keys.release(
                    Scope::Messages { token, chat: *chat },
                    &numbers,
                    Duration::from_secs(60),
                    Release::Stored,
                );
                let pipeline = groups
                    .entry(redis.pipeline_of(&call.keys[0]))
                    .or_insert_with(redis::pipe);
                let mut invocation = release.key(call.keys);
                invocation.arg(call.args);
                pipeline.invoke_script(&invocation).ignore();
            }
            (groups.into_values().collect::<Vec<_>>(), chunk.len())
        });
        let mut sent = futures::stream::iter(pipelines)
            .map(|(groups, records)| {
                let mut redis = redis.clone();
                async move {
                    for pipeline in groups {
                        let () = pipeline.query_async(&mut redis).await?;
                    }
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
    servers.cleanup(&prefix).await
}

async fn rabbitmq(
    servers: &Servers,
    processes: &Processes,
    duration: Duration,
    batch: usize,
    publishers: usize,
    prefetch: u16,
    ack_every: usize,
) -> anyhow::Result<()> {
    let (prefix, topology) = servers.private("floor");
    let connection = topology::connect(&servers.amqp_url, "bench-floor").await?;
    let setup = connection.create_channel().await?;
    topology.declare(&setup).await?;
    let job = Job::message("floor".into(), 1, 1, "hello, world \"bench\" / ü".into());
    let (payload, properties) = (job.encode(), publish::job_properties(&job));
    let jobs: Vec<(&[u8], &lapin::BasicProperties)> = (0..batch.max(1))
        .map(|_| (&payload[..], &properties))
        .collect();
    let message = publish::jobs_message(topology.jobs_exchange(), &jobs);
    let per_message = jobs.len();

    let consumed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            topology.jobs_queue().as_str().into(),
            "floor".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    let counting = consumed.clone();
    let consuming = tokio::spawn(async move {
        let mut unacked = 0;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            unacked += 1;
            counting.fetch_add(per_message, std::sync::atomic::Ordering::Relaxed);
            if unacked >= ack_every.max(1) {
                delivery
                    .acker
                    .ack(BasicAckOptions { multiple: true })
                    .await?;
                unacked = 0;
            }
        }
        anyhow::Ok(())
    });

    let (cpu_us, published) = measured(processes, "rabbitmq", async {
        let ends = Instant::now() + duration;
        let mut tasks = Vec::new();
        for _ in 0..publishers.max(1) {
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
        while consumed.load(std::sync::atomic::Ordering::Relaxed) < published {
            ensure!(
                waiting.elapsed() < Duration::from_secs(120),
                "the consumer did not keep up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(published)
    })
    .await?;
    consuming.abort();
    let _ = connection.close(200, "done".into()).await;
    println!(
        "floor stage=rabbitmq jobs={published} jobs_per_message={per_message} cpu_us={cpu_us:.1}"
    );
    servers.cleanup(&prefix).await
}

async fn postgres(
    database_url: &str,
    processes: &Processes,
    duration: Duration,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(concurrency.max(1) as u32)
        .connect(database_url)
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
    // As many chats as writers, so that they do not wait on each other's
    // unique keys.
    let chat_ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO chats (application_id, number) SELECT $1, n FROM generate_series(1, $2) n RETURNING id",
    )
    .bind(application)
    .bind(concurrency.max(1) as i64)
    .fetch_all(&pool)
    .await?;

    let (cpu_us, rows) = measured(processes, "postgres", async {
        let ends = Instant::now() + duration;
        let mut tasks = Vec::new();
        for chat_id in chat_ids.iter().copied() {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut next = 1_i64;
                let mut rows = 0;
                while Instant::now() < ends {
                    let count = batch.max(1) as i64;
                    let numbers: Vec<i64> = (next..next + count).collect();
                    let chats = vec![chat_id; numbers.len()];
                    let bodies = vec!["hello, world \"bench\" / ü"; numbers.len()];
                    next += count;
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
    sqlx::query("DELETE FROM applications WHERE id = $1")
        .bind(application)
        .execute(&pool)
        .await?;
    println!("floor stage=postgres rows={rows} rows_per_write={batch} cpu_us={cpu_us:.1}");
    Ok(())
}
