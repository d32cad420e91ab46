//! stand-in-agent: a small, fast, deterministic program that speaks the
//! same stream-json protocol as the Claude Code CLI (see
//! `agent-protocol.md`), so tests and benchmarks need neither the real CLI
//! nor a model.
//!
//! It takes the real command line (`-p --input-format stream-json ...`,
//! `--session-id`, `--resume`, `--model`; other flags are ignored), keeps
//! transcripts where the CLI does (`$CLAUDE_CONFIG_DIR/projects/<cwd with
//! every non-alphanumeric character as "-">/<id>.jsonl`), and replies
//!
//! ```text
//! reply to: <the user text>
//! turn <n> of session <id>; earlier: <count of earlier user messages>
//! earlier: [1] <first earlier message> | [2] ...   (when there are any)
//! ```
//!
//! Directives in the user text: `[[delay:MS]]` (reply slowly, deltas spread
//! over MS), `[[crash]]` (exit 3 after one delta), `[[hang]]` (never answer),
//! `[[long:N]]` (reply with exactly N characters, many deltas), `[[flood]]`
//! (stream deltas without pause until interrupted), `[[cost:X]]`
//! (this turn costs X USD, default 0.001), `[[env]]` (list the environment),
//! `[[pid]]` (add the pid), `[[error]]` (an "API Error" result),
//! `[[read:PATH]]` (say whether PATH can be read). `STAND_IN_STDIN_LOG=FILE`
//! notes when each user turn arrived, when the process answered
//! `initialize` (`<<ready>>`) and when it wrote a turn's result
//! (`<<result>>`), one `<unix ns> <pid> <what>` line each (benchmarks). `STAND_IN_THINK_MS` adds
//! a fixed think time to every turn.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Flags of the real CLI that take a value (so the value is skipped).
const VALUE_FLAGS: &[&str] = &[
    "--input-format",
    "--output-format",
    "--append-system-prompt",
    "--system-prompt",
    "--max-turns",
    "--max-budget-usd",
    "--allowedTools",
    "--allowed-tools",
    "--disallowedTools",
    "--disallowed-tools",
    "--tools",
    "--permission-mode",
    "--permission-prompt-tool",
    "--mcp-config",
    "--settings",
    "--fallback-model",
    "--add-dir",
];

#[derive(Debug, Default)]
struct Args {
    session_id: Option<String>,
    resume: Option<String>,
    model: Option<String>,
}

fn parse_args(args: impl Iterator<Item = String>) -> Args {
    let mut parsed = Args::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(flag.as_str(), "--session-id" | "--resume" | "--model")
            || VALUE_FLAGS.contains(&flag.as_str());
        if !takes_value {
            continue; // -p, --verbose, unknown switches and stray words
        }
        let value = inline.or_else(|| args.next_if(|next| !next.starts_with("--")));
        match flag.as_str() {
            "--session-id" => parsed.session_id = value,
            "--resume" => parsed.resume = value,
            "--model" => parsed.model = value,
            _ => {}
        }
    }
    parsed
}

enum Input {
    Line(String),
    Eof,
}

/// Directives found in a user message.
#[derive(Debug, Default)]
struct Directives {
    delay: Duration,
    crash: bool,
    hang: bool,
    flood: bool,
    long: Option<usize>,
    cost: Option<f64>,
    env: bool,
    pid: bool,
    error: bool,
    read: Vec<String>,
}

fn directives(text: &str) -> Directives {
    let mut found = Directives::default();
    let mut rest = text;
    while let Some(start) = rest.find("[[") {
        let Some(len) = rest[start..].find("]]") else {
            break;
        };
        let inner = &rest[start + 2..start + len];
        rest = &rest[start + len + 2..];
        let (name, arg) = inner.split_once(':').unwrap_or((inner, ""));
        match name {
            "delay" => found.delay = Duration::from_millis(arg.parse().unwrap_or(0)),
            "crash" => found.crash = true,
            "hang" => found.hang = true,
            "flood" => found.flood = true,
            "long" => found.long = arg.parse().ok(),
            "cost" => found.cost = arg.parse().ok(),
            "env" => found.env = true,
            "pid" => found.pid = true,
            "error" => found.error = true,
            "read" => found.read.push(arg.to_string()),
            _ => {}
        }
    }
    found
}

struct Agent {
    session_id: String,
    model: String,
    cwd: String,
    transcript: PathBuf,
    earlier: Vec<String>,
    total_cost: f64,
    think: Duration,
    inbox: Receiver<Input>,
    deferred: VecDeque<String>,
    /// Stdin is closed: finish what was asked, then exit.
    eof: bool,
    /// `STAND_IN_STDIN_LOG`: where `<<ready>>` and `<<result>>` are noted.
    event_log: Option<PathBuf>,
}

/// How a wait during a turn ended.
enum Waited {
    Done,
    Interrupted,
}

/// Append `<unix ns> <pid> <text>` for a user line to `path`.
/// Append `<unix ns> <pid> <what>` to the benchmark log.
fn log_line(path: &std::path::Path, what: &str) {
    use std::io::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write per line: every slot's agent appends to the same file,
        // and `writeln!` on a file writes each piece of the format apart, so
        // two agents answering `initialize` at once could interleave their
        // lines and the bench would miss a `<<ready>>`. A lost line only
        // loses one benchmark sample.
        let line = format!("{now} {} {what}\n", std::process::id());
        let _ = file.write_all(line.as_bytes());
    }
}

fn log_arrival(path: &std::path::Path, line: &str) {
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return;
    };
    if value["type"] != "user" {
        return;
    }
    let text = user_text(&value["message"]["content"]).unwrap_or_default();
    let text: String = text.chars().filter(|c| *c != '\n').take(80).collect();
    log_line(path, &text);
}

fn main() {
    let args = parse_args(std::env::args().skip(1));
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let config_dir = std::env::var_os("CLAUDE_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".claude")))
        .unwrap_or_else(|| PathBuf::from(".claude"));
    let think = std::env::var("STAND_IN_THINK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    let session_id = args
        .resume
        .clone()
        .or(args.session_id.clone())
        .unwrap_or_else(new_session_id);
    let transcript = config_dir
        .join("projects")
        .join(project_dir_name(&cwd))
        .join(format!("{session_id}.jsonl"));
    let earlier = match &args.resume {
        Some(id) => match std::fs::read_to_string(&transcript) {
            Ok(text) => earlier_user_texts(&text),
            Err(_) => {
                eprintln!("No conversation found with session ID: {id}");
                std::process::exit(1);
            }
        },
        None => Vec::new(),
    };
    let (sender, inbox) = channel();
    // For benchmarks: note when each user turn arrived on stdin.
    let stdin_log = std::env::var_os("STAND_IN_STDIN_LOG").map(PathBuf::from);
    let event_log = stdin_log.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Some(path) = &stdin_log {
                log_arrival(path, &line);
            }
            if sender.send(Input::Line(line)).is_err() {
                return;
            }
        }
        // The main thread may be gone already; nothing to do then.
        let _ = sender.send(Input::Eof);
    });
    let mut agent = Agent {
        session_id,
        model: args.model.unwrap_or_else(|| "stand-in-model".into()),
        cwd: cwd.to_string_lossy().into_owned(),
        transcript,
        earlier,
        total_cost: 0.0,
        think,
        inbox,
        deferred: VecDeque::new(),
        eof: false,
        event_log,
    };
    agent.run();
}

impl Agent {
    fn run(&mut self) {
        loop {
            let line = match self.deferred.pop_front() {
                Some(line) => line,
                None if self.eof => std::process::exit(0),
                None => match self.inbox.recv() {
                    Ok(Input::Line(line)) => line,
                    Ok(Input::Eof) | Err(_) => std::process::exit(0),
                },
            };
            self.handle(&line);
        }
    }

    fn handle(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("stand-in-agent: skipping a malformed input line: {e}");
                return;
            }
        };
        match value["type"].as_str() {
            Some("control_request") => self.answer_control(&value),
            Some("user") => match user_text(&value["message"]["content"]) {
                Some(text) => self.turn(&text),
                None => eprintln!("stand-in-agent: user line without text content"),
            },
            Some("control_response") => {}
            other => eprintln!("stand-in-agent: ignoring input line of type {other:?}"),
        }
    }

    fn answer_control(&self, request: &Value) {
        let id = request["request_id"].clone();
        let response = match request["request"]["subtype"].as_str() {
            Some("initialize" | "interrupt") => {
                json!({"subtype": "success", "request_id": id, "response": {}})
            }
            other => json!({"subtype": "error", "request_id": id,
                "error": format!("unsupported control request {other:?}")}),
        };
        emit(&json!({"type": "control_response", "response": response}));
        if let (Some(path), Some("initialize")) =
            (&self.event_log, request["request"]["subtype"].as_str())
        {
            log_line(path, "<<ready>>");
        }
    }

    /// Sleep `duration`, answering control requests; an interrupt ends the
    /// wait early. User messages that arrive meanwhile wait their turn.
    fn wait(&mut self, duration: Duration) -> Waited {
        let deadline = Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.eof {
                std::thread::sleep(left);
                return Waited::Done;
            }
            let line = match self.inbox.recv_timeout(left) {
                Ok(Input::Line(line)) => line,
                Ok(Input::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    self.eof = true;
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => return Waited::Done,
            };
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                eprintln!("stand-in-agent: skipping a malformed input line");
                continue;
            };
            if value["type"] == "control_request" {
                self.answer_control(&value);
                if value["request"]["subtype"] == "interrupt" {
                    return Waited::Interrupted;
                }
            } else if value["type"] == "user" {
                self.deferred.push_back(line);
            }
        }
    }

    fn hang(&mut self) -> ! {
        loop {
            if self.eof {
                std::process::exit(0);
            }
            match self.inbox.recv() {
                Ok(Input::Line(_)) => {}
                Ok(Input::Eof) | Err(_) => std::process::exit(0),
            }
        }
    }

    fn turn(&mut self, text: &str) {
        let started = Instant::now();
        let found = directives(text);
        if found.hang {
            self.hang();
        }
        emit(
            &json!({"type": "system", "subtype": "init", "cwd": self.cwd, "session_id": self.session_id,
            "tools": [], "mcp_servers": [], "model": self.model, "permissionMode": "default",
            "apiKeySource": "none", "uuid": new_session_id()}),
        );
        if found.flood {
            return self.flood(text, started);
        }
        let reply = self.reply(text, &found);
        let chunks = chunks(&reply, if found.long.is_some() { 64 } else { 16 });
        let pause = (self.think + found.delay) / (chunks.len() as u32 + 1);
        self.stream(json!({"type": "message_start", "message": {"id": "msg_stand_in", "role": "assistant", "model": self.model}}));
        self.stream(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
        if let Waited::Interrupted = self.wait(pause) {
            return self.interrupted(text, started);
        }
        for chunk in &chunks {
            self.stream(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}}));
            if found.crash {
                eprintln!("stand-in-agent: crashing as asked");
                std::process::exit(3);
            }
            if let Waited::Interrupted = self.wait(pause) {
                return self.interrupted(text, started);
            }
        }
        let usage = json!({"input_tokens": text.len() / 4 + 1, "output_tokens": reply.len() / 4 + 1,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
        self.stream(json!({"type": "content_block_stop", "index": 0}));
        self.stream(
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}),
        );
        self.stream(json!({"type": "message_stop"}));
        emit(
            &json!({"type": "assistant", "message": {"id": "msg_stand_in", "type": "message",
            "role": "assistant", "model": self.model, "content": [{"type": "text", "text": reply}]},
            "parent_tool_use_id": null, "session_id": self.session_id}),
        );
        self.record(text, Some(&reply));
        self.total_cost += found.cost.unwrap_or(0.001);
        let (is_error, result) = if found.error {
            (
                true,
                "API Error: 500 stand-in failure (asked for by [[error]])".to_string(),
            )
        } else {
            (false, reply)
        };
        self.result("success", is_error, &result, started, usage);
    }

    fn reply(&self, text: &str, found: &Directives) -> String {
        if let Some(n) = found.long {
            return "abcdefghijklmnopqrstuvwxyz0123456789"
                .chars()
                .cycle()
                .take(n)
                .collect();
        }
        let mut reply = format!(
            "reply to: {text}\nturn {} of session {}; earlier: {}",
            self.earlier.len() + 1,
            self.session_id,
            self.earlier.len()
        );
        if !self.earlier.is_empty() {
            let list: Vec<String> = self
                .earlier
                .iter()
                .enumerate()
                .map(|(i, t)| format!("[{}] {}", i + 1, shorten(t, 80)))
                .collect();
            reply.push_str(&format!("\nearlier: {}", list.join(" | ")));
        }
        if found.pid {
            reply.push_str(&format!("\npid {}", std::process::id()));
        }
        if found.env {
            let mut vars: Vec<(String, String)> = std::env::vars_os()
                .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
                .collect();
            vars.sort();
            for (name, value) in vars {
                reply.push_str(&format!("\nenv {name}={value}"));
            }
        }
        for path in &found.read {
            match std::fs::read(path) {
                Ok(bytes) => reply.push_str(&format!("\nread {path}: ok {} bytes", bytes.len())),
                Err(e) => reply.push_str(&format!("\nread {path}: error: {e}")),
            }
        }
        reply
    }

    /// Stream deltas without pause until interrupted.
    fn flood(&mut self, text: &str, started: Instant) {
        loop {
            self.stream(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "flood "}}));
            if let Waited::Interrupted = self.wait(Duration::ZERO) {
                return self.interrupted(text, started);
            }
        }
    }

    fn interrupted(&mut self, text: &str, started: Instant) {
        self.record(text, None);
        let usage = json!({"input_tokens": 0, "output_tokens": 0});
        self.result("error_during_execution", true, "", started, usage);
    }

    fn stream(&self, event: Value) {
        emit(
            &json!({"type": "stream_event", "event": event, "session_id": self.session_id,
            "parent_tool_use_id": null}),
        );
    }

    fn result(&self, subtype: &str, is_error: bool, text: &str, started: Instant, usage: Value) {
        emit(
            &json!({"type": "result", "subtype": subtype, "is_error": is_error,
            "duration_ms": started.elapsed().as_millis() as u64, "duration_api_ms": 0,
            "num_turns": 1, "result": text, "session_id": self.session_id,
            "total_cost_usd": self.total_cost, "usage": usage, "modelUsage": {},
            "permission_denials": []}),
        );
        if let Some(path) = &self.event_log {
            log_line(path, "<<result>>");
        }
    }

    /// Append the turn to the transcript, as the CLI does after every turn.
    fn record(&mut self, text: &str, reply: Option<&str>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut lines = vec![
            json!({"type": "user", "sessionId": self.session_id, "cwd": self.cwd,
            "timestamp": now, "message": {"role": "user", "content": text}}),
        ];
        if let Some(reply) = reply {
            lines.push(
                json!({"type": "assistant", "sessionId": self.session_id, "timestamp": now,
                "message": {"role": "assistant", "content": [{"type": "text", "text": reply}]}}),
            );
        }
        let mut bytes = Vec::new();
        for line in lines {
            bytes.extend_from_slice(line.to_string().as_bytes());
            bytes.push(b'\n');
        }
        if let Err(e) = append(&self.transcript, &bytes) {
            eprintln!(
                "stand-in-agent: cannot write transcript {}: {e}",
                self.transcript.display()
            );
        }
        self.earlier.push(text.to_string());
    }
}

fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(bytes)
}

/// Write one line to stdout; a closed stdout ends the program.
fn emit(line: &Value) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(1);
    }
}

fn user_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => {
            let texts: Vec<&str> = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

fn earlier_user_texts(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "user")
        .filter_map(|v| user_text(&v["message"]["content"]))
        .collect()
}

/// The CLI's folder name for a working directory.
fn project_dir_name(cwd: &Path) -> String {
    cwd.to_string_lossy()
        .chars()
        .flat_map(|c| {
            let n = if c.is_ascii_alphanumeric() {
                0
            } else {
                c.len_utf16()
            };
            let keep = (n == 0).then_some(c);
            keep.into_iter().chain(std::iter::repeat_n('-', n))
        })
        .collect()
}

fn chunks(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn shorten(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    match one_line.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

/// A fresh UUID-shaped session id from the clock and the pid.
fn new_session_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut state = nanos ^ (u64::from(std::process::id()) << 32);
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (a, b) = (next(), next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_command_line_is_accepted() {
        let args = [
            "-p",
            "--input-format",
            "stream-json",
            "--verbose",
            "--unknown-switch",
            "--model=m",
            "--allowedTools",
            "Read,Bash",
            "--resume",
            "s-1",
        ];
        let parsed = parse_args(args.iter().map(|a| a.to_string()));
        assert_eq!(parsed.resume.as_deref(), Some("s-1"));
        assert_eq!(parsed.model.as_deref(), Some("m"));
        assert_eq!(parsed.session_id, None);
    }

    #[test]
    fn directives_are_found_anywhere_in_the_text() {
        let found =
            directives("a [[delay:250]] b [[cost:0.25]][[read:/etc/hostname]] [[nope]] [[long:x");
        assert_eq!(found.delay, Duration::from_millis(250));
        assert_eq!(found.cost, Some(0.25));
        assert_eq!(found.read, ["/etc/hostname"]);
        assert!(!found.hang && found.long.is_none());
    }

    #[test]
    fn project_folder_and_session_ids_look_like_the_clis() {
        assert_eq!(project_dir_name(Path::new("/tmp/.x_y/w")), "-tmp--x-y-w");
        let id = new_session_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
