//! The agent layer with the real Claude Code CLI against the local stand-in
//! of the Anthropic Messages API (`anthropic_stub`).
//!
//! The CLI is the pinned build that `scripts/install-claude.sh` puts in
//! `.tools/claude/claude` (or `SWITCHBOARD_CLAUDE_BIN`). Without it these
//! tests fail: they are part of the suite, not optional.
//!
//! The conversation test runs in a child process of this test binary whose
//! environment holds Slack, Redis and mail secrets (set on that child's
//! command only), so it can check that none of them reaches the CLI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard::agent::{
    self, AgentProcess, AgentSettings, SessionStart, SlotDirs, TurnEvent, TurnResult, transcript,
};
use tokio::sync::mpsc;

use crate::anthropic_stub::AnthropicStub;
use crate::helpers::{alive, die_with_parent, init_test_logging, repo_root, wait_until};

/// Set in the child process that runs the conversation.
const CHILD_MARKER: &str = "SWITCHBOARD_CLAUDE_CLI_CHILD";

/// Secrets the worker's environment may hold; none may reach an agent.
const SECRETS: [(&str, &str); 5] = [
    ("SLACK_BOT_TOKEN", "xoxb-not-for-agents"),
    ("SLACK_SIGNING_SECRET", "signing-secret-not-for-agents"),
    ("REDIS_URL", "redis://:redis-password@127.0.0.1:6379/0"),
    ("SWITCHBOARD_SMTP_PASSWORD", "smtp-password-not-for-agents"),
    ("IMAP_PASSWORD", "imap-password-not-for-agents"),
];

/// The only variables the CLI is started with (see `agent::slot`).
const AGENT_ENV: [&str; 9] = [
    "PATH",
    "HOME",
    "LANG",
    "CLAUDE_CONFIG_DIR",
    "TMPDIR",
    "CLAUDE_CODE_TMPDIR",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
];

/// The CLI binary; fails the test with what to do when it is missing.
fn claude_bin() -> PathBuf {
    let path = std::env::var_os("SWITCHBOARD_CLAUDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/claude/claude"));
    assert!(
        path.is_file(),
        "the Claude Code CLI is not at {}: run scripts/install-claude.sh \
         (or point SWITCHBOARD_CLAUDE_BIN at a claude binary)",
        path.display()
    );
    path
}

fn cli_settings(stub: &AnthropicStub) -> AgentSettings {
    AgentSettings {
        command: claude_bin().to_string_lossy().into_owned(),
        env: BTreeMap::from([
            ("ANTHROPIC_BASE_URL".to_string(), stub.base_url()),
            ("ANTHROPIC_API_KEY".to_string(), "test-key".to_string()),
        ]),
        start_timeout: Duration::from_secs(90),
        turn_timeout: Duration::from_secs(60),
        silence_timeout: Duration::from_secs(60),
        interrupt_grace: Duration::from_secs(5),
        terminate_timeout: Duration::from_secs(5),
        ..AgentSettings::default()
    }
}

/// Start a process and say how long it took to become ready.
async fn start_timed(
    settings: &AgentSettings,
    slot: &SlotDirs,
    session: SessionStart,
) -> (Box<dyn AgentProcess>, Duration) {
    let started = Instant::now();
    let process = agent::launcher(settings)
        .expect("launcher")
        .start(slot, session)
        .await
        .unwrap_or_else(|e| panic!("the claude CLI did not start: {e}"));
    (process, started.elapsed())
}

/// Run one turn that must succeed; checks that its deltas make its text.
async fn ok_turn(process: &mut Box<dyn AgentProcess>, text: &str) -> TurnResult {
    let (sender, mut receiver) = mpsc::channel(4096);
    let result = process.run_turn(text, &sender).await;
    drop(sender);
    let result = result.unwrap_or_else(|e| panic!("turn {text:?} failed: {e}"));
    assert!(!result.is_error, "{result:?}");
    let mut streamed = String::new();
    let mut deltas = 0;
    while let Some(event) = receiver.recv().await {
        if let TurnEvent::Delta(delta) = event {
            streamed.push_str(&delta);
            deltas += 1;
        }
    }
    assert!(deltas >= 2, "{deltas} text deltas for {:?}", result.text);
    assert_eq!(streamed, result.text);
    result
}

/// The variables a process was started with.
fn environ(pid: u32) -> BTreeMap<String, String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).expect("read /proc/PID/environ");
    bytes
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, value) = entry.split_once('=').unwrap_or((&entry, ""));
            (key.to_string(), value.to_string())
        })
        .collect()
}

fn assert_no_secrets(pid: u32) {
    let env = environ(pid);
    for key in env.keys() {
        let secret = key.starts_with("SLACK_")
            || key == "REDIS_URL"
            || ["PASSWORD", "SMTP", "IMAP"].iter().any(|s| key.contains(s));
        assert!(!secret, "the CLI (pid {pid}) was given {key}");
        assert!(
            AGENT_ENV.contains(&key.as_str()),
            "the CLI (pid {pid}) was given {key}, which is not on the list"
        );
    }
    let values = env.values().cloned().collect::<Vec<_>>().join("\n");
    for (_, secret) in SECRETS {
        assert!(!values.contains(secret), "a secret value reached the CLI");
    }
    assert_eq!(
        env.get("ANTHROPIC_API_KEY").map(String::as_str),
        Some("test-key")
    );
}

/// The user texts of the latest `POST /v1/messages` the stub received.
fn last_user_texts(stub: &AnthropicStub) -> Vec<String> {
    let requests = stub.message_requests();
    let last = requests.last().expect("the CLI called the stub");
    assert_eq!(last.header("x-api-key"), Some("test-key"));
    let body = last.body.as_ref().expect("a JSON body");
    assert_eq!(body["stream"], true);
    let messages = body["messages"].as_array().expect("messages");
    let assistant = messages.iter().filter(|m| m["role"] == "assistant");
    let users = last.user_texts();
    assert_eq!(
        assistant.count() + 1,
        users.len(),
        "earlier replies travel with the turns"
    );
    users
}

fn expect_reply(result: &TurnResult, seen: &[&str]) {
    let (first, last) = (seen[0], seen[seen.len() - 1]);
    let expected = format!(
        "saw {} user messages; last: {last}; first: {first}",
        seen.len()
    );
    assert!(
        result.text.starts_with("stub reply #") && result.text.ends_with(&expected),
        "reply {:?} does not end with {expected:?}",
        result.text
    );
}

#[test]
fn real_claude_cli_keeps_a_conversation_on_a_warm_process_and_after_a_recycle() {
    let bin = claude_bin();
    let exe = std::env::current_exe().expect("test binary path");
    let name = "claude_cli::conversation_in_a_process_holding_secrets";
    let mut command = Command::new(exe);
    command
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MARKER, "1")
        .env("SWITCHBOARD_CLAUDE_BIN", &bin)
        .envs(SECRETS);
    die_with_parent(&mut command);
    let output = command.output().expect("run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("{stdout}");
    assert!(output.status.success(), "the conversation failed");
    assert!(stdout.contains("1 passed"), "the conversation did not run");
}

#[tokio::test]
#[ignore = "run by real_claude_cli_keeps_a_conversation_on_a_warm_process_and_after_a_recycle, \
            in a child process whose environment holds secrets"]
async fn conversation_in_a_process_holding_secrets() {
    init_test_logging();
    if std::env::var_os(CHILD_MARKER).is_some() {
        let own = environ(std::process::id());
        for (key, _) in SECRETS {
            assert!(own.contains_key(key), "the test process should hold {key}");
        }
    }
    let stub = AnthropicStub::start().await;
    let settings = cli_settings(&stub);
    let base = tempfile::tempdir().expect("tempdir");
    let slot_a = SlotDirs::new(base.path(), "a").expect("slot a");
    let slot_b = SlotDirs::new(base.path(), "b").expect("slot b");
    let texts = [
        "Remember the word pineapple.",
        "Also remember the number 42.",
        "What did I ask you to remember?",
        "Say it again after the restart.",
    ];

    let (mut a, ready) = start_timed(&settings, &slot_a, SessionStart::New).await;
    let pid = a.pid().expect("pid");
    eprintln!("claude cli: spawn to ready {} ms", ready.as_millis());
    assert_no_secrets(pid);
    let mut session = None;
    let mut stored: Option<transcript::Stored> = None;
    for n in 1..=3 {
        let result = ok_turn(&mut a, texts[n - 1]).await;
        eprintln!(
            "claude cli: turn {n} send to result {} ms",
            result.duration.as_millis()
        );
        expect_reply(&result, &texts[..n]);
        assert_eq!(last_user_texts(&stub), texts[..n]);
        assert_eq!(a.pid(), Some(pid), "the same warm process");
        let id = result.session_id.clone().expect("session id");
        assert_eq!(session.get_or_insert(id.clone()), &id, "one session");
        // The CLI appends each turn to its transcript: a commit stores only
        // the new part (read whole, it would continue what was stored).
        let part = transcript::read_new(&slot_a, &id, stored.as_ref())
            .await
            .expect("transcript");
        let whole = transcript::read(&slot_a, &id).await.expect("transcript");
        if let Some(before) = &stored {
            assert_eq!(part.offset, before.len, "turn {n} only appended");
            assert!(part.bytes.len() < whole.len());
        }
        assert_eq!(part.stored, transcript::Stored::of(&id, &whole));
        stored = Some(part.stored);
    }
    let session = session.expect("session id");
    assert_eq!(a.session_id(), Some(session.as_str()));
    let rss = a.resident_memory_bytes().expect("rss") / (1024 * 1024);
    eprintln!("claude cli: resident memory after 3 turns {rss} MiB");

    // Recycle: the slot's process goes, its transcript moves to a new slot.
    let saved = transcript::read(&slot_a, &session)
        .await
        .expect("the CLI's transcript is where agent::transcript looks");
    a.terminate().await;
    wait_until(
        Duration::from_secs(10),
        "the old CLI to be gone",
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    transcript::write(&slot_b, &session, &saved)
        .await
        .expect("write transcript");
    let resume = SessionStart::Resume(session.clone());
    let (mut b, ready) = start_timed(&settings, &slot_b, resume).await;
    let new_pid = b.pid().expect("pid");
    assert_ne!(new_pid, pid);
    assert_eq!(
        b.session_id(),
        Some(session.as_str()),
        "resumed id at start"
    );
    eprintln!(
        "claude cli: --resume spawn to ready {} ms",
        ready.as_millis()
    );
    assert_no_secrets(new_pid);
    let fourth = ok_turn(&mut b, texts[3]).await;
    eprintln!(
        "claude cli: resumed turn send to result {} ms",
        fourth.duration.as_millis()
    );
    expect_reply(&fourth, &texts);
    assert_eq!(last_user_texts(&stub), texts);
    assert_eq!(fourth.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(b.session_id(), Some(session.as_str()));
    b.terminate().await;
    assert!(!alive(new_pid));

    // With CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 (set by the driver)
    // the CLI calls nothing but the Messages API: one request per turn.
    let requests = stub.requests();
    let calls: Vec<String> = requests
        .iter()
        .map(|r| {
            format!(
                "{} {}?{}",
                r.method,
                r.path,
                r.query.as_deref().unwrap_or("")
            )
        })
        .collect();
    eprintln!("claude cli: the stub saw {calls:?}");
    let first = requests[0].body.as_ref().expect("a JSON body");
    eprintln!(
        "claude cli: it asked for model {}, max_tokens {}, with {} tools; user-agent {:?}",
        first["model"],
        first["max_tokens"],
        first["tools"].as_array().map_or(0, Vec::len),
        requests[0].header("user-agent").unwrap_or("-"),
    );
    assert_eq!(calls, vec!["POST /v1/messages?beta=true"; 4]);
}

#[tokio::test]
async fn real_claude_cli_resuming_an_unknown_session_is_reported_as_missing() {
    init_test_logging();
    let stub = AnthropicStub::start().await;
    let base = tempfile::tempdir().expect("tempdir");
    let slot = SlotDirs::new(base.path(), "a").expect("slot");
    let unknown = SessionStart::Resume("0b7e3c1a-1111-2222-3333-444455556666".into());
    let error = agent::launcher(&cli_settings(&stub))
        .expect("launcher")
        .start(&slot, unknown)
        .await
        .err()
        .expect("start fails");
    assert!(error.is_missing_session(), "{error}");
    assert!(error.is_retryable(), "{error}");
    assert!(stub.message_requests().is_empty());
}

/// The same through the pool: a worker with the real CLI in its slot runs
/// three turns on one warm process, recycles it (max turns per process),
/// and the fourth turn resumes on a new process from the session stored in
/// Redis and sees the earlier turns.
#[tokio::test]
async fn real_claude_cli_in_the_pool_recycles_and_resumes_from_redis() {
    use crate::pool_support::*;
    use crate::queue_support::*;
    let stub = AnthropicStub::start().await;
    let redis = crate::helpers::TestRedis::start();
    // The real CLI is heavy: leases long enough for a loaded machine.
    let mut queue_settings = pool_queue_settings();
    queue_settings.lease_ttl = Duration::from_secs(15);
    queue_settings.lease_margin = Duration::from_secs(5);
    let (queue, _) = test_queue(&redis, "cli-pool", queue_settings);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = cli_settings(&stub);
    agent.slots_dir = dir.path().to_path_buf();
    agent.max_turns_per_process = 3;
    let w = TestWorker::start(&queue, "cli", pool(1, 1), agent).await;
    let first_pid = fresh_pids(&queue, &w.id, 1).await[0];
    for (n, word) in ["alpha", "bravo", "charlie"].iter().enumerate() {
        say(&queue, "c1", n as u32, &format!("remember {word}")).await;
        let (reply, error) = nth_reply(&queue, "c1", n + 1).await;
        assert!(error.is_none(), "{reply}");
        assert!(
            reply.contains(&format!("saw {} user messages", n + 1)),
            "{reply}"
        );
    }
    // The slot was recycled after three turns: a new process.
    let second_pid = wait_until(Duration::from_secs(60), "the recycled slot", || {
        let (queue, id) = (queue.clone(), w.id.clone());
        async move {
            let slots = slots_of(&queue, &id).await;
            slots
                .first()
                .and_then(|s| s.1)
                .filter(|&p| p != first_pid && s_is_fresh(&slots))
        }
    })
    .await;
    assert!(
        !crate::helpers::alive(first_pid),
        "the worn-out process is gone"
    );
    say(&queue, "c1", 3, "which words did I give you?").await;
    let (reply, error) = nth_reply(&queue, "c1", 4).await;
    assert!(error.is_none(), "{reply}");
    assert!(
        reply.contains("saw 4 user messages"),
        "the resumed session carries the earlier turns: {reply}"
    );
    assert!(reply.contains("remember alpha"), "{reply}");
    let last = stub.message_requests().last().cloned().expect("a request");
    let texts = last.user_texts();
    assert!(
        texts.iter().any(|t| t.contains("remember bravo")),
        "{texts:?}"
    );
    let slots = slots_of(&queue, &w.id).await;
    assert_ne!(
        slots[0].1,
        Some(first_pid),
        "turn 4 ran on a new process ({second_pid} or later)"
    );
    w.shutdown().await;
}

fn s_is_fresh(slots: &[(String, Option<u32>, Option<String>)]) -> bool {
    slots.first().is_some_and(|s| s.0 == "fresh")
}
