//! Who may use the console: an admin (sees and acts) and a read-only
//! viewer, each a name and a password from the environment or a file;
//! sessions in `HttpOnly`, `SameSite=Strict` cookies, each with its CSRF
//! token that every action must send back in `x-csrf-token`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shared::secret::{Secret, resolve};
use subtle::ConstantTimeEq;

use crate::config::ConsoleArgs;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "console_session";
/// The header an action carries its session's CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// Sees everything, replays and discards.
    Admin,
    /// Sees everything, acts on nothing.
    Viewer,
}

struct Credential {
    user: String,
    password: Secret,
    role: Role,
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) user: String,
    pub(crate) role: Role,
    pub(crate) csrf: String,
    last_seen: Instant,
}

impl Session {
    /// Whether `offered` is this session's CSRF token.
    pub(crate) fn csrf_matches(&self, offered: Option<&str>) -> bool {
        offered.is_some_and(|offered| bool::from(self.csrf.as_bytes().ct_eq(offered.as_bytes())))
    }
}

pub(crate) struct Auth {
    credentials: Vec<Credential>,
    sessions: Mutex<HashMap<String, Session>>,
    idle: Duration,
    secure_cookie: bool,
}

impl Auth {
    /// The credentials configured; none at all is an error (the console
    /// never serves without a login).
    pub(crate) fn from_arguments(arguments: &ConsoleArgs) -> anyhow::Result<Self> {
        let mut credentials = Vec::new();
        let admin = resolve(
            "CONSOLE_ADMIN_PASSWORD",
            arguments.admin_password.as_deref(),
            arguments.admin_password_file.as_deref(),
        )?;
        let viewer = resolve(
            "CONSOLE_VIEWER_PASSWORD",
            arguments.viewer_password.as_deref(),
            arguments.viewer_password_file.as_deref(),
        )?;
        for (user, password, role) in [
            (&arguments.admin_user, admin, Role::Admin),
            (&arguments.viewer_user, viewer, Role::Viewer),
        ] {
            if let Some(password) = password {
                credentials.push(Credential {
                    user: user.clone(),
                    password,
                    role,
                });
            }
        }
        if credentials.is_empty() {
            anyhow::bail!(
                "the console needs a credential: set CONSOLE_ADMIN_PASSWORD or CONSOLE_VIEWER_PASSWORD (or their _FILE)"
            );
        }
        if arguments.admin_user == arguments.viewer_user && credentials.len() == 2 {
            anyhow::bail!("CONSOLE_ADMIN_USER and CONSOLE_VIEWER_USER must differ");
        }
        Ok(Self {
            credentials,
            sessions: Mutex::default(),
            idle: Duration::from_secs(arguments.session_hours.max(1) * 3600),
            secure_cookie: arguments.secure_cookie,
        })
    }

    /// Which users can log in, for the start-up line (no secret).
    pub(crate) fn describe(&self) -> String {
        self.credentials
            .iter()
            .map(|credential| format!("{} ({:?})", credential.user, credential.role))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A new session for `user` if `password` is theirs: its cookie value.
    /// Every credential is compared, so the time taken does not say which
    /// user exists.
    pub(crate) fn login(&self, user: &str, password: &str) -> Option<(String, Session)> {
        let mut found = None;
        for credential in &self.credentials {
            let user_matches = bool::from(credential.user.as_bytes().ct_eq(user.as_bytes()));
            let password_matches = credential.password.matches(password.as_bytes());
            if user_matches && password_matches {
                found = Some(credential);
            }
        }
        let credential = found?;
        let session = Session {
            user: credential.user.clone(),
            role: credential.role,
            csrf: random_token(),
            last_seen: Instant::now(),
        };
        let id = random_token();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let idle = self.idle;
        sessions.retain(|_, session| session.last_seen.elapsed() < idle);
        sessions.insert(id.clone(), session.clone());
        Some((id, session))
    }

    /// The session of a cookie value, kept alive by the request.
    pub(crate) fn session(&self, id: Option<&str>) -> Option<Session> {
        let id = id?;
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let session = sessions.get_mut(id)?;
        if session.last_seen.elapsed() >= self.idle {
            sessions.remove(id);
            return None;
        }
        session.last_seen = Instant::now();
        Some(session.clone())
    }

    pub(crate) fn logout(&self, id: Option<&str>) {
        if let Some(id) = id {
            self.sessions.lock().expect("sessions lock").remove(id);
        }
    }

    /// The `Set-Cookie` value of a new session.
    pub(crate) fn cookie(&self, id: &str) -> String {
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.idle.as_secs(),
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that ends a session in the browser.
    pub(crate) fn cleared_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }
}

/// 32 random bytes, hex: a session id or a CSRF token.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
