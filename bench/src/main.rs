//! Benchmark helpers for `scripts/bench`. HTTP load comes from wrk; this
//! binary measures what wrk cannot:
//!
//! - `ceiling`: the raw cost of what a create does, without HTTP: the same
//!   Redis draw script and a confirmed, persistent, mandatory publish to
//!   the same kind of queue, at the same concurrency. The api is held to a
//!   share of this number.

mod ceiling;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Ceiling(ceiling::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ceiling(args) => ceiling::run(args).await,
    }
}
