//! The chaos checks behind `scripts/chaos`: `load` drives the api and
//! records every answer it got a 200 for; `verify` waits until the
//! chat-system holds all of them and counts what was lost or handed out
//! twice.

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
    /// Chats created before the messages start.
    #[arg(long, default_value_t = 8)]
    chats: usize,
    /// Where the acknowledged records are written, one JSON line each.
    #[arg(long)]
    records: PathBuf,
    /// Go on with this application, whose chats 1..=`chats` exist already
    /// (a second phase of a scenario), instead of creating one.
    #[arg(long)]
    token: Option<String>,
    /// Send every create with an `Idempotency-Key` of its own and retry it
    /// with that key until it succeeds (for up to `--retry-secs` past the
    /// end of the load), as a careful client does.
    #[arg(long)]
    with_keys: bool,
    #[arg(long, default_value_t = 120)]
    retry_secs: u64,
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
}

/// One acknowledged answer of the api.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record {
    Application {
        token: String,
    },
    Chat {
        number: i64,
    },
    Message {
        chat: i64,
        number: i64,
        body: String,
    },
}

struct Api {
    url: String,
    token: String,
    client: reqwest::Client,
    /// Retry each create with an `Idempotency-Key` until this instant.
    keyed_until: Option<Instant>,
}

impl Api {
    async fn chat(&self) -> Option<i64> {
        let url = format!("{}/applications/{}/chats", self.url, self.token);
        self.create(|| self.client.post(&url), "chat number").await
    }

    async fn message(&self, chat: i64, body: &str) -> Option<i64> {
        let url = format!(
            "{}/applications/{}/chats/{chat}/messages",
            self.url, self.token
        );
        let request = || self.client.post(&url).json(&json!({ "body": body }));
        self.create(request, "message number").await
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

pub(crate) async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let chat_system = ChatSystem::new(&args.chat_system_url)?;
    let resumed = args.token.is_some();
    let token = match args.token {
        Some(token) => token,
        None => chat_system.application("chaos").await?,
    };
    let client = reqwest::Client::builder().no_proxy().build()?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let api = Arc::new(Api {
        url: args.api_url.trim_end_matches('/').to_owned(),
        token: token.clone(),
        client,
        keyed_until: args
            .with_keys
            .then(|| deadline + Duration::from_secs(args.retry_secs)),
    });
    let records = Arc::new(Mutex::new(vec![Record::Application { token }]));

    let mut chats = Vec::new();
    if resumed {
        chats.extend(1..=args.chats as i64);
    }
    while chats.len() < args.chats && Instant::now() < deadline {
        match api.chat().await {
            Some(number) => chats.push(number),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    anyhow::ensure!(!chats.is_empty(), "the api created no chat");
    if !resumed {
        records
            .lock()
            .expect("records")
            .extend(chats.iter().map(|&number| Record::Chat { number }));
    }

    // Bodies differ between runs, so a number handed out again shows.
    let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let failed = Arc::new(Mutex::new(0_u64));
    let mut tasks = Vec::new();
    for task in 0..args.concurrency {
        let (api, records, failed, chats, run) = (
            api.clone(),
            records.clone(),
            failed.clone(),
            chats.clone(),
            run.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut sequence = 0_usize;
            while Instant::now() < deadline {
                sequence += 1;
                let chat = chats[(task + sequence) % chats.len()];
                let body = format!("chaos {run} {task}-{sequence}, \"quoted\" / ü");
                match api.message(chat, &body).await {
                    Some(number) => records.lock().expect("records").push(Record::Message {
                        chat,
                        number,
                        body,
                    }),
                    None => {
                        *failed.lock().expect("failures") += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                // Now and then a new chat, so chat numbers are drawn under
                // fault too.
                if task == 0
                    && sequence.is_multiple_of(50)
                    && let Some(number) = api.chat().await
                {
                    records
                        .lock()
                        .expect("records")
                        .push(Record::Chat { number });
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
    println!(
        "load acknowledged={} failed={}",
        records.len() - 1,
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

pub(crate) async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let mut token = String::new();
    let mut chats: BTreeMap<i64, usize> = BTreeMap::new();
    let mut messages: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    for file in &args.records {
        for line in std::io::BufReader::new(std::fs::File::open(file)?).lines() {
            match serde_json::from_str(&line?)? {
                Record::Application { token: value } => token = value,
                Record::Chat { number } => *chats.entry(number).or_default() += 1,
                Record::Message { chat, number, body } => {
                    messages.entry(chat).or_default().push((number, body))
                }
            }
        }
    }
    let chat_system = ChatSystem::new(&args.chat_system_url)?;
    let give_up = Instant::now() + Duration::from_secs(args.timeout_secs);
    let tally = loop {
        let tally = check(&chat_system, &token, &chats, &messages).await?;
        if tally.lost == 0 || Instant::now() > give_up {
            break tally;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let recover = args.since_ms.map_or(String::from("-"), |since| {
        format!("{:.1}", now.saturating_sub(since) as f64 / 1000.0)
    });
    println!(
        "verify acknowledged={} stored={} lost={} duplicated={} beyond={} recover_secs={recover}",
        tally.acknowledged, tally.stored, tally.lost, tally.duplicated, tally.beyond
    );
    anyhow::ensure!(
        tally.lost == 0 && tally.duplicated == 0,
        "the invariant does not hold"
    );
    Ok(())
}

/// Compares the acknowledged records with what the chat-system holds.
/// A number acknowledged twice, or stored with another body than the one
/// acknowledged, counts as duplicated.
async fn check(
    chat_system: &ChatSystem,
    token: &str,
    chats: &BTreeMap<i64, usize>,
    messages: &BTreeMap<i64, Vec<(i64, String)>>,
) -> anyhow::Result<Tally> {
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
    for (&chat, acknowledged) in messages {
        let stored: HashMap<i64, String> = chat_system
            .messages(token, chat)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|message| (message.number, message.body))
            .collect();
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
                Some(stored) if stored == body => tally.stored += 1,
                Some(_) => tally.duplicated += 1,
                None => tally.lost += 1,
            }
        }
    }
    Ok(tally)
}
