//! What every request of the console may need, built once by
//! `Console::build`.

use std::time::Duration;

use shared::amqp::topology::Topology;

use super::audit::Audit;
use super::auth::Auth;
use super::letters::Letters;
use super::overview::Overview;
use crate::config::Config;

/// Everything a request of the console may need.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) topology: Topology,
    pub(crate) auth: Auth,
    pub(crate) letters: Letters,
    pub(crate) overview: Overview,
    pub(crate) audit: Audit,
    pub(crate) retention: Duration,
}
