//! The audit log: one line per action and per login, saying who did
//! what to how many letters. Each line is a JSON object, written to the
//! log (target `audit`) and, when configured, appended to a file. No
//! credential and no full application token is ever in a line.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use serde::Serialize;

pub(crate) struct Audit {
    file: Option<Mutex<std::fs::File>>,
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
pub(crate) struct Line<'a> {
    pub(crate) user: &'a str,
    /// `login`, `login_failed`, `logout`, `replay` or `discard`.
    pub(crate) action: &'a str,
    /// What the action took: `ids` (how many) or the filter.
    pub(crate) selection: String,
    /// Jobs the selection matched in the queue.
    pub(crate) matched: usize,
    /// Jobs replayed or discarded.
    pub(crate) done: usize,
    /// Set when the action stopped on an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl Audit {
    pub(crate) fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let file = path
            .map(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening the audit log {}", path.display()))
            })
            .transpose()?;
        Ok(Self {
            file: file.map(Mutex::new),
        })
    }

    pub(crate) fn write(&self, line: &Line<'_>) {
        let at_ms = shared::amqp::headers::now_ms();
        let text = match serde_json::to_value(line) {
            Ok(serde_json::Value::Object(mut fields)) => {
                fields.insert("at_ms".into(), at_ms.into());
                serde_json::Value::Object(fields).to_string()
            }
            _ => return,
        };
        tracing::info!(target: "audit", "{text}");
        if let Some(file) = &self.file {
            let mut file = file.lock().expect("audit lock");
            if let Err(error) = writeln!(file, "{text}").and_then(|()| file.flush()) {
                tracing::error!(%error, "writing the audit log");
            }
        }
    }
}
