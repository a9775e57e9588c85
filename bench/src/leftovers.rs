//! What a run leaves behind once every acknowledged record is stored: numbers
//! still in flight in Redis (their counters kept alive, their sets growing)
//! and copies waiting in retry queues. Both must come to 0; `leftovers`
//! polls until they do or the time is up, and reports what it last saw.
//! A count that cannot be read is an error, never a 0.

use std::time::{Duration, Instant};

use shared::amqp::connection::connect;
use shared::amqp::topology::{Topology, depth};

use crate::servers::Servers;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leftovers {
    /// Numbers in the in-flight sets under the prefix.
    pub(crate) in_flight: usize,
    /// Messages waiting in the prefix's retry queues.
    pub(crate) retry_copies: usize,
}

/// Whose leftovers: a run's queue prefix and Redis key prefix.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prefixes<'a> {
    pub(crate) queues: &'a str,
    pub(crate) keys: &'a str,
}

impl Leftovers {
    pub(crate) fn none(&self) -> bool {
        self.in_flight == 0 && self.retry_copies == 0
    }
}

/// Polls until nothing is left or `within` has passed; what it last saw.
pub(crate) async fn wait_for_none(
    servers: &Servers,
    prefixes: Prefixes<'_>,
    within: Duration,
) -> anyhow::Result<Leftovers> {
    let give_up = Instant::now() + within;
    loop {
        let left = count(servers, prefixes).await?;
        if left.none() || Instant::now() >= give_up {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What is left now.
pub(crate) async fn count(servers: &Servers, prefixes: Prefixes<'_>) -> anyhow::Result<Leftovers> {
    Ok(Leftovers {
        in_flight: in_flight(servers, prefixes.keys).await?,
        retry_copies: retry_copies(servers, prefixes.queues).await?,
    })
}

/// On a cluster, `KEYS` goes to every master and `SCARD` to the key's.
async fn in_flight(servers: &Servers, prefix: &str) -> anyhow::Result<usize> {
    let mut redis = servers.redis()?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:inflight"))
        .query_async(&mut redis)
        .await?;
    let mut total = 0;
    for key in keys {
        let members: usize = redis::cmd("SCARD")
            .arg(&key)
            .query_async(&mut redis)
            .await?;
        total += members;
    }
    Ok(total)
}

async fn retry_copies(servers: &Servers, prefix: &str) -> anyhow::Result<usize> {
    let topology = Topology::new(&servers.broker(prefix));
    let connection = connect(&servers.amqp_url, "bench-leftovers").await?;
    let channel = connection.create_channel().await?;
    let mut total = 0;
    for queue in crate::servers::retry_queues(&topology) {
        let (waiting, _) = depth(&channel, &queue)
            .await
            .map_err(|error| anyhow::anyhow!("reading the length of {queue}: {error}"))?;
        total += waiting as usize;
    }
    let _ = connection.close(200, "counted".into()).await;
    Ok(total)
}
