//! A Slack Web API stand-in for benchmarks: answers what egress calls
//! (`chat.postMessage`, `chat.update`, `reactions.*`,
//! `conversations.replies`, `auth.test`) at once, without rate limits, and
//! records each call's arrival time (unix ns) and the benchmark message
//! numbers (`bm<n>`) its text answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::routing::any;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::stats::now_ns;

/// One call as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub at_ns: u128,
    pub channel: String,
    /// Benchmark message numbers in the reply's "reply to:" part.
    pub answers: Vec<u64>,
    /// The text holds the whole reply (its "turn N of session" line).
    pub complete: bool,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// Who waits for the complete reply to a message number.
    waiters: HashMap<u64, oneshot::Sender<u128>>,
}

/// The stand-in; cheap to clone.
#[derive(Clone)]
pub struct SlackStub {
    inner: Arc<Mutex<Inner>>,
    next_ts: Arc<AtomicU64>,
    pub addr: SocketAddr,
}

impl SlackStub {
    /// Serve on a free loopback port until the runtime ends.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stub = Self {
            inner: Arc::default(),
            next_ts: Arc::new(AtomicU64::new(1)),
            addr,
        };
        let router = Router::new()
            .route("/api/{method}", any(call))
            .with_state(stub.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("slack stand-in stopped: {e}");
            }
        });
        Ok(stub)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forget the calls recorded so far (between phases).
    pub fn clear(&self) {
        self.lock().calls.clear();
    }

    /// Resolves with the arrival time of the first complete reply to `n`.
    pub fn wait_reply(&self, n: u64) -> oneshot::Receiver<u128> {
        let (tx, rx) = oneshot::channel();
        self.lock().waiters.insert(n, tx);
        rx
    }

    fn record(&self, call: Call) {
        let mut inner = self.lock();
        if call.complete {
            for n in &call.answers {
                if let Some(tx) = inner.waiters.remove(n) {
                    // The waiter may have given up (timeout); nothing to do.
                    let _ = tx.send(call.at_ns);
                }
            }
        }
        inner.calls.push(call);
    }
}

/// Benchmark message numbers (`bm<digits>`) in the part of a reply before
/// its "turn N" line (the rest lists earlier messages).
pub fn answered(text: &str) -> Vec<u64> {
    let head = text.split("\nturn ").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = head;
    while let Some(i) = rest.find("bm") {
        rest = &rest[i + 2..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

async fn call(
    State(stub): State<SlackStub>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let at_ns = now_ns();
    let params = parse_params(query.as_deref(), &headers, &body);
    let text = params["text"].as_str().unwrap_or("");
    let channel = params["channel"].as_str().unwrap_or("").to_string();
    let answers = if method.starts_with("chat.") {
        answered(text)
    } else {
        Vec::new()
    };
    let complete = text.contains(" of session ");
    let answer = match method.as_str() {
        "chat.postMessage" => {
            let n = stub.next_ts.fetch_add(1, Ordering::Relaxed);
            let ts = format!("1800000000.{n:06}");
            json!({"ok": true, "channel": channel, "ts": ts, "message": {
                "type": "message", "ts": ts, "text": text, "user": "UBOT", "bot_id": "BBOT"}})
        }
        "chat.update" => {
            let ts = params["ts"].as_str().unwrap_or("");
            json!({"ok": true, "channel": channel, "ts": ts, "text": text, "message": {
                "type": "message", "ts": ts, "text": text, "user": "UBOT", "bot_id": "BBOT"}})
        }
        "conversations.replies" | "conversations.history" => {
            json!({"ok": true, "messages": [], "has_more": false})
        }
        "auth.test" => json!({"ok": true, "url": "https://stub.slack.test/", "team": "Bench",
            "user": "switchboard", "team_id": "T0001", "user_id": "UBOT", "bot_id": "BBOT"}),
        _ => json!({"ok": true}),
    };
    stub.record(Call {
        method,
        at_ns,
        channel,
        answers,
        complete,
    });
    axum::Json(answer)
}

/// Query string and body (JSON or form) merged into one object.
fn parse_params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Value {
    let mut out = Map::new();
    let mut form = |text: &str| {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text).unwrap_or_default();
        for (k, v) in pairs {
            out.insert(k, Value::String(v));
        }
    };
    if let Some(q) = query {
        form(q);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
            out.extend(map);
        }
    } else if !body.is_empty() {
        form(std::str::from_utf8(body).unwrap_or(""));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_come_only_from_the_reply_to_part() {
        let text = "reply to: UALICE: bm12\n\nUALICE: bm13\nturn 3 of session s; earlier: 2\nearlier: [1] UALICE: bm1";
        assert_eq!(answered(text), vec![12, 13]);
    }
}
