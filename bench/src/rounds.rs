//! Redis's work per record counted in instructions: the script calls the
//! api and the worker send (`DRAW_MANY` rounds of chat draws, with an
//! `Idempotency-Key` claim each and their confirms in the next round for
//! `--keyed`; then `RELEASE_MANY` calls of a batch of records across
//! applications), one call at a time, against a Redis that
//! `scripts/bench` runs under callgrind. An instruction count does not
//! depend on what else the machine runs, so two builds compare on one
//! machine whatever its load; CPU time per draw here varies by a third
//! from run to run.

use std::time::Duration;

use anyhow::{bail, ensure};
use redis::Script;
use shared::counters::{self, CLAIM_ARGS, DRAW_MANY, Keys, RELEASE_MANY, Release, Scope};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    phase: Phase,
    #[arg(long, global = true, default_value = "redis://127.0.0.1:6395")]
    redis: String,
    #[arg(long, global = true, default_value = "rounds")]
    prefix: String,
    #[arg(long, global = true, default_value_t = 64)]
    applications: usize,
}

#[derive(clap::Subcommand)]
enum Phase {
    /// The applications' chat counters, at 0.
    Setup,
    /// `rounds` calls of `per_round` draws each, the applications in turn.
    Draw {
        #[arg(long, default_value_t = 1000)]
        rounds: usize,
        #[arg(long, default_value_t = 17)]
        per_round: usize,
        /// Each draw claims a key of its own; its confirm rides the next
        /// round, as in the api.
        #[arg(long)]
        keyed: bool,
    },
    /// Every number in flight released, `batch` records (of as many
    /// applications) per call.
    Release {
        #[arg(long, default_value_t = 27)]
        batch: usize,
    },
}

/// SHA-1 of `chat`, what a chat create's claim carries.
const CHAT_FINGERPRINT: &str = "7ecde348ff9cda2c3ba69a0c4543365039d0d65b";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut redis = redis::Client::open(args.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let keys = Keys::new(&args.prefix);
    let tokens: Vec<String> = (0..args.applications.max(1))
        .map(|n| format!("rounds{n}"))
        .collect();
    match args.phase {
        Phase::Setup => {
            for token in &tokens {
                let _: () = redis::cmd("SET")
                    .arg(keys.counter(Scope::Chats { token }))
                    .arg(0)
                    .query_async(&mut redis)
                    .await?;
            }
            println!("rounds phase=setup applications={}", tokens.len());
        }
        Phase::Draw {
            rounds,
            per_round,
            keyed,
        } => {
            let draws = draw(&mut redis, &keys, &tokens, rounds, per_round, keyed).await?;
            println!("rounds phase=draw keyed={keyed} draws={draws}");
        }
        Phase::Release { batch } => {
            let released = release(&mut redis, &keys, &tokens, batch).await?;
            println!("rounds phase=release released={released}");
        }
    }
    Ok(())
}

async fn draw(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    tokens: &[String],
    rounds: usize,
    per_round: usize,
    keyed: bool,
) -> anyhow::Result<usize> {
    let script = Script::new(DRAW_MANY);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut confirms: Vec<String> = Vec::new();
    let mut drawn = 0;
    for round in 0..rounds {
        let mut invocation = script.prepare_invoke();
        let confirming = std::mem::take(&mut confirms);
        for key in &confirming {
            counters::add_entry(&mut invocation, std::slice::from_ref(key), &[]);
        }
        let now_ms = shared::amqp::headers::now_ms();
        for index in 0..per_round {
            let token = &tokens[(round * per_round + index) % tokens.len()];
            let scope = Scope::Chats { token };
            let lock_value = uuid::Uuid::new_v4().simple().to_string();
            let receipts = keys.receipts(scope, now_ms / 1000);
            let mut call = keys.draw(scope, &lock_value, Duration::from_secs(5), &receipts);
            if keyed {
                let key = keys.idempotency(token, "chat", &format!("{run}-{round}-{index}"));
                let claim: [String; CLAIM_ARGS] = [
                    CHAT_FINGERPRINT.to_owned(),
                    uuid::Uuid::new_v4().simple().to_string(),
                    "30000".to_owned(),
                    "86400".to_owned(),
                    uuid::Uuid::now_v7().to_string(),
                    now_ms.to_string(),
                ];
                call = call.claiming(&key, &claim);
                confirms.push(key);
            }
            counters::add_entry(&mut invocation, &call.keys, &call.args);
        }
        let replies: Vec<redis::Value> = invocation.invoke_async(redis).await?;
        ensure!(
            replies.len() == confirming.len() + per_round,
            "a round of {} entries answered {} replies",
            confirming.len() + per_round,
            replies.len()
        );
        for reply in &replies[confirming.len()..] {
            match reply {
                redis::Value::Int(number) if *number > 0 => drawn += 1,
                other => bail!("a draw answered {other:?}"),
            }
        }
    }
    Ok(drawn)
}

async fn release(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    tokens: &[String],
    batch: usize,
) -> anyhow::Result<usize> {
    let mut in_flight: Vec<Vec<i64>> = Vec::new();
    for token in tokens {
        let numbers: Vec<i64> = redis::cmd("SMEMBERS")
            .arg(keys.in_flight(Scope::Chats { token }))
            .query_async(redis)
            .await?;
        in_flight.push(numbers);
    }
    // The applications in turn, as the api's draws came: a batch spans
    // as many applications as it has records (up to their count).
    let deepest = in_flight.iter().map(Vec::len).max().unwrap_or(0);
    let records: Vec<(usize, i64)> = (0..deepest)
        .flat_map(|depth| {
            in_flight
                .iter()
                .enumerate()
                .filter_map(move |(token, numbers)| numbers.get(depth).map(|&n| (token, n)))
        })
        .collect();
    let script = Script::new(RELEASE_MANY);
    for chunk in records.chunks(batch.max(1)) {
        let mut by_token: std::collections::BTreeMap<usize, Vec<i64>> = Default::default();
        for &(token, number) in chunk {
            by_token.entry(token).or_default().push(number);
        }
        let mut invocation = script.prepare_invoke();
        for (token, numbers) in by_token {
            let scope = Scope::Chats {
                token: &tokens[token],
            };
            let call = keys.release(scope, &numbers, Duration::from_secs(3600), Release::Stored);
            counters::add_entry(&mut invocation, &call.keys, &call.args);
        }
        let _: () = invocation.invoke_async(redis).await?;
    }
    for token in tokens {
        let left: usize = redis::cmd("SCARD")
            .arg(keys.in_flight(Scope::Chats { token }))
            .query_async(redis)
            .await?;
        ensure!(left == 0, "{left} numbers of {token} are still in flight");
    }
    Ok(records.len())
}
