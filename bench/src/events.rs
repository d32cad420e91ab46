//! Slack Events API requests as Slack sends them: DM `message` events in an
//! `event_callback` envelope, signed with the v0 scheme. Each carries a
//! benchmark message number `bm<n>` in its text and a unique ts, so its
//! trail can be followed through the agent's stdin log and the replies.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use serde_json::json;
use switchboard::config::Secret;
use switchboard::ingress::slack::SignatureVerifier;

pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
pub const BOT_TOKEN: &str = "xoxb-bench-token";
pub const TEAM: &str = "T0001";
pub const BOT: &str = "UBOT";

/// Message numbers are unique within a run (across phases).
static NEXT: AtomicU64 = AtomicU64::new(1);

/// One signed request, ready to send.
#[derive(Clone)]
pub struct Event {
    pub n: u64,
    pub channel: String,
    pub body: Bytes,
    pub timestamp: String,
    pub signature: String,
}

/// Signs bodies like Slack does.
pub struct Signer {
    verifier: SignatureVerifier,
}

impl Signer {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            verifier: SignatureVerifier::new(&Secret::new(SIGNING_SECRET))?,
        })
    }

    /// A DM from UALICE in `channel` saying `bm<n> <extra>`.
    pub fn dm(&self, channel: &str, extra: &str) -> Event {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ts = ts_of(n);
        let now = now_secs();
        let body = json!({
            "token": "XXYYZZ",
            "team_id": TEAM,
            "api_app_id": "A0APP",
            "event": {
                "client_msg_id": format!("bench-{n}"),
                "type": "message",
                "text": format!("bm{n} {extra}"),
                "user": "UALICE",
                "ts": ts,
                "team": TEAM,
                "channel": channel,
                "event_ts": ts,
                "channel_type": "im"
            },
            "type": "event_callback",
            "event_id": format!("EvBench{n}"),
            "event_time": now,
            "authorizations": [{"enterprise_id": null, "team_id": TEAM, "user_id": BOT,
                "is_bot": true, "is_enterprise_install": false}],
            "is_ext_shared_channel": false
        });
        let body = Bytes::from(body.to_string());
        let timestamp = now.to_string();
        let signature = self.verifier.sign(&timestamp, &body);
        Event {
            n,
            channel: channel.to_string(),
            body,
            timestamp,
            signature,
        }
    }
}

/// The Slack ts of benchmark message `n` (unique per message).
pub fn ts_of(n: u64) -> String {
    format!("{}.{:06}", 1_700_000_000 + n / 1_000_000, n % 1_000_000)
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// POST `event` to `url`; the HTTP status (0: no answer).
pub async fn post(http: &reqwest::Client, url: &str, event: &Event) -> u16 {
    http.post(url)
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", &event.timestamp)
        .header("x-slack-signature", &event.signature)
        .body(event.body.clone())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The HTTP client every load loop uses: HTTP/1, many idle connections.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(std::time::Duration::from_secs(10))
        .build()?)
}
