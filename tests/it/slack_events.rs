//! The Slack Events API endpoint: a real gateway on a free port, real Redis,
//! real-shaped signed payloads.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::app::Role;
use switchboard::config::Secret;

use crate::helpers::*;
use crate::slack_support::*;

async fn gateway(redis: &TestRedis, test: &str) -> (TestApp, String) {
    let mut settings = test_settings(redis, test);
    settings.secrets.slack_signing_secret = Some(Secret::new(SIGNING_SECRET));
    settings.slack.app_id = Some(APP.to_string());
    let prefix = settings.redis.key_prefix.clone();
    (spawn_app(settings, Role::Gateway).await, prefix)
}

async fn gateway_on_prefix(redis: &TestRedis, prefix: &str) -> TestApp {
    let mut settings = test_settings(redis, "second");
    settings.redis.key_prefix = prefix.to_string();
    settings.secrets.slack_signing_secret = Some(Secret::new(SIGNING_SECRET));
    spawn_app(settings, Role::Gateway).await
}

#[tokio::test]
async fn a_signed_mention_is_queued_once_with_its_conversation_key() {
    let redis = TestRedis::start();
    let (app, prefix) = gateway(&redis, "mention").await;
    let body = callback(
        "Ev001",
        app_mention("C0CHAN", "1700000000.000100", None, "what is up?"),
    );
    assert_eq!(
        post_event(&app.http, &app.gateway_url("/slack/events"), &body).await,
        200
    );
    let q = queued(&redis, &prefix);
    assert_eq!(q.len(), 1);
    assert_eq!(
        q[0].conversation.as_str(),
        "slack:T0001:C0CHAN:1700000000.000100"
    );
    assert_eq!(q[0].text, "what is up?");
    assert_eq!(q[0].sender, "UALICE");
    app.stop().await;
}

#[tokio::test]
async fn the_same_event_retried_four_times_is_queued_once() {
    let redis = TestRedis::start();
    let (app, prefix) = gateway(&redis, "retries").await;
    let body = serde_json::to_vec(&callback(
        "Ev002",
        app_mention("C0CHAN", "1700000000.000200", None, "hi"),
    ))
    .expect("json");
    let url = app.gateway_url("/slack/events");
    assert_eq!(post_signed(&app.http, &url, &body, None).await, 200);
    for n in 1..=3 {
        assert_eq!(
            post_signed(&app.http, &url, &body, Some(n)).await,
            200,
            "retry {n} acked"
        );
    }
    assert_eq!(queued(&redis, &prefix).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn app_mention_and_message_for_the_same_ts_are_queued_once() {
    let redis = TestRedis::start();
    let (app, prefix) = gateway(&redis, "twins").await;
    let url = app.gateway_url("/slack/events");
    let ts = "1700000000.000300";
    let mention = callback("Ev003", app_mention("C0CHAN", ts, None, "hello"));
    let mut twin = message("C0CHAN", "channel", ts, None, &format!("<@{BOT}> hello"));
    twin["text"] = json!(format!("<@{BOT}> hello"));
    let twin = callback("Ev004", twin);
    assert_eq!(post_event(&app.http, &url, &twin).await, 200);
    assert_eq!(post_event(&app.http, &url, &mention).await, 200);
    assert_eq!(queued(&redis, &prefix).len(), 1);
    app.stop().await;
}

/// A thread reply that does not (recognisably) mention the bot is taken
/// only into a conversation that exists. Outside one it must not mark its
/// ts seen: the same ts may still come as an `app_mention` (when the
/// gateway cannot tell the mention from the text), which would then be
/// dropped as a duplicate.
#[tokio::test]
async fn a_thread_reply_outside_a_conversation_does_not_swallow_its_mention() {
    let redis = TestRedis::start();
    let (app, prefix) = gateway(&redis, "thread-twins").await;
    let url = app.gateway_url("/slack/events");
    let (root, ts) = ("1700000000.000700", "1700000000.000701");
    let reply = message("C0CHAN", "channel", ts, Some(root), "can you help here?");
    assert_eq!(
        post_event(&app.http, &url, &callback("Ev006", reply)).await,
        200
    );
    assert!(queued(&redis, &prefix).is_empty(), "not ours yet");
    let mention = app_mention("C0CHAN", ts, Some(root), "can you help here?");
    assert_eq!(
        post_event(&app.http, &url, &callback("Ev007", mention)).await,
        200
    );
    let q = queued(&redis, &prefix);
    assert_eq!(q.len(), 1, "the mention is queued");
    assert!(q[0].text.contains("can you help here?"), "{:?}", q[0].text);
    app.stop().await;
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_the_dedupe() {
    let redis = TestRedis::start();
    let (a, prefix) = gateway(&redis, "replicas").await;
    let b = gateway_on_prefix(&redis, &prefix).await;
    let body = callback(
        "Ev005",
        app_mention("C0CHAN", "1700000000.000500", None, "hi"),
    );
    let (url_a, url_b) = (
        a.gateway_url("/slack/events"),
        b.gateway_url("/slack/events"),
    );
    let (sa, sb) = tokio::join!(
        post_event(&a.http, &url_a, &body),
        post_event(&b.http, &url_b, &body)
    );
    assert_eq!((sa, sb), (200, 200));
    assert_eq!(queued(&redis, &prefix).len(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_thread_follow_up_joins_its_conversation_and_an_unrelated_thread_does_not() {
    let redis = TestRedis::start();
    let (app, prefix) = gateway(&redis, "threads").await;
    let url = app.gateway_url("/slack/events");
    let root = "1700000000.000600";
    post_event(
        &app.http,
        &url,
        &callback("Ev006", app_mention("C0CHAN", root, None, "start")),
    )
    .await;
    let follow_up = callback(
        "Ev007",
        message(
            "C0CHAN",
            "channel",
            "1700000001.000100",
            Some(root),
            "and then?",
        ),
    );
    assert_eq!(post_event(&app.http, &url, &follow_up).await, 200);
    let unrelated = callback(
        "Ev008",
        message(
            "C0CHAN",
            "channel",
            "1700000002.000100",
            Some("1600000000.000001"),
            "other",
        ),
    );
    assert_eq!(post_event(&app.http, &url, &unrelated).await, 200);
    let q = queued(&redis, &prefix);
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(
        q.iter()
            .all(|m| m.conversation.as_str() == format!("slack:T0001:C0CHAN:{root}"))
    );
    assert!(q.iter().any(|m| m.text == "and then?"));
    app.stop().await;
}

#[tokio::test]
async fn ignored_kinds_queue_nothing() {
    let redis = TestRedis::start();
    let (app, prefix) = gateway(&redis, "ignored").await;
    let url = app.gateway_url("/slack/events");
    let ts = "1700000000.000700";
    let mut bot_message = message("C0CHAN", "channel", ts, Some("1700000000.000001"), "beep");
    bot_message["subtype"] = json!("bot_message");
    bot_message["bot_id"] = json!("B0OTHER");
    let mut with_bot_id = message("D0DM", "im", "1700000000.000701", None, "from a bot");
    with_bot_id["bot_id"] = json!("B0OTHER");
    let mut changed = message("D0DM", "im", "1700000000.000702", None, "edited");
    changed["subtype"] = json!("message_changed");
    let mut deleted = message("D0DM", "im", "1700000000.000703", None, "");
    deleted["subtype"] = json!("message_deleted");
    let mut join = message("C0CHAN", "channel", "1700000000.000704", None, "joined");
    join["subtype"] = json!("channel_join");
    let mut other_app = callback(
        "Ev0x5",
        app_mention("C0CHAN", "1700000000.000705", None, "hi"),
    );
    other_app["api_app_id"] = json!("A0SOMEONEELSE");
    let own = {
        let mut m = message("D0DM", "im", "1700000000.000706", None, "my own reply");
        m["user"] = json!(BOT);
        m
    };
    let plain_channel = message("C0CHAN", "channel", "1700000000.000707", None, "chatter");
    let cases = [
        callback("Ev0x1", bot_message),
        callback("Ev0x2", with_bot_id),
        callback("Ev0x3", changed),
        callback("Ev0x4", deleted),
        callback("Ev0x6", join),
        callback("Ev0x7", own),
        callback("Ev0x8", plain_channel),
        other_app,
    ];
    for case in &cases {
        assert_eq!(post_event(&app.http, &url, case).await, 200, "{case}");
    }
    assert!(
        queued(&redis, &prefix).is_empty(),
        "nothing queued: {:?}",
        queued(&redis, &prefix)
    );
    let metrics = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for reason in [
        "bot_message",
        "other_bot",
        "message_changed",
        "message_deleted",
        "channel_join",
        "own_message",
        "not_addressed",
        "other_app",
    ] {
        assert!(
            metrics.contains(&format!(
                "switchboard_ingress_slack_ignored_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted: {metrics}"
        );
    }
    app.stop().await;
}

/// Request headers as (name, value) pairs.
type Headers = Vec<(&'static str, String)>;

/// Send raw headers and body; return the status.
async fn send(app: &TestApp, headers: &[(&'static str, String)], body: Vec<u8>) -> u16 {
    let mut request = app.http.post(app.gateway_url("/slack/events")).body(body);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    request
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn bad_requests_are_rejected_with_the_right_status_and_queue_nothing() {
    let redis = TestRedis::start();
    let (app, prefix) = gateway(&redis, "rejects").await;
    let body = serde_json::to_vec(&callback(
        "Ev010",
        app_mention("C0CHAN", "1700000000.001000", None, "hi"),
    ))
    .expect("json");
    let now = now_secs();
    let good = sign(SIGNING_SECRET, now, &body);
    let wrong_secret = sign("not-the-secret", now, &body);
    // Well past the 300 s window: the gateway reads its clock later than
    // this test did (a second later, on a busy machine, made now + 301 fall
    // inside it). The exact boundary is verify.rs's unit tests' job.
    let stale = sign(SIGNING_SECRET, now - 330, &body);
    let future = sign(SIGNING_SECRET, now + 330, &body);
    let h = |ts: &str, sig: &str| {
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", sig.to_string()),
        ]
    };
    let cases: Vec<(&str, Headers, Vec<u8>, u16)> = vec![
        (
            "bad signature",
            h(
                &good.0,
                "v0=0000000000000000000000000000000000000000000000000000000000000000",
            ),
            body.clone(),
            401,
        ),
        (
            "wrong secret",
            h(&wrong_secret.0, &wrong_secret.1),
            body.clone(),
            401,
        ),
        ("stale timestamp", h(&stale.0, &stale.1), body.clone(), 401),
        (
            "future timestamp",
            h(&future.0, &future.1),
            body.clone(),
            401,
        ),
        ("missing headers", vec![], body.clone(), 401),
        (
            "missing signature",
            vec![("x-slack-request-timestamp", good.0.clone())],
            body.clone(),
            401,
        ),
        (
            "non-numeric timestamp",
            h("soon", &good.1),
            body.clone(),
            401,
        ),
        (
            "tampered body",
            h(&good.0, &good.1),
            [body.clone(), b" ".to_vec()].concat(),
            401,
        ),
    ];
    for (name, headers, body, status) in cases {
        assert_eq!(send(&app, &headers, body).await, status, "{name}");
    }
    for (name, body) in [
        ("malformed json", b"{\"type\": \"event_callback\",".to_vec()),
        ("empty body", Vec::new()),
    ] {
        let (ts, sig) = sign(SIGNING_SECRET, now, &body);
        assert_eq!(send(&app, &h(&ts, &sig), body).await, 400, "{name}");
    }
    let huge = vec![b' '; 1024 * 1024 + 10];
    let (ts, sig) = sign(SIGNING_SECRET, now, &huge);
    assert_eq!(send(&app, &h(&ts, &sig), huge).await, 413, "oversize body");
    assert!(queued(&redis, &prefix).is_empty());
    let metrics = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("switchboard_ingress_slack_rejected_total{reason=\"bad_signature\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_ingress_slack_rejected_total{reason=\"stale_timestamp\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_ingress_slack_rejected_total{reason=\"malformed_json\"}"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn json_whose_bytes_differ_from_a_reserialisation_still_verifies() {
    let redis = TestRedis::start();
    let (app, prefix) = gateway(&redis, "rawbytes").await;
    let raw = format!(
        r#"{{"token":"XXYYZZ","team_id":"{TEAM}","api_app_id":"{APP}","event":{{"type":"app_mention","user":"UALICE","text":"<@{BOT}> caf\u00e9 at https:\/\/example.com\/a","ts":"1700000000.001100","channel":"C0CHAN","event_ts":"1700000000.001100"}},"type":"event_callback","event_id":"Ev011","event_time":1700000000,"authorizations":[{{"team_id":"{TEAM}","user_id":"{BOT}","is_bot":true}}]}}"#
    );
    let reserialised =
        serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(&raw).expect("json"))
            .expect("json");
    assert_ne!(
        raw.as_bytes(),
        &reserialised[..],
        "the raw bytes must differ for this test to mean anything"
    );
    assert_eq!(
        post_signed(
            &app.http,
            &app.gateway_url("/slack/events"),
            raw.as_bytes(),
            None
        )
        .await,
        200
    );
    let q = queued(&redis, &prefix);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].text, "café at https://example.com/a");
    app.stop().await;
}

#[tokio::test]
async fn url_verification_is_answered_with_the_challenge() {
    let redis = TestRedis::start();
    let (app, _) = gateway(&redis, "challenge").await;
    let body = serde_json::to_vec(&json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"})).expect("json");
    let (ts, sig) = sign(SIGNING_SECRET, now_secs(), &body);
    let response = app
        .http
        .post(app.gateway_url("/slack/events"))
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 200);
    let answer: serde_json::Value = response.json().await.expect("json");
    assert_eq!(
        answer["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    app.stop().await;
}

#[tokio::test]
async fn redis_down_answers_503_within_the_deadline_and_the_retry_is_queued_once() {
    let mut redis = TestRedis::start();
    let (app, prefix) = gateway(&redis, "outage").await;
    let url = app.gateway_url("/slack/events");
    let body = serde_json::to_vec(&callback(
        "Ev012",
        app_mention("C0CHAN", "1700000000.001200", None, "are you there?"),
    ))
    .expect("json");
    // Redis hangs (paused): the deadline answers for it.
    redis.pause();
    let started = Instant::now();
    assert_eq!(post_signed(&app.http, &url, &body, None).await, 503);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "answered after {waited:?}, past Slack's 3 s"
    );
    redis.resume();
    // Redis gone entirely: refused at once.
    redis.kill();
    assert_eq!(post_signed(&app.http, &url, &body, Some(1)).await, 503);
    redis.restart();
    wait_until(
        Duration::from_secs(10),
        "Slack's retry to be accepted",
        || {
            let (http, url, body) = (app.http.clone(), url.clone(), body.clone());
            async move { (post_signed(&http, &url, &body, Some(2)).await == 200).then_some(()) }
        },
    )
    .await;
    assert_eq!(post_signed(&app.http, &url, &body, Some(3)).await, 200);
    assert_eq!(queued(&redis, &prefix).len(), 1, "queued exactly once");
    app.stop().await;
}
