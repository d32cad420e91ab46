//! Admission control end to end: two gateways sharing one Redis, a worker
//! with stand-in agents reporting a set cost per turn, and the Slack
//! stand-in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::json;
use switchboard::admission::WorkspacePolicy;
use switchboard::app::{Application, Role};

use crate::helpers::*;
use crate::slack_e2e::{SlackWorld, gateway_settings};
use crate::slack_support::*;

/// Post a signed event to a gateway.
async fn send(app: &TestApp, body: &serde_json::Value) {
    assert_eq!(
        post_event(&app.http, &app.gateway_url("/slack/events"), body).await,
        200
    );
}

async fn metric(app: &TestApp, needle: &str) -> f64 {
    let text = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A mention from `user` in a new thread of `channel`; returns its ts.
async fn mention_from(
    world: &SlackWorld,
    app: &TestApp,
    channel: &str,
    user: &str,
    text: &str,
    extra: serde_json::Value,
) -> String {
    let ts = world.stub.add_user_message(channel, None, text);
    let mut event = app_mention(channel, &ts, None, text);
    event["user"] = json!(user);
    if let (Some(event), Some(extra)) = (event.as_object_mut(), extra.as_object()) {
        event.extend(extra.clone());
    }
    send(app, &callback(&format!("Ev{channel}{ts}"), event)).await;
    ts
}

async fn wait_reply(world: &SlackWorld, channel: &str, ts: &str) -> String {
    wait_until(Duration::from_secs(30), "a reply", || {
        let r = world.replies(channel, ts);
        async move {
            r.into_iter()
                .find(|m| m.text.contains("turn 1 of session"))
                .map(|m| m.text)
        }
    })
    .await
}

async fn wait_notice(world: &SlackWorld, channel: &str, ts: &str) -> String {
    wait_until(Duration::from_secs(30), "a notice", || {
        let n = world.notices(channel, ts);
        async move { n.into_iter().next().map(|m| m.text) }
    })
    .await
}

#[tokio::test]
async fn a_user_outside_the_allow_list_gets_no_turn_and_is_told_once() {
    let world = SlackWorld::start("adm-allow", |s| {
        s.admission.workspaces = vec![WorkspacePolicy {
            team: TEAM.into(),
            allow_users: vec!["UBOB".into()],
            ..WorkspacePolicy::default()
        }];
    })
    .await;
    let first = mention_from(&world, &world.app, "C1", "UALICE", "let me in", json!({})).await;
    let notice = wait_notice(&world, "C1", &first).await;
    assert!(
        notice.contains("not set up to take requests from you"),
        "{notice}"
    );
    let second = mention_from(&world, &world.app, "C1", "UALICE", "please", json!({})).await;
    let bob = mention_from(&world, &world.app, "C1", "UBOB", "hello", json!({})).await;
    wait_reply(&world, "C1", &bob).await;
    world.settle().await;
    assert!(
        world.replies("C1", &first).is_empty() && world.replies("C1", &second).is_empty(),
        "no agent turn for Alice"
    );
    assert!(
        world.notices("C1", &second).is_empty(),
        "told once, not on every message"
    );
    assert_eq!(
        metric(
            &world.app,
            "switchboard_admission_refused_total{reason=\"user_not_allowed\"}"
        )
        .await,
        2.0
    );
    world.stop().await;
}

#[tokio::test]
async fn an_external_user_is_refused_by_default() {
    let world = SlackWorld::start("adm-external", |_| {}).await;
    let ts = mention_from(
        &world,
        &world.app,
        "C1",
        "UGUEST",
        "hi from outside",
        json!({"user_team": "T0OTHERORG"}),
    )
    .await;
    let notice = wait_notice(&world, "C1", &ts).await;
    assert!(notice.contains("members of this organisation"), "{notice}");
    let inside = mention_from(
        &world,
        &world.app,
        "C1",
        "UALICE",
        "hi from inside",
        json!({}),
    )
    .await;
    wait_reply(&world, "C1", &inside).await;
    world.settle().await;
    assert!(world.replies("C1", &ts).is_empty());
    world.stop().await;
}

#[tokio::test]
async fn two_bots_mentioning_each_other_stop_after_the_loop_guard_limit() {
    let world = SlackWorld::start("adm-botloop", |s| {
        s.slack.allow_other_bots = true;
        s.admission.allow_bots = true;
        s.admission.bot_loop_limit = 3;
    })
    .await;
    let root = world.stub.add_user_message("C1", None, "bots, talk");
    let start = app_mention("C1", &root, None, "bots, talk");
    send(&world.app, &callback("EvRoot", start)).await;
    for i in 0..6 {
        let ts = format!("1700000100.{i:06}");
        let mut event = message(
            "C1",
            "channel",
            &ts,
            Some(&root),
            &format!("<@{BOT}> beep {i}"),
        );
        event["bot_id"] = json!("B0OTHERBOT");
        event["user"] = json!("UOTHERBOT");
        send(&world.app, &callback(&format!("EvBot{i}"), event)).await;
    }
    world.settle().await;
    assert_eq!(
        metric(
            &world.app,
            "switchboard_admission_refused_total{reason=\"bot_loop\"}"
        )
        .await,
        3.0
    );
    assert!(
        world.notices("C1", &root).is_empty(),
        "bots are not answered with notices"
    );
    world.stop().await;
}

#[tokio::test]
async fn a_user_over_the_per_minute_limit_on_two_gateways_is_limited_as_one_user() {
    let world = SlackWorld::start("adm-rate", |s| {
        s.admission.user_per_minute = 2.0;
        s.admission.user_burst = 2.0;
    })
    .await;
    let mut second = gateway_settings(&world.redis, &world.stub, &world.prefix);
    second.admission.user_per_minute = 2.0;
    second.admission.user_burst = 2.0;
    let other = spawn_app(second, Role::Gateway).await;
    let a = mention_from(&world, &world.app, "C1", "UALICE", "one", json!({})).await;
    let b = mention_from(&world, &other, "C1", "UALICE", "two", json!({})).await;
    let c = mention_from(&world, &world.app, "C1", "UALICE", "three", json!({})).await;
    wait_reply(&world, "C1", &a).await;
    wait_reply(&world, "C1", &b).await;
    let notice = wait_notice(&world, "C1", &c).await;
    assert!(notice.contains("faster than I can take them"), "{notice}");
    world.settle().await;
    assert!(
        world.replies("C1", &c).is_empty(),
        "the third message was not run"
    );
    other.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn a_message_that_must_wait_is_told_its_place_in_line_once() {
    let world = SlackWorld::start_with_slots("adm-position", 1, |_| {}).await;
    let busy = mention_from(
        &world,
        &world.app,
        "C1",
        "UALICE",
        "[[delay:2500]] slow one",
        json!({}),
    )
    .await;
    wait_until(Duration::from_secs(10), "the slow turn to start", || {
        let n = world.stub.calls_to("reactions.add").len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let next = mention_from(&world, &world.app, "C2", "UBOB", "second", json!({})).await;
    let third = mention_from(&world, &world.app, "C3", "UCAROL", "third", json!({})).await;
    let notice = wait_notice(&world, "C3", &third).await;
    assert!(notice.contains("1 ahead of you"), "{notice}");
    // A follow-up while the conversation still waits is not told again.
    mention_from(
        &world,
        &world.app,
        "C3",
        "UCAROL",
        "third, more",
        json!({ "thread_ts": third }),
    )
    .await;
    for (c, ts) in [("C1", &busy), ("C2", &next), ("C3", &third)] {
        wait_reply(&world, c, ts).await;
    }
    world.settle().await;
    assert_eq!(
        world.notices("C3", &third).len(),
        1,
        "told once, not once per message"
    );
    assert!(
        world.notices("C2", &next).is_empty(),
        "next in line: nobody ahead"
    );
    world.stop().await;
}

#[tokio::test]
async fn a_user_over_the_daily_cap_is_refused_until_the_day_rolls_over_and_spend_matches_costs() {
    let world = SlackWorld::start("adm-budget", |_| {}).await;
    // A second gateway whose clock the test moves.
    let offset = Arc::new(AtomicU64::new(0));
    let mut settings = gateway_settings(&world.redis, &world.stub, &world.prefix);
    settings.admission.user_daily_usd = 0.015;
    let mut app = Application::build(settings, Role::Gateway)
        .await
        .expect("build");
    let clock_offset = offset.clone();
    app.set_admission_clock(Arc::new(move || {
        SystemTime::now() + Duration::from_secs(clock_offset.load(Ordering::SeqCst))
    }));
    let gateway = app.gateway_addr().expect("addr");
    let admin = app.admin_addr().expect("admin");
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    let budgeted = TestApp {
        gateway,
        admin,
        shutdown: stop,
        handle,
        http: reqwest::Client::new(),
    };
    let one = mention_from(
        &world,
        &budgeted,
        "C1",
        "UALICE",
        "[[cost:0.01]] one",
        json!({}),
    )
    .await;
    wait_reply(&world, "C1", &one).await;
    let two = mention_from(
        &world,
        &budgeted,
        "C1",
        "UALICE",
        "[[cost:0.01]] two",
        json!({}),
    )
    .await;
    wait_reply(&world, "C1", &two).await;
    let three = mention_from(
        &world,
        &budgeted,
        "C1",
        "UALICE",
        "[[cost:0.01]] three",
        json!({}),
    )
    .await;
    let notice = wait_notice(&world, "C1", &three).await;
    assert!(
        notice.contains("today's budget") && notice.contains("resets at 00:00 UTC"),
        "{notice}"
    );
    // The next UTC day: served again.
    offset.store(86_400, Ordering::SeqCst);
    let four = mention_from(
        &world,
        &budgeted,
        "C1",
        "UALICE",
        "[[cost:0.01]] four",
        json!({}),
    )
    .await;
    wait_reply(&world, "C1", &four).await;
    world.settle().await;
    assert!(world.replies("C1", &three).is_empty());
    // Spend per user is the sum of the turns' reported costs (charged on the
    // workers' real day).
    let usage: serde_json::Value = budgeted
        .http
        .get(budgeted.admin_url("/admin/usage"))
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    let spent = usage["usage"][format!("spend:user:{TEAM}:UALICE")]
        .as_f64()
        .unwrap_or(0.0);
    assert!((spent - 0.03).abs() < 1e-9, "spent {spent}: {usage}");
    assert_eq!(
        usage["usage"][format!("turns:user:{TEAM}:UALICE")].as_f64(),
        Some(3.0)
    );
    // ... and in metrics.
    let needle = format!("switchboard_usage_spend_usd{{scope=\"user\",key=\"{TEAM}:UALICE\"}}");
    wait_until(Duration::from_secs(10), "spend in metrics", || {
        let app = &budgeted;
        let needle = needle.clone();
        async move {
            let spent = metric(app, &needle).await;
            ((spent - 0.03).abs() < 1e-9).then_some(())
        }
    })
    .await;
    budgeted.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn admission_settings_reload_without_a_restart() {
    let world = SlackWorld::start("adm-reload", |_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("switchboard.toml");
    let deny = format!("[[admission.workspaces]]\nteam = \"{TEAM}\"\ndeny_users = [\"UALICE\"]\n");
    std::fs::write(&file, &deny).expect("write");
    let mut settings = gateway_settings(&world.redis, &world.stub, &world.prefix);
    let loaded = switchboard::config::Settings::load(Some(&file)).expect("load");
    settings.admission = loaded.admission.clone();
    settings.source = Some(file.clone());
    let app = spawn_app(settings, Role::Gateway).await;
    let refused = mention_from(&world, &app, "C1", "UALICE", "hello", json!({})).await;
    wait_notice(&world, "C1", &refused).await;
    // A broken file is refused and changes nothing.
    std::fs::write(&file, "[admission]\nuser_per_minute = \"lots\"\n").expect("write");
    let bad = app
        .http
        .post(app.admin_url("/admin/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(bad.status().as_u16(), 400);
    // Alice is let in by the new file.
    std::fs::write(&file, "[admission]\nrefusal_replies = true\n").expect("write");
    let ok = app
        .http
        .post(app.admin_url("/admin/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(ok.status().as_u16(), 200);
    let served = mention_from(&world, &app, "C1", "UALICE", "hello again", json!({})).await;
    wait_reply(&world, "C1", &served).await;
    world.settle().await;
    assert!(world.replies("C1", &refused).is_empty());
    app.stop().await;
    world.stop().await;
}

/// An intake with admission on `shards` queue shards, straight on a real
/// Redis (no worker: what is queued stays queued).
fn intake_on(
    redis: &TestRedis,
    test: &str,
    shards: u16,
    tweak: impl FnOnce(&mut switchboard::admission::AdmissionSettings),
) -> (
    switchboard::ingress::slack::SlackIntake,
    switchboard::queue::Queue,
) {
    let settings = switchboard::queue::QueueSettings {
        shards,
        ..switchboard::queue::QueueSettings::default()
    };
    let (queue, _) = crate::queue_support::test_queue(redis, test, settings);
    let mut admission = switchboard::admission::AdmissionSettings {
        refusal_replies: false,
        ..Default::default()
    };
    tweak(&mut admission);
    let intake = switchboard::ingress::slack::SlackIntake::new(
        queue.clone(),
        switchboard::ingress::slack::SlackIngressSettings::default(),
    )
    .with_admission(switchboard::admission::Admission::new(
        queue.clone(),
        admission,
        switchboard::admission::system_clock(),
    ));
    (intake, queue)
}

async fn accept(
    intake: &switchboard::ingress::slack::SlackIntake,
    channel: &str,
    ts: &str,
) -> switchboard::ingress::slack::IntakeOutcome {
    let body = callback(
        &format!("Ev{channel}{ts}"),
        app_mention(channel, ts, None, "hi"),
    );
    intake
        .accept_body(&serde_json::to_vec(&body).expect("json"))
        .await
        .expect("accepted")
}

/// With several shards, a conversation outside the shard that holds the
/// rate buckets is admitted step by step, one in it in the same script as
/// its enqueue: both take from the same user's bucket.
#[tokio::test]
async fn rate_limits_hold_across_conversations_in_different_shards() {
    use switchboard::admission::Refusal;
    use switchboard::domain::ConversationId;
    use switchboard::ingress::slack::IntakeOutcome;
    let redis = TestRedis::start();
    let (intake, queue) = intake_on(&redis, "adm-shards", 4, |a| {
        a.user_per_minute = 2.0;
        a.user_burst = 2.0;
    });
    let ts = "1700000000.000100";
    let shard = |c: &str| queue.keys().shard_of(&ConversationId::slack(TEAM, c, ts));
    let channels: Vec<String> = (0..64).map(|i| format!("C{i}")).collect();
    let in_zero = channels
        .iter()
        .find(|c| shard(c) == 0)
        .expect("a channel in shard 0");
    let elsewhere: Vec<&String> = channels.iter().filter(|c| shard(c) != 0).take(2).collect();
    assert!(queue.admits_in_one_script(&ConversationId::slack(TEAM, in_zero, ts)));
    assert!(!queue.admits_in_one_script(&ConversationId::slack(TEAM, elsewhere[0], ts)));

    assert_eq!(
        accept(&intake, elsewhere[0], ts).await,
        IntakeOutcome::Queued
    );
    // A retry of a queued message is no new request: no token taken.
    assert_eq!(
        accept(&intake, elsewhere[0], ts).await,
        IntakeOutcome::Duplicate
    );
    assert_eq!(accept(&intake, in_zero, ts).await, IntakeOutcome::Queued);
    assert_eq!(accept(&intake, in_zero, ts).await, IntakeOutcome::Duplicate);
    assert_eq!(
        accept(&intake, elsewhere[1], ts).await,
        IntakeOutcome::Refused(Refusal::UserRate)
    );
    // A retry of a refused message is a duplicate: its sender is told once.
    assert_eq!(
        accept(&intake, elsewhere[1], ts).await,
        IntakeOutcome::Duplicate
    );
    let third_in_zero = channels
        .iter()
        .filter(|c| shard(c) == 0)
        .nth(1)
        .expect("a second channel in shard 0");
    assert_eq!(
        accept(&intake, third_in_zero, ts).await,
        IntakeOutcome::Refused(Refusal::UserRate)
    );
    assert_eq!(
        accept(&intake, third_in_zero, ts).await,
        IntakeOutcome::Duplicate
    );
    // Refused messages were not queued.
    for c in [elsewhere[1], third_in_zero] {
        let cid = ConversationId::slack(TEAM, c, ts);
        assert!(!queue.conversation_exists(&cid).await.expect("redis"));
    }
}

/// With every slot taken (no worker here), conversations wait in the ready
/// queue; past `max_waiting` a new one is refused as busy, and not queued,
/// while a follow-up to a waiting one is still taken.
#[tokio::test]
async fn past_max_waiting_a_new_conversation_is_refused_as_busy() {
    use switchboard::admission::Refusal;
    use switchboard::domain::ConversationId;
    use switchboard::ingress::slack::IntakeOutcome;
    let redis = TestRedis::start();
    let (intake, queue) = intake_on(&redis, "adm-busy", 1, |a| a.max_waiting = 2);
    let ts = "1700000000.000100";
    assert_eq!(accept(&intake, "C1", ts).await, IntakeOutcome::Queued);
    assert_eq!(accept(&intake, "C2", ts).await, IntakeOutcome::Queued);
    assert_eq!(
        accept(&intake, "C3", ts).await,
        IntakeOutcome::Refused(Refusal::Busy)
    );
    let c3 = ConversationId::slack(TEAM, "C3", ts);
    assert!(!queue.conversation_exists(&c3).await.expect("redis"));
    // Slack's retry of the refused event is a duplicate, not a second refusal.
    assert_eq!(accept(&intake, "C3", ts).await, IntakeOutcome::Duplicate);
    // Once one of them is taken, there is room again.
    let worker = switchboard::queue::WorkerId::new("w1").expect("worker id");
    queue.heartbeat(&worker).await.expect("heartbeat");
    assert!(matches!(
        queue.claim(&worker, 0).await.expect("claim"),
        switchboard::queue::ClaimOutcome::Claimed(_)
    ));
    assert_eq!(
        accept(&intake, "C3", "1700000000.000200").await,
        IntakeOutcome::Queued
    );
}
