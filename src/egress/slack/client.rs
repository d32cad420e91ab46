//! The Slack Web API calls egress makes, on slack-morphism's client, and
//! the one Socket Mode ingress makes (apps.connections.open, with the
//! app-level token).
//!
//! slack-morphism brings the connection pool, the Bearer token, the JSON
//! bodies and the reading of Slack's answers (429 with `Retry-After`,
//! `ok:false` with its code, other HTTP statuses). Its typed requests are
//! used where they fit (reactions, assistant status); chat.postMessage,
//! chat.update, conversations.replies and conversations.history go through
//! its generic `http_post` / `http_get` with our own small request and answer
//! types, because its typed ones cannot send `mrkdwn` on a post or
//! `include_all_metadata` on conversations.replies (without which Slack
//! leaves out the metadata we look replies up by), and because decoding only
//! the fields we read keeps a lookup working whatever else a message holds.
//!
//! The connector is built from hyper-rustls with `https_or_http()`, so a
//! plain `http://` stand-in works in tests; rustls runs on ring, installed as
//! the process default. Every call has a timeout and returns a classified
//! [`SlackError`].

use std::future::Future;
use std::sync::Once;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slack_morphism::api::{
    SlackApiAppsConnectionOpenRequest, SlackApiAssistantThreadsSetStatusRequest,
    SlackApiReactionsAddRequest, SlackApiReactionsRemoveRequest,
};
use slack_morphism::errors::SlackClientError;
use slack_morphism::hyper_tokio::{SlackClientHyperConnector, SlackClientHyperHttpsConnector};
use slack_morphism::{SlackApiToken, SlackApiTokenValue, SlackClient, SlackClientSession};

use super::error::SlackError;
use crate::config::{Secret, Settings};

/// The `event_type` of the metadata every reply message carries.
pub const REPLY_EVENT_TYPE: &str = "switchboard_reply";
/// How long one call may take before it counts as a transient failure.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages fetched per page of conversations.replies / .history.
const PAGE_SIZE: &str = "200";
/// Pages read at most when looking for a reply (200 messages each).
const MAX_PAGES: usize = 25;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SlackSetupError {
    #[error("no Slack bot token: set SLACK_BOT_TOKEN or slack.bot_token_file")]
    MissingToken,
    #[error("slack.api_base_url {0:?} is not an http:// or https:// URL")]
    BadBaseUrl(String),
}

/// Install rustls' ring provider as the process default, once. Safe to call
/// from anywhere, any number of times.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means a provider was installed before us; rustls needs
        // one default, not ours in particular, so there is nothing to do.
        if rustls::crypto::ring::default_provider()
            .install_default()
            .is_err()
        {
            tracing::debug!("a rustls crypto provider was already installed");
        }
    });
}

/// One message to post.
#[derive(Debug, Clone, Copy)]
pub struct PostMessage<'a> {
    pub channel: &'a str,
    /// The thread to post in (None: top level, as in a DM).
    pub thread_ts: Option<&'a str>,
    /// mrkdwn text (see [`super::mrkdwn`]).
    pub text: &'a str,
    /// The idempotency key, carried in the message metadata so that the
    /// message can be found again ([`SlackApi::find_reply`]).
    pub reply_id: Option<&'a str>,
}

/// A posted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
}

/// A message read back from a thread or channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadMessage {
    pub ts: String,
    pub text: String,
    pub user: Option<String>,
    pub bot_id: Option<String>,
    /// The reply id from our metadata, when the message is one of our replies.
    pub reply_id: Option<String>,
}

/// A Slack Web API client for one bot token. Cheap to clone.
#[derive(Clone)]
pub struct SlackApi {
    client: SlackClient<SlackClientHyperHttpsConnector>,
    token: SlackApiToken,
    timeout: Duration,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApi")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SlackApi {
    /// A client for the Web API at `api_base_url` (e.g.
    /// `https://slack.com/api/`) with `bot_token`.
    pub fn new(
        api_base_url: &str,
        bot_token: &Secret,
        timeout: Duration,
    ) -> Result<Self, SlackSetupError> {
        if !(api_base_url.starts_with("https://") || api_base_url.starts_with("http://")) {
            return Err(SlackSetupError::BadBaseUrl(api_base_url.to_string()));
        }
        install_crypto_provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(builder) => builder,
            Err(error) => {
                tracing::warn!(%error, "no usable system CA certificates; using the bundled roots");
                hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
            }
        };
        let https = builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        // slack-morphism joins base and method with a `/`.
        let connector = SlackClientHyperConnector::from(https)
            .with_slack_api_url(api_base_url.trim_end_matches('/'));
        Ok(Self {
            client: SlackClient::new(connector),
            token: SlackApiToken::new(SlackApiTokenValue(bot_token.expose().to_string())),
            timeout,
        })
    }

    /// A client from the `[slack]` settings and the `SLACK_BOT_TOKEN` secret.
    pub fn from_settings(settings: &Settings) -> Result<Self, SlackSetupError> {
        let token = settings
            .secrets
            .slack_bot_token
            .as_ref()
            .ok_or(SlackSetupError::MissingToken)?;
        Self::new(&settings.slack.api_base_url, token, DEFAULT_TIMEOUT)
    }

    /// chat.postMessage: post `message`, with the reply id in its metadata.
    pub async fn post_message(&self, message: &PostMessage<'_>) -> Result<Posted, SlackError> {
        let body = PostBody {
            channel: message.channel,
            thread_ts: message.thread_ts,
            text: message.text,
            mrkdwn: true,
            metadata: message.reply_id.map(|reply_id| Metadata {
                event_type: REPLY_EVENT_TYPE,
                event_payload: Payload { reply_id },
            }),
        };
        let session = self.session();
        let answer: PostAnswer = self
            .call(
                "chat.postMessage",
                session
                    .http_session_api
                    .http_post("chat.postMessage", &body, None),
            )
            .await?;
        Ok(Posted {
            channel: answer.channel,
            ts: answer.ts,
        })
    }

    /// chat.update: replace the text of message `ts` in `channel`.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
    ) -> Result<(), SlackError> {
        let body = UpdateBody { channel, ts, text };
        let session = self.session();
        let _: Ack = self
            .call(
                "chat.update",
                session
                    .http_session_api
                    .http_post("chat.update", &body, None),
            )
            .await?;
        Ok(())
    }

    /// reactions.add: react with `name` (e.g. `eyes`) to message `ts`.
    /// Already reacted counts as done.
    pub async fn add_reaction(
        &self,
        channel: &str,
        ts: &str,
        name: &str,
    ) -> Result<(), SlackError> {
        let request =
            SlackApiReactionsAddRequest::new(channel.into(), name.into(), ts.to_string().into());
        let session = self.session();
        match self
            .call("reactions.add", session.reactions_add(&request))
            .await
        {
            Err(SlackError::Permanent { code }) if code == "already_reacted" => Ok(()),
            other => other.map(drop),
        }
    }

    /// reactions.remove: take reaction `name` off message `ts`. No such
    /// reaction counts as done.
    pub async fn remove_reaction(
        &self,
        channel: &str,
        ts: &str,
        name: &str,
    ) -> Result<(), SlackError> {
        let request = SlackApiReactionsRemoveRequest::new(name.into())
            .with_channel(channel.into())
            .with_timestamp(ts.to_string().into());
        let session = self.session();
        match self
            .call("reactions.remove", session.reactions_remove(&request))
            .await
        {
            Err(SlackError::Permanent { code }) if code == "no_reaction" => Ok(()),
            other => other.map(drop),
        }
    }

    /// assistant.threads.setStatus: show `status` (empty clears it) in an
    /// assistant thread.
    pub async fn set_assistant_status(
        &self,
        channel: &str,
        thread_ts: &str,
        status: &str,
    ) -> Result<(), SlackError> {
        let request = SlackApiAssistantThreadsSetStatusRequest::new(
            channel.into(),
            status.to_string(),
            thread_ts.to_string().into(),
        );
        let session = self.session();
        self.call(
            "assistant.threads.setStatus",
            session.assistant_threads_set_status(&request),
        )
        .await
        .map(drop)
    }

    /// conversations.replies with `include_all_metadata`: every message of
    /// the thread rooted at `thread_ts`, oldest first, all pages.
    pub async fn thread_replies(
        &self,
        channel: &str,
        thread_ts: &str,
    ) -> Result<Vec<ThreadMessage>, SlackError> {
        self.read_pages("conversations.replies", channel, Some(thread_ts), None)
            .await
    }

    /// The message carrying `reply_id` in its metadata: in the thread
    /// `thread_ts`, or among the channel's latest messages when there is no
    /// thread (a top-level DM reply).
    pub async fn find_reply(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        reply_id: &str,
    ) -> Result<Option<ThreadMessage>, SlackError> {
        let messages = match thread_ts {
            Some(ts) => self.thread_replies(channel, ts).await?,
            None => {
                self.read_pages("conversations.history", channel, None, Some(1))
                    .await?
            }
        };
        Ok(messages
            .into_iter()
            .find(|m| m.reply_id.as_deref() == Some(reply_id)))
    }

    async fn read_pages(
        &self,
        method: &'static str,
        channel: &str,
        thread_ts: Option<&str>,
        max_pages: Option<usize>,
    ) -> Result<Vec<ThreadMessage>, SlackError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..max_pages.unwrap_or(MAX_PAGES) {
            let params = vec![
                ("channel", Some(channel)),
                ("ts", thread_ts),
                ("include_all_metadata", Some("true")),
                ("limit", Some(PAGE_SIZE)),
                ("cursor", cursor.as_deref()),
            ];
            let session = self.session();
            let page: Page = self
                .call(
                    method,
                    session.http_session_api.http_get(method, &params, None),
                )
                .await?;
            out.extend(page.messages.into_iter().map(RawMessage::into_message));
            cursor = page
                .response_metadata
                .and_then(|m| m.next_cursor)
                .filter(|c| !c.is_empty());
            if cursor.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// apps.connections.open (the client must hold an app-level token):
    /// the URL of a new Socket Mode websocket. It carries a one-time ticket,
    /// so it comes back as a [`Secret`].
    pub async fn open_socket_connection(&self) -> Result<Secret, SlackError> {
        let session = self.session();
        let answer = self
            .call(
                "apps.connections.open",
                session.apps_connections_open(&SlackApiAppsConnectionOpenRequest::new()),
            )
            .await?;
        Ok(Secret::new(answer.url.0.to_string()))
    }

    fn session(&self) -> SlackClientSession<'_, SlackClientHyperHttpsConnector> {
        self.client.open_session(&self.token)
    }

    /// Run one call with the timeout, classifying its failure.
    async fn call<T>(
        &self,
        method: &'static str,
        request: impl Future<Output = Result<T, SlackClientError>>,
    ) -> Result<T, SlackError> {
        match tokio::time::timeout(self.timeout, request).await {
            Err(_) => Err(SlackError::timeout(method, self.timeout)),
            Ok(Err(error)) => Err(SlackError::from_client(method, error)),
            Ok(Ok(value)) => Ok(value),
        }
    }
}

#[derive(Serialize)]
struct PostBody<'a> {
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_ts: Option<&'a str>,
    text: &'a str,
    mrkdwn: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    event_type: &'a str,
    event_payload: Payload<'a>,
}

#[derive(Serialize)]
struct Payload<'a> {
    reply_id: &'a str,
}

#[derive(Serialize)]
struct UpdateBody<'a> {
    channel: &'a str,
    ts: &'a str,
    text: &'a str,
}

#[derive(Deserialize)]
struct PostAnswer {
    channel: String,
    ts: String,
}

/// An `ok:true` answer whose fields we do not need.
#[derive(Deserialize)]
struct Ack {}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    messages: Vec<RawMessage>,
    response_metadata: Option<PageCursor>,
}

#[derive(Deserialize)]
struct PageCursor {
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    ts: String,
    #[serde(default)]
    text: String,
    user: Option<String>,
    bot_id: Option<String>,
    metadata: Option<RawMetadata>,
}

#[derive(Deserialize)]
struct RawMetadata {
    event_type: String,
    #[serde(default)]
    event_payload: serde_json::Value,
}

impl RawMessage {
    fn into_message(self) -> ThreadMessage {
        let reply_id = self
            .metadata
            .filter(|m| m.event_type == REPLY_EVENT_TYPE)
            .and_then(|m| {
                m.event_payload
                    .get("reply_id")?
                    .as_str()
                    .map(str::to_string)
            });
        ThreadMessage {
            ts: self.ts,
            text: self.text,
            user: self.user,
            bot_id: self.bot_id,
            reply_id,
        }
    }
}
