//! The Claude Code CLI's stream-json lines (see `agent-protocol.md`).
//!
//! Lines out of the CLI are parsed tolerantly: unknown line types and
//! unknown fields are ignored, never an error, because the CLI adds them
//! often. Only a line that is not JSON, or a known line whose known fields
//! have the wrong shape, fails to parse (the driver logs and skips it).
//! Lines into the CLI are built here too, so the wire format lives in one file.

use serde::{Deserialize, Serialize};
use serde_json::json;

/// One line the CLI writes on stdout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutLine {
    /// `system`: `init` at the start of every turn, `status`, `api_retry`...
    System(SystemLine),
    /// `stream_event`: a raw API streaming event (`--include-partial-messages`).
    StreamEvent(StreamEventLine),
    /// `assistant`: a complete assistant message (one per content block).
    Assistant(AssistantLine),
    /// `result`: the end of a turn, exactly one per turn.
    Result(ResultLine),
    /// `control_request`: the CLI asks the host (tool permission prompts).
    ControlRequest(ControlRequestLine),
    /// `control_response`: the answer to one of our control requests.
    ControlResponse(ControlResponseLine),
    /// Any other line type (`user` tool results, future additions).
    #[serde(other)]
    Other,
}

/// A `system` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SystemLine {
    /// `init`, `status`, `api_retry`, ...
    #[serde(default)]
    pub subtype: String,
    /// The session this process works on.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The model in use (on `init`).
    #[serde(default)]
    pub model: Option<String>,
}

/// A `stream_event` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StreamEventLine {
    /// The API streaming event.
    pub event: StreamEvent,
}

/// An API streaming event; only text deltas matter to us.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// A piece of a content block.
    ContentBlockDelta {
        /// The delta itself.
        delta: Delta,
    },
    /// message_start, content_block_start, message_stop, ...
    #[serde(other)]
    Other,
}

/// The delta of a `content_block_delta` event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delta {
    /// Text the model is writing.
    TextDelta {
        /// The new text.
        text: String,
    },
    /// Tool input JSON, thinking, signatures, ...
    #[serde(other)]
    Other,
}

/// An `assistant` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AssistantLine {
    /// The session this message belongs to.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// A `result` line: how the turn ended.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ResultLine {
    /// `success`, `error_max_turns`, `error_during_execution`, `error_max_budget_usd`.
    #[serde(default)]
    pub subtype: String,
    /// True for any failure, including API errors reported with subtype `success`.
    #[serde(default)]
    pub is_error: bool,
    /// The final text of the turn.
    #[serde(default)]
    pub result: Option<String>,
    /// The session id.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Model round trips in this turn.
    #[serde(default)]
    pub num_turns: Option<u32>,
    /// The CLI's own measure of the turn.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Cost so far of the whole process (a running total, not this turn's).
    #[serde(default)]
    pub total_cost_usd: Option<f64>,
    /// Tokens of this turn.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Token counts of one turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Input tokens not served from cache.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
}

/// A `control_request` line from the CLI.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ControlRequestLine {
    /// Echoed in our answer.
    pub request_id: String,
    /// What is asked.
    pub request: ControlRequestBody,
}

/// The body of a control request from the CLI.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ControlRequestBody {
    /// `can_use_tool`, ...
    #[serde(default)]
    pub subtype: String,
    /// The tool asked about (`can_use_tool`).
    #[serde(default)]
    pub tool_name: Option<String>,
}

/// A `control_response` line from the CLI.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ControlResponseLine {
    /// The answer.
    pub response: ControlResponseBody,
}

/// The body of a control response.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ControlResponseBody {
    /// `success` or `error`.
    #[serde(default)]
    pub subtype: String,
    /// The id of the request answered.
    #[serde(default)]
    pub request_id: Option<String>,
    /// What went wrong (`error`).
    #[serde(default)]
    pub error: Option<String>,
}

impl ControlResponseBody {
    /// Whether the request succeeded.
    pub fn is_success(&self) -> bool {
        self.subtype == "success"
    }
}

/// Parse one stdout line.
///
/// Most lines of a turn are `stream_event`s (one per delta). `OutLine` is
/// internally tagged, so serde first copies a whole line into an owned
/// tree to find its `type`; a `stream_event` is read straight into
/// borrowed fields instead, and anything it does not recognise takes the
/// general path (which decides what is an error, as before).
pub fn parse_line(line: &str) -> Result<OutLine, serde_json::Error> {
    if line.contains("\"stream_event\"")
        && let Some(parsed) = parse_stream_event(line)
    {
        return Ok(parsed);
    }
    serde_json::from_str(line)
}

/// The fields of a `stream_event` line the driver reads, borrowed where
/// the JSON allows. Every other field is skipped unread.
#[derive(Deserialize)]
struct StreamProbe<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    event: Option<EventProbe<'a>>,
}

#[derive(Deserialize)]
struct EventProbe<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<DeltaProbe<'a>>,
}

#[derive(Deserialize)]
struct DeltaProbe<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    text: Option<String>,
}

/// A `stream_event` line as `OutLine`, or None for the general path.
fn parse_stream_event(line: &str) -> Option<OutLine> {
    let probe: StreamProbe = serde_json::from_str(line).ok()?;
    if probe.kind != "stream_event" {
        return None;
    }
    let event = probe.event?;
    let event = if event.kind != "content_block_delta" {
        StreamEvent::Other
    } else {
        let delta = event.delta?;
        match delta.kind.as_deref() {
            Some("text_delta") => StreamEvent::ContentBlockDelta {
                delta: Delta::TextDelta { text: delta.text? },
            },
            Some(_) => StreamEvent::ContentBlockDelta {
                delta: Delta::Other,
            },
            None => return None,
        }
    };
    Some(OutLine::StreamEvent(StreamEventLine { event }))
}

/// The stdin line carrying one user turn.
pub fn user_message(text: &str) -> String {
    json!({"type": "user", "message": {"role": "user", "content": text}}).to_string()
}

/// The stdin line of a control request (`initialize`, `interrupt`).
pub fn control_request(request_id: &str, subtype: &str) -> String {
    json!({"type": "control_request", "request_id": request_id, "request": {"subtype": subtype}})
        .to_string()
}

/// The stdin line refusing a tool permission request (we do not prompt:
/// tools are allowed up front with `allowed_tools`).
pub fn deny_tool(request_id: &str, reason: &str) -> String {
    json!({"type": "control_response", "response": {
        "subtype": "success", "request_id": request_id,
        "response": {"behavior": "deny", "message": reason},
    }})
    .to_string()
}

/// The stdin line answering a control request we do not support.
pub fn unsupported_request(request_id: &str, subtype: &str) -> String {
    json!({"type": "control_response", "response": {
        "subtype": "error", "request_id": request_id,
        "error": format!("switchboard does not support control requests of subtype {subtype:?}"),
    }})
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> OutLine {
        parse_line(line).unwrap_or_else(|e| panic!("parse {line}: {e}"))
    }

    #[test]
    fn control_response_to_initialize_parses() {
        let line = r#"{"type":"control_response","response":{"subtype":"success","request_id":"r1","response":{"commands":[],"output_style":"default"}}}"#;
        let OutLine::ControlResponse(c) = parse(line) else {
            panic!("not a control response")
        };
        assert!(c.response.is_success());
        assert_eq!(c.response.request_id.as_deref(), Some("r1"));
    }

    #[test]
    fn system_init_carries_the_session_id() {
        let line = r#"{"type":"system","subtype":"init","cwd":"/w","session_id":"5f1c0d1e-aaaa-bbbb-cccc-0123456789ab","tools":["Bash","Read"],"mcp_servers":[],"model":"claude-sonnet-4-5","permissionMode":"default","slash_commands":[],"apiKeySource":"ANTHROPIC_API_KEY","uuid":"u1"}"#;
        assert_eq!(
            parse(line),
            OutLine::System(SystemLine {
                subtype: "init".into(),
                session_id: Some("5f1c0d1e-aaaa-bbbb-cccc-0123456789ab".into()),
                model: Some("claude-sonnet-4-5".into()),
            })
        );
    }

    #[test]
    fn text_deltas_parse_and_other_events_are_ignored() {
        let delta = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}},"session_id":"s","parent_tool_use_id":null,"uuid":"u"}"#;
        assert_eq!(
            parse(delta),
            OutLine::StreamEvent(StreamEventLine {
                event: StreamEvent::ContentBlockDelta {
                    delta: Delta::TextDelta { text: "Hel".into() }
                }
            })
        );
        let start = r#"{"type":"stream_event","event":{"type":"message_start","message":{"id":"m","usage":{}}},"session_id":"s"}"#;
        assert!(matches!(
            parse(start),
            OutLine::StreamEvent(StreamEventLine {
                event: StreamEvent::Other
            })
        ));
        let json_delta = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}}"#;
        assert!(matches!(
            parse(json_delta),
            OutLine::StreamEvent(StreamEventLine {
                event: StreamEvent::ContentBlockDelta {
                    delta: Delta::Other
                }
            })
        ));
    }

    #[test]
    fn result_line_parses_with_usage_and_running_cost() {
        let line = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":95,"duration_api_ms":80,"num_turns":1,"result":"Hello!","session_id":"s1","total_cost_usd":0.0123,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":3,"output_tokens":5,"server_tool_use":{"web_search_requests":0},"service_tier":"standard"},"modelUsage":{},"permission_denials":[],"uuid":"u"}"#;
        let OutLine::Result(r) = parse(line) else {
            panic!("not a result")
        };
        assert_eq!(r.subtype, "success");
        assert!(!r.is_error);
        assert_eq!(r.result.as_deref(), Some("Hello!"));
        assert_eq!(r.total_cost_usd, Some(0.0123));
        assert_eq!(r.num_turns, Some(1));
        let usage = r.usage.expect("usage");
        assert_eq!((usage.input_tokens, usage.output_tokens), (12, 5));
        assert_eq!(usage.cache_read_input_tokens, 3);
    }

    #[test]
    fn api_error_is_a_success_subtype_with_is_error() {
        let line = r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 529 overloaded","session_id":"s"}"#;
        let OutLine::Result(r) = parse(line) else {
            panic!("not a result")
        };
        assert!(r.is_error);
        assert!(r.usage.is_none());
    }

    #[test]
    fn unknown_line_types_and_fields_are_tolerated() {
        assert_eq!(
            parse(
                r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result"}]}}"#
            ),
            OutLine::Other
        );
        assert_eq!(parse(r#"{"type":"brand_new_thing","x":1}"#), OutLine::Other);
        assert!(matches!(
            parse(r#"{"type":"system","subtype":"api_retry","attempt":2,"future_field":[1,2]}"#),
            OutLine::System(_)
        ));
        assert!(matches!(
            parse(
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"hi"}]},"session_id":"s"}"#
            ),
            OutLine::Assistant(_)
        ));
    }

    #[test]
    fn stream_events_read_directly_parse_as_the_general_path_does() {
        let lines = [
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}},"session_id":"s","uuid":"u"}"#,
            // Keys in another order, escapes in the text.
            r#"{"event":{"delta":{"text":"a\"b\n\u00e9","type":"text_delta"},"index":0,"type":"content_block_delta"},"uuid":"u","type":"stream_event"}"#,
            r#"{"type":"stream_event","event":{"type":"message_start","message":{"id":"m","usage":{}}}}"#,
            r#"{"type":"stream_event","event":{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"thinking_delta","thinking":"hm"}}}"#,
            // Shapes only the general path can judge (some are errors).
            r#"{"type":"stream_event","event":{"type":"future_event","delta":"text"}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"text_delta"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"text":"x"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta"}}"#,
            r#"{"type":"stream_event"}"#,
            r#"{"type":"stream_event","event":{"index":0}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":7}}}"#,
            r#"{"type":"result","subtype":"success","is_error":false,"result":"said \"stream_event\"","session_id":"s"}"#,
            r#"{"type":"stream_event","event":"#,
        ];
        for line in lines {
            let general = serde_json::from_str::<OutLine>(line).map_err(|e| e.to_string());
            assert_eq!(
                parse_line(line).map_err(|e| e.to_string()),
                general,
                "{line}"
            );
        }
        // The common lines take the direct path.
        assert!(parse_stream_event(lines[0]).is_some());
        assert!(parse_stream_event(lines[2]).is_some());
        assert!(parse_stream_event(lines[13]).is_none());
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        assert!(parse_line("not json").is_err());
        assert!(parse_line(r#"{"no_type":1}"#).is_err());
        assert!(parse_line(r#"{"type":"result","is_error":"yes"}"#).is_err());
    }

    #[test]
    fn tool_permission_request_parses() {
        let line = r#"{"type":"control_request","request_id":"c7","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"ls"}}}"#;
        let OutLine::ControlRequest(c) = parse(line) else {
            panic!("not a control request")
        };
        assert_eq!(c.request_id, "c7");
        assert_eq!(c.request.tool_name.as_deref(), Some("Bash"));
    }

    #[test]
    fn lines_in_have_the_measured_shape() {
        let user: serde_json::Value =
            serde_json::from_str(&user_message("hi \"there\"\n")).expect("json");
        assert_eq!(user["type"], "user");
        assert_eq!(user["message"]["role"], "user");
        assert_eq!(user["message"]["content"], "hi \"there\"\n");
        let init: serde_json::Value =
            serde_json::from_str(&control_request("r1", "initialize")).expect("json");
        assert_eq!(init["request_id"], "r1");
        assert_eq!(init["request"]["subtype"], "initialize");
        let deny: serde_json::Value = serde_json::from_str(&deny_tool("c7", "no")).expect("json");
        assert_eq!(deny["response"]["response"]["behavior"], "deny");
        assert!(!user_message("a\nb").contains('\n'));
    }
}
