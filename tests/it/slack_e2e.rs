//! The Slack path end to end: a signed event in, the gateway and a worker
//! with stand-in agents, real Redis, and a stand-in of Slack's Web API that
//! records every call and fails on command.

use std::time::Duration;

use switchboard::app::Role;
use switchboard::config::{Secret, Settings};

use crate::helpers::*;
use crate::pool_support::*;
use crate::queue_support::*;
use crate::slack_api_stub::*;
use crate::slack_support::*;

/// Everything a Slack end-to-end test runs.
pub struct SlackWorld {
    pub redis: TestRedis,
    pub stub: SlackStub,
    pub queue: switchboard::queue::Queue,
    pub prefix: String,
    pub app: TestApp,
    pub worker: TestWorker,
    _dir: tempfile::TempDir,
}

pub fn gateway_settings(redis: &TestRedis, stub: &SlackStub, prefix: &str) -> Settings {
    let mut settings = test_settings(redis, "e2e");
    settings.redis.key_prefix = prefix.to_string();
    settings.queue = pool_queue_settings();
    settings.slack.api_base_url = stub.base_url();
    settings.slack.app_id = Some(APP.into());
    settings.secrets.slack_signing_secret = Some(Secret::new(SIGNING_SECRET));
    settings.secrets.slack_bot_token = Some(Secret::new(stub.token()));
    settings.egress.update_interval = Duration::from_millis(300);
    settings
}

impl SlackWorld {
    pub async fn start(test: &str, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::start_with_slots(test, 2, tweak).await
    }

    pub async fn start_with_slots(
        test: &str,
        slots: u32,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let redis = TestRedis::start();
        let stub = SlackStub::start().await;
        let (queue, prefix) = test_queue(&redis, test, pool_queue_settings());
        let mut settings = gateway_settings(&redis, &stub, &prefix);
        tweak(&mut settings);
        let app = spawn_app(settings, Role::Gateway).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let worker =
            TestWorker::start(&queue, test, pool(slots, 1), agent_settings(dir.path())).await;
        fresh_pids(&queue, &worker.id, slots as usize).await;
        Self {
            redis,
            stub,
            queue,
            prefix,
            app,
            worker,
            _dir: dir,
        }
    }

    /// A user writes `text` in `channel`, mentioning the bot. Returns the ts.
    pub async fn mention(&self, channel: &str, text: &str) -> String {
        let ts = self
            .stub
            .add_user_message(channel, None, &format!("<@{BOT}> {text}"));
        let body = callback(
            &format!("Ev{channel}{ts}"),
            app_mention(channel, &ts, None, text),
        );
        assert_eq!(
            post_event(
                &self.app.http,
                &self.app.gateway_url("/slack/events"),
                &body
            )
            .await,
            200
        );
        ts
    }

    /// The bot's replies in the thread rooted at `ts` (not its notices,
    /// such as "Queued: 3 ahead of you").
    pub fn replies(&self, channel: &str, ts: &str) -> Vec<StubMessage> {
        self.stub
            .messages_in(channel, Some(ts))
            .into_iter()
            .filter(|m| m.ts != ts && m.bot_id.is_some() || m.reply_id().is_some())
            .filter(|m| {
                !m.reply_id()
                    .is_some_and(|r| r.contains("/queued/") || r.contains("/notice/"))
            })
            .collect()
    }

    /// The bot's notices in the thread rooted at `ts`.
    pub fn notices(&self, channel: &str, ts: &str) -> Vec<StubMessage> {
        self.stub
            .messages_in(channel, Some(ts))
            .into_iter()
            .filter(|m| {
                m.reply_id()
                    .is_some_and(|r| r.contains("/queued/") || r.contains("/notice/"))
            })
            .collect()
    }

    /// Wait until everything queued has gone out: outbox empty, no turn running.
    pub async fn settle(&self) {
        wait_until(Duration::from_secs(60), "the outbox to drain", || {
            let queue = self.queue.clone();
            let mut conn = self.redis.client();
            let prefix = self.prefix.clone();
            async move {
                let pending: i64 = redis::cmd("XLEN")
                    .arg(format!("{prefix}:{{s0}}:outbox"))
                    .query(&mut conn)
                    .unwrap_or(1);
                let ready: i64 = redis::cmd("ZCARD")
                    .arg(format!("{prefix}:{{s0}}:leases"))
                    .query(&mut conn)
                    .unwrap_or(1);
                let waiting: i64 = redis::cmd("ZCARD")
                    .arg(format!("{prefix}:{{s0}}:ready"))
                    .query(&mut conn)
                    .unwrap_or(1);
                let _ = &queue;
                (pending == 0 && ready == 0 && waiting == 0).then_some(())
            }
        })
        .await;
    }

    pub async fn stop(self) {
        self.worker.shutdown().await;
        self.app.stop().await;
    }
}

/// Wait for the thread's reply to hold its final text (the stand-in's last line).
async fn final_reply(world: &SlackWorld, channel: &str, ts: &str) -> StubMessage {
    wait_until(Duration::from_secs(60), "the final reply", || {
        let replies = world.replies(channel, ts);
        async move {
            replies
                .into_iter()
                .find(|m| m.text.contains("turn 1 of session"))
        }
    })
    .await
}

#[tokio::test]
async fn a_signed_mention_gets_exactly_one_reply_in_its_thread_and_the_acknowledgement_comes_and_goes()
 {
    let world = SlackWorld::start("e2e-one", |_| {}).await;
    let ts = world.mention("C0GENERAL", "hello there").await;
    let reply = final_reply(&world, "C0GENERAL", &ts).await;
    world.settle().await;
    assert!(
        reply.text.contains("reply to: UALICE: hello there"),
        "{}",
        reply.text
    );
    assert_eq!(
        reply.thread_ts.as_deref(),
        Some(ts.as_str()),
        "in the mention's thread"
    );
    assert_eq!(
        world.replies("C0GENERAL", &ts).len(),
        1,
        "exactly one reply message"
    );
    let adds = world.stub.calls_to("reactions.add");
    assert!(
        adds.iter()
            .any(|c| c.param("name") == Some("eyes") && c.param("timestamp") == Some(ts.as_str())),
        "{adds:?}"
    );
    let removes = world.stub.calls_to("reactions.remove");
    assert!(
        removes
            .iter()
            .any(|c| c.param("timestamp") == Some(ts.as_str())),
        "{removes:?}"
    );
    assert!(
        world.stub.reactions_on("C0GENERAL", &ts).is_empty(),
        "the acknowledgement is gone"
    );
    world.stop().await;
}

#[tokio::test]
async fn a_long_streamed_reply_is_one_message_updated_at_most_once_per_interval() {
    let world = SlackWorld::start("e2e-stream", |_| {}).await;
    let ts = world
        .mention("C0STREAM", "[[delay:2500]] tell me a story")
        .await;
    let reply = final_reply(&world, "C0STREAM", &ts).await;
    world.settle().await;
    assert_eq!(world.replies("C0STREAM", &ts).len(), 1);
    let msg = &world.replies("C0STREAM", &ts)[0];
    assert!(
        msg.history.len() >= 3,
        "posted early, then updated as it streamed: {:?}",
        msg.history
    );
    assert!(
        reply.text.contains("tell me a story"),
        "finished with the full text"
    );
    let updates: Vec<_> = world
        .stub
        .calls_to("chat.update")
        .into_iter()
        .filter(|c| c.param("ts") == Some(msg.ts.as_str()))
        .collect();
    for pair in updates.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        // The interval is 300 ms; allow scheduling jitter below it.
        assert!(gap >= Duration::from_millis(200), "updates {gap:?} apart");
    }
    world.stop().await;
}

#[tokio::test]
async fn a_reply_longer_than_one_message_is_split_at_boundaries_with_nothing_lost() {
    let world = SlackWorld::start("e2e-split", |s| s.egress.message_limit = 400).await;
    let paragraphs: Vec<String> = (0..8)
        .map(|i| format!("Paragraph {i}: {}", "words and more words ".repeat(8)))
        .collect();
    let code = format!(
        "```\n{}```",
        (0..10)
            .map(|i| format!("let line_{i} = {i};\n"))
            .collect::<String>()
    );
    let text = format!(
        "{}\n\n{code}\n\n{}",
        paragraphs[..4].join("\n\n"),
        paragraphs[4..].join("\n\n")
    );
    let ts = world.mention("C0SPLIT", &text).await;
    wait_until(Duration::from_secs(60), "the last part", || {
        let replies = world.replies("C0SPLIT", &ts);
        async move {
            replies
                .iter()
                .any(|m| m.text.contains("turn 1 of session"))
                .then_some(())
        }
    })
    .await;
    world.settle().await;
    let replies = world.replies("C0SPLIT", &ts);
    assert!(
        replies.len() >= 3,
        "split into several messages: {}",
        replies.len()
    );
    for m in &replies {
        assert!(m.text.chars().count() <= 400, "within the limit");
        assert_eq!(
            m.text.matches("```").count() % 2,
            0,
            "no code block cut in half: {}",
            m.text
        );
    }
    let all: String = replies
        .iter()
        .map(|m| m.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for p in &paragraphs {
        assert!(all.contains(p.trim()), "nothing lost: {p}");
    }
    for i in 0..10 {
        assert!(
            all.contains(&format!("let line_{i} = {i};")),
            "code line {i} kept"
        );
    }
    world.stop().await;
}

#[tokio::test]
async fn slack_answering_429_three_times_still_gives_exactly_one_reply() {
    let world = SlackWorld::start("e2e-429", |_| {}).await;
    world.stub.fail_next(
        "chat.postMessage",
        3,
        Failure::RateLimited {
            retry_after_secs: 1,
        },
    );
    let ts = world.mention("C0LIMITED", "are you throttled?").await;
    final_reply(&world, "C0LIMITED", &ts).await;
    world.settle().await;
    assert_eq!(world.replies("C0LIMITED", &ts).len(), 1);
    let posts = world.stub.calls_to("chat.postMessage");
    assert!(
        posts.iter().filter(|c| c.status == 429).count() >= 3,
        "{posts:?}"
    );
    world.stop().await;
}

#[tokio::test]
async fn not_in_channel_dead_letters_the_reply_without_retries() {
    let world = SlackWorld::start("e2e-notin", |_| {}).await;
    world.stub.fail_channel("C0NOTIN", Some("not_in_channel"));
    let ts = world.mention("C0NOTIN", "hello?").await;
    wait_until(Duration::from_secs(60), "the dead letter", || {
        let queue = world.queue.clone();
        async move {
            let dead = queue.dead_letters(10).await.expect("dead");
            dead.into_iter()
                .find(|d| d.reason.contains("not_in_channel"))
        }
    })
    .await;
    world.settle().await;
    assert!(world.replies("C0NOTIN", &ts).is_empty());
    let posts = world.stub.calls_to("chat.postMessage");
    assert!(posts.len() <= 2, "no retry storm: {} posts", posts.len());
    world.stop().await;
}

#[tokio::test]
async fn fifty_conversations_streaming_at_once_stay_within_slacks_limits_and_all_finish() {
    let world = SlackWorld::start_with_slots("e2e-fifty", 6, |s| {
        // Limits scaled up so the test takes seconds, not minutes; the
        // stand-in enforces slightly more than egress is allowed to use.
        s.egress.slack_calls_per_minute = 280.0;
        s.egress.slack_burst = 5.0;
    })
    .await;
    world.stub.set_rate_limits(Some(RateLimits::tier3(Limit {
        burst: 6,
        per_minute: 300.0,
    })));
    let mut threads = Vec::new();
    for i in 0..50 {
        let channel = format!("C0MANY{}", i % 10);
        let ts = world
            .mention(&channel, &format!("[[delay:600]] question {i}"))
            .await;
        threads.push((channel, ts, i));
    }
    for (channel, ts, i) in &threads {
        let reply = final_reply(&world, channel, ts).await;
        assert!(
            reply.text.contains(&format!("question {i}")),
            "{}",
            reply.text
        );
    }
    world.settle().await;
    for (channel, ts, _) in &threads {
        assert_eq!(
            world.replies(channel, ts).len(),
            1,
            "one reply in {channel}/{ts}"
        );
    }
    assert_eq!(
        world.stub.violations(),
        0,
        "over the limit: {:?}",
        world.stub.violations_by_method()
    );
    world.stop().await;
}

/// What ends the Slack outage in [`outage_until`].
enum OutageEnds {
    /// A try of the final reply carried the late note: the reply is stale
    /// from then on, whatever the machine's speed. (A 503 on a progress
    /// update, or on a final try made within the first millisecond, does
    /// not count: the reply could still go out fresh after the outage.)
    OnALateTry,
    /// The final reply was dead-lettered as too old.
    OnADeadLetter,
}

/// Mention the bot in `channel` during a Slack outage (every post and
/// update answered 503) that lasts until `ends`, so that when Slack is
/// back the final reply is older than `max_reply_age` (1 ms here).
/// Returns the mention's ts.
async fn outage_until(world: &SlackWorld, channel: &str, text: &str, ends: OutageEnds) -> String {
    const METHODS: [&str; 2] = ["chat.postMessage", "chat.update"];
    for method in METHODS {
        world.stub.fail_next(method, 10_000, Failure::Status(503));
    }
    let ts = world.mention(channel, text).await;
    wait_until(Duration::from_secs(60), "the end of the outage", || {
        let late_try = world.stub.calls().into_iter().any(|c| {
            c.status == 503
                && c.param("text").is_some_and(|t| {
                    t.contains("Sorry for the delay") && t.contains("turn 1 of session")
                })
        });
        let queue = world.queue.clone();
        let ends = &ends;
        async move {
            match ends {
                OutageEnds::OnALateTry => late_try.then_some(()),
                OutageEnds::OnADeadLetter => {
                    let dead = queue.dead_letters(10).await.expect("dead letters");
                    dead.iter()
                        .any(|d| d.reason.contains("too old"))
                        .then_some(())
                }
            }
        }
    })
    .await;
    for method in METHODS {
        world.stub.clear_failures(method);
    }
    ts
}

#[tokio::test]
async fn a_reply_too_old_when_it_can_be_sent_goes_out_with_a_note() {
    let world = SlackWorld::start("e2e-stale-note", |s| {
        s.egress.max_reply_age = Duration::from_millis(1)
    })
    .await;
    let ts = outage_until(&world, "C0LATE", "are you late?", OutageEnds::OnALateTry).await;
    let reply = final_reply(&world, "C0LATE", &ts).await;
    world.settle().await;
    assert!(reply.text.contains("Sorry for the delay"), "{}", reply.text);
    assert!(reply.text.contains("are you late?"), "{}", reply.text);
    world.stop().await;
}

#[tokio::test]
async fn a_reply_too_old_is_dead_lettered_when_so_configured() {
    let world = SlackWorld::start("e2e-stale-drop", |s| {
        s.egress.max_reply_age = Duration::from_millis(1);
        s.egress.stale_replies = switchboard::config::StaleReplies::Drop;
    })
    .await;
    // Under the outage the final reply is either dead-lettered at once or
    // retried until it is; either way it never goes out.
    let ts = outage_until(
        &world,
        "C0DROP",
        "[[delay:300]] too late",
        OutageEnds::OnADeadLetter,
    )
    .await;
    let dead = world.queue.dead_letters(10).await.expect("dead letters");
    assert!(
        dead.iter()
            .any(|d| d.reason.contains("reply too old to send")),
        "{dead:?}"
    );
    world.settle().await;
    assert!(
        world
            .replies("C0DROP", &ts)
            .iter()
            .all(|m| !m.text.contains("turn 1 of session")),
        "the stale final text was not sent"
    );
    world.stop().await;
}

#[tokio::test]
async fn admin_pool_lists_workers_and_their_slots() {
    let world = SlackWorld::start("e2e-admin-pool", |_| {}).await;
    let body: serde_json::Value = world
        .app
        .http
        .get(world.app.admin_url("/admin/pool"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let workers = body["workers"].as_array().cloned().unwrap_or_default();
    let ours = workers
        .iter()
        .find(|w| w["worker"] == world.worker.id.as_str())
        .unwrap_or_else(|| panic!("our worker listed: {body}"));
    assert_eq!(ours["live"], true);
    let slots = ours["status"]["slots"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(slots.len(), 2);
    assert!(
        slots
            .iter()
            .all(|s| s["pid"].as_u64().is_some() && s["state"] == "fresh"),
        "{slots:?}"
    );
    world.stop().await;
}
