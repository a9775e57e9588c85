//! The chaos checks behind `scripts/chaos`: `load` drives the api (chats,
//! messages, and edits of the messages it just created) and records every
//! answer it got a 200 for; `verify` waits until the chat-system holds all
//! of them (each edited message with the body of its highest answered
//! revision) and counts what was lost or handed out twice.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::client::ChatSystem;

#[derive(clap::Args)]
pub(crate) struct LoadArgs {
    #[arg(long, env = "API_URL", default_value = "http://127.0.0.1:3001")]
    api_url: String,
    #[arg(long, env = "CHAT_SYSTEM_URL", default_value = "http://127.0.0.1:3000")]
    chat_system_url: String,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Applications the load spreads over.
    #[arg(long, env = "LOAD_APPLICATIONS", default_value_t = 64)]
    applications: usize,
    /// Chats of each application created before the messages start.
    #[arg(long, env = "LOAD_CHATS", default_value_t = 4)]
    chats: usize,
    /// Where the acknowledged records are written, one JSON line each.
    #[arg(long)]
    records: PathBuf,
    /// Go on with the applications and chats of this earlier record file
    /// (a second phase of a scenario) instead of creating new ones.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Send every create with an `Idempotency-Key` of its own and retry it
    /// with that key until it succeeds (for up to `--retry-secs` past the
    /// end of the load), as a careful client does.
    #[arg(long)]
    with_keys: bool,
    #[arg(long, default_value_t = 120)]
    retry_secs: u64,
    /// Percent of the requests after the chats are made that edit one of
    /// the last messages their client created, instead of creating one.
    #[arg(long, env = "LOAD_EDITS", default_value_t = 20)]
    edits: u8,
}

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    #[arg(long, env = "CHAT_SYSTEM_URL", default_value = "http://127.0.0.1:3000")]
    chat_system_url: String,
    /// Record files of `load`; give several for a scenario in phases.
    #[arg(long, required = true)]
    records: Vec<PathBuf>,
    /// How long the records may take to be stored.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// When the fault ended (Unix ms): "recover" counts from there.
    #[arg(long)]
    since_ms: Option<u128>,
    /// Once all is stored, how long the numbers in flight and the retry
    /// copies of the run (`REDIS_PREFIX`, `QUEUE_PREFIX`) may take to reach
    /// 0.
    #[arg(long, default_value_t = 30)]
    leftovers_secs: u64,
    /// The run's queue prefix.
    #[arg(long, env = "QUEUE_PREFIX")]
    queue_prefix: String,
    /// The run's Redis key prefix.
    #[arg(long, env = "REDIS_PREFIX")]
    redis_prefix: String,
    #[command(flatten)]
    servers: crate::servers::Servers,
}

/// One acknowledged answer of the api.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record {
    Application {
        token: String,
    },
    Chat {
        token: String,
        number: i64,
    },
    Message {
        token: String,
        chat: i64,
        number: i64,
        body: String,
    },
    Edit {
        token: String,
        chat: i64,
        message: i64,
        revision: i64,
        body: String,
    },
}

struct Api {
    url: String,
    client: reqwest::Client,
    /// Retry each create with an `Idempotency-Key` until this instant.
    keyed_until: Option<Instant>,
}

impl Api {
    async fn chat(&self, token: &str) -> Option<i64> {
        let url = format!("{}/applications/{token}/chats", self.url);
        self.create(|| self.client.post(&url), "chat number").await
    }

    async fn message(&self, token: &str, chat: i64, body: &str) -> Option<i64> {
        let url = format!("{}/applications/{token}/chats/{chat}/messages", self.url);
        let request = || self.client.post(&url).json(&json!({ "body": body }));
        self.create(request, "message number").await
    }

    /// The revision of an edit of message `message`.
    async fn edit(&self, token: &str, chat: i64, message: i64, body: &str) -> Option<i64> {
        let url = format!(
            "{}/applications/{token}/chats/{chat}/messages/{message}",
            self.url
        );
        let request = || self.client.put(&url).json(&json!({ "body": body }));
        self.create(request, "revision").await
    }

    /// One create; with keys, retried with its key until it succeeds.
    async fn create(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
        field: &str,
    ) -> Option<i64> {
        let Some(until) = self.keyed_until else {
            return self.number(request(), field).await;
        };
        let key = uuid::Uuid::new_v4().to_string();
        loop {
            let keyed = request().header("idempotency-key", &key);
            if let Some(number) = self.number(keyed, field).await {
                return Some(number);
            }
            if Instant::now() > until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn number(&self, request: reqwest::RequestBuilder, field: &str) -> Option<i64> {
        let response = request.timeout(Duration::from_secs(10)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json::<Value>().await.ok()?[field].as_i64()
    }
}

/// The chats the load writes to: `(token, chat)`.
type Targets = Vec<(String, i64)>;

/// The applications and chats of an earlier phase's record file.
fn resumed(file: &PathBuf) -> anyhow::Result<(Vec<String>, Targets)> {
    let (mut tokens, mut targets) = (Vec::new(), Vec::new());
    for line in std::io::BufReader::new(std::fs::File::open(file)?).lines() {
        match serde_json::from_str(&line?)? {
            Record::Application { token } => tokens.push(token),
            Record::Chat { token, number } => targets.push((token, number)),
            Record::Message { .. } | Record::Edit { .. } => {}
        }
    }
    Ok((tokens, targets))
}

/// New applications with `chats` chats each, created through the api
/// (retried while it fails: the fault may already be on).
async fn prepare(
    chat_system: &ChatSystem,
    api: &Api,
    args: &LoadArgs,
    deadline: Instant,
    records: &Mutex<Vec<Record>>,
) -> anyhow::Result<Targets> {
    let mut tokens = Vec::new();
    for _ in 0..args.applications.max(1) {
        let token = chat_system.application("chaos").await?;
        records.lock().expect("records").push(Record::Application {
            token: token.clone(),
        });
        tokens.push(token);
    }
    let created = futures::future::join_all(tokens.iter().map(|token| async move {
        let mut chats = Vec::new();
        while chats.len() < args.chats.max(1) && Instant::now() < deadline {
            match api.chat(token).await {
                Some(number) => chats.push((token.clone(), number)),
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        chats
    }))
    .await;
    let targets: Targets = created.into_iter().flatten().collect();
    records
        .lock()
        .expect("records")
        .extend(targets.iter().map(|(token, number)| Record::Chat {
            token: token.clone(),
            number: *number,
        }));
    Ok(targets)
}

pub(crate) async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let chat_system = ChatSystem::new(&args.chat_system_url)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let api = Arc::new(Api {
        url: args.api_url.trim_end_matches('/').to_owned(),
        client,
        keyed_until: args
            .with_keys
            .then(|| deadline + Duration::from_secs(args.retry_secs)),
    });
    let records = Arc::new(Mutex::new(Vec::new()));
    let targets = match &args.resume {
        Some(file) => resumed(file)?.1,
        None => prepare(&chat_system, &api, &args, deadline, &records).await?,
    };
    anyhow::ensure!(!targets.is_empty(), "the api created no chat");
    let targets = Arc::new(targets);

    // Bodies differ between runs, so a number handed out again shows.
    let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let failed = Arc::new(Mutex::new(0_u64));
    let mut tasks = Vec::new();
    for task in 0..args.concurrency {
        let (api, records, failed, targets, run) = (
            api.clone(),
            records.clone(),
            failed.clone(),
            targets.clone(),
            run.clone(),
        );
        let edits = u64::from(args.edits.min(100));
        tasks.push(tokio::spawn(async move {
            let mut sequence = 0_usize;
            // This client's last messages, the ones it edits.
            let mut recent: std::collections::VecDeque<(String, i64, i64)> = Default::default();
            while Instant::now() < deadline {
                sequence += 1;
                let body = format!("chaos {run} {task}-{sequence}, \"quoted\" / ü");
                // Spread evenly: request `sequence` edits when the running
                // share of edits falls behind `edits` percent.
                let edit_now =
                    (sequence as u64 * edits) / 100 > ((sequence - 1) as u64 * edits) / 100;
                if edit_now && !recent.is_empty() {
                    let (token, chat, message) = recent[sequence % recent.len()].clone();
                    let body = format!("edit of {body}");
                    match api.edit(&token, chat, message, &body).await {
                        Some(revision) => records.lock().expect("records").push(Record::Edit {
                            token,
                            chat,
                            message,
                            revision,
                            body,
                        }),
                        None => {
                            *failed.lock().expect("failures") += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    continue;
                }
                let (token, chat) = &targets[(task * 7919 + sequence) % targets.len()];
                match api.message(token, *chat, &body).await {
                    Some(number) => {
                        recent.push_back((token.clone(), *chat, number));
                        if recent.len() > 8 {
                            recent.pop_front();
                        }
                        records.lock().expect("records").push(Record::Message {
                            token: token.clone(),
                            chat: *chat,
                            number,
                            body,
                        });
                    }
                    None => {
                        *failed.lock().expect("failures") += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                // Now and then a new chat, so chat numbers are drawn under
                // fault too.
                if task == 0
                    && sequence.is_multiple_of(50)
                    && let Some(number) = api.chat(token).await
                {
                    records.lock().expect("records").push(Record::Chat {
                        token: token.clone(),
                        number,
                    });
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let records = records.lock().expect("records");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&args.records)?);
    for record in records.iter() {
        serde_json::to_writer(&mut file, record)?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    let applications = records
        .iter()
        .filter(|record| matches!(record, Record::Application { .. }))
        .count();
    println!(
        "load acknowledged={} applications={applications} failed={}",
        records.len() - applications,
        failed.lock().expect("failures")
    );
    Ok(())
}

/// What `verify` found.
#[derive(Default)]
struct Tally {
    acknowledged: usize,
    stored: usize,
    lost: usize,
    duplicated: usize,
    /// Rows stored that no 200 answered for (a create answered 503 whose
    /// job reached the queue anyway).
    beyond: usize,
}

/// What one application's records are: chat numbers acknowledged (with
/// how often), messages acknowledged, by chat, and edits acknowledged, by
/// chat and message, as `(revision, body)`.
#[derive(Default)]
struct Acknowledged {
    chats: BTreeMap<i64, usize>,
    messages: BTreeMap<i64, Vec<(i64, String)>>,
    edits: BTreeMap<i64, BTreeMap<i64, Vec<(i64, String)>>>,
}

pub(crate) async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let mut applications: BTreeMap<String, Acknowledged> = BTreeMap::new();
    for file in &args.records {
        for line in std::io::BufReader::new(std::fs::File::open(file)?).lines() {
            match serde_json::from_str(&line?)? {
                Record::Application { token } => {
                    applications.entry(token).or_default();
                }
                Record::Chat { token, number } => {
                    *applications
                        .entry(token)
                        .or_default()
                        .chats
                        .entry(number)
                        .or_default() += 1;
                }
                Record::Message {
                    token,
                    chat,
                    number,
                    body,
                } => applications
                    .entry(token)
                    .or_default()
                    .messages
                    .entry(chat)
                    .or_default()
                    .push((number, body)),
                Record::Edit {
                    token,
                    chat,
                    message,
                    revision,
                    body,
                } => applications
                    .entry(token)
                    .or_default()
                    .edits
                    .entry(chat)
                    .or_default()
                    .entry(message)
                    .or_default()
                    .push((revision, body)),
            }
        }
    }
    let chat_system = ChatSystem::new(&args.chat_system_url)?;
    let give_up = Instant::now() + Duration::from_secs(args.timeout_secs);
    let tally = loop {
        let mut tally = Tally::default();
        for (token, acknowledged) in &applications {
            tally.add(check(&chat_system, token, acknowledged).await?);
        }
        if tally.lost == 0 || Instant::now() > give_up {
            break tally;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let recover = args.since_ms.map_or(String::from("-"), |since| {
        format!("{:.1}", now.saturating_sub(since) as f64 / 1000.0)
    });
    let prefixes = crate::leftovers::Prefixes {
        queues: &args.queue_prefix,
        keys: &args.redis_prefix,
    };
    let left = crate::leftovers::wait_for_none(
        &args.servers,
        prefixes,
        Duration::from_secs(args.leftovers_secs),
    )
    .await?;
    println!(
        "verify applications={} acknowledged={} stored={} lost={} duplicated={} beyond={} recover_secs={recover} in_flight={} retry_copies={}",
        applications.len(),
        tally.acknowledged,
        tally.stored,
        tally.lost,
        tally.duplicated,
        tally.beyond,
        left.in_flight,
        left.retry_copies
    );
    anyhow::ensure!(
        tally.lost == 0 && tally.duplicated == 0,
        "the invariant does not hold"
    );
    anyhow::ensure!(
        left.none(),
        "left behind once everything was stored: {left:?}"
    );
    Ok(())
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.acknowledged += other.acknowledged;
        self.stored += other.stored;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.beyond += other.beyond;
    }
}

/// Compares one application's acknowledged records with what the
/// chat-system holds. A number acknowledged twice, or stored with another
/// body than the one acknowledged, counts as duplicated. An edited message
/// must hold its highest acknowledged revision with that revision's body:
/// a lower stored revision loses the edits above it, another body is a
/// revision handed out twice, a higher revision is an edit stored beyond
/// the acknowledged (answered 503, queued all the same).
async fn check(
    chat_system: &ChatSystem,
    token: &str,
    acknowledged: &Acknowledged,
) -> anyhow::Result<Tally> {
    let (chats, messages) = (&acknowledged.chats, &acknowledged.messages);
    let edits_of = &acknowledged.edits;
    let mut tally = Tally::default();
    let counts = chat_system.counts(token).await?;
    tally.beyond += (counts.chats_count as usize).saturating_sub(chats.len());
    for chat in 1..=counts.last_chat_number {
        if !messages.contains_key(&chat) && chat_system.chat_exists(token, chat).await? {
            tally.beyond += chat_system.messages_count(token, chat).await? as usize;
        }
    }
    for (&chat, &times) in chats {
        tally.acknowledged += times;
        tally.duplicated += times - 1;
        if chat_system.chat_exists(token, chat).await? {
            tally.stored += times;
        } else {
            tally.lost += times;
        }
    }
    let no_edits = BTreeMap::new();
    for (&chat, acknowledged) in messages {
        let stored: HashMap<i64, (i64, String)> = chat_system
            .messages(token, chat)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|message| (message.number, (message.revision, message.body)))
            .collect();
        let edits = edits_of.get(&chat).unwrap_or(&no_edits);
        let answered: std::collections::HashSet<i64> =
            acknowledged.iter().map(|(number, _)| *number).collect();
        tally.beyond += stored
            .keys()
            .filter(|number| !answered.contains(number))
            .count();
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for (number, body) in acknowledged {
            tally.acknowledged += 1;
            let times = seen.entry(*number).or_default();
            *times += 1;
            match stored.get(number) {
                _ if *times > 1 => tally.duplicated += 1,
                // Edited: the body it was created with is not shown; its
                // edits are checked below.
                Some((revision, _)) if *revision > 0 => tally.stored += 1,
                Some((_, stored)) if stored == body => tally.stored += 1,
                Some(_) => tally.duplicated += 1,
                None => tally.lost += 1,
            }
        }
        for (number, answered) in edits {
            tally.add(check_edits(stored.get(number), answered));
        }
    }
    Ok(tally)
}

/// One message's acknowledged edits against what is stored of it.
fn check_edits(stored: Option<&(i64, String)>, answered: &[(i64, String)]) -> Tally {
    let mut tally = Tally {
        acknowledged: answered.len(),
        ..Tally::default()
    };
    let mut revisions: BTreeMap<i64, usize> = BTreeMap::new();
    for (revision, _) in answered {
        *revisions.entry(*revision).or_default() += 1;
    }
    tally.duplicated += revisions.values().map(|times| times - 1).sum::<usize>();
    let (highest, body) = answered
        .iter()
        .max_by_key(|(revision, _)| *revision)
        .expect("a message with edits has one");
    match stored {
        None => tally.lost += answered.len(),
        Some((revision, _)) if revision < highest => {
            let lost = answered.iter().filter(|(r, _)| r > revision).count();
            tally.lost += lost;
            tally.stored += answered.len() - lost;
        }
        Some((revision, stored)) if revision == highest && stored != body => {
            tally.duplicated += 1;
            tally.stored += answered.len() - 1;
        }
        Some((revision, _)) => {
            if revision > highest {
                tally.beyond += 1;
            }
            tally.stored += answered.len();
        }
    }
    tally
}
