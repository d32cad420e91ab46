//! A local stand-in of the Anthropic Messages API, for running the real
//! Claude Code CLI in tests: an in-process axum server on 127.0.0.1, port 0.
//!
//! `POST /v1/messages` (any query string) answers like the real API: with
//! `stream: true` as server-sent events (`message_start`,
//! `content_block_start`, `ping`, several `content_block_delta` text deltas,
//! `content_block_stop`, `message_delta` with `stop_reason: end_turn` and
//! usage, `message_stop`), otherwise as one JSON message. The whole event
//! stream is written as one body: the bytes are what the API sends, only
//! without its pauses between events.
//!
//! Replies are deterministic and tell what the client sent:
//! `stub reply #<n>: saw <k> user messages; last: <text>; first: <text>`,
//! so a test can see that a resumed session carries its earlier turns.
//! Every request (method, path, query, headers, body) is recorded.
//! `POST /v1/messages/count_tokens`, `GET /v1/models` and probes of `/` get
//! plausible answers; anything else is a 404 in the API's error shape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The stub's model name, used when a request names none.
pub const STUB_MODEL: &str = "claude-stub-1";

/// How many characters of a user text a reply quotes.
const QUOTE_CHARS: usize = 60;

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, when it was JSON.
    pub body: Option<Value>,
    /// The body as text (lossy), for requests that were not JSON.
    pub raw_body: String,
}

impl Recorded {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a message creation (`POST /v1/messages`).
    pub fn is_message(&self) -> bool {
        self.method == "POST" && self.path == "/v1/messages"
    }

    /// The texts of the user messages in the body, in order.
    pub fn user_texts(&self) -> Vec<String> {
        self.body.as_ref().map(user_texts).unwrap_or_default()
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    replies: AtomicU64,
}

/// The running stub; stops when dropped.
pub struct AnthropicStub {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl AnthropicStub {
    /// Start the stub on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Anthropic stub");
        let addr = listener.local_addr().expect("stub address");
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("anthropic stub stopped: {e}");
            }
        });
        Self { addr, shared, task }
    }

    /// For `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// The `POST /v1/messages` requests so far.
    pub fn message_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_message)
            .collect()
    }
}

impl Drop for AnthropicStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_string(), value)
            })
            .collect(),
        body: serde_json::from_slice(&body).ok(),
        raw_body: String::from_utf8_lossy(&body).into_owned(),
    };
    lock(&shared.requests).push(recorded.clone());
    let path = recorded.path.trim_end_matches('/');
    match (method.as_str(), path) {
        ("POST", "/v1/messages") => match &recorded.body {
            Some(body @ Value::Object(_)) => {
                let n = shared.replies.fetch_add(1, Ordering::Relaxed) + 1;
                create_message(n, body)
            }
            _ => api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "request body is not a JSON object",
            ),
        },
        ("POST", "/v1/messages/count_tokens") => {
            let tokens = recorded.body.as_ref().map_or(0, estimate_tokens);
            json_response(StatusCode::OK, &json!({ "input_tokens": tokens }))
        }
        ("GET", "/v1/models") => json_response(
            StatusCode::OK,
            &json!({
                "data": [model_info()],
                "has_more": false,
                "first_id": STUB_MODEL,
                "last_id": STUB_MODEL,
            }),
        ),
        ("GET" | "HEAD", "" | "/v1") => (StatusCode::OK, "anthropic stub\n").into_response(),
        _ => api_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("no route for {method} {}", recorded.path),
        ),
    }
}

fn model_info() -> Value {
    json!({
        "type": "model",
        "id": STUB_MODEL,
        "display_name": "Claude Stub",
        "created_at": "2025-01-01T00:00:00Z",
    })
}

/// Answer one `POST /v1/messages`, streamed or not.
fn create_message(n: u64, body: &Value) -> Response {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(STUB_MODEL)
        .to_string();
    let text = reply_text(n, body);
    let id = format!("msg_stub_{n:06}");
    let input_tokens = estimate_tokens(body);
    let output_tokens = text.split_whitespace().count() as u64;
    let streamed = body.get("stream").and_then(Value::as_bool) == Some(true);
    let mut response = if streamed {
        let events = sse_events(&id, &model, &text, input_tokens, output_tokens);
        let mut r = events.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        let message = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{ "type": "text", "text": text }],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": usage(input_tokens, output_tokens),
        });
        json_response(StatusCode::OK, &message)
    };
    if let Ok(value) = HeaderValue::from_str(&format!("req_stub_{n:06}")) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

/// The event stream of one message, in the API's wire format.
fn sse_events(id: &str, model: &str, text: &str, input: u64, output: u64) -> String {
    let mut events = vec![
        (
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": usage(input, 1),
                },
            }),
        ),
        (
            "content_block_start",
            json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": { "type": "text", "text": "" },
            }),
        ),
        ("ping", json!({ "type": "ping" })),
    ];
    for piece in split_text(text, 4) {
        events.push((
            "content_block_delta",
            json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": { "type": "text_delta", "text": piece },
            }),
        ));
    }
    events.push((
        "content_block_stop",
        json!({ "type": "content_block_stop", "index": 0 }),
    ));
    events.push((
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": "end_turn", "stop_sequence": null },
            "usage": { "output_tokens": output },
        }),
    ));
    events.push(("message_stop", json!({ "type": "message_stop" })));
    events
        .into_iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

/// `text` cut into `parts` pieces of about equal length (on char bounds).
fn split_text(text: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(parts.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// The deterministic reply to request number `n`.
fn reply_text(n: u64, body: &Value) -> String {
    let texts = user_texts(body);
    let quote = |t: Option<&String>| t.map_or_else(|| "-".to_string(), |t| truncate(t));
    format!(
        "stub reply #{n}: saw {} user messages; last: {}; first: {}",
        texts.len(),
        quote(texts.last()),
        quote(texts.first()),
    )
}

/// The text of every user message in a request body, in order. Text blocks
/// the CLI adds on its own (`<system-reminder>`...) are left out.
pub fn user_texts(body: &Value) -> Vec<String> {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Vec::new();
    };
    messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Array(blocks)) => blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .map(str::trim)
                .filter(|t| !t.starts_with("<system-reminder>"))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .collect()
}

fn truncate(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

/// About four bytes of JSON per token, at least one.
fn estimate_tokens(body: &Value) -> u64 {
    (body.to_string().len() as u64 / 4).max(1)
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({ "type": "error", "error": { "type": kind, "message": message } }),
    )
}

#[tokio::test]
async fn the_stub_streams_a_reply_that_quotes_the_user_messages() {
    let stub = AnthropicStub::start().await;
    let client = reqwest::Client::new();
    let body = json!({
        "model": "m",
        "max_tokens": 100,
        "stream": true,
        "messages": [
            { "role": "user", "content": "hello there" },
            { "role": "assistant", "content": [{ "type": "text", "text": "hi" }] },
            { "role": "user", "content": [
                { "type": "text", "text": "<system-reminder>ctx</system-reminder>" },
                { "type": "text", "text": "second question" },
            ] },
        ],
    });
    let url = format!("{}/v1/messages?beta=true", stub.base_url());
    let response = client
        .post(&url)
        .header("x-api-key", "k")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[header::CONTENT_TYPE].clone();
    assert!(
        content_type
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let sse = response.text().await.expect("body");
    let names: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(
        names
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count()
            >= 3
    );
    let text: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).expect("data is JSON"))
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        text,
        "stub reply #1: saw 2 user messages; last: second question; first: hello there"
    );
    assert!(sse.contains("\"stop_reason\":\"end_turn\""));

    let plain = client
        .post(format!("{}/v1/messages", stub.base_url()))
        .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "x" }] }))
        .send()
        .await
        .expect("send");
    let message: Value = plain.json().await.expect("json");
    assert_eq!(message["type"], "message");
    assert_eq!(
        message["content"][0]["text"],
        "stub reply #2: saw 1 user messages; last: x; first: x"
    );

    let odd = client
        .post(format!("{}/v1/messages", stub.base_url()))
        .body("not json")
        .send()
        .await
        .expect("send");
    assert_eq!(odd.status(), 400);
    let missing = client
        .get(format!("{}/nowhere", stub.base_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status(), 404);

    let recorded = stub.requests();
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[0].query.as_deref(), Some("beta=true"));
    assert_eq!(recorded[0].header("x-api-key"), Some("k"));
    assert_eq!(recorded[0].user_texts(), ["hello there", "second question"]);
    assert_eq!(recorded[2].raw_body, "not json");
    assert_eq!(stub.message_requests().len(), 3);
}
