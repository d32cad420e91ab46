//! Unit tests for [`super::event`], with payloads shaped like the examples in
//! Slack's Events API documentation.

use serde_json::{Value, json};

use super::event::*;
use super::settings::{DmConversation, SlackIngressSettings};
use crate::domain::{Destination, FileRef};

const NOW_MS: u64 = 1_700_000_000_123;
const TEAM: &str = "T0001";
const APP: &str = "A0APP";
const BOT: &str = "UBOT";

fn settings() -> SlackIngressSettings {
    SlackIngressSettings::default()
}

/// An `event_callback` envelope around `event`, as Slack sends it.
fn callback(event_id: &str, event: Value) -> Value {
    json!({
        "token": "XXYYZZ",
        "team_id": TEAM,
        "context_team_id": TEAM,
        "api_app_id": APP,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1_700_000_000,
        "authorizations": [{
            "enterprise_id": null,
            "team_id": TEAM,
            "user_id": BOT,
            "is_bot": true,
            "is_enterprise_install": false
        }],
        "is_ext_shared_channel": false,
        "event_context": "4-eyJldCI6ImFwcF9tZW50aW9uIn0"
    })
}

fn app_mention(text: &str, ts: &str, thread_ts: Option<&str>) -> Value {
    let mut event = json!({
        "client_msg_id": "a1b2c3",
        "type": "app_mention",
        "text": text,
        "user": "UALICE",
        "ts": ts,
        "blocks": [],
        "team": TEAM,
        "channel": "C0CHAN",
        "event_ts": ts
    });
    if let Some(thread_ts) = thread_ts {
        event["thread_ts"] = json!(thread_ts);
    }
    event
}

fn message(channel: &str, channel_type: &str, text: &str, ts: &str) -> Value {
    json!({
        "client_msg_id": "a1b2c3",
        "type": "message",
        "text": text,
        "user": "UALICE",
        "ts": ts,
        "blocks": [],
        "team": TEAM,
        "channel": channel,
        "event_ts": ts,
        "channel_type": channel_type
    })
}

fn decide_json(body: &Value, settings: &SlackIngressSettings) -> Decision {
    let bytes = serde_json::to_vec(body).expect("json");
    decide(&bytes, settings, NOW_MS).expect("decision")
}

fn candidate(body: &Value, settings: &SlackIngressSettings) -> Candidate {
    match decide_json(body, settings) {
        Decision::Message(candidate) => *candidate,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn ignored(body: &Value, settings: &SlackIngressSettings) -> IgnoreReason {
    match decide_json(body, settings) {
        Decision::Ignore(reason) => reason,
        other => panic!("expected ignore, got {other:?}"),
    }
}

fn slack_dest(channel: &str, thread_ts: Option<&str>) -> Destination {
    Destination::Slack {
        team: TEAM.into(),
        channel: channel.into(),
        thread_ts: thread_ts.map(str::to_owned),
    }
}

#[test]
fn url_verification_is_answered_with_its_challenge() {
    let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let decision = decide(body, &settings(), NOW_MS).expect("decision");
    assert_eq!(
        decision,
        Decision::UrlVerification {
            challenge: "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P".into()
        }
    );
    let err = decide(br#"{"type":"url_verification"}"#, &settings(), NOW_MS);
    assert!(matches!(err, Err(EventError::MissingChallenge)));
}

#[test]
fn malformed_bodies_are_errors_labelled_malformed_json() {
    let bodies: [&[u8]; 9] = [
        b"",
        b"not json",
        b"[]",
        b"null",
        b"{}",
        br#"{"type":5}"#,
        br#"{"type":"event_callback","event":{"type":"message""#,
        b"\xff\xfe",
        br#"{"type":"event_callback","event_id":7}"#,
    ];
    for body in bodies {
        let err = decide(body, &settings(), NOW_MS).expect_err("malformed");
        assert_eq!(err.reason(), "malformed_json", "{body:?}");
    }
}

#[test]
fn slacks_documented_app_mention_example_is_a_mention() {
    // Slack's app_mention example, verbatim: no `authorizations`, and the
    // mention is not leading, so the text is kept as is.
    let body = br#"{
        "token": "ZZZZZZWSxiZZZ2yIvs3peJ",
        "team_id": "T123ABC456",
        "api_app_id": "A123ABC456",
        "event": {
            "type": "app_mention",
            "user": "U123ABC456",
            "text": "What is the hour of the pearl, <@U0LAN0Z89>?",
            "ts": "1515449522.000016",
            "channel": "C123ABC456",
            "event_ts": "1515449522000016"
        },
        "type": "event_callback",
        "event_id": "Ev123ABC456",
        "event_time": 1515449522000016,
        "authed_users": ["U0LAN0Z89"]
    }"#;
    let Ok(Decision::Message(c)) = decide(body, &settings(), NOW_MS) else {
        panic!("expected a message");
    };
    assert_eq!(
        c.message.conversation.as_str(),
        "slack:T123ABC456:C123ABC456:1515449522.000016"
    );
    assert_eq!(
        c.message.text,
        "What is the hour of the pearl, <@U0LAN0Z89>?"
    );
    assert_eq!(c.message.sender, "U123ABC456");
}

#[test]
fn top_level_mention_roots_a_new_thread_at_its_own_ts() {
    let body = callback(
        "Ev01",
        app_mention("<@UBOT> summarise this", "1700000000.000100", None),
    );
    let c = candidate(&body, &settings());
    assert_eq!(c.kind, CandidateKind::Mention);
    assert_eq!(c.event_type, "app_mention");
    assert!(!c.needs_existing_conversation);
    assert_eq!(
        c.message.conversation.as_str(),
        "slack:T0001:C0CHAN:1700000000.000100"
    );
    assert_eq!(
        c.destination,
        slack_dest("C0CHAN", Some("1700000000.000100"))
    );
    assert_eq!(
        c.message.dedupe_keys,
        vec![
            "slack:event:Ev01".to_owned(),
            "slack:msg:T0001:C0CHAN:1700000000.000100".to_owned()
        ]
    );
    assert_eq!(c.message.text, "summarise this");
    assert_eq!(c.message.sender, "UALICE");
    assert_eq!(c.message.external_id, "1700000000.000100");
    assert_eq!(c.message.received_at_ms, NOW_MS);
    assert!(c.message.files.is_empty());
}

#[test]
fn mention_inside_a_thread_joins_that_thread() {
    let body = callback(
        "Ev02",
        app_mention(
            "<@UBOT> and you?",
            "1700000050.000200",
            Some("1700000000.000100"),
        ),
    );
    let c = candidate(&body, &settings());
    assert_eq!(c.kind, CandidateKind::Mention);
    assert!(!c.needs_existing_conversation);
    assert_eq!(
        c.message.conversation.as_str(),
        "slack:T0001:C0CHAN:1700000000.000100"
    );
    assert_eq!(
        c.destination,
        slack_dest("C0CHAN", Some("1700000000.000100"))
    );
    assert_eq!(
        c.message.dedupe_keys[1],
        "slack:msg:T0001:C0CHAN:1700000050.000200"
    );
}

#[test]
fn app_mention_and_message_for_one_ts_share_conversation_and_message_key() {
    for thread_ts in [None, Some("1700000000.000100")] {
        let ts = "1700000050.000200";
        let text = "<@UBOT> what's new?";
        let mention = candidate(
            &callback("EvMention", app_mention(text, ts, thread_ts)),
            &settings(),
        );
        let mut event = message("C0CHAN", "channel", text, ts);
        if let Some(thread_ts) = thread_ts {
            event["thread_ts"] = json!(thread_ts);
        }
        let plain = candidate(&callback("EvMessage", event), &settings());

        assert_eq!(plain.kind, CandidateKind::Mention);
        assert_eq!(plain.event_type, "message");
        assert!(!plain.needs_existing_conversation);
        assert_eq!(mention.message.conversation, plain.message.conversation);
        assert_eq!(mention.destination, plain.destination);
        assert_eq!(mention.message.text, plain.message.text);
        assert_eq!(mention.message.dedupe_keys[1], plain.message.dedupe_keys[1]);
        assert_eq!(mention.message.dedupe_keys[0], "slack:event:EvMention");
        assert_eq!(plain.message.dedupe_keys[0], "slack:event:EvMessage");
    }
}

#[test]
fn a_mention_named_only_in_config_counts_without_authorizations() {
    let mut body = callback(
        "Ev03",
        message("C0CHAN", "channel", "hi <@UCFG|bot>", "1.2"),
    );
    body.as_object_mut()
        .expect("object")
        .remove("authorizations");
    let mut s = settings();
    assert_eq!(ignored(&body, &s), IgnoreReason::NotAddressed);
    s.bot_user_id = Some("UCFG".into());
    let c = candidate(&body, &s);
    assert_eq!(c.kind, CandidateKind::Mention);
    assert_eq!(c.message.text, "hi <@UCFG|bot>");
}

#[test]
fn dm_is_one_conversation_per_channel_by_default() {
    let c = candidate(
        &callback(
            "Ev04",
            message("D0DM", "im", "hello there", "1700000000.000300"),
        ),
        &settings(),
    );
    assert_eq!(c.kind, CandidateKind::DirectMessage);
    assert!(!c.needs_existing_conversation);
    assert_eq!(c.message.conversation.as_str(), "slack:T0001:D0DM:dm");
    assert_eq!(c.destination, slack_dest("D0DM", None));
    assert_eq!(
        c.message.dedupe_keys[1],
        "slack:msg:T0001:D0DM:1700000000.000300"
    );

    // A reply inside a DM thread still belongs to the DM's one conversation.
    let mut event = message("D0DM", "im", "and another", "1700000001.000400");
    event["thread_ts"] = json!("1700000000.000300");
    let reply = candidate(&callback("Ev05", event), &settings());
    assert_eq!(reply.message.conversation.as_str(), "slack:T0001:D0DM:dm");
    assert_eq!(reply.destination, slack_dest("D0DM", None));
}

#[test]
fn dm_in_thread_mode_threads_like_a_channel() {
    let s = SlackIngressSettings {
        dm_conversation: DmConversation::Thread,
        ..settings()
    };
    let top = candidate(
        &callback("Ev06", message("D0DM", "im", "hello", "1700000000.000300")),
        &s,
    );
    assert_eq!(top.kind, CandidateKind::DirectMessage);
    assert_eq!(
        top.message.conversation.as_str(),
        "slack:T0001:D0DM:1700000000.000300"
    );
    assert_eq!(
        top.destination,
        slack_dest("D0DM", Some("1700000000.000300"))
    );

    let mut event = message("D0DM", "im", "more", "1700000009.000500");
    event["thread_ts"] = json!("1700000000.000300");
    let reply = candidate(&callback("Ev07", event), &s);
    assert!(!reply.needs_existing_conversation);
    assert_eq!(reply.message.conversation, top.message.conversation);
}

#[test]
fn app_mention_in_a_dm_maps_to_the_dm_conversation() {
    // app_mention carries no channel_type; the D channel prefix marks a DM.
    let mut event = app_mention("<@UBOT> hi", "1700000000.000300", None);
    event["channel"] = json!("D0DM");
    let c = candidate(&callback("Ev08", event), &settings());
    assert_eq!(c.kind, CandidateKind::DirectMessage);
    assert_eq!(c.message.conversation.as_str(), "slack:T0001:D0DM:dm");
    assert_eq!(c.message.text, "hi");
}

#[test]
fn thread_reply_without_mention_needs_an_existing_conversation() {
    for (channel, channel_type) in [("C0CHAN", "channel"), ("G0PRIV", "group")] {
        let mut event = message(channel, channel_type, "thanks!", "1700000100.000600");
        event["thread_ts"] = json!("1700000000.000100");
        event["parent_user_id"] = json!("UALICE");
        let c = candidate(&callback("Ev09", event), &settings());
        assert_eq!(c.kind, CandidateKind::ThreadReply);
        assert!(c.needs_existing_conversation);
        assert_eq!(
            c.message.conversation.as_str(),
            format!("slack:T0001:{channel}:1700000000.000100")
        );
        assert_eq!(
            c.destination,
            slack_dest(channel, Some("1700000000.000100"))
        );
        assert_eq!(c.message.text, "thanks!");
    }
}

#[test]
fn plain_channel_messages_are_not_addressed_to_the_bot() {
    let top = message("C0CHAN", "channel", "lunch?", "1700000000.000700");
    assert_eq!(
        ignored(&callback("Ev10", top), &settings()),
        IgnoreReason::NotAddressed
    );
    // A thread's root message carries thread_ts == ts: still top level.
    let mut root = message("C0CHAN", "channel", "lunch?", "1700000000.000700");
    root["thread_ts"] = json!("1700000000.000700");
    assert_eq!(
        ignored(&callback("Ev11", root), &settings()),
        IgnoreReason::NotAddressed
    );
    // A group DM (mpim) without a mention is a channel message too.
    let mpim = message("G0MPIM", "mpim", "hey all", "1700000000.000800");
    assert_eq!(
        ignored(&callback("Ev12", mpim), &settings()),
        IgnoreReason::NotAddressed
    );
}

#[test]
fn non_message_subtypes_are_ignored_by_reason() {
    let bot_message = json!({
        "type": "message", "subtype": "bot_message", "text": "deploy done",
        "ts": "1.1", "username": "ci", "bot_id": "BCI", "channel": "D0DM",
        "channel_type": "im", "event_ts": "1.1"
    });
    let changed = json!({
        "type": "message", "subtype": "message_changed", "hidden": true,
        "channel": "D0DM", "channel_type": "im", "ts": "1.3", "event_ts": "1.3",
        "message": {"type": "message", "user": "UALICE", "text": "edited", "ts": "1.2",
                    "edited": {"user": "UALICE", "ts": "1.3"}},
        "previous_message": {"type": "message", "user": "UALICE", "text": "orig", "ts": "1.2"}
    });
    let deleted = json!({
        "type": "message", "subtype": "message_deleted", "hidden": true,
        "channel": "D0DM", "channel_type": "im", "ts": "1.4", "deleted_ts": "1.2",
        "event_ts": "1.4",
        "previous_message": {"type": "message", "user": "UALICE", "text": "orig", "ts": "1.2"}
    });
    let mut join = message(
        "C0CHAN",
        "channel",
        "<@UALICE> has joined the channel",
        "1.5",
    );
    join["subtype"] = json!("channel_join");
    let mut leave = message("D0DM", "im", "<@UALICE> has left the channel", "1.6");
    leave["subtype"] = json!("channel_leave");
    let mut topic = message("D0DM", "im", "set the topic", "1.7");
    topic["subtype"] = json!("channel_topic");

    let cases = [
        (bot_message, IgnoreReason::BotMessage),
        (changed, IgnoreReason::MessageChanged),
        (deleted, IgnoreReason::MessageDeleted),
        (join, IgnoreReason::ChannelJoin),
        (leave, IgnoreReason::OtherSubtype),
        (topic, IgnoreReason::OtherSubtype),
    ];
    let allow_bots = SlackIngressSettings {
        allow_other_bots: true,
        ..settings()
    };
    for (event, reason) in cases {
        let body = callback("Ev13", event);
        assert_eq!(ignored(&body, &settings()), reason);
        assert_eq!(ignored(&body, &allow_bots), reason);
    }
}

#[test]
fn file_shares_and_thread_broadcasts_are_a_persons_messages() {
    let mut share = message("D0DM", "im", "see attached", "1700000000.000900");
    share["subtype"] = json!("file_share");
    share["upload"] = json!(false);
    share["files"] = json!([
        {
            "id": "F0FILE", "created": 1_700_000_000, "timestamp": 1_700_000_000,
            "name": "report.pdf", "title": "Q3 report", "mimetype": "application/pdf",
            "filetype": "pdf", "user": "UALICE", "size": 48213,
            "url_private": "https://files.slack.com/files-pri/T0001-F0FILE/report.pdf",
            "url_private_download": "https://files.slack.com/files-pri/T0001-F0FILE/download/report.pdf"
        },
        {"id": "F0HIDDEN", "mode": "hidden_by_limit"},
        {"title": "no id, dropped"}
    ]);
    let c = candidate(&callback("Ev14", share), &settings());
    assert_eq!(
        c.message.files,
        vec![
            FileRef {
                id: "F0FILE".into(),
                name: "report.pdf".into(),
                mimetype: Some("application/pdf".into()),
                size: Some(48213),
                url: Some("https://files.slack.com/files-pri/T0001-F0FILE/report.pdf".into()),
            },
            FileRef {
                id: "F0HIDDEN".into(),
                name: String::new(),
                mimetype: None,
                size: None,
                url: None,
            },
        ]
    );

    let mut broadcast = message("C0CHAN", "channel", "also to channel", "1700000200.000100");
    broadcast["subtype"] = json!("thread_broadcast");
    broadcast["thread_ts"] = json!("1700000000.000100");
    let c = candidate(&callback("Ev15", broadcast), &settings());
    assert_eq!(c.kind, CandidateKind::ThreadReply);
    assert!(c.needs_existing_conversation);
}

/// A message posted through the Web API by an app's bot user.
fn bot_post(user: &str, bot_id: &str, app_id: &str) -> Value {
    let mut event = message("D0DM", "im", "beep", "1700000000.001000");
    event["user"] = json!(user);
    event["bot_id"] = json!(bot_id);
    event["app_id"] = json!(app_id);
    event["bot_profile"] = json!({"id": bot_id, "app_id": app_id, "name": "bot", "team_id": TEAM});
    event
}

#[test]
fn other_bots_are_ignored_unless_allowed() {
    let body = callback("Ev16", bot_post("UOTHERBOT", "BOTHER", "A0OTHER"));
    assert_eq!(ignored(&body, &settings()), IgnoreReason::OtherBot);
    let allow = SlackIngressSettings {
        allow_other_bots: true,
        ..settings()
    };
    let c = candidate(&body, &allow);
    assert_eq!(c.message.sender, "UOTHERBOT");
}

#[test]
fn own_messages_are_always_ignored() {
    let allow = SlackIngressSettings {
        allow_other_bots: true,
        ..settings()
    };
    // Known from `authorizations`.
    let from_auth = callback("Ev17", bot_post(BOT, "BBOT", APP));
    assert_eq!(ignored(&from_auth, &allow), IgnoreReason::OwnMessage);
    // Known from config only.
    let mut from_config = callback("Ev18", bot_post("UCFGBOT", "BBOT", "A0ELSE"));
    from_config
        .as_object_mut()
        .expect("object")
        .remove("authorizations");
    let configured = SlackIngressSettings {
        bot_user_id: Some("UCFGBOT".into()),
        ..allow.clone()
    };
    assert_eq!(ignored(&from_config, &configured), IgnoreReason::OwnMessage);
    // Known from the app id: posted by our app under another bot user.
    let by_app = callback("Ev19", bot_post("USOMEONE", "BBOT", APP));
    assert_eq!(ignored(&by_app, &allow), IgnoreReason::OwnMessage);
}

#[test]
fn events_for_another_app_are_ignored_when_app_id_is_set() {
    let body = callback("Ev20", app_mention("<@UBOT> hi", "1.1", None));
    assert!(matches!(
        decide_json(&body, &settings()),
        Decision::Message(_)
    ));
    let ours = SlackIngressSettings {
        app_id: Some(APP.into()),
        ..settings()
    };
    assert!(matches!(decide_json(&body, &ours), Decision::Message(_)));
    let other = SlackIngressSettings {
        app_id: Some("A0SOMEONEELSE".into()),
        ..settings()
    };
    assert_eq!(ignored(&body, &other), IgnoreReason::OtherApp);
    let mut no_app = body.clone();
    no_app.as_object_mut().expect("object").remove("api_app_id");
    assert_eq!(ignored(&no_app, &ours), IgnoreReason::OtherApp);
}

#[test]
fn other_event_types_and_envelopes_are_unsupported() {
    let reaction = json!({
        "type": "reaction_added", "user": "UALICE", "reaction": "thumbsup",
        "item_user": "UBOT", "item": {"type": "message", "channel": "C0CHAN", "ts": "1.1"},
        "event_ts": "1.2"
    });
    // user_change carries `user` as an object: must not be a parse error.
    let user_change = json!({"type": "user_change", "user": {"id": "UALICE", "name": "alice"}});
    let channel_created = json!({"type": "channel_created", "channel": {"id": "C1", "name": "x"}});
    for event in [
        reaction,
        user_change,
        channel_created,
        json!({}),
        json!("text"),
    ] {
        assert_eq!(
            ignored(&callback("Ev21", event), &settings()),
            IgnoreReason::UnsupportedEvent
        );
    }
    let rate_limited = json!({
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "type": "app_rate_limited", "team_id": TEAM,
        "minute_rate_limited": 1_518_467_820, "api_app_id": APP
    });
    assert_eq!(
        ignored(&rate_limited, &settings()),
        IgnoreReason::UnsupportedEnvelope
    );
}

#[test]
fn events_missing_needed_fields_are_incomplete() {
    let full = || callback("Ev22", message("D0DM", "im", "hi", "1.1"));
    assert!(matches!(
        decide_json(&full(), &settings()),
        Decision::Message(_)
    ));

    let mut no_event = full();
    no_event.as_object_mut().expect("object").remove("event");
    assert_eq!(
        ignored(&no_event, &settings()),
        IgnoreReason::IncompleteEvent
    );
    let mut no_event_id = full();
    no_event_id["event_id"] = json!("");
    assert_eq!(
        ignored(&no_event_id, &settings()),
        IgnoreReason::IncompleteEvent
    );
    let mut no_team = full();
    no_team.as_object_mut().expect("object").remove("team_id");
    no_team["event"]
        .as_object_mut()
        .expect("object")
        .remove("team");
    assert_eq!(
        ignored(&no_team, &settings()),
        IgnoreReason::IncompleteEvent
    );
    for field in ["user", "channel", "ts"] {
        let mut body = full();
        body["event"].as_object_mut().expect("object").remove(field);
        assert_eq!(
            ignored(&body, &settings()),
            IgnoreReason::IncompleteEvent,
            "{field}"
        );
    }
    // The event's own `team` stands in for a missing envelope team_id.
    let mut event_team = full();
    event_team
        .as_object_mut()
        .expect("object")
        .remove("team_id");
    assert!(matches!(
        decide_json(&event_team, &settings()),
        Decision::Message(_)
    ));

    let mut wrong_type = full();
    wrong_type["event"]["ts"] = json!(1.1);
    assert_eq!(
        ignored(&wrong_type, &settings()),
        IgnoreReason::MalformedEvent
    );
}

#[test]
fn only_the_bots_own_leading_mention_is_stripped() {
    let cases = [
        ("<@UBOT> hello", "hello"),
        ("  <@UBOT>\n\nhello <@UBOT>", "hello <@UBOT>"),
        ("<@UBOT|switchboard> hello", "hello"),
        ("<@UBOT>", ""),
        ("<@UBOTX> hello", "<@UBOTX> hello"),
        ("<@UALICE> ask <@UBOT>", "<@UALICE> ask <@UBOT>"),
        ("hey <@UBOT> hello", "hey <@UBOT> hello"),
        ("<@UBOT|unterminated hello", "<@UBOT|unterminated hello"),
        ("<@UBOT>caf\u{e9}", "caf\u{e9}"),
    ];
    for (text, want) in cases {
        let c = candidate(
            &callback("Ev23", app_mention(text, "1.1", None)),
            &settings(),
        );
        assert_eq!(c.message.text, want, "{text:?}");
    }
}

#[test]
fn escaped_json_text_is_decoded() {
    let body =
        br#"{"type":"event_callback","team_id":"T0001","api_app_id":"A0APP","event_id":"Ev24",
        "authorizations":[{"user_id":"UBOT","is_bot":true}],
        "event":{"type":"app_mention","user":"UALICE","ts":"1.1","channel":"C0CHAN",
        "text":"<@UBOT> caf\u00e9 at https:\/\/example.com\/x"}}"#;
    let Ok(Decision::Message(c)) = decide(body, &settings(), NOW_MS) else {
        panic!("expected a message");
    };
    assert_eq!(c.message.text, "caf\u{e9} at https://example.com/x");
}

#[test]
fn decide_value_agrees_with_decide() {
    let body = callback("Ev25", app_mention("<@UBOT> hi", "1.1", None));
    let from_bytes = decide_json(&body, &settings());
    let from_value = decide_value(body, &settings(), NOW_MS).expect("decision");
    assert_eq!(from_bytes, from_value);
    assert!(decide_value(json!([1, 2]), &settings(), NOW_MS).is_err());
}

#[test]
fn reason_labels_are_distinct() {
    use IgnoreReason::*;
    let all = [
        BotMessage,
        OwnMessage,
        OtherBot,
        MessageChanged,
        MessageDeleted,
        ChannelJoin,
        OtherSubtype,
        OtherApp,
        UnsupportedEnvelope,
        UnsupportedEvent,
        NotAddressed,
        MalformedEvent,
        IncompleteEvent,
    ];
    let labels: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), all.len());
    assert_eq!(CandidateKind::ThreadReply.as_str(), "thread_reply");
}

#[test]
fn arbitrary_corruptions_of_real_payloads_never_panic() {
    let payloads = [
        callback("Ev26", app_mention("<@UBOT|b> hi é", "1.1", Some("1.0"))),
        callback("Ev27", message("D0DM", "im", "hi", "1.1")),
        callback("Ev28", bot_post(BOT, "BBOT", APP)),
    ];
    for payload in payloads {
        let bytes = serde_json::to_vec(&payload).expect("json");
        for cut in 0..bytes.len() {
            // Every truncation, and every single-byte corruption.
            let _truncated = decide(&bytes[..cut], &settings(), NOW_MS);
            for replacement in [b'"', b'{', b'}', b'0', b'<', b'@', b'>', b'|', 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[cut] = replacement;
                let _corrupt = decide(&corrupt, &settings(), NOW_MS);
            }
        }
    }
}

/// Fields are borrowed from the body when they hold no escapes: those that
/// do must come out unescaped all the same, in the one-pass read and in the
/// long one (an event of another shape).
#[test]
fn escaped_fields_are_unescaped() {
    let body = br#"{"type":"event_callback","team_id":"T0001","api_app_id":"A0APP",
        "event_id":"Ev\u0031","event":{"type":"message","channel_type":"im",
        "channel":"D\u0030DM","user":"UALICE","ts":"1.2","team":"T0001",
        "text":"caf\u00e9 \"hi\" a\/b\n"}}"#;
    let Decision::Message(c) = decide(body, &settings(), NOW_MS).expect("decision") else {
        panic!("expected a message");
    };
    assert_eq!(c.message.text, "café \"hi\" a/b\n");
    assert_eq!(c.message.dedupe_keys[0], "slack:event:Ev1");
    assert_eq!(
        c.destination,
        Destination::Slack {
            team: TEAM.into(),
            channel: "D0DM".into(),
            thread_ts: None,
        }
    );
    // The same event with a field of another shape: not a message.
    let odd = br#"{"type":"event_callback","team_id":"T0001","event_id":"Ev\u0032",
        "event":{"type":"reaction_\u0061dded","user":{"id":"U1"}}}"#;
    assert_eq!(
        decide(odd, &settings(), NOW_MS).expect("decision"),
        Decision::Ignore(IgnoreReason::UnsupportedEvent)
    );
}
