use clap::Parser;

use chat_system::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    shared::telemetry::init("chat-system", &config.telemetry);
    let application = Application::build(config).await?;
    application
        .run_until_stopped(shared::shutdown::signal())
        .await
}
