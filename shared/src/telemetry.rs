//! Tracing set-up, and the one helper that keeps secrets out of log lines.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Telemetry};

/// Installs the global subscriber: `RUST_LOG` filter, text or JSON lines on
/// stdout, each tagged with the service name. Call once, first thing in
/// `main`.
pub fn init(service: &'static str, config: &Telemetry) {
    let filter = EnvFilter::try_new(&config.rust_log).unwrap_or_else(|error| {
        eprintln!(
            "{service}: ignoring invalid RUST_LOG {:?}: {error}",
            config.rust_log
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
}

/// An application token is a credential: logs only ever get its first
/// characters, enough to correlate lines without being able to replay it.
pub fn short_token(token: &str) -> String {
    let prefix: String = token.chars().take(6).collect();
    if prefix.len() < token.len() {
        format!("{prefix}…")
    } else {
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::short_token;

    #[test]
    fn tokens_are_cut_to_six_characters() {
        assert_eq!(short_token("abcdef0123456789"), "abcdef…");
        assert_eq!(short_token("abc"), "abc");
        assert_eq!(short_token("ééééééé"), "éééééé…");
    }
}
