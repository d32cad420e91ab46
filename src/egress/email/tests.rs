use super::*;
use crate::domain::ConversationId;

fn entry(reply_id: &str) -> OutboxEntry {
    OutboxEntry {
        id: "1-0".into(),
        shard: 0,
        kind: OutboxKind::Final,
        conversation: ConversationId::new("email:support:m1@x"),
        reply_id: reply_id.into(),
        part: 0,
        seq: 1,
        text: "Hello **there**".into(),
        error: None,
        acks: vec![],
        at_ms: 0,
        destination: None,
        fresh: false,
    }
}

fn target<'a>(references: &'a [String]) -> EmailTarget<'a> {
    EmailTarget {
        mailbox: "support",
        to: "ann@example.com",
        subject: "Printer",
        message_id: "m2@example.com",
        references,
    }
}

fn formatted(message: &Message) -> String {
    String::from_utf8_lossy(&message.formatted()).replace("\r\n", "\n")
}

#[test]
fn a_reply_is_threaded_marked_automatic_and_has_both_parts() {
    let from = Mailbox::new(Some("Bot".into()), "bot@example.org".parse().expect("addr"));
    let refs = vec!["m1@example.com".to_string()];
    let text = formatted(&build_message(&from, &entry("c/b/0"), target(&refs)).expect("builds"));
    assert!(text.contains("Subject: Re: Printer\n"), "{text}");
    assert!(text.contains("In-Reply-To: <m2@example.com>\n"), "{text}");
    assert!(
        text.contains("References: <m1@example.com> <m2@example.com>\n"),
        "{text}"
    );
    assert!(text.contains("Auto-Submitted: auto-replied\n"), "{text}");
    assert!(text.contains("To: ann@example.com\n"), "{text}");
    assert!(text.contains("multipart/alternative"), "{text}");
    assert!(text.contains("text/plain"), "{text}");
    assert!(text.contains("text/html"), "{text}");
    assert!(text.contains("<strong>there</strong>"), "{text}");
}

#[test]
fn the_message_id_depends_only_on_the_reply_id() {
    let from = Mailbox::new(None, "bot@example.org".parse().expect("addr"));
    assert_eq!(
        reply_message_id("c/b/0", &from),
        reply_message_id("c/b/0", &from)
    );
    assert_ne!(
        reply_message_id("c/b/0", &from),
        reply_message_id("c/b/1", &from)
    );
    assert!(reply_message_id("c/b/0", &from).ends_with("@example.org>"));
}

#[test]
fn a_bad_recipient_cannot_be_built() {
    let from = Mailbox::new(None, "bot@example.org".parse().expect("addr"));
    let mut t = target(&[]);
    t.to = "not an address";
    assert!(build_message(&from, &entry("c/b/0"), t).is_err());
}
