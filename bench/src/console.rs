//! The dead-letter console with many letters: `letters` dead letters (of
//! 64 applications, two reasons, four errors) are queued under a private
//! prefix, a console is started in this process, and an admin's session
//! times its first page, a filter over every letter, and "replay every
//! letter the filter matches" (an empty filter: all of them), which must
//! leave the dead-letter queue empty and every job in the jobs queue.

use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Parser;
use lapin::options::ConfirmSelectOptions;
use serde_json::{Value, json};
use shared::amqp::connection::connect;
use shared::amqp::headers;
use shared::amqp::publish::{self, Message};
use shared::amqp::topology::{ROUTING_KEY, depth};
use shared::job::Job;

use crate::servers::{PUBLISH_TIMEOUT, Servers};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[arg(long, default_value_t = 50_000)]
    letters: usize,
    #[command(flatten)]
    servers: Servers,
}

const ERRORS: [&str; 4] = [
    "chat-system answered 503",
    "timed out after 5000 ms",
    "chat-system unreachable: connection refused",
    "chat 1 exists with another body",
];

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (prefix, topology) = args.servers.private("console");
    let outcome = measure(&args, &prefix, &topology).await;
    args.servers.cleanup(&prefix).await?;
    let line = outcome?;
    println!("{line}");
    Ok(())
}

async fn measure(
    args: &Args,
    prefix: &str,
    topology: &shared::amqp::topology::Topology,
) -> anyhow::Result<String> {
    let connection = connect(&args.servers.amqp_url, "bench-console").await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel, &[]).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let now = headers::now_ms();
    let letters: Vec<(Job, usize)> = (0..args.letters)
        .map(|index| {
            let token = format!("bench-console-application-{:02}", index % 64);
            let job = Job::message(token, 1, index as i64 + 1, format!("letter {index}"));
            (job, index)
        })
        .collect();
    for chunk in letters.chunks(2000) {
        let published = futures::future::join_all(chunk.iter().map(|(job, index)| {
            let reason = if index % 5 == 4 {
                "conflict"
            } else {
                "exhausted"
            };
            let properties = headers::dead(
                publish::job_properties(job),
                reason,
                10,
                ERRORS[index % ERRORS.len()],
                now - (*index as u64) * 10,
            );
            publish::publish(
                &channel,
                Message {
                    exchange: topology.dead_exchange(),
                    routing_key: ROUTING_KEY.into(),
                    payload: job.encode(),
                    properties,
                },
                PUBLISH_TIMEOUT,
            )
        }))
        .await;
        for result in published {
            result?;
        }
    }
    let password = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let config = worker::Cli::parse_from([
        "worker",
        "--amqp-url",
        &args.servers.amqp_url,
        "--queue-prefix",
        prefix,
    ])
    .config;
    let Some(worker::Command::Console(console)) = worker::Cli::parse_from([
        "worker",
        "console",
        "--console-addr",
        "127.0.0.1:0",
        "--admin-password",
        &password,
    ])
    .command
    else {
        anyhow::bail!("not the console command");
    };
    let console = worker::console::Console::build(config, console).await?;
    let url = format!("http://{}", console.address());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(console.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(300))
        .build()?;
    let login = http
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user=admin&password={password}"))
        .send()
        .await?;
    ensure!(login.status() == 303, "login: {}", login.status());
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_owned();
    let get = |path: String| {
        let request = http.get(format!("{url}{path}")).header("cookie", &cookie);
        async move {
            anyhow::Ok(
                request
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<Value>()
                    .await?,
            )
        }
    };
    let csrf = get("/api/session".into()).await?["csrf"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let started = Instant::now();
    let first = get("/api/letters?fresh=1".into()).await?;
    let first_page = started.elapsed();
    ensure!(
        first["letters"] == args.letters,
        "the first page counted {} letters of {}",
        first["letters"],
        args.letters
    );
    let started = Instant::now();
    let filtered = get("/api/letters?fresh=1&error=timed%20out&reason=exhausted".into()).await?;
    let filter = started.elapsed();
    let started = Instant::now();
    let answer = http
        .post(format!("{url}/api/replay"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"filter": {}}))
        .send()
        .await?;
    let status = answer.status();
    let replayed: Value = answer.json().await?;
    ensure!(status.is_success(), "replay all: {status} {replayed}");
    let replay_all = started.elapsed();
    let _ = stop.send(());
    serving.await??;

    let dead = depth(&channel, &topology.dead_queue()).await?.0;
    let jobs = depth(&channel, &topology.jobs_queue()).await?.0;
    ensure!(
        replayed["moved"] == args.letters && dead == 0 && jobs as usize == args.letters,
        "replay all: {replayed}, {dead} letters left, {jobs} jobs queued"
    );
    let _ = connection.close(200, "done".into()).await;
    Ok(format!(
        "console letters={} first_page_ms={} first_consume_ms={} filter_ms={} filter_matched={} replay_all_ms={} replayed={}",
        args.letters,
        first_page.as_millis(),
        first["consume_ms"],
        filter.as_millis(),
        filtered["total"],
        replay_all.as_millis(),
        replayed["moved"],
    ))
}
