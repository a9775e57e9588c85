//! The chat-system's own write capacity: `jobs` message `PUT`s,
//! `concurrency` at once, spread over `chats` chats of one application:
//! the very requests the workers make, without the queue. The worker's
//! drain rate is held to a share of this.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use crate::client::ChatSystem;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[arg(long, env = "CHAT_SYSTEM_URL", default_value = "http://127.0.0.1:3000")]
    chat_system_url: String,
    #[arg(long, default_value_t = 100_000)]
    jobs: i64,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 64)]
    chats: i64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let chat_system = ChatSystem::new(&args.chat_system_url)?;
    let token = chat_system.application("bench-writes").await?;
    chat_system.chats(&token, args.chats).await?;
    let next = Arc::new(AtomicI64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (chat_system, token, next) = (chat_system.clone(), token.clone(), next.clone());
        let (jobs, chats) = (args.jobs, args.chats);
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= jobs {
                    return anyhow::Ok(());
                }
                let (chat, number) = (index % chats + 1, index / chats + 1);
                chat_system
                    .message(&token, chat, number, &format!("message {number}, ok"))
                    .await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "writes jobs={} concurrency={} seconds={seconds:.2} jobs_per_sec={:.0}",
        args.jobs,
        args.concurrency,
        args.jobs as f64 / seconds
    );
    Ok(())
}
