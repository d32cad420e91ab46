//! The JSON of a queued message and its destination, written by hand on the
//! ingress path. serde_json escapes every string byte by byte, field names
//! included; here the names are literals and a value with nothing to escape
//! (the usual case) is copied whole, which takes a Slack event's encoding
//! from about 5 k instructions to about 1 k. The output is what serde_json
//! writes for the same value (a test holds it to that), so either side may
//! read what the other wrote.

use crate::domain::{Destination, InboundMessage};

/// Append `message` as serde_json would write it.
pub fn message_json(out: &mut Vec<u8>, message: &InboundMessage) -> Result<(), serde_json::Error> {
    out.reserve(256 + message.text.len());
    out.extend_from_slice(b"{\"conversation\":");
    string(out, message.conversation.as_str())?;
    out.extend_from_slice(b",\"dedupe_keys\":[");
    for (i, key) in message.dedupe_keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, key)?;
    }
    out.extend_from_slice(b"],\"sender\":");
    string(out, &message.sender)?;
    out.extend_from_slice(b",\"sender_name\":");
    optional(out, message.sender_name.as_deref())?;
    out.extend_from_slice(b",\"text\":");
    string(out, &message.text)?;
    out.extend_from_slice(b",\"files\":");
    if message.files.is_empty() {
        out.extend_from_slice(b"[]");
    } else {
        serde_json::to_writer(&mut *out, &message.files)?;
    }
    out.extend_from_slice(b",\"external_id\":");
    string(out, &message.external_id)?;
    out.extend_from_slice(b",\"received_at_ms\":");
    serde_json::to_writer(&mut *out, &message.received_at_ms)?;
    out.push(b'}');
    Ok(())
}

/// Append `destination` as serde_json would write it.
pub fn destination_json(
    out: &mut Vec<u8>,
    destination: &Destination,
) -> Result<(), serde_json::Error> {
    let Destination::Slack {
        team,
        channel,
        thread_ts,
    } = destination
    else {
        return serde_json::to_writer(out, destination);
    };
    out.reserve(64 + team.len() + channel.len());
    out.extend_from_slice(b"{\"kind\":\"slack\",\"team\":");
    string(out, team)?;
    out.extend_from_slice(b",\"channel\":");
    string(out, channel)?;
    out.extend_from_slice(b",\"thread_ts\":");
    optional(out, thread_ts.as_deref())?;
    out.push(b'}');
    Ok(())
}

/// A JSON string: copied whole when nothing in it needs an escape.
fn string(out: &mut Vec<u8>, value: &str) -> Result<(), serde_json::Error> {
    if needs_escape(value.as_bytes()) {
        return serde_json::to_writer(out, value);
    }
    out.reserve(value.len() + 2);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Whether `bytes` hold a byte JSON escapes: a control byte (below 0x20),
/// '"' or '\\'. Eight bytes at a time (a Slack event's text is most of
/// what the ingress path writes): a byte below n shows as a set high bit in
/// `(v - n * ONES) & !v & HIGHS` (exact on whether any byte matched, which
/// is all that is asked; a match only sends the string the slow way).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |v: u64, n: u64| v.wrapping_sub(n * ONES) & !v & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(eight) = <[u8; 8]>::try_from(chunk) else {
            return true;
        };
        let v = u64::from_le_bytes(eight);
        let found = below(v, 0x20)
            | below(v ^ (u64::from(b'"') * ONES), 1)
            | below(v ^ (u64::from(b'\\') * ONES), 1);
        if found != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn optional(out: &mut Vec<u8>, value: Option<&str>) -> Result<(), serde_json::Error> {
    match value {
        Some(value) => string(out, value),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConversationId, FileRef};

    fn message(text: &str, sender_name: Option<&str>, files: Vec<FileRef>) -> InboundMessage {
        InboundMessage {
            conversation: ConversationId::new("slack:T1:C1:1700000000.000100"),
            dedupe_keys: vec!["slack:event:Ev1".into(), "slack:msg:T1:C1:1.2".into()],
            sender: "U1".into(),
            sender_name: sender_name.map(Into::into),
            text: text.into(),
            files,
            external_id: "1700000000.000100".into(),
            received_at_ms: 1_795_748_636_243,
        }
    }

    #[test]
    fn a_byte_to_escape_is_found_wherever_it_is() {
        for len in 0..24 {
            let plain = "a".repeat(len);
            assert!(!needs_escape(plain.as_bytes()), "{len}");
            assert!(!needs_escape("é ✓ \u{7f} ~!".as_bytes()));
            for at in 0..len {
                for bad in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut bytes = plain.clone().into_bytes();
                    bytes[at] = bad;
                    assert!(needs_escape(&bytes), "{len} {at} {bad}");
                }
                for fine in [b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
                    let mut bytes = plain.clone().into_bytes();
                    bytes[at] = fine;
                    assert!(!needs_escape(&bytes), "{len} {at} {fine}");
                }
            }
        }
    }

    #[test]
    fn messages_are_written_as_serde_json_writes_them() {
        let file = FileRef {
            id: "F1".into(),
            name: "a \"b\".txt".into(),
            mimetype: Some("text/plain".into()),
            size: Some(12),
            url: None,
        };
        let cases = [
            message("hello", None, vec![]),
            message("", Some("Ada"), vec![]),
            message("quote \" back\\slash", Some("A \"B\""), vec![file]),
            message("line\nbreak\ttab\u{1}\u{1f} é ✓ \u{7f}", None, vec![]),
            InboundMessage {
                dedupe_keys: vec![],
                ..message("x", None, vec![])
            },
        ];
        for m in cases {
            let mut ours = b"before".to_vec();
            message_json(&mut ours, &m).expect("ours");
            let ours = ours.strip_prefix(b"before").expect("appended").to_vec();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                serde_json::to_string(&m).expect("serde"),
            );
            let back: InboundMessage = serde_json::from_slice(&ours).expect("reads back");
            assert_eq!(back, m);
        }
    }

    #[test]
    fn destinations_are_written_as_serde_json_writes_them() {
        let cases = [
            Destination::Slack {
                team: "T1".into(),
                channel: "C1".into(),
                thread_ts: None,
            },
            Destination::Slack {
                team: "T\"1".into(),
                channel: "C\n1".into(),
                thread_ts: Some("1700000000.000100".into()),
            },
            Destination::Console {
                session: "s1".into(),
            },
        ];
        for d in cases {
            let mut ours = Vec::new();
            destination_json(&mut ours, &d).expect("ours");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                serde_json::to_string(&d).expect("serde"),
            );
        }
    }
}
