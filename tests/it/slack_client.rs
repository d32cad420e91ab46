//! The Slack Web API client against the local stand-in: what it sends, what
//! it reads back, and how each failure is classified.

use std::time::Duration;

use switchboard::config::{Secret, Settings};
use switchboard::egress::slack::{
    PostMessage, SlackApi, SlackError, SlackSetupError, install_crypto_provider,
};

use crate::slack_api_stub::{Failure, Limit, RateLimits, STUB_TOKEN, SlackStub};

const CHANNEL: &str = "C0CHAN";

fn client(stub: &SlackStub) -> SlackApi {
    client_with(stub, STUB_TOKEN, Duration::from_secs(5))
}

fn client_with(stub: &SlackStub, token: &str, timeout: Duration) -> SlackApi {
    SlackApi::new(&stub.base_url(), &Secret::new(token), timeout).expect("build the Slack client")
}

fn reply<'a>(thread_ts: &'a str, text: &'a str, reply_id: &'a str) -> PostMessage<'a> {
    PostMessage {
        channel: CHANNEL,
        thread_ts: Some(thread_ts),
        text,
        reply_id: Some(reply_id),
    }
}

#[tokio::test]
async fn a_reply_posted_in_a_thread_is_found_again_by_its_reply_id() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    let root = stub.add_user_message(CHANNEL, None, "hello bot");

    let posted = api
        .post_message(&reply(&root, "*hi* there", "conv/b1/0"))
        .await
        .expect("post");

    assert_eq!(posted.channel, CHANNEL);
    let thread = stub.messages_in(CHANNEL, Some(&root));
    let ours: Vec<_> = thread.iter().filter(|m| m.ts == posted.ts).collect();
    assert_eq!(ours.len(), 1, "{thread:?}");
    assert_eq!(ours[0].text, "*hi* there");
    assert_eq!(ours[0].thread_ts.as_deref(), Some(root.as_str()));
    assert_eq!(ours[0].reply_id(), Some("conv/b1/0"));
    let call = &stub.calls_to("chat.postMessage")[0];
    assert_eq!(call.params["mrkdwn"], serde_json::json!(true));
    assert_eq!(
        call.params["metadata"]["event_type"],
        serde_json::json!("switchboard_reply")
    );

    let found = api
        .find_reply(CHANNEL, Some(&root), "conv/b1/0")
        .await
        .expect("look up")
        .expect("found");
    assert_eq!(found.ts, posted.ts);
    assert_eq!(found.bot_id.as_deref(), Some("BBOT"));
    let replies_call = &stub.calls_to("conversations.replies")[0];
    assert_eq!(replies_call.param("include_all_metadata"), Some("true"));

    let missing = api
        .find_reply(CHANNEL, Some(&root), "conv/b1/1")
        .await
        .expect("look up");
    assert_eq!(missing, None);
}

#[tokio::test]
async fn a_lookup_reads_every_page_of_a_long_thread() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    let root = stub.add_user_message(CHANNEL, None, "start");
    for i in 0..230 {
        let text = format!("part {i}");
        let id = format!("conv/b/{i}");
        api.post_message(&reply(&root, &text, &id))
            .await
            .expect("post");
    }
    let all = api.thread_replies(CHANNEL, &root).await.expect("replies");
    assert_eq!(all.len(), 231);
    assert_eq!(stub.calls_to("conversations.replies").len(), 2, "two pages");
    let last = api
        .find_reply(CHANNEL, Some(&root), "conv/b/229")
        .await
        .expect("look up");
    assert_eq!(last.map(|m| m.text), Some("part 229".to_string()));
}

#[tokio::test]
async fn a_top_level_reply_is_found_in_the_channel_history() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    let posted = api
        .post_message(&PostMessage {
            channel: "D0DM",
            thread_ts: None,
            text: "in the DM",
            reply_id: Some("dm/b1/0"),
        })
        .await
        .expect("post");
    let found = api
        .find_reply("D0DM", None, "dm/b1/0")
        .await
        .expect("look up");
    assert_eq!(found.map(|m| m.ts), Some(posted.ts));
}

#[tokio::test]
async fn an_update_replaces_the_text_of_the_message() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    let root = stub.add_user_message(CHANNEL, None, "q");
    let posted = api
        .post_message(&reply(&root, "partial", "c/b/0"))
        .await
        .expect("post");

    api.update_message(CHANNEL, &posted.ts, "partial and final")
        .await
        .expect("update");

    let message = stub
        .messages_in(CHANNEL, Some(&root))
        .into_iter()
        .find(|m| m.ts == posted.ts)
        .expect("message");
    assert_eq!(message.text, "partial and final");
    assert_eq!(message.history, vec!["partial", "partial and final"]);
    assert_eq!(message.reply_id(), Some("c/b/0"), "metadata kept");

    let gone = api.update_message(CHANNEL, "1.000000", "x").await;
    assert_eq!(
        gone,
        Err(SlackError::Permanent {
            code: "message_not_found".into()
        })
    );
}

#[tokio::test]
async fn reactions_are_added_and_removed_idempotently() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    let root = stub.add_user_message(CHANNEL, None, "q");

    api.add_reaction(CHANNEL, &root, "eyes").await.expect("add");
    api.add_reaction(CHANNEL, &root, "eyes")
        .await
        .expect("adding again is fine");
    assert_eq!(stub.reactions_on(CHANNEL, &root), vec!["eyes"]);

    api.remove_reaction(CHANNEL, &root, "eyes")
        .await
        .expect("remove");
    api.remove_reaction(CHANNEL, &root, "eyes")
        .await
        .expect("removing again is fine");
    assert!(stub.reactions_on(CHANNEL, &root).is_empty());
    assert_eq!(stub.calls_to("reactions.add").len(), 2);
}

#[tokio::test]
async fn the_assistant_status_is_set_on_the_thread() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    api.set_assistant_status(CHANNEL, "1700000000.000001", "is thinking...")
        .await
        .expect("set");
    api.set_assistant_status(CHANNEL, "1700000000.000001", "")
        .await
        .expect("clear");
    assert_eq!(
        stub.statuses_of(CHANNEL, "1700000000.000001"),
        vec!["is thinking...", ""]
    );
}

#[tokio::test]
async fn a_429_is_rate_limited_with_slacks_retry_after() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    let root = stub.add_user_message(CHANNEL, None, "q");
    stub.fail_next(
        "chat.postMessage",
        1,
        Failure::RateLimited {
            retry_after_secs: 7,
        },
    );

    let first = api.post_message(&reply(&root, "hi", "r/0")).await;
    assert_eq!(
        first,
        Err(SlackError::RateLimited {
            retry_after: Duration::from_secs(7)
        })
    );
    assert!(first.as_ref().is_err_and(SlackError::is_retryable));
    assert_eq!(
        stub.messages_in(CHANNEL, Some(&root)).len(),
        1,
        "not posted"
    );

    api.post_message(&reply(&root, "hi", "r/0"))
        .await
        .expect("the next call goes through");
    assert_eq!(stub.messages_in(CHANNEL, Some(&root)).len(), 2);
}

#[tokio::test]
async fn channel_errors_are_permanent() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    stub.fail_channel("C404", Some("channel_not_found"));
    stub.fail_channel("CNOTIN", Some("not_in_channel"));

    for (channel, code) in [("C404", "channel_not_found"), ("CNOTIN", "not_in_channel")] {
        let result = api
            .post_message(&PostMessage {
                channel,
                thread_ts: Some("1700000000.000001"),
                text: "hi",
                reply_id: Some("r/0"),
            })
            .await;
        let error = result.expect_err("refused");
        assert_eq!(error, SlackError::Permanent { code: code.into() });
        assert!(!error.is_retryable());
        assert_eq!(error.code(), Some(code));
    }

    stub.fail_next(
        "reactions.add",
        1,
        Failure::Error("is_archived".to_string()),
    );
    let archived = api.add_reaction(CHANNEL, "1700000000.000001", "eyes").await;
    assert_eq!(
        archived,
        Err(SlackError::Permanent {
            code: "is_archived".into()
        })
    );
}

#[tokio::test]
async fn server_errors_are_transient() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    let root = stub.add_user_message(CHANNEL, None, "q");
    let posted = api
        .post_message(&reply(&root, "a", "r/0"))
        .await
        .expect("post");
    stub.fail_next("chat.update", 1, Failure::Status(503));
    stub.fail_next("chat.update", 1, Failure::Status(500));
    stub.fail_next(
        "chat.update",
        1,
        Failure::Error("internal_error".to_string()),
    );

    for _ in 0..3 {
        let result = api.update_message(CHANNEL, &posted.ts, "b").await;
        assert!(
            matches!(result, Err(SlackError::Transient { .. })),
            "{result:?}"
        );
    }
    api.update_message(CHANNEL, &posted.ts, "b")
        .await
        .expect("then it works");
}

#[tokio::test]
async fn a_bad_token_is_permanent_invalid_auth() {
    let stub = SlackStub::start().await;
    let api = client_with(&stub, "xoxb-wrong", Duration::from_secs(5));
    let result = api
        .post_message(&reply("1700000000.000001", "hi", "r/0"))
        .await;
    assert_eq!(
        result,
        Err(SlackError::Permanent {
            code: "invalid_auth".into()
        })
    );
    assert!(stub.all_messages().is_empty());
}

#[tokio::test]
async fn a_post_whose_answer_is_lost_is_transient_and_can_be_found() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    let root = stub.add_user_message(CHANNEL, None, "q");
    stub.fail_next("chat.postMessage", 1, Failure::DropAfterAccept);

    let result = api.post_message(&reply(&root, "final", "r/0")).await;
    assert!(
        matches!(result, Err(SlackError::Transient { .. })),
        "{result:?}"
    );

    let found = api
        .find_reply(CHANNEL, Some(&root), "r/0")
        .await
        .expect("look up after the lost answer")
        .expect("the post took effect");
    assert_eq!(found.text, "final");
}

#[tokio::test]
async fn a_call_without_an_answer_times_out_as_transient() {
    let stub = SlackStub::start().await;
    let api = client_with(&stub, STUB_TOKEN, Duration::from_millis(300));
    stub.fail_next("reactions.add", 1, Failure::Hang);
    let started = std::time::Instant::now();
    let result = api.add_reaction(CHANNEL, "1700000000.000001", "eyes").await;
    assert!(
        matches!(result, Err(SlackError::Transient { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    // A port where nothing listens.
    let base = format!("http://127.0.0.1:{}/api/", crate::helpers::free_port());
    let api =
        SlackApi::new(&base, &Secret::new(STUB_TOKEN), Duration::from_secs(2)).expect("client");
    let result = api.add_reaction(CHANNEL, "1700000000.000001", "eyes").await;
    assert!(
        matches!(result, Err(SlackError::Transient { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_stand_in_enforces_rate_limits_and_counts_violations() {
    let stub = SlackStub::start().await;
    let api = client(&stub);
    let root = stub.add_user_message(CHANNEL, None, "q");
    let posted = api
        .post_message(&reply(&root, "a", "r/0"))
        .await
        .expect("post");
    stub.set_rate_limits(Some(RateLimits::tier3(Limit {
        burst: 2,
        per_minute: 30.0,
    })));

    for _ in 0..2 {
        api.update_message(CHANNEL, &posted.ts, "b")
            .await
            .expect("within the burst");
    }
    let over = api.update_message(CHANNEL, &posted.ts, "c").await;
    let retry_after = over
        .as_ref()
        .err()
        .and_then(SlackError::retry_after)
        .expect("rate limited");
    assert!(retry_after >= Duration::from_secs(1) && retry_after <= Duration::from_secs(2));
    assert_eq!(stub.violations(), 1);

    // chat.postMessage is limited per channel: another channel has its own.
    for i in 0..3 {
        api.post_message(&reply(&root, "p", &format!("r/{i}")))
            .await
            .expect("within the post burst");
    }
    let over = api.post_message(&reply(&root, "p", "r/9")).await;
    assert!(
        matches!(over, Err(SlackError::RateLimited { .. })),
        "{over:?}"
    );
    api.post_message(&PostMessage {
        channel: "C0OTHER",
        thread_ts: None,
        text: "elsewhere",
        reply_id: None,
    })
    .await
    .expect("another channel");
    assert_eq!(stub.violations(), 2);
    assert_eq!(stub.violations_by_method().get("chat.update"), Some(&1));
}

#[test]
fn the_client_needs_a_token_and_an_http_url() {
    install_crypto_provider();
    install_crypto_provider(); // idempotent
    let settings = Settings::default();
    assert!(matches!(
        SlackApi::from_settings(&settings),
        Err(SlackSetupError::MissingToken)
    ));
    assert!(matches!(
        SlackApi::new("ftp://x", &Secret::new("t"), Duration::from_secs(1)),
        Err(SlackSetupError::BadBaseUrl(_))
    ));
}
