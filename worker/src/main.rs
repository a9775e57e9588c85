use clap::Parser;

use worker::{Cli, Command, Worker};

/// mimalloc: measured under the whole system's load, glibc's allocator took
/// about a tenth of each service's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _export = shared::telemetry::init("worker", &cli.config.telemetry);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            Worker::build(cli.config)
                .await?
                .run_until_stopped(shared::shutdown::signal())
                .await
        }
        Command::Replay(filter) => worker::replay::run(&cli.config, &filter, false).await,
        Command::DeadLetters(filter) => worker::replay::run(&cli.config, &filter, true).await,
        Command::Console(arguments) => {
            worker::console::Console::build(cli.config, arguments)
                .await?
                .run_until_stopped(shared::shutdown::signal())
                .await
        }
    }
}
