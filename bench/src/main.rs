//! Load tools for `scripts/bench` and `scripts/chaos`. HTTP load on the
//! api comes from wrk; this binary measures what wrk cannot:
//!
//! - `ceiling`: the raw cost of what a create does, without HTTP: the same
//!   Redis draw script and a confirmed, persistent, mandatory publish to
//!   the same kind of queue, at the same concurrency. The api is held to a
//!   share of this number.
//! - `writes`: the chat-system's own write capacity for the requests the
//!   workers make.
//! - `drain`: how fast N worker processes empty a queued backlog.
//! - `console`: the dead-letter console with a full dead-letter queue:
//!   its first page, a filter over every letter, and replaying them all.
//! - `e2e`: the whole system under one load (wrk, then a fixed rate):
//!   intake and stored rates, backlog, answer-to-stored latency, CPU per
//!   stored record by process.
//! - `steady`: one application's fixed rate of creates, timed, for the
//!   noisy-neighbour rows.
//! - `load` / `verify`: drive the api under a fault, then check that every
//!   acknowledged record was stored exactly once with its exact body, and
//!   that nothing is left in flight or in a retry queue.
//! - `http-floor`: a constant JSON answer on the api's server stack, the
//!   HTTP stage's floor.
//! - `floor redis|rabbitmq|postgres`: the server CPU per record of what a
//!   record needs from each, with nothing of ours around it.
//! - `rounds setup|draw|release`: the draw and release script calls of the
//!   api and the worker, one at a time, for counting Redis's instructions
//!   per record under callgrind.
//! - `otlp-sink`: an OTLP/HTTP receiver that counts what it gets, for the
//!   api run with spans exported.
//! - `cleanup`: removes a run's queues and Redis keys.

mod ceiling;
mod chaos;
mod client;
mod console;
mod cpu;
mod drain;
mod e2e;
mod floor;
mod http_floor;
mod leftovers;
mod otlp_sink;
mod rounds;
mod serve;
mod servers;
mod writes;

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
    Writes(writes::Args),
    Console(console::Args),
    Drain(drain::Args),
    E2e(e2e::Args),
    Steady(e2e::SteadyArgs),
    Load(chaos::LoadArgs),
    Verify(chaos::VerifyArgs),
    Floor(floor::Args),
    HttpFloor(http_floor::Args),
    OtlpSink(otlp_sink::Args),
    Rounds(rounds::Args),
    Cleanup(servers::CleanupArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ceiling(args) => ceiling::run(args).await,
        Command::Writes(args) => writes::run(args).await,
        Command::Console(args) => console::run(args).await,
        Command::Drain(args) => drain::run(args).await,
        Command::E2e(args) => e2e::run(args).await,
        Command::Steady(args) => e2e::steady(args).await,
        Command::Load(args) => chaos::load(args).await,
        Command::Verify(args) => chaos::verify(args).await,
        Command::Floor(args) => floor::run(args).await,
        Command::HttpFloor(args) => http_floor::run(args).await,
        Command::OtlpSink(args) => otlp_sink::run(args).await,
        Command::Rounds(args) => rounds::run(args).await,
        Command::Cleanup(args) => servers::cleanup(args).await,
    }
}
