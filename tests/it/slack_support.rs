//! Slack Events API payloads shaped like Slack's, signed like Slack signs them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard::config::Secret;
use switchboard::domain::InboundMessage;
use switchboard::ingress::slack::SignatureVerifier;

pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
pub const TEAM: &str = "T0001";
pub const APP: &str = "A0APP";
pub const BOT: &str = "UBOT";

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An `event_callback` envelope around `event`.
pub fn callback(event_id: &str, event: Value) -> Value {
    json!({
        "token": "XXYYZZ",
        "team_id": TEAM,
        "api_app_id": APP,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": now_secs(),
        "authorizations": [{"enterprise_id": null, "team_id": TEAM, "user_id": BOT, "is_bot": true, "is_enterprise_install": false}],
        "is_ext_shared_channel": false
    })
}

pub fn app_mention(channel: &str, ts: &str, thread_ts: Option<&str>, text: &str) -> Value {
    let mut event = json!({
        "client_msg_id": format!("client-{ts}"),
        "type": "app_mention",
        "text": format!("<@{BOT}> {text}"),
        "user": "UALICE",
        "ts": ts,
        "team": TEAM,
        "channel": channel,
        "event_ts": ts
    });
    if let Some(t) = thread_ts {
        event["thread_ts"] = json!(t);
    }
    event
}

pub fn message(
    channel: &str,
    channel_type: &str,
    ts: &str,
    thread_ts: Option<&str>,
    text: &str,
) -> Value {
    let mut event = json!({
        "client_msg_id": format!("client-{ts}"),
        "type": "message",
        "text": text,
        "user": "UALICE",
        "ts": ts,
        "team": TEAM,
        "channel": channel,
        "event_ts": ts,
        "channel_type": channel_type
    });
    if let Some(t) = thread_ts {
        event["thread_ts"] = json!(t);
    }
    event
}

/// `(timestamp, signature)` headers for `body` at `ts`, with `secret`.
pub fn sign(secret: &str, ts: i64, body: &[u8]) -> (String, String) {
    let verifier = SignatureVerifier::new(&Secret::new(secret)).expect("verifier");
    let ts = ts.to_string();
    let sig = verifier.sign(&ts, body);
    (ts, sig)
}

/// POST raw bytes to `/slack/events`, signed now with the right secret.
pub async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
    retry: Option<u32>,
) -> u16 {
    let (ts, sig) = sign(SIGNING_SECRET, now_secs(), body);
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(body.to_vec());
    if let Some(n) = retry {
        request = request
            .header("x-slack-retry-num", n.to_string())
            .header("x-slack-retry-reason", "http_timeout");
    }
    request
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

pub async fn post_event(http: &reqwest::Client, url: &str, body: &Value) -> u16 {
    post_signed(http, url, &serde_json::to_vec(body).expect("json"), None).await
}

/// Every message queued under `prefix` (all conversations' inboxes).
pub fn queued(redis: &crate::helpers::TestRedis, prefix: &str) -> Vec<InboundMessage> {
    let mut conn = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:inbox:*"))
        .query(&mut conn)
        .expect("keys");
    let mut out = Vec::new();
    for key in keys {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .expect("xrange");
        for (_, fields) in entries {
            for (_, json) in fields {
                out.push(serde_json::from_str(&json).expect("queued message json"));
            }
        }
    }
    out
}
