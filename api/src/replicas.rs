//! Draws that must reach `REDIS_WAIT_REPLICAS` replicas before their
//! numbers are answered, in groups.
//!
//! `WAIT` blocks the connection it is sent on until the replicas catch up,
//! and the api has one connection per Redis node: one `WAIT` per draw
//! would let one draw through per replica round trip (measured: 1.3k
//! creates/s on the local cluster). `WAIT` covers every write made on its
//! connection before it, so draws are grouped instead, as the publisher
//! groups jobs: while one round of groups waits for its replicas, the draws
//! that arrive gather, and go out together when it ends, one pipeline per
//! token (its keys share one slot, so the pipeline reaches that slot's
//! master) of their scripts followed by a single `WAIT`. An idle api sends
//! a draw at once, in a group of one.

use std::collections::HashMap;
use std::time::Duration;

use shared::redis_client::RedisClient;
use tokio::sync::{mpsc, oneshot};

/// What one grouped draw got back: the script's reply, or why not.
pub(crate) type Reply = Result<i64, Unreplicated>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Unreplicated {
    #[error("redis unavailable")]
    Redis(#[from] redis::RedisError),
    #[error("only {acked} of {wanted} Redis replicas confirmed the draw in time")]
    TooFew { acked: i64, wanted: u32 },
    #[error("the api is stopping")]
    Stopped,
}

/// A draw script to run: its source, keys and arguments.
pub(crate) struct Call {
    pub(crate) source: &'static str,
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<String>,
}

struct Pending {
    call: Call,
    reply: oneshot::Sender<Reply>,
}

/// Sends draws in groups, each followed by one `WAIT`.
pub(crate) struct Replicated {
    queue: mpsc::UnboundedSender<Pending>,
}

/// At most this many draws in one pipeline.
const GROUP_MAX: usize = 512;

impl Replicated {
    /// Starts the task that groups the draws; it ends when `self` is
    /// dropped.
    pub(crate) fn start(redis: RedisClient, wanted: u32, timeout: Duration) -> Self {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut by_token: HashMap<String, Vec<Pending>> = HashMap::new();
                let mut taken = 0;
                let mut next = Some(first);
                while let Some(pending) = next {
                    let tag = hash_tag(&pending.call.keys).to_owned();
                    by_token.entry(tag).or_default().push(pending);
                    taken += 1;
                    next = if taken < GROUP_MAX {
                        waiting.try_recv().ok()
                    } else {
                        None
                    };
                }
                // One round at a time: while its WAITs block the node
                // connections, the next draws gather in the queue.
                let round = by_token
                    .into_values()
                    .map(|group| send(redis.clone(), group, wanted, timeout));
                futures::future::join_all(round).await;
            }
        });
        Self { queue }
    }

    /// Runs `call`, answering once `wanted` replicas hold its writes.
    pub(crate) async fn run(&self, call: Call) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { call, reply })
            .map_err(|_| Unreplicated::Stopped)?;
        answer.await.unwrap_or(Err(Unreplicated::Stopped))
    }
}

impl Replicated {
    /// Waits until `wanted` replicas hold what this connection wrote up
    /// to now on `key`'s node (a read of `key` routes the pipeline there).
    /// For writes made outside the grouped draws: a claim of an
    /// `Idempotency-Key` that republishes a number drawn earlier.
    pub(crate) async fn settle(
        redis: &RedisClient,
        key: &str,
        wanted: u32,
        timeout: Duration,
    ) -> Result<(), Unreplicated> {
        let (_, acked): (i64, i64) = redis::pipe()
            .cmd("EXISTS")
            .arg(key)
            .cmd("WAIT")
            .arg(wanted)
            .arg(timeout.as_millis() as u64)
            .query_async(&mut redis.clone())
            .await?;
        if acked < i64::from(wanted) {
            return Err(Unreplicated::TooFew { acked, wanted });
        }
        Ok(())
    }
}

/// One pipeline: every script of the group, then `WAIT`.
async fn send(mut redis: RedisClient, group: Vec<Pending>, wanted: u32, timeout: Duration) {
    let mut pipe = redis::pipe();
    for pending in &group {
        // EVAL, not EVALSHA: a promoted replica may not have the script
        // cached, and a pipeline cannot load it halfway.
        pipe.cmd("EVAL")
            .arg(pending.call.source)
            .arg(pending.call.keys.len())
            .arg(&pending.call.keys)
            .arg(&pending.call.args);
    }
    pipe.cmd("WAIT").arg(wanted).arg(timeout.as_millis() as u64);
    let replies: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut redis).await;
    metrics::histogram!("api_replicated_group_size").record(group.len() as f64);
    match replies {
        Ok(mut replies) => {
            let acked = replies.pop().unwrap_or(0);
            for (pending, reply) in group.into_iter().zip(replies) {
                let answer = if acked >= i64::from(wanted) {
                    Ok(reply)
                } else {
                    Err(Unreplicated::TooFew { acked, wanted })
                };
                let _ = pending.reply.send(answer);
            }
        }
        Err(error) => {
            for pending in group {
                let _ = pending.reply.send(Err(Unreplicated::Redis(error.clone())));
            }
        }
    }
}

/// The hash tag of a draw's keys (`{token}`): the keys of one token share
/// a slot, so its draws can share a pipeline.
fn hash_tag(keys: &[String]) -> &str {
    let Some(key) = keys.first() else { return "" };
    match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(length) => &key[open + 1..open + 1 + length],
            None => key,
        },
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::hash_tag;

    #[test]
    fn draws_are_grouped_by_the_hash_tag_of_their_first_key() {
        let keys = |key: &str| vec![key.to_owned(), "x".to_owned()];
        assert_eq!(hash_tag(&keys("chat:{abc}:chats")), "abc");
        assert_eq!(hash_tag(&keys("chat:{abc}:chat:7:messages")), "abc");
        assert_eq!(hash_tag(&keys("plain")), "plain");
        assert_eq!(hash_tag(&[]), "");
    }
}
