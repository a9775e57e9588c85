//! Secrets the binaries are given (the chat-system's write and admin
//! credentials): from an environment variable or from a file (Docker and
//! Kubernetes secrets are files), compared in constant time, never printed.
//!
//! The settings come in pairs, `NAME` and `NAME_FILE`; giving both is an
//! error, so what is in use is never a guess.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use subtle::ConstantTimeEq;

/// A secret value. `Debug` shows no part of it.
#[derive(Clone)]
pub struct Secret(Arc<str>);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{name} and {name}_FILE are both set; set one")]
    Both { name: &'static str },
    #[error("reading {name}_FILE ({path}): {source}")]
    File {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} must be 16 to 512 visible ASCII characters (a bearer token)")]
    Malformed { name: &'static str },
}

impl Secret {
    /// `value` as a secret named `name` (for errors): 16 to 512 visible
    /// ASCII characters, what an `Authorization: Bearer` header can carry.
    pub fn new(name: &'static str, value: &str) -> Result<Self, SecretError> {
        let usable =
            (16..=512).contains(&value.len()) && value.bytes().all(|byte| byte.is_ascii_graphic());
        if !usable {
            return Err(SecretError::Malformed { name });
        }
        Ok(Self(value.into()))
    }

    /// The value, to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `offered` is this secret, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, offered: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(offered).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(…)")
    }
}

/// The secret named `name` from its value or its file (one trailing
/// newline dropped), `None` when neither is set.
pub fn resolve(
    name: &'static str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Secret>, SecretError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(SecretError::Both { name }),
        (Some(value), None) => Secret::new(name, value).map(Some),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                name,
                path: path.to_owned(),
                source,
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            Secret::new(name, text).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// The chat-system's write credential: every write (records, chats,
/// messages) must carry it. The chat-system checks it; the worker sends it.
#[derive(Debug, Clone, Default, Args)]
pub struct WriteCredential {
    /// Bearer token of the chat-system's writes. A secret: never logged.
    #[arg(
        long = "chat-system-write-token",
        env = "CHAT_SYSTEM_WRITE_TOKEN",
        hide_env_values = true
    )]
    pub write_token: Option<String>,

    /// A file holding `CHAT_SYSTEM_WRITE_TOKEN` instead (a Docker or
    /// Kubernetes secret).
    #[arg(
        long = "chat-system-write-token-file",
        env = "CHAT_SYSTEM_WRITE_TOKEN_FILE"
    )]
    pub write_token_file: Option<PathBuf>,
}

impl WriteCredential {
    pub fn secret(&self) -> Result<Option<Secret>, SecretError> {
        resolve(
            "CHAT_SYSTEM_WRITE_TOKEN",
            self.write_token.as_deref(),
            self.write_token_file.as_deref(),
        )
    }
}

/// The chat-system's admin credential: creating, listing and renaming
/// applications need it.
#[derive(Debug, Clone, Default, Args)]
pub struct AdminCredential {
    /// Bearer token of the chat-system's admin routes. A secret: never
    /// logged.
    #[arg(
        long = "chat-system-admin-token",
        env = "CHAT_SYSTEM_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// A file holding `CHAT_SYSTEM_ADMIN_TOKEN` instead.
    #[arg(
        long = "chat-system-admin-token-file",
        env = "CHAT_SYSTEM_ADMIN_TOKEN_FILE"
    )]
    pub admin_token_file: Option<PathBuf>,
}

impl AdminCredential {
    pub fn secret(&self) -> Result<Option<Secret>, SecretError> {
        resolve(
            "CHAT_SYSTEM_ADMIN_TOKEN",
            self.admin_token.as_deref(),
            self.admin_token_file.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_comes_from_its_value_or_its_file_never_both() {
        let value = "0123456789abcdef0123";
        assert!(resolve("X", None, None).unwrap().is_none());
        assert!(
            resolve("X", Some(value), None)
                .unwrap()
                .unwrap()
                .matches(value.as_bytes())
        );
        let file = std::env::temp_dir().join(format!("secret-{}", uuid::Uuid::new_v4()));
        std::fs::write(&file, format!("{value}\n")).unwrap();
        let read = resolve("X", None, Some(&file)).unwrap().unwrap();
        assert_eq!(read.expose(), value, "the trailing newline dropped");
        assert!(matches!(
            resolve("X", Some(value), Some(&file)),
            Err(SecretError::Both { .. })
        ));
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn a_secret_is_long_visible_ascii_and_never_shown() {
        assert!(Secret::new("X", "short").is_err());
        assert!(Secret::new("X", "has a space in it, long enough").is_err());
        let secret = Secret::new("X", "0123456789abcdef").unwrap();
        assert!(!secret.matches(b"0123456789abcdeF"));
        assert!(!secret.matches(b"0123456789abcde"));
        assert_eq!(format!("{secret:?}"), "Secret(…)");
    }
}
