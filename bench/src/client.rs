//! The few chat-system calls the benchmarks and the chaos checks make,
//! straight to the chat-system (never through the api).

use anyhow::{Context, ensure};
use serde::Deserialize;
use serde_json::json;
use shared::secret::Secret;

#[derive(Clone)]
pub(crate) struct ChatSystem {
    url: String,
    client: reqwest::Client,
    /// `CHAT_SYSTEM_WRITE_TOKEN` and `CHAT_SYSTEM_ADMIN_TOKEN` (or their
    /// files) from the environment, as the chat-system of the run has them.
    write: Option<Secret>,
    admin: Option<Secret>,
}

/// The credentials the bench reads from its environment.
#[derive(clap::Parser)]
struct Credentials {
    #[command(flatten)]
    write: shared::secret::WriteCredential,
    #[command(flatten)]
    admin: shared::secret::AdminCredential,
}

#[derive(Deserialize)]
struct Application {
    token: String,
}

#[derive(Deserialize)]
pub(crate) struct Counts {
    pub(crate) chats_count: i64,
    pub(crate) last_chat_number: i64,
}

#[derive(Deserialize)]
struct Chat {
    messages_count: i64,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<Message>,
    next_after: Option<i64>,
}

#[derive(Deserialize)]
pub(crate) struct Message {
    pub(crate) number: i64,
    pub(crate) body: String,
    /// 0 until edited.
    pub(crate) revision: i64,
}

impl ChatSystem {
    pub(crate) fn new(url: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(256)
            .build()?;
        let credentials = <Credentials as clap::Parser>::try_parse_from(["bench"])?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            client,
            write: credentials.write.secret()?,
            admin: credentials.admin.secret()?,
        })
    }

    /// `request` with the credential, when there is one.
    fn with(request: reqwest::RequestBuilder, secret: &Option<Secret>) -> reqwest::RequestBuilder {
        match secret {
            Some(secret) => request.bearer_auth(secret.expose()),
            None => request,
        }
    }

    /// A new application; its token.
    pub(crate) async fn application(&self, name: &str) -> anyhow::Result<String> {
        let request = self.client.post(format!("{}/applications", self.url));
        let response = Self::with(request, &self.admin)
            .json(&json!({ "name": name }))
            .send()
            .await
            .context("creating an application in the chat-system")?;
        ensure!(
            response.status().is_success(),
            "creating an application: {}",
            response.status()
        );
        Ok(response.json::<Application>().await?.token)
    }

    /// Stores chats 1..=`count` of `token`.
    pub(crate) async fn chats(&self, token: &str, count: i64) -> anyhow::Result<()> {
        for chat in 1..=count {
            let request = self
                .client
                .put(format!("{}/applications/{token}/chats/{chat}", self.url));
            let response = Self::with(request, &self.write).send().await?;
            ensure!(
                response.status().is_success(),
                "creating chat {chat}: {}",
                response.status()
            );
        }
        Ok(())
    }

    /// Stores one message, as the worker does.
    pub(crate) async fn message(
        &self,
        token: &str,
        chat: i64,
        number: i64,
        body: &str,
    ) -> anyhow::Result<()> {
        let request = self.client.put(format!(
            "{}/applications/{token}/chats/{chat}/messages/{number}",
            self.url
        ));
        let response = Self::with(request, &self.write)
            .json(&json!({ "body": body }))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "storing message {chat}/{number}: {}",
            response.status()
        );
        Ok(())
    }

    /// How many chats an application has, and its highest chat number.
    pub(crate) async fn counts(&self, token: &str) -> anyhow::Result<Counts> {
        let response = self
            .client
            .get(format!("{}/applications/{token}", self.url))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "reading the application: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    pub(crate) async fn chat_exists(&self, token: &str, chat: i64) -> anyhow::Result<bool> {
        let response = self
            .client
            .get(format!("{}/applications/{token}/chats/{chat}", self.url))
            .send()
            .await?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => anyhow::bail!("reading chat {chat}: {status}"),
        }
    }

    pub(crate) async fn messages_count(&self, token: &str, chat: i64) -> anyhow::Result<i64> {
        let response = self
            .client
            .get(format!("{}/applications/{token}/chats/{chat}", self.url))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "reading chat {chat}: {}",
            response.status()
        );
        Ok(response.json::<Chat>().await?.messages_count)
    }

    /// Messages stored in all chats of an application (the chats it has
    /// stored, summed from its chat list).
    pub(crate) async fn stored_messages(&self, token: &str) -> anyhow::Result<i64> {
        #[derive(Deserialize)]
        struct Chats {
            items: Vec<Chat>,
            next_after: Option<i64>,
        }
        let (mut total, mut after) = (0, 0);
        loop {
            let url = format!(
                "{}/applications/{token}/chats?after={after}&limit=1000",
                self.url
            );
            let response = self.client.get(url).send().await?;
            ensure!(
                response.status().is_success(),
                "listing the chats: {}",
                response.status()
            );
            let page: Chats = response.json().await?;
            total += page
                .items
                .iter()
                .map(|chat| chat.messages_count)
                .sum::<i64>();
            match page.next_after {
                Some(next) => after = next,
                None => return Ok(total),
            }
        }
    }

    /// Every stored message of a chat, in order.
    pub(crate) async fn messages(&self, token: &str, chat: i64) -> anyhow::Result<Vec<Message>> {
        let mut messages = Vec::new();
        let mut after = 0;
        loop {
            let url = format!(
                "{}/applications/{token}/chats/{chat}/messages?after={after}&limit=1000",
                self.url
            );
            let response = self.client.get(url).send().await?;
            ensure!(
                response.status().is_success(),
                "listing chat {chat}: {}",
                response.status()
            );
            let page: Page = response.json().await?;
            messages.extend(page.items);
            match page.next_after {
                Some(next) => after = next,
                None => return Ok(messages),
            }
        }
    }
}
