//! A local stand-in for Slack's Web API, speaking its wire protocol: methods
//! at `/api/<method>`, bodies as JSON or form fields (or the query string),
//! `Authorization: Bearer <token>`, answers `{"ok":true,...}` or
//! `{"ok":false,"error":...}` with HTTP 200, 429 with `Retry-After` when
//! throttled.
//!
//! It keeps messages per channel and thread (with their metadata, so
//! conversations.replies can find a reply by its key), reactions and
//! assistant statuses, records every call with its arrival time, and on
//! command fails calls (429, 5xx, `ok:false`, or a dropped connection after
//! the call took effect) and enforces Slack's rate limits, counting
//! violations.
#![allow(dead_code)] // a harness: not every test uses every method

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The token the stand-in accepts unless told otherwise.
pub const STUB_TOKEN: &str = "xoxb-stub-token";
pub const STUB_TEAM: &str = "T0001";
pub const STUB_BOT_USER: &str = "UBOT";
pub const STUB_BOT_ID: &str = "BBOT";

/// How the next calls of a method fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// HTTP 429 with `Retry-After: secs`.
    RateLimited { retry_after_secs: u64 },
    /// This HTTP status (e.g. 500, 503) with a plain body.
    Status(u16),
    /// HTTP 200 `{"ok":false,"error":code}`.
    Error(String),
    /// Do what the call asks (a post is stored), then drop the connection
    /// without answering: the caller cannot know it succeeded.
    DropAfterAccept,
    /// Take the call and never answer (the caller's timeout fires).
    Hang,
}

/// One rate limit: a token bucket of `burst` that refills `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub burst: u32,
    pub per_minute: f64,
}

/// The limits enforced when enabled.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// Per method, shared by every channel (Slack: per app and workspace).
    pub per_method: HashMap<String, Limit>,
    /// chat.postMessage, per channel.
    pub post_per_channel: Limit,
}

impl RateLimits {
    /// Slack's published limits: Tier 3 (about 50 a minute) for chat.update,
    /// reactions.*, conversations.replies/history, and about one
    /// chat.postMessage a second per channel, each with a small burst.
    pub fn slack() -> Self {
        Self::tier3(Limit {
            burst: 5,
            per_minute: 50.0,
        })
    }

    /// The Slack methods egress uses, each limited to `limit`, and posts at
    /// one a second per channel with a burst of 3.
    pub fn tier3(limit: Limit) -> Self {
        let per_method = [
            "chat.update",
            "reactions.add",
            "reactions.remove",
            "conversations.replies",
            "conversations.history",
            "assistant.threads.setStatus",
        ]
        .into_iter()
        .map(|m| (m.to_string(), limit))
        .collect();
        Self {
            per_method,
            post_per_channel: Limit {
                burst: 3,
                per_minute: 60.0,
            },
        }
    }
}

/// One call as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub at: Instant,
    /// Every parameter, from the query string and the body.
    pub params: Value,
    /// The HTTP status answered (0: the connection was dropped or hung).
    pub status: u16,
    /// The `error` of an `ok:false` answer.
    pub error: Option<String>,
}

impl Call {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(Value::as_str)
    }

    pub fn ok(&self) -> bool {
        self.status == 200 && self.error.is_none()
    }
}

/// A message stored in a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct StubMessage {
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub text: String,
    pub user: String,
    pub bot_id: Option<String>,
    pub metadata: Option<Value>,
    /// Every text it had, the first one posted and then each update.
    pub history: Vec<String>,
}

impl StubMessage {
    /// The reply id in our metadata, if any.
    pub fn reply_id(&self) -> Option<&str> {
        self.metadata.as_ref()?["event_payload"]["reply_id"].as_str()
    }

    fn to_json(&self, with_metadata: bool) -> Value {
        let mut m = json!({
            "type": "message",
            "ts": self.ts,
            "text": self.text,
            "user": self.user,
            "team": STUB_TEAM,
        });
        if let Some(bot) = &self.bot_id {
            m["bot_id"] = json!(bot);
        }
        if let Some(t) = &self.thread_ts {
            m["thread_ts"] = json!(t);
        }
        if self.history.len() > 1 {
            m["edited"] = json!({"user": self.user, "ts": self.ts});
        }
        if let (true, Some(meta)) = (with_metadata, &self.metadata) {
            m["metadata"] = meta.clone();
        }
        m
    }
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    limit: Limit,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(limit: Limit) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            last: Instant::now(),
        }
    }

    /// Take a token, or say how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let per_sec = self.limit.per_minute / 60.0;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(f64::from(self.limit.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_sec))
        }
    }
}

#[derive(Default)]
struct Inner {
    token: String,
    next_ts: u64,
    calls: Vec<Call>,
    /// Messages per channel, in posting order.
    messages: HashMap<String, Vec<StubMessage>>,
    /// Reaction names per (channel, ts).
    reactions: HashMap<(String, String), Vec<String>>,
    /// Assistant status per (channel, thread_ts), latest last.
    statuses: HashMap<(String, String), Vec<String>>,
    failures: HashMap<String, VecDeque<Failure>>,
    channel_errors: HashMap<String, String>,
    limits: Option<RateLimits>,
    buckets: HashMap<String, Bucket>,
    violations: HashMap<String, u64>,
}

/// The running stand-in. Dropping it stops the server.
pub struct SlackStub {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    shutdown: CancellationToken,
}

impl Drop for SlackStub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl SlackStub {
    /// Start on 127.0.0.1, a free port, accepting [`STUB_TOKEN`].
    pub async fn start() -> Self {
        Self::start_with_token(STUB_TOKEN).await
    }

    pub async fn start_with_token(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_string(),
            next_ts: 1,
            ..Inner::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Slack stand-in");
        let addr = listener.local_addr().expect("stand-in address");
        let router = Router::new()
            .route("/api/{method}", any(handle))
            .with_state(inner.clone());
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, router, shutdown.clone()));
        Self {
            addr,
            inner,
            shutdown,
        }
    }

    /// The Web API base URL (`http://127.0.0.1:<port>/api/`), for
    /// `slack.api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    pub fn token(&self) -> String {
        self.lock().token.clone()
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls of one method.
    pub fn calls_to(&self, method: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// The messages of a thread (its root too, when stored), or with `None`
    /// the channel's top-level messages; oldest first.
    pub fn messages_in(&self, channel: &str, thread_ts: Option<&str>) -> Vec<StubMessage> {
        let inner = self.lock();
        let all = inner.messages.get(channel).cloned().unwrap_or_default();
        all.into_iter()
            .filter(|m| match thread_ts {
                Some(t) => m.thread_ts.as_deref() == Some(t) || m.ts == t,
                None => m.thread_ts.is_none() || m.thread_ts.as_ref() == Some(&m.ts),
            })
            .collect()
    }

    /// Every message of every channel.
    pub fn all_messages(&self) -> Vec<StubMessage> {
        let inner = self.lock();
        let mut all: Vec<StubMessage> = inner.messages.values().flatten().cloned().collect();
        all.sort_by(|a, b| a.ts.cmp(&b.ts));
        all
    }

    /// The reactions on message `ts`, in the order added.
    pub fn reactions_on(&self, channel: &str, ts: &str) -> Vec<String> {
        let key = (channel.to_string(), ts.to_string());
        self.lock().reactions.get(&key).cloned().unwrap_or_default()
    }

    /// Every status set on an assistant thread, latest last.
    pub fn statuses_of(&self, channel: &str, thread_ts: &str) -> Vec<String> {
        let key = (channel.to_string(), thread_ts.to_string());
        self.lock().statuses.get(&key).cloned().unwrap_or_default()
    }

    /// Store a message written by a person (a thread root to react to).
    pub fn add_user_message(&self, channel: &str, thread_ts: Option<&str>, text: &str) -> String {
        let mut inner = self.lock();
        let ts = inner.take_ts();
        inner.store(StubMessage {
            channel: channel.to_string(),
            ts: ts.clone(),
            thread_ts: thread_ts.map(str::to_string),
            text: text.to_string(),
            user: "UALICE".into(),
            bot_id: None,
            metadata: None,
            history: vec![text.to_string()],
        });
        ts
    }

    /// The next `n` calls of `method` fail with `failure`.
    pub fn fail_next(&self, method: &str, n: usize, failure: Failure) {
        let mut inner = self.lock();
        let queue = inner.failures.entry(method.to_string()).or_default();
        queue.extend(std::iter::repeat_n(failure, n));
    }

    /// Forget the failures still queued for `method`.
    pub fn clear_failures(&self, method: &str) {
        self.lock().failures.remove(method);
    }

    /// Every call naming `channel` answers `ok:false` with `error` (e.g.
    /// `channel_not_found`, `not_in_channel`) until cleared with `None`.
    pub fn fail_channel(&self, channel: &str, error: Option<&str>) {
        let mut inner = self.lock();
        match error {
            Some(e) => inner
                .channel_errors
                .insert(channel.to_string(), e.to_string()),
            None => inner.channel_errors.remove(channel),
        };
    }

    /// Enforce `limits` from now on (fresh buckets), or stop with `None`.
    pub fn set_rate_limits(&self, limits: Option<RateLimits>) {
        let mut inner = self.lock();
        inner.limits = limits;
        inner.buckets.clear();
    }

    /// Calls answered 429 because they exceeded an enforced limit (injected
    /// 429s do not count).
    pub fn violations(&self) -> u64 {
        self.lock().violations.values().sum()
    }

    /// Violations per method.
    pub fn violations_by_method(&self) -> HashMap<String, u64> {
        self.lock().violations.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("stand-in state")
    }
}

/// A per-connection switch a handler flips to drop its connection unanswered.
#[derive(Clone)]
struct ConnectionKill(CancellationToken);

/// Accept connections until `shutdown`; serve each with HTTP/1, dropping it
/// when its handler asks.
async fn serve(listener: tokio::net::TcpListener, router: Router, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = shutdown.cancelled() => return,
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let kill = CancellationToken::new();
            let service = {
                let kill = kill.clone();
                hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                    request
                        .extensions_mut()
                        .insert(ConnectionKill(kill.clone()));
                    router.clone().oneshot(request)
                })
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                // The connection's own errors are the client's business.
                _ = connection => {}
                _ = kill.cancelled() => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

type Shared = Arc<Mutex<Inner>>;

async fn handle(
    State(state): State<Shared>,
    Path(method): Path<String>,
    Extension(kill): Extension<ConnectionKill>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let params = parse_params(query.as_deref(), &headers, &body);
    let (answer, failure) = {
        let mut inner = state.lock().expect("stand-in state");
        let (answer, failure) = inner.answer(&method, &headers, &params, at);
        let (status, error) = match &answer {
            _ if matches!(failure, Some(Failure::DropAfterAccept | Failure::Hang)) => (0, None),
            Answer::Json(status, body) => (
                *status,
                body.get("error")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
            Answer::Status(status) => (*status, None),
            Answer::RateLimited(_) => (429, Some("ratelimited".to_string())),
        };
        inner.calls.push(Call {
            method: method.clone(),
            at,
            params,
            status,
            error,
        });
        (answer, failure)
    };
    match failure {
        Some(Failure::DropAfterAccept) => {
            kill.0.cancel();
            std::future::pending::<()>().await;
        }
        Some(Failure::Hang) => std::future::pending::<()>().await,
        _ => {}
    }
    answer.into_response()
}

/// What the stand-in answers.
enum Answer {
    Json(u16, Value),
    Status(u16),
    RateLimited(u64),
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Answer::Json(status, body) => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                axum::Json(body),
            )
                .into_response(),
            Answer::Status(status) => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "upstream trouble",
            )
                .into_response(),
            Answer::RateLimited(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                axum::Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response(),
        }
    }
}

fn ok(fields: Value) -> Answer {
    let mut body = json!({"ok": true});
    if let (Some(out), Value::Object(more)) = (body.as_object_mut(), fields) {
        out.extend(more);
    }
    Answer::Json(200, body)
}

fn err(code: &str) -> Answer {
    Answer::Json(200, json!({"ok": false, "error": code}))
}

/// Query string and body (JSON or form) merged into one object. Form values
/// that hold JSON (`metadata`) are decoded.
fn parse_params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Value {
    let mut out = Map::new();
    let mut form = |text: &str| {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text).unwrap_or_default();
        for (k, v) in pairs {
            let value = match serde_json::from_str::<Value>(&v) {
                Ok(v @ Value::Object(_)) => v,
                _ => Value::String(v),
            };
            out.insert(k, value);
        }
    };
    if let Some(q) = query {
        form(q);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
            out.extend(map);
        }
    } else if !body.is_empty() {
        form(std::str::from_utf8(body).unwrap_or(""));
    }
    Value::Object(out)
}

fn text_param<'a>(params: &'a Value, name: &str) -> Option<&'a str> {
    params.get(name).and_then(Value::as_str)
}

fn flag(params: &Value, name: &str) -> bool {
    match params.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true" || s == "1",
        _ => false,
    }
}

impl Inner {
    /// Decide the answer to one call and apply its effect.
    fn answer(
        &mut self,
        method: &str,
        headers: &HeaderMap,
        params: &Value,
        now: Instant,
    ) -> (Answer, Option<Failure>) {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| text_param(params, "token"));
        match bearer {
            None => return (err("not_authed"), None),
            Some(t) if t != self.token => return (err("invalid_auth"), None),
            Some(_) => {}
        }
        let failure = self.failures.get_mut(method).and_then(VecDeque::pop_front);
        match &failure {
            Some(Failure::RateLimited { retry_after_secs }) => {
                return (Answer::RateLimited(*retry_after_secs), failure);
            }
            Some(Failure::Status(status)) => return (Answer::Status(*status), failure),
            Some(Failure::Error(code)) => return (err(code), failure),
            _ => {}
        }
        if let Some(wait) = self.throttle(method, params, now) {
            *self.violations.entry(method.to_string()).or_default() += 1;
            return (
                Answer::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64),
                None,
            );
        }
        let channel = text_param(params, "channel").or_else(|| text_param(params, "channel_id"));
        if let Some(code) = channel.and_then(|c| self.channel_errors.get(c)) {
            return (err(&code.clone()), failure);
        }
        (self.perform(method, params), failure)
    }

    /// The wait before the call would be within the enforced limits, if it
    /// is over them now.
    fn throttle(&mut self, method: &str, params: &Value, now: Instant) -> Option<Duration> {
        let limits = self.limits.as_ref()?;
        let (key, limit) = if method == "chat.postMessage" {
            let channel = text_param(params, "channel").unwrap_or("");
            (format!("{method}:{channel}"), limits.post_per_channel)
        } else {
            (method.to_string(), *limits.per_method.get(method)?)
        };
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(limit));
        bucket.take(now).err()
    }

    fn perform(&mut self, method: &str, params: &Value) -> Answer {
        match method {
            "auth.test" => ok(json!({
                "url": "https://stub.slack.test/", "team": "Stub", "user": "switchboard",
                "team_id": STUB_TEAM, "user_id": STUB_BOT_USER, "bot_id": STUB_BOT_ID,
            })),
            "chat.postMessage" => self.post_message(params),
            "chat.update" => self.update_message(params),
            "reactions.add" | "reactions.remove" => self.react(method == "reactions.add", params),
            "conversations.replies" => self.replies(params),
            "conversations.history" => self.history(params),
            "assistant.threads.setStatus" => self.set_status(params),
            _ => err("unknown_method"),
        }
    }

    fn take_ts(&mut self) -> String {
        let n = self.next_ts;
        self.next_ts += 1;
        format!("1700000000.{n:06}")
    }

    fn store(&mut self, message: StubMessage) {
        self.messages
            .entry(message.channel.clone())
            .or_default()
            .push(message);
    }

    fn find_mut(&mut self, channel: &str, ts: &str) -> Option<&mut StubMessage> {
        self.messages
            .get_mut(channel)?
            .iter_mut()
            .find(|m| m.ts == ts)
    }

    fn post_message(&mut self, params: &Value) -> Answer {
        let Some(channel) = text_param(params, "channel") else {
            return err("channel_not_found");
        };
        let text = text_param(params, "text").unwrap_or("");
        if text.is_empty() && params.get("blocks").is_none() {
            return err("no_text");
        }
        if text.chars().count() > 40_000 {
            return err("msg_too_long");
        }
        let metadata = match params.get("metadata") {
            None => None,
            Some(m @ Value::Object(_)) if m.get("event_type").is_some_and(Value::is_string) => {
                Some(m.clone())
            }
            Some(_) => return err("invalid_metadata_format"),
        };
        let ts = self.take_ts();
        let message = StubMessage {
            channel: channel.to_string(),
            ts: ts.clone(),
            thread_ts: text_param(params, "thread_ts").map(str::to_string),
            text: text.to_string(),
            user: STUB_BOT_USER.into(),
            bot_id: Some(STUB_BOT_ID.into()),
            metadata,
            history: vec![text.to_string()],
        };
        let body = message.to_json(true);
        self.store(message);
        ok(json!({"channel": channel, "ts": ts, "message": body}))
    }

    fn update_message(&mut self, params: &Value) -> Answer {
        let (Some(channel), Some(ts)) = (text_param(params, "channel"), text_param(params, "ts"))
        else {
            return err("message_not_found");
        };
        let text = text_param(params, "text").unwrap_or("").to_string();
        if text.chars().count() > 40_000 {
            return err("msg_too_long");
        }
        let Some(message) = self.find_mut(channel, ts) else {
            return err("message_not_found");
        };
        if message.bot_id.is_none() {
            return err("cant_update_message");
        }
        message.text = text.clone();
        message.history.push(text.clone());
        if let Some(meta) = params.get("metadata").filter(|m| m.is_object()) {
            message.metadata = Some(meta.clone());
        }
        let body = message.to_json(true);
        ok(json!({"channel": channel, "ts": ts, "text": text, "message": body}))
    }

    fn react(&mut self, add: bool, params: &Value) -> Answer {
        let (Some(channel), Some(ts), Some(name)) = (
            text_param(params, "channel"),
            text_param(params, "timestamp"),
            text_param(params, "name"),
        ) else {
            return err("invalid_arguments");
        };
        let names = self
            .reactions
            .entry((channel.to_string(), ts.to_string()))
            .or_default();
        let has = names.iter().any(|n| n == name);
        match (add, has) {
            (true, true) => err("already_reacted"),
            (false, false) => err("no_reaction"),
            (true, false) => {
                names.push(name.to_string());
                ok(json!({}))
            }
            (false, true) => {
                names.retain(|n| n != name);
                ok(json!({}))
            }
        }
    }

    fn replies(&self, params: &Value) -> Answer {
        let (Some(channel), Some(ts)) = (text_param(params, "channel"), text_param(params, "ts"))
        else {
            return err("thread_not_found");
        };
        let with_metadata = flag(params, "include_all_metadata");
        let messages: Vec<Value> = self
            .messages
            .get(channel)
            .into_iter()
            .flatten()
            .filter(|m| m.ts == ts || m.thread_ts.as_deref() == Some(ts))
            .map(|m| m.to_json(with_metadata))
            .collect();
        page(messages, params)
    }

    fn history(&self, params: &Value) -> Answer {
        let Some(channel) = text_param(params, "channel") else {
            return err("channel_not_found");
        };
        let with_metadata = flag(params, "include_all_metadata");
        let mut messages: Vec<Value> = self
            .messages
            .get(channel)
            .into_iter()
            .flatten()
            .filter(|m| m.thread_ts.is_none() || m.thread_ts.as_ref() == Some(&m.ts))
            .map(|m| m.to_json(with_metadata))
            .collect();
        messages.reverse(); // newest first, as Slack lists history
        page(messages, params)
    }

    fn set_status(&mut self, params: &Value) -> Answer {
        let (Some(channel), Some(ts)) = (
            text_param(params, "channel_id"),
            text_param(params, "thread_ts"),
        ) else {
            return err("invalid_arguments");
        };
        let status = text_param(params, "status").unwrap_or("").to_string();
        self.statuses
            .entry((channel.to_string(), ts.to_string()))
            .or_default()
            .push(status);
        ok(json!({}))
    }
}

/// One page of `messages` by `limit` and `cursor` (an offset, as text).
fn page(messages: Vec<Value>, params: &Value) -> Answer {
    let limit = text_param(params, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let start = text_param(params, "cursor")
        .and_then(|c| c.strip_prefix("offset:"))
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0);
    let end = (start + limit).min(messages.len());
    let has_more = end < messages.len();
    let next_cursor = if has_more {
        format!("offset:{end}")
    } else {
        String::new()
    };
    ok(json!({
        "messages": messages.get(start..end).unwrap_or_default(),
        "has_more": has_more,
        "response_metadata": {"next_cursor": next_cursor},
    }))
}
