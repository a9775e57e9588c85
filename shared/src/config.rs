//! Configuration groups that several binaries share.
//!
//! Every setting is an environment variable and a command-line flag at once
//! (clap's `env`), with a default that works on one machine. Each binary has
//! its own `Config` that flattens the groups it needs, so `--help` lists
//! exactly what that binary reads.

use clap::{Args, ValueEnum};

/// Logging: the filter (`RUST_LOG`) and the output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Args)]
pub struct Telemetry {
    /// Log filter, in `tracing-subscriber`'s `EnvFilter` syntax.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,

    /// `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Output format of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            rust_log: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}
