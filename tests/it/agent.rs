//! The agent layer against real stand-in agent processes (`stand-in-agent`,
//! which speaks Claude Code's stream-json protocol).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use switchboard::agent::{
    self, AgentKind, AgentProcess, AgentSettings, SessionStart, SlotDirs, StartError, TurnError,
    TurnEvent, TurnResult, transcript,
};
use tokio::sync::mpsc;

use crate::helpers::{alive, init_test_logging, wait_until};

const STAND_IN: &str = env!("CARGO_BIN_EXE_stand-in-agent");

/// Settings that run the stand-in agent with short, test-sized guards.
fn stand_in_settings() -> AgentSettings {
    AgentSettings {
        command: STAND_IN.into(),
        start_timeout: Duration::from_secs(20),
        turn_timeout: Duration::from_secs(20),
        silence_timeout: Duration::from_secs(10),
        interrupt_grace: Duration::from_secs(2),
        terminate_timeout: Duration::from_secs(2),
        ..AgentSettings::default()
    }
}

/// A fresh base directory for slots, removed at the end of the test.
struct Slots(tempfile::TempDir);

impl Slots {
    fn new() -> Self {
        init_test_logging();
        Self(tempfile::tempdir().expect("tempdir"))
    }

    fn slot(&self, name: &str) -> SlotDirs {
        SlotDirs::new(self.0.path(), name).expect("slot dirs")
    }
}

async fn start(
    settings: &AgentSettings,
    slot: &SlotDirs,
    session: SessionStart,
) -> Box<dyn AgentProcess> {
    agent::launcher(settings)
        .expect("launcher")
        .start(slot, session)
        .await
        .expect("agent starts")
}

/// Run one turn and collect everything it reported.
async fn turn(
    process: &mut Box<dyn AgentProcess>,
    text: &str,
) -> (Result<TurnResult, TurnError>, Vec<TurnEvent>) {
    let (sender, mut receiver) = mpsc::channel(4096);
    let result = process.run_turn(text, &sender).await;
    drop(sender);
    let mut events = Vec::new();
    while let Some(event) = receiver.recv().await {
        events.push(event);
    }
    (result, events)
}

async fn ok_turn(process: &mut Box<dyn AgentProcess>, text: &str) -> TurnResult {
    match turn(process, text).await.0 {
        Ok(result) => result,
        Err(e) => panic!("turn {text:?} failed: {e}"),
    }
}

async fn wait_gone(pid: u32) {
    wait_until(
        Duration::from_secs(10),
        "the agent process to be gone",
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_ready_agent_answers_several_turns_on_the_same_process() {
    let slots = Slots::new();
    let settings = stand_in_settings();
    let mut process = start(&settings, &slots.slot("a"), SessionStart::New).await;
    let pid = process.pid().expect("pid");
    assert!(alive(pid));
    assert!(process.resident_memory_bytes().expect("rss") > 0);
    let mut total = 0.0;
    for n in 1..=3 {
        let result = ok_turn(&mut process, &format!("message {n} [[pid]]")).await;
        assert!(
            result.text.starts_with(&format!("reply to: message {n}")),
            "{}",
            result.text
        );
        assert!(
            result.text.contains(&format!("turn {n} of session")),
            "{}",
            result.text
        );
        assert!(
            result.text.contains(&format!("pid {pid}")),
            "{}",
            result.text
        );
        assert!(!result.is_error);
        assert_eq!(result.subtype, "success");
        assert!(
            (result.cost_usd - 0.001).abs() < 1e-9,
            "cost is per turn: {}",
            result.cost_usd
        );
        assert!(result.total_cost_usd > total);
        total = result.total_cost_usd;
        assert!(result.usage.output_tokens > 0);
        assert_eq!(process.pid(), Some(pid));
    }
    assert!(process.is_usable());
    assert!(process.session_id().is_some());
    process.terminate().await;
}

#[tokio::test]
async fn text_deltas_arrive_before_the_result_and_make_up_the_final_text() {
    let slots = Slots::new();
    let mut process = start(&stand_in_settings(), &slots.slot("a"), SessionStart::New).await;
    let (result, events) = turn(&mut process, "[[long:2000]] [[cost:0.25]]").await;
    let result = result.expect("turn");
    assert_eq!(result.text.chars().count(), 2000);
    assert!((result.cost_usd - 0.25).abs() < 1e-9);
    let (last, deltas) = events.split_last().expect("events");
    assert_eq!(last, &TurnEvent::Result(result.clone()));
    let mut text = String::new();
    for event in deltas {
        match event {
            TurnEvent::Delta(delta) => text.push_str(delta),
            TurnEvent::Result(_) => panic!("a result before the last event"),
        }
    }
    assert!(deltas.len() >= 20, "{} deltas", deltas.len());
    assert_eq!(text, result.text);
    process.terminate().await;
}

#[tokio::test]
async fn a_session_resumes_on_another_slot_from_its_copied_transcript() {
    let slots = Slots::new();
    let settings = stand_in_settings();
    let (slot_a, slot_b) = (slots.slot("a"), slots.slot("b"));
    let mut a = start(&settings, &slot_a, SessionStart::New).await;
    ok_turn(&mut a, "remember the word pineapple").await;
    let second = ok_turn(&mut a, "and the number 42").await;
    let session = second.session_id.expect("session id");
    let saved = transcript::read(&slot_a, &session)
        .await
        .expect("transcript");
    a.terminate().await;

    transcript::write(&slot_b, &session, &saved)
        .await
        .expect("write transcript");
    let mut b = start(&settings, &slot_b, SessionStart::Resume(session.clone())).await;
    let third = ok_turn(&mut b, "what did I say?").await;
    assert!(third.text.contains("turn 3 of session"), "{}", third.text);
    assert!(third.text.contains("earlier: 2"), "{}", third.text);
    assert!(third.text.contains("pineapple"), "{}", third.text);
    assert_eq!(third.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(b.session_id(), Some(session.as_str()));
    b.terminate().await;
}

#[tokio::test]
async fn resuming_a_missing_session_fails_to_start_with_a_clear_error() {
    let slots = Slots::new();
    let error = agent::launcher(&stand_in_settings())
        .expect("launcher")
        .start(
            &slots.slot("a"),
            SessionStart::Resume("no-such-session".into()),
        )
        .await
        .err()
        .expect("start fails");
    assert!(matches!(error, StartError::Exited { .. }), "{error}");
    assert!(error.is_missing_session(), "{error}");
}

#[tokio::test]
async fn a_hung_agent_is_failed_by_the_silence_watchdog_and_killed() {
    let slots = Slots::new();
    let settings = quick_watchdog();
    let mut process = start(&settings, &slots.slot("a"), SessionStart::New).await;
    let pid = process.pid().expect("pid");
    let started = Instant::now();
    let error = turn(&mut process, "[[hang]]")
        .await
        .0
        .expect_err("turn fails");
    assert!(matches!(error, TurnError::Silent { .. }), "{error}");
    assert!(error.is_retryable() && error.process_dead());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    wait_gone(pid).await;
    assert!(!process.is_usable());
    assert_eq!(process.pid(), None);
}

/// The stand-in with a 400 ms silence watchdog and a 300 ms grace after
/// an interrupt.
fn quick_watchdog() -> AgentSettings {
    AgentSettings {
        silence_timeout: Duration::from_millis(400),
        interrupt_grace: Duration::from_millis(300),
        ..stand_in_settings()
    }
}

/// Output resets the silence watchdog: a reply that streams for longer than
/// the silence timeout, with shorter pauses, completes.
#[tokio::test]
async fn output_that_keeps_coming_holds_off_the_silence_watchdog() {
    let slots = Slots::new();
    let settings = quick_watchdog();
    let mut process = start(&settings, &slots.slot("a"), SessionStart::New).await;
    let started = Instant::now();
    // About six text chunks, a pause of about 200 ms before each.
    let (result, _) = turn(&mut process, "[[delay:1500]]").await;
    let result = result.expect("the turn completes");
    assert!(result.text.contains("[[delay:1500]]"), "{}", result.text);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(process.is_usable());
}

#[tokio::test]
async fn a_crash_mid_turn_is_reported_as_a_crash() {
    let slots = Slots::new();
    let mut process = start(&stand_in_settings(), &slots.slot("a"), SessionStart::New).await;
    let pid = process.pid().expect("pid");
    let (result, events) = turn(&mut process, "[[crash]]").await;
    match result {
        Err(TurnError::Crashed {
            ref status,
            ref stderr,
        }) => {
            assert_eq!(status, "exit code 3");
            assert!(stderr.contains("crashing as asked"), "{stderr}");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    assert!(result.expect_err("crash").is_retryable());
    assert!(
        matches!(events.as_slice(), [TurnEvent::Delta(_)]),
        "{events:?}"
    );
    wait_gone(pid).await;
    let again = turn(&mut process, "hello").await.0.expect_err("no process");
    assert!(matches!(again, TurnError::NotRunning), "{again}");
}

#[tokio::test]
async fn a_turn_past_the_turn_timeout_fails_and_the_process_stays_usable() {
    let slots = Slots::new();
    let settings = AgentSettings {
        turn_timeout: Duration::from_millis(500),
        ..stand_in_settings()
    };
    let mut process = start(&settings, &slots.slot("a"), SessionStart::New).await;
    let pid = process.pid().expect("pid");
    let started = Instant::now();
    let error = turn(&mut process, "[[delay:20000]]")
        .await
        .0
        .expect_err("times out");
    assert!(
        matches!(
            error,
            TurnError::TimedOut {
                process_kept: true,
                ..
            }
        ),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let next = ok_turn(&mut process, "still there?").await;
    assert!(next.text.contains("turn 2 of session"), "{}", next.text);
    assert_eq!(process.pid(), Some(pid));
    process.terminate().await;
}

#[tokio::test]
async fn the_turn_timeout_holds_against_an_agent_that_never_stops_writing() {
    let slots = Slots::new();
    let settings = AgentSettings {
        turn_timeout: Duration::from_millis(500),
        ..stand_in_settings()
    };
    let mut process = start(&settings, &slots.slot("a"), SessionStart::New).await;
    let started = Instant::now();
    let (sender, mut receiver) = mpsc::channel(16);
    let drain = async { while receiver.recv().await.is_some() {} };
    let (result, ()) = tokio::join!(
        async {
            let result = process.run_turn("[[flood]]", &sender).await;
            drop(sender);
            result
        },
        drain
    );
    let error = result.expect_err("times out");
    assert!(matches!(error, TurnError::TimedOut { .. }), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    process.terminate().await;
}

#[tokio::test]
async fn an_interrupt_ends_the_turn_and_the_process_stays_usable() {
    let slots = Slots::new();
    let mut process = start(&stand_in_settings(), &slots.slot("a"), SessionStart::New).await;
    let pid = process.pid().expect("pid");
    let interrupter = process.interrupter();
    interrupter.interrupt(); // with no turn running: forgotten
    let (sender, mut receiver) = mpsc::channel(4096);
    let interrupt_on_first_delta = async {
        while let Some(event) = receiver.recv().await {
            if matches!(event, TurnEvent::Delta(_)) {
                interrupter.interrupt();
                break;
            }
        }
    };
    let started = Instant::now();
    let (result, ()) = tokio::join!(
        process.run_turn("a slow one [[delay:20000]] [[long:3000]]", &sender),
        interrupt_on_first_delta
    );
    let error = result.expect_err("interrupted");
    assert!(
        matches!(error, TurnError::Interrupted { process_kept: true }),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(process.is_usable());
    let next = ok_turn(&mut process, "next").await;
    assert!(next.text.contains("earlier: 1"), "{}", next.text);
    assert_eq!(process.pid(), Some(pid));
    process.terminate().await;
}

#[tokio::test]
async fn a_turn_dropped_midway_leaves_the_process_unusable() {
    let slots = Slots::new();
    let mut process = start(&stand_in_settings(), &slots.slot("a"), SessionStart::New).await;
    let pid = process.pid().expect("pid");
    let (sender, _receiver) = mpsc::channel(4096);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        process.run_turn("[[delay:20000]]", &sender),
    )
    .await;
    assert!(cancelled.is_err(), "the turn was still running");
    assert!(!process.is_usable());
    let error = turn(&mut process, "next").await.0.expect_err("not usable");
    assert!(matches!(error, TurnError::NotRunning), "{error}");
    wait_gone(pid).await;
}

#[tokio::test]
async fn an_api_error_fails_the_turn_as_retryable_and_keeps_the_process() {
    let slots = Slots::new();
    let mut process = start(&stand_in_settings(), &slots.slot("a"), SessionStart::New).await;
    let error = turn(&mut process, "[[error]]").await.0.expect_err("fails");
    assert!(matches!(error, TurnError::Agent { .. }), "{error}");
    assert!(error.is_retryable() && !error.process_dead());
    assert!(process.is_usable());
    ok_turn(&mut process, "after the error").await;
    process.terminate().await;
}

/// `NAME=value` pairs the stand-in listed for `[[env]]`.
fn listed_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("env "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn the_agent_gets_only_the_environment_it_is_given() {
    let slots = Slots::new();
    let mut settings = stand_in_settings();
    settings
        .env
        .insert("ANTHROPIC_BASE_URL".into(), "http://127.0.0.1:9".into());
    let slot = slots.slot("a");
    let mut process = start(&settings, &slot, SessionStart::New).await;
    let result = ok_turn(&mut process, "[[env]]").await;
    let env = listed_env(&result.text);
    let names: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "ANTHROPIC_BASE_URL",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "CLAUDE_CODE_TMPDIR",
        "CLAUDE_CONFIG_DIR",
        "HOME",
        "LANG",
        "PATH",
        "TMPDIR",
    ]
    .into();
    assert_eq!(names, expected, "{}", result.text);
    let value = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(value("HOME"), Some(slot.root.display().to_string()));
    assert_eq!(
        value("CLAUDE_CONFIG_DIR"),
        Some(slot.config.display().to_string())
    );
    assert_eq!(value("TMPDIR"), Some(slot.tmp.display().to_string()));
    assert_eq!(
        value("ANTHROPIC_BASE_URL").as_deref(),
        Some("http://127.0.0.1:9")
    );
    // Values of our own environment do not reach it (cargo sets this one).
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    assert!(!result.text.contains(manifest_dir), "{}", result.text);
    process.terminate().await;
}

#[tokio::test]
async fn terminate_leaves_no_process_behind() {
    let slots = Slots::new();
    let mut process = start(&stand_in_settings(), &slots.slot("a"), SessionStart::New).await;
    let pid = process.pid().expect("pid");
    ok_turn(&mut process, "hello").await;
    assert!(crate::helpers::descendants(std::process::id()).contains(&pid));
    process.terminate().await;
    assert!(!alive(pid), "terminate reaps the process");
    assert!(!crate::helpers::descendants(std::process::id()).contains(&pid));
    assert_eq!(process.pid(), None);
    process.terminate().await; // idempotent
}

#[tokio::test]
async fn the_command_driver_runs_one_process_per_turn() {
    let slots = Slots::new();
    let settings = AgentSettings {
        kind: AgentKind::Command,
        command: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "printf 'got: %s' \"$(cat)\"; printf ' home=%s' \"$HOME\"".into(),
        ],
        ..stand_in_settings()
    };
    let slot = slots.slot("c");
    let mut process = start(&settings, &slot, SessionStart::New).await;
    let (result, events) = turn(&mut process, "hello there").await;
    let result = result.expect("turn");
    assert_eq!(
        result.text,
        format!("got: hello there home={}", slot.root.display())
    );
    assert_eq!(events.last(), Some(&TurnEvent::Result(result.clone())));
    assert!(process.is_usable());

    let failing = AgentSettings {
        args: vec!["-c".into(), "echo oops >&2; exit 4".into()],
        ..settings
    };
    let mut process = start(&failing, &slot, SessionStart::New).await;
    match turn(&mut process, "x").await.0 {
        Err(TurnError::CommandFailed { status, stderr }) => {
            assert_eq!(status, "exit code 4");
            assert_eq!(stderr, "oops");
        }
        other => panic!("expected a failed command, got {other:?}"),
    }
}

#[tokio::test]
async fn the_command_driver_enforces_the_turn_timeout() {
    let slots = Slots::new();
    let settings = AgentSettings {
        kind: AgentKind::Command,
        command: "/bin/sh".into(),
        args: vec!["-c".into(), "exec sleep 30".into()],
        turn_timeout: Duration::from_millis(300),
        ..stand_in_settings()
    };
    let mut process = start(&settings, &slots.slot("c"), SessionStart::New).await;
    let started = Instant::now();
    let error = turn(&mut process, "x").await.0.expect_err("times out");
    assert!(matches!(error, TurnError::TimedOut { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn agents_run_as_the_configured_user_and_cannot_read_our_environment() {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching users needs root");
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let slots = Slots::new();
    // The agent user must be able to reach its slot under the base.
    std::fs::set_permissions(slots.0.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod base");
    let settings = AgentSettings {
        user: Some("nobody".into()),
        command: crate::pool_support::stand_in_for_other_users()
            .display()
            .to_string(),
        ..stand_in_settings()
    };
    let nobody = agent::UnixUser::lookup("nobody").expect("nobody exists");
    let slot = slots.slot("u");
    let mut process = start(&settings, &slot, SessionStart::New).await;
    let pid = process.pid().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().expect("uid"))
        .collect();
    assert!(uids.iter().all(|&u| u == nobody.uid), "{uid_line}");
    assert_eq!(
        std::fs::metadata(&slot.config).expect("config dir").uid(),
        nobody.uid
    );

    let ours = std::process::id();
    let text = format!("[[read:/proc/{ours}/environ]] [[read:/proc/self/environ]]");
    let result = ok_turn(&mut process, &text).await;
    assert!(
        result
            .text
            .contains(&format!("read /proc/{ours}/environ: error")),
        "{}",
        result.text
    );
    assert!(
        result.text.contains("read /proc/self/environ: ok"),
        "{}",
        result.text
    );
    // It could write its transcript, in the directory it was handed.
    let session = result.session_id.expect("session id");
    assert!(
        !transcript::read(&slot, &session)
            .await
            .expect("transcript")
            .is_empty()
    );
    process.terminate().await;
    wait_gone(pid).await;
}
