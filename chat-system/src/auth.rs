//! Who may write: every write (a bulk write of records, a chat, a message)
//! needs `Authorization: Bearer <CHAT_SYSTEM_WRITE_TOKEN>`, and the
//! application routes (create, list, rename) the admin token
//! `CHAT_SYSTEM_ADMIN_TOKEN`; reads stay keyed by the application token in
//! their path. The two credentials are distinct: the admin one does not
//! write records, the write one does not create applications.
//!
//! Without credentials the service refuses to start, unless told that it
//! runs open (`CHAT_SYSTEM_AUTH=none`, logged as a warning): anyone who
//! reached its port could otherwise store their own text under numbers the
//! api is about to hand out.

use shared::secret::Secret;
use warp::http::HeaderValue;

use crate::config::{AuthMode, Config};
use crate::error::HttpError;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Write,
    Admin,
}

#[derive(Debug, Clone)]
pub(crate) enum Auth {
    Required { write: Secret, admin: Secret },
    Open,
}

impl Auth {
    /// The credentials of `config`, or why the service cannot start.
    pub(crate) fn from_config(config: &Config) -> anyhow::Result<Self> {
        if config.auth == AuthMode::None {
            tracing::warn!(
                "CHAT_SYSTEM_AUTH=none: anyone who reaches this port may write records and create applications"
            );
            return Ok(Self::Open);
        }
        let write = config.write_credential.secret()?;
        let admin = config.admin_credential.secret()?;
        match (write, admin) {
            (Some(write), Some(admin)) => Ok(Self::Required { write, admin }),
            _ => anyhow::bail!(
                "the chat-system needs CHAT_SYSTEM_WRITE_TOKEN and CHAT_SYSTEM_ADMIN_TOKEN (or their _FILE variants); set CHAT_SYSTEM_AUTH=none to run it open"
            ),
        }
    }

    /// `Ok` when `authorization` (the request's header) grants `access`.
    pub(crate) fn check(
        &self,
        access: Access,
        authorization: Option<&HeaderValue>,
    ) -> Result<(), HttpError> {
        let expected = match (self, access) {
            (Self::Open, _) => return Ok(()),
            (Self::Required { write, .. }, Access::Write) => write,
            (Self::Required { admin, .. }, Access::Admin) => admin,
        };
        let offered = authorization
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii);
        match offered {
            Some(offered) if expected.matches(offered) => Ok(()),
            Some(_) => Err(HttpError::Unauthorized(
                "the credential is not valid for this route",
            )),
            None => Err(HttpError::Unauthorized(
                "this route needs a credential: Authorization: Bearer <credential>",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::Required {
            write: Secret::new("W", "write-write-write-1").unwrap(),
            admin: Secret::new("A", "admin-admin-admin-1").unwrap(),
        }
    }

    #[test]
    fn each_route_takes_its_own_credential_only() {
        let header = |text: &str| HeaderValue::from_str(text).unwrap();
        let auth = auth();
        assert!(
            auth.check(Access::Write, Some(&header("Bearer write-write-write-1")))
                .is_ok()
        );
        assert!(
            auth.check(Access::Admin, Some(&header("Bearer admin-admin-admin-1")))
                .is_ok()
        );
        for (access, offered) in [
            (Access::Write, Some("Bearer admin-admin-admin-1")),
            (Access::Admin, Some("Bearer write-write-write-1")),
            (Access::Write, Some("Bearer write-write-write-")),
            (Access::Write, Some("write-write-write-1")),
            (Access::Write, Some("Basic write-write-write-1")),
            (Access::Write, None),
        ] {
            let offered = offered.map(header);
            assert!(
                matches!(
                    auth.check(access, offered.as_ref()),
                    Err(HttpError::Unauthorized(_))
                ),
                "{access:?} {offered:?}"
            );
        }
        assert!(Auth::Open.check(Access::Admin, None).is_ok());
    }
}
