use clap::Parser;

use api::{Application, Config};

/// mimalloc: measured under the whole system's load, glibc's allocator took
/// about a tenth of each service's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _export = shared::telemetry::init("api", &config.telemetry);
    let application = Application::build(config).await?;
    application
        .run_until_stopped(shared::shutdown::signal())
        .await
}
