//! Socket Mode's wire format: the text frames Slack sends, and the
//! acknowledgement we send back. Pure; no I/O.
//!
//! ```json
//! {"type":"hello","num_connections":1,"connection_info":{"app_id":"A..."}}
//! {"type":"events_api","envelope_id":"...","payload":{...},
//!  "accepts_response_payload":false,"retry_attempt":0,"retry_reason":""}
//! {"type":"disconnect","reason":"refresh_requested"}
//! ```
//!
//! An `events_api` payload is the same `event_callback` body the Events API
//! POSTs, so it goes to the same intake unchanged.

use serde_json::Value;

/// One text frame from Slack.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The connection is ready to receive envelopes.
    Hello,
    /// Slack will close this connection soon (`refresh_requested`,
    /// `warning`, `link_disabled`, ...): open another.
    Disconnect { reason: String },
    /// An Events API event to take, then acknowledge.
    EventsApi(Envelope),
    /// Another envelope type (`slash_commands`, `interactive`, ...): nothing
    /// of ours handles it, so it is acknowledged to stop Slack retrying.
    OtherEnvelope { kind: String, envelope_id: String },
    /// A frame without an envelope id that we do not know.
    Unknown { kind: String },
}

/// An `events_api` envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub envelope_id: String,
    /// The `event_callback` body.
    pub payload: Value,
    /// 0 on the first delivery; Slack counts its redeliveries.
    pub retry_attempt: u64,
    pub retry_reason: String,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("frame has no `type`")]
    NoType,
    #[error("`events_api` envelope without `envelope_id`")]
    NoEnvelopeId,
    #[error("`events_api` envelope without `payload`")]
    NoPayload,
}

/// Read one text frame.
pub fn parse(text: &str) -> Result<Frame, FrameError> {
    let mut value: Value = serde_json::from_str(text)?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or(FrameError::NoType)?
        .to_string();
    let envelope_id = value
        .get("envelope_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let frame = match kind.as_str() {
        "hello" => Frame::Hello,
        "disconnect" => Frame::Disconnect {
            reason: value
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
        },
        "events_api" => {
            let envelope_id = envelope_id.ok_or(FrameError::NoEnvelopeId)?;
            let payload = value
                .get_mut("payload")
                .map(Value::take)
                .filter(|p| !p.is_null())
                .ok_or(FrameError::NoPayload)?;
            Frame::EventsApi(Envelope {
                envelope_id,
                payload,
                retry_attempt: value
                    .get("retry_attempt")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                retry_reason: value
                    .get("retry_reason")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            })
        }
        _ => match envelope_id {
            Some(envelope_id) => Frame::OtherEnvelope { kind, envelope_id },
            None => Frame::Unknown { kind },
        },
    };
    Ok(frame)
}

/// The acknowledgement of envelope `envelope_id`.
pub fn ack(envelope_id: &str) -> String {
    serde_json::json!({ "envelope_id": envelope_id }).to_string()
}

/// The envelope id of a frame that could not be parsed otherwise, so a
/// broken envelope can still be acknowledged (it never parses better).
pub fn envelope_id_of(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    value
        .get("envelope_id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hello_and_disconnect_are_read() {
        let hello = r#"{"type":"hello","num_connections":2,"debug_info":{"host":"applink-1"},"connection_info":{"app_id":"A1"}}"#;
        assert_eq!(parse(hello).expect("hello"), Frame::Hello);
        let bye = r#"{"type":"disconnect","reason":"refresh_requested","debug_info":{"host":"h"}}"#;
        assert_eq!(
            parse(bye).expect("disconnect"),
            Frame::Disconnect {
                reason: "refresh_requested".into()
            }
        );
    }

    #[test]
    fn an_events_api_envelope_keeps_its_payload_untouched() {
        let payload = json!({"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention","text":"hi","x":[1,2]}});
        let frame = json!({
            "envelope_id": "env-1",
            "payload": payload,
            "type": "events_api",
            "accepts_response_payload": false,
            "retry_attempt": 2,
            "retry_reason": "timeout"
        })
        .to_string();
        let Frame::EventsApi(envelope) = parse(&frame).expect("parse") else {
            panic!("not an events_api frame");
        };
        assert_eq!(envelope.envelope_id, "env-1");
        assert_eq!(envelope.payload, payload);
        assert_eq!(envelope.retry_attempt, 2);
        assert_eq!(envelope.retry_reason, "timeout");
    }

    #[test]
    fn other_envelopes_are_named_for_acknowledgement() {
        let frame = r#"{"type":"slash_commands","envelope_id":"env-2","payload":{}}"#;
        assert_eq!(
            parse(frame).expect("parse"),
            Frame::OtherEnvelope {
                kind: "slash_commands".into(),
                envelope_id: "env-2".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"brand_new"}"#).expect("parse"),
            Frame::Unknown {
                kind: "brand_new".into()
            }
        );
    }

    #[test]
    fn broken_frames_are_errors_but_keep_their_envelope_id() {
        assert!(matches!(parse("not json"), Err(FrameError::Json(_))));
        assert!(matches!(parse("{}"), Err(FrameError::NoType)));
        let no_payload = r#"{"type":"events_api","envelope_id":"env-3"}"#;
        assert!(matches!(parse(no_payload), Err(FrameError::NoPayload)));
        assert_eq!(envelope_id_of(no_payload).as_deref(), Some("env-3"));
        assert!(matches!(
            parse(r#"{"type":"events_api","payload":{}}"#),
            Err(FrameError::NoEnvelopeId)
        ));
    }

    #[test]
    fn the_ack_names_the_envelope() {
        let ack: Value = serde_json::from_str(&ack("env-\"4")).expect("json");
        assert_eq!(ack, json!({"envelope_id": "env-\"4"}));
    }
}
