//! A gateway process killed with SIGKILL at the worst moments of a reply:
//! after restart, the reply is in Slack exactly once.

use std::time::Duration;

use crate::helpers::*;
use crate::pool_support::*;
use crate::queue_support::*;
use crate::slack_api_stub::*;
use crate::slack_support::*;

struct Crashy {
    redis: TestRedis,
    stub: SlackStub,
    prefix: String,
    worker: TestWorker,
    _dir: tempfile::TempDir,
}

impl Crashy {
    async fn start(test: &str) -> Self {
        let redis = TestRedis::start();
        let stub = SlackStub::start().await;
        let (queue, prefix) = test_queue(&redis, test, pool_queue_settings());
        let dir = tempfile::tempdir().expect("tempdir");
        let worker = TestWorker::start(&queue, test, pool(2, 1), agent_settings(dir.path())).await;
        fresh_pids(&queue, &worker.id, 2).await;
        Self {
            redis,
            stub,
            prefix,
            worker,
            _dir: dir,
        }
    }

    fn gateway(&self) -> (ServeProcess, std::net::SocketAddr) {
        let (url, base, token) = (self.redis.url(), self.stub.base_url(), self.stub.token());
        let gateway = ServeProcess::start(
            &["gateway"],
            &[
                ("REDIS_URL", url.as_str()),
                ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
                ("SLACK_BOT_TOKEN", token.as_str()),
                ("SWITCHBOARD__REDIS__KEY_PREFIX", self.prefix.as_str()),
                ("SWITCHBOARD__SLACK__API_BASE_URL", base.as_str()),
                ("SWITCHBOARD__SLACK__APP_ID", APP),
                ("SWITCHBOARD__QUEUE__LEASE_TTL", "2s"),
                ("SWITCHBOARD__QUEUE__LEASE_MARGIN", "700ms"),
                ("SWITCHBOARD__POOL__RUNTIME", "external"),
            ],
        );
        let (addr, _) = gateway.addresses();
        (gateway, addr)
    }

    async fn mention(&self, gateway: std::net::SocketAddr, channel: &str, text: &str) -> String {
        let ts = self
            .stub
            .add_user_message(channel, None, &format!("<@{BOT}> {text}"));
        let body = callback(
            &format!("Ev{channel}{ts}"),
            app_mention(channel, &ts, None, text),
        );
        let http = reqwest::Client::new();
        assert_eq!(
            post_event(&http, &format!("http://{gateway}/slack/events"), &body).await,
            200
        );
        ts
    }

    fn bot_messages(&self, channel: &str, ts: &str) -> Vec<StubMessage> {
        self.stub
            .messages_in(channel, Some(ts))
            .into_iter()
            .filter(|m| m.reply_id().is_some())
            .collect()
    }

    async fn final_text(&self, channel: &str, ts: &str) -> Vec<StubMessage> {
        wait_until(
            Duration::from_secs(60),
            "the final reply after restart",
            || {
                let messages = self.bot_messages(channel, ts);
                async move {
                    messages
                        .iter()
                        .any(|m| m.text.contains("turn 1 of session"))
                        .then_some(messages)
                }
            },
        )
        .await
    }
}

#[tokio::test]
async fn a_gateway_killed_after_the_agent_replied_but_before_egress_posted_posts_once_after_restart()
 {
    let world = Crashy::start("crash-before-post").await;
    world
        .stub
        .fail_next("chat.postMessage", 10_000, Failure::Status(503));
    let (mut gateway, addr) = world.gateway();
    let ts = world
        .mention(addr, "C0CRASH", "reply after the crash")
        .await;
    wait_until(Duration::from_secs(30), "egress to try to post", || {
        let tried = world
            .stub
            .calls_to("chat.postMessage")
            .iter()
            .any(|c| c.status == 503);
        async move { tried.then_some(()) }
    })
    .await;
    gateway.child.kill().expect("kill -9 the gateway");
    gateway.child.wait().expect("reap");
    assert!(
        world.bot_messages("C0CRASH", &ts).is_empty(),
        "nothing posted yet"
    );
    world.stub.clear_failures("chat.postMessage");
    let (_restarted, _) = world.gateway();
    let messages = world.final_text("C0CRASH", &ts).await;
    assert_eq!(messages.len(), 1, "posted once: {messages:?}");
    assert!(messages[0].text.contains("reply after the crash"));
    world.worker.shutdown().await;
}

#[tokio::test]
async fn a_final_post_slack_accepted_before_the_gateway_died_is_not_posted_again() {
    let world = Crashy::start("crash-after-final-post").await;
    // No streamed start: the first post is the final reply, marked pending
    // in the same round trip as its token. Slack stores it, its answer
    // never comes back, and the gateway dies.
    world.stub.fail_next("chat.postMessage", 1, Failure::Hang);
    let (mut gateway, addr) = world.gateway();
    let ts = world.mention(addr, "C0FINAL", "answer me once").await;
    wait_until(Duration::from_secs(30), "Slack to have the post", || {
        let messages = world.bot_messages("C0FINAL", &ts);
        async move { (messages.len() == 1).then_some(()) }
    })
    .await;
    gateway.child.kill().expect("kill -9 the gateway");
    gateway.child.wait().expect("reap");
    let (_restarted, _) = world.gateway();
    // The restarted gateway delivers (and deletes) what the dead one left.
    let queue = queue_on(&world.redis.url(), &world.prefix, pool_queue_settings());
    wait_until(
        Duration::from_secs(30),
        "the outbox to be delivered",
        || {
            let queue = queue.clone();
            async move {
                let left = queue.outbox_entries(0).await.expect("outbox");
                left.is_empty().then_some(())
            }
        },
    )
    .await;
    let messages = world.bot_messages("C0FINAL", &ts);
    assert_eq!(messages.len(), 1, "still exactly one message: {messages:?}");
    assert!(messages[0].text.contains("answer me once"));
    world.worker.shutdown().await;
}

#[tokio::test]
async fn a_post_slack_accepted_before_the_gateway_died_is_adopted_not_posted_again() {
    let world = Crashy::start("crash-after-post").await;
    // Slack stores the first post (the streamed start of the reply) but
    // its answer never comes back; the gateway dies before recording it.
    world.stub.fail_next("chat.postMessage", 1, Failure::Hang);
    let (mut gateway, addr) = world.gateway();
    let ts = world
        .mention(addr, "C0ADOPT", "[[delay:2000]] reply exactly once")
        .await;
    let first = wait_until(Duration::from_secs(30), "Slack to have the post", || {
        let messages = world.bot_messages("C0ADOPT", &ts);
        async move { (messages.len() == 1).then(|| messages[0].text.clone()) }
    })
    .await;
    assert!(
        !first.contains("turn 1 of session"),
        "the hung post was progress, not the final text: {first}"
    );
    gateway.child.kill().expect("kill -9 the gateway");
    gateway.child.wait().expect("reap");
    let (_restarted, _) = world.gateway();
    let messages = world.final_text("C0ADOPT", &ts).await;
    assert_eq!(messages.len(), 1, "still exactly one message: {messages:?}");
    assert!(
        messages[0].text.contains("reply exactly once"),
        "holding the full final text: {}",
        messages[0].text
    );
    assert!(
        messages[0].history.len() >= 2,
        "the adopted message was updated: {:?}",
        messages[0].history
    );
    world.worker.shutdown().await;
}
