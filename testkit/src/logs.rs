//! The log lines of the code under test: shown when `RUST_LOG` is set, or
//! captured by a test that checks what the binaries would print.

use std::io::Write;
use std::sync::{Arc, Mutex};

use shared::config::{LogFormat, Telemetry};
use tracing::subscriber::DefaultGuard;

/// Shows the logs of the code under test when `RUST_LOG` is set
/// (`RUST_LOG=worker=debug cargo test ... -- --nocapture`); silent otherwise.
pub fn show() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Every line logged on this thread, formatted by the binaries' own
/// subscriber (`shared::telemetry::subscriber`), while the guard lives. A
/// `#[tokio::test]` runs its tasks on its one thread, so that is everything
/// the api, worker and chat-system under test log (but for the threads
/// libraries start of their own).
pub struct Captured {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: DefaultGuard,
}

impl Captured {
    pub fn start(format: LogFormat, filter: &str) -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let config = Telemetry {
            rust_log: filter.to_owned(),
            log_format: format,
        };
        let writer = Buffer(buffer.clone());
        let subscriber = shared::telemetry::subscriber("test", &config, move || writer.clone());
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        let bytes = self.buffer.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Clone)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
