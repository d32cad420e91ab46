//! Slack Socket Mode: a real gateway connected to a local Socket Mode
//! stand-in, real Redis, real-shaped envelopes.

use std::time::{Duration, Instant};

use switchboard::app::{Application, Role};
use switchboard::config::{Secret, Settings, SlackMode};

use crate::helpers::*;
use crate::slack_support::*;
use crate::socket_stub::*;

/// Socket Mode only, `connections` sockets, watchdog settings left default.
fn socket_settings(
    redis: &TestRedis,
    stub: &SocketStub,
    test: &str,
    connections: usize,
) -> Settings {
    let mut settings = test_settings(redis, test);
    settings.slack.mode = SlackMode::SocketMode;
    settings.slack.api_base_url = stub.api_base_url();
    settings.slack.app_id = Some(APP.to_string());
    settings.slack.socket_connections = connections;
    settings.secrets.slack_app_token = Some(Secret::new(APP_TOKEN));
    settings
}

/// A short watchdog, for tests that wait for it.
fn fast_watchdog(settings: &mut Settings, silence: Duration) {
    settings.slack.socket_ping_interval = Duration::from_millis(100);
    settings.slack.socket_silence_timeout = silence;
    settings.slack.socket_readiness_max_age = silence;
    settings.validate().expect("valid settings");
}

fn mention(event_id: &str, ts: &str) -> serde_json::Value {
    callback(
        event_id,
        app_mention("C0CHAN", ts, None, "hello over a socket"),
    )
}

/// The value of an unlabelled metric on the admin listener.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_envelope_is_queued_once_and_acknowledged_after_the_enqueue() {
    let redis = TestRedis::start();
    let stub = SocketStub::start().await;
    let settings = socket_settings(&redis, &stub, "socket-once", 1);
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app(settings, Role::Gateway).await;
    let live = stub.wait_live(1).await;

    stub.send_envelope(live[0], "env-1", &mention("EvS1", "1700000000.100100"), 0);
    stub.wait_acked("env-1", 1).await;
    let queued = queued(&redis, &prefix);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].text, "hello over a socket");
    assert_eq!(
        queued[0].conversation.as_str(),
        "slack:T0001:C0CHAN:1700000000.100100"
    );
    assert_eq!(stub.acks(live[0]), vec!["env-1".to_string()]);
    assert_eq!((stub.opens(), stub.bad_auth()), (1, 0));
    // Socket Mode only: the Events API endpoint is not mounted.
    let events = app.http.post(app.gateway_url("/slack/events")).send().await;
    assert_eq!(events.expect("post").status().as_u16(), 404);
    assert_eq!(app.get_status(&app.gateway_url("/readyz")).await, 200);
    app.stop().await;
    wait_until(
        Duration::from_secs(5),
        "the socket closed on shutdown",
        || {
            let closed = stub.closed_at(live[0]);
            async move { closed }
        },
    )
    .await;
}

#[tokio::test]
async fn a_retry_carrying_retry_attempt_is_acknowledged_and_not_queued_again() {
    let redis = TestRedis::start();
    let stub = SocketStub::start().await;
    let settings = socket_settings(&redis, &stub, "socket-retry", 1);
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app(settings, Role::Gateway).await;
    let conn = stub.wait_live(1).await[0];
    let payload = mention("EvS2", "1700000000.100200");
    stub.send_envelope(conn, "env-2a", &payload, 0);
    stub.wait_acked("env-2a", 1).await;
    // Slack redelivers with a new envelope id and a retry_attempt.
    for (id, attempt) in [("env-2b", 1), ("env-2c", 2)] {
        stub.send_envelope(conn, id, &payload, attempt);
        stub.wait_acked(id, 1).await;
    }
    assert_eq!(queued(&redis, &prefix).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_same_envelope_on_two_connections_is_queued_once_and_acked_on_both() {
    let redis = TestRedis::start();
    let stub = SocketStub::start().await;
    let settings = socket_settings(&redis, &stub, "socket-two-conns", 2);
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app(settings, Role::Gateway).await;
    let live = stub.wait_live(2).await;
    assert_eq!(stub.opens(), 2, "two independent connections");
    let payload = mention("EvS3", "1700000000.100300");
    stub.send_envelope(live[0], "env-3", &payload, 0);
    stub.send_envelope(live[1], "env-3", &payload, 0);
    stub.wait_acked("env-3", 2).await;
    assert_eq!(stub.acks(live[0]), vec!["env-3".to_string()]);
    assert_eq!(stub.acks(live[1]), vec!["env-3".to_string()]);
    assert_eq!(queued(&redis, &prefix).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn two_gateways_sharing_one_redis_queue_an_envelope_once() {
    let redis = TestRedis::start();
    let stub = SocketStub::start().await;
    let a = socket_settings(&redis, &stub, "socket-replicas", 1);
    let prefix = a.redis.key_prefix.clone();
    let mut b = socket_settings(&redis, &stub, "socket-replicas-b", 1);
    b.redis.key_prefix = prefix.clone();
    let (a, b) = (
        spawn_app(a, Role::Gateway).await,
        spawn_app(b, Role::Gateway).await,
    );
    let live = stub.wait_live(2).await;
    let payload = mention("EvS4", "1700000000.100400");
    stub.send_envelope(live[0], "env-4a", &payload, 0);
    stub.send_envelope(live[1], "env-4b", &payload, 0);
    stub.wait_acked("env-4a", 1).await;
    stub.wait_acked("env-4b", 1).await;
    assert_eq!(queued(&redis, &prefix).len(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_refresh_opens_the_new_socket_first_and_loses_no_envelope() {
    let redis = TestRedis::start();
    let stub = SocketStub::start().await;
    let settings = socket_settings(&redis, &stub, "socket-refresh", 1);
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app(settings, Role::Gateway).await;
    let old = stub.wait_live(1).await[0];

    let asked = Instant::now();
    stub.disconnect(old, "refresh_requested");
    // Right behind the disconnect, on the socket being replaced.
    stub.send_envelope(old, "env-5a", &mention("EvS5a", "1700000000.100500"), 0);
    let new = stub.wait_new_live(&[old], Duration::from_secs(5)).await;
    let reconnected = stub.hello_at(new) - asked;
    stub.send_envelope(new, "env-5b", &mention("EvS5b", "1700000000.100501"), 0);
    stub.wait_acked("env-5a", 1).await;
    stub.wait_acked("env-5b", 1).await;
    assert_eq!(stub.acks(old), vec!["env-5a".to_string()]);
    assert_eq!(queued(&redis, &prefix).len(), 2);

    // The old socket is closed by the client, after the new one said hello.
    let closed = wait_until(Duration::from_secs(5), "the old socket closed", || {
        let closed = stub.closed_at(old);
        async move { closed }
    })
    .await;
    assert!(closed >= stub.hello_at(new), "make before break");
    assert_eq!(stub.opens(), 2);
    eprintln!("refresh: new socket said hello {reconnected:?} after the disconnect");
    app.stop().await;
}

#[tokio::test]
async fn a_socket_closed_by_slack_is_reopened_after_a_short_backoff() {
    let redis = TestRedis::start();
    let stub = SocketStub::start().await;
    let settings = socket_settings(&redis, &stub, "socket-closed", 1);
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app(settings, Role::Gateway).await;
    let old = stub.wait_live(1).await[0];
    // Younger than the silence timeout, it counts as a failure: the first
    // backoff step (0.25 to 0.5 s) comes before the new connection.
    let closed = Instant::now();
    stub.close(old);
    let new = stub.wait_new_live(&[old], Duration::from_secs(5)).await;
    eprintln!(
        "closed: reopened {:?} after Slack closed the socket",
        stub.hello_at(new) - closed
    );
    stub.send_envelope(new, "env-8", &mention("EvS8", "1700000000.100800"), 0);
    stub.wait_acked("env-8", 1).await;
    assert_eq!(queued(&redis, &prefix).len(), 1);
    assert!(
        metric(
            &app,
            "switchboard_ingress_slack_socket_reconnects_total{reason=\"closed\"}"
        )
        .await
            >= 1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_silent_socket_is_detected_and_replaced_within_the_silence_timeout() {
    let redis = TestRedis::start();
    let stub = SocketStub::start().await;
    let mut settings = socket_settings(&redis, &stub, "socket-silent", 1);
    let silence = Duration::from_secs(1);
    fast_watchdog(&mut settings, silence);
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app(settings, Role::Gateway).await;
    let old = stub.wait_live(1).await[0];
    wait_until(Duration::from_secs(5), "client pings", || {
        let pings = stub.pings(old);
        async move { (pings >= 2).then_some(()) }
    })
    .await;

    let went_silent = Instant::now();
    stub.go_silent(old);
    let new = stub.wait_new_live(&[old], Duration::from_secs(10)).await;
    let replaced = stub.hello_at(new) - went_silent;
    eprintln!("silence: replaced {replaced:?} after the socket went silent (timeout {silence:?})");
    // Not before the timeout (less one 100 ms watchdog tick of slack)...
    assert!(
        replaced >= silence - Duration::from_millis(150),
        "{replaced:?}"
    );
    // ...and soon after it.
    assert!(replaced <= silence + Duration::from_secs(1), "{replaced:?}");

    stub.send_envelope(new, "env-6", &mention("EvS6", "1700000000.100600"), 0);
    stub.wait_acked("env-6", 1).await;
    assert_eq!(queued(&redis, &prefix).len(), 1);
    assert!(
        metric(
            &app,
            "switchboard_ingress_slack_socket_reconnects_total{reason=\"silent\"}"
        )
        .await
            >= 1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn an_envelope_whose_enqueue_fails_is_not_acked_and_its_redelivery_is_queued() {
    let mut redis = TestRedis::start();
    let stub = SocketStub::start().await;
    let mut settings = socket_settings(&redis, &stub, "socket-redis-down", 1);
    settings.slack.enqueue_deadline = Duration::from_millis(500);
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app(settings, Role::Gateway).await;
    let conn = stub.wait_live(1).await[0];
    let payload = mention("EvS7", "1700000000.100700");

    redis.kill();
    stub.send_envelope(conn, "env-7a", &payload, 0);
    wait_until(Duration::from_secs(10), "the failed enqueue", || async {
        (metric(&app, "switchboard_ingress_slack_socket_unacked_total").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        stub.acked("env-7a"),
        0,
        "not acknowledged: Slack must redeliver"
    );

    redis.restart();
    wait_until(Duration::from_secs(10), "Redis back", || async {
        (app.get_status(&app.gateway_url("/readyz")).await == 200).then_some(())
    })
    .await;
    // Slack redelivers it; the queue is back, so now it is taken and acked.
    stub.send_envelope(conn, "env-7b", &payload, 1);
    stub.wait_acked("env-7b", 1).await;
    assert_eq!(queued(&redis, &prefix).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn readyz_fails_while_no_socket_hears_from_slack() {
    let redis = TestRedis::start();
    let stub = SocketStub::start().await;
    stub.refuse_connections(true);
    let mut settings = socket_settings(&redis, &stub, "socket-readyz", 1);
    fast_watchdog(&mut settings, Duration::from_secs(1));
    let app = spawn_app(settings, Role::Gateway).await;
    let readyz = app.gateway_url("/readyz");
    assert_eq!(app.get_status(&readyz).await, 503, "no socket yet");

    stub.refuse_connections(false);
    let conn = stub.wait_live(1).await[0];
    wait_until(Duration::from_secs(10), "ready", || async {
        (app.get_status(&readyz).await == 200).then_some(())
    })
    .await;

    stub.refuse_connections(true);
    let went_silent = Instant::now();
    stub.go_silent(conn);
    wait_until(Duration::from_secs(10), "not ready", || async {
        (app.get_status(&readyz).await == 503).then_some(())
    })
    .await;
    eprintln!(
        "readyz: failing {:?} after the only socket went silent",
        went_silent.elapsed()
    );
    wait_until(
        Duration::from_secs(5),
        "the last-frame age metric",
        || async {
            let age = metric(
                &app,
                "switchboard_ingress_slack_socket_last_frame_age_seconds",
            )
            .await;
            (age >= 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(app.get_status(&app.gateway_url("/healthz")).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn socket_mode_without_an_app_token_is_refused_at_start() {
    let mut settings = Settings::default();
    settings.slack.mode = SlackMode::Both;
    let err = Application::build(settings, Role::Gateway)
        .await
        .err()
        .expect("must fail");
    let text = format!("{err:#}");
    assert!(text.contains("SLACK_APP_TOKEN"), "{text}");
    assert!(text.contains("slack.mode"), "{text}");
}

#[tokio::test]
async fn a_wrong_app_token_opens_no_socket() {
    let redis = TestRedis::start();
    let stub = SocketStub::start().await;
    let mut settings = socket_settings(&redis, &stub, "socket-bad-token", 1);
    settings.secrets.slack_app_token = Some(Secret::new("xapp-wrong"));
    let app = spawn_app(settings, Role::Gateway).await;
    wait_until(Duration::from_secs(10), "a refused open", || {
        let refused = stub.bad_auth();
        async move { (refused >= 1).then_some(()) }
    })
    .await;
    assert_eq!(stub.opens(), 0);
    assert_eq!(app.get_status(&app.gateway_url("/readyz")).await, 503);
    app.stop().await;
}
