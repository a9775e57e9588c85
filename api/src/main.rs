use clap::Parser;

use api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    shared::telemetry::init("api", &config.telemetry);
    let application = Application::build(config).await?;
    application
        .run_until_stopped(shared::shutdown::signal())
        .await
}
