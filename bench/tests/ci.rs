//! The bench in CI mode: every phase with tiny counts on debug builds, so
//! the bench cannot rot. Checks that it ran and wrote its table and
//! results; asserts nothing about timings.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The debug binaries of the workspace, built when missing.
fn bin_dir() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_switchboard-bench"));
    let dir = bench.parent().expect("bin dir").to_path_buf();
    if !dir.join("switchboard").is_file() || !dir.join("stand-in-agent").is_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--bins", "-p", "switchboard"])
            .current_dir(root)
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the switchboard binaries failed");
    }
    dir
}

/// `switchboard-bench all --quick --slots <slots> --out <out>`, plus `extra`.
fn quick_run(slots: &str, out: &Path, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["all", "--quick", "--slots", slots, "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run switchboard-bench")
}

#[test]
fn every_phase_runs_and_writes_its_results() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("results.json");
    let bins = bin_dir();
    // One slot more than the quick default (3), to check it is passed on.
    let output = quick_run("4", &out, &["--bin-dir".as_ref(), bins.as_os_str()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("| phase | metric |"), "no table:\n{stdout}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("results file"))
            .expect("results json");
    for phase in [
        "1-2 ack",
        "3 backlog",
        "4 path",
        "5 warm",
        "6 e2e",
        "7 memory",
        "8 cpu",
    ] {
        assert!(
            results["phases"][phase].is_object() || results["phases"][phase].is_array(),
            "phase {phase} missing from the results:\n{stderr}"
        );
    }
    let rows = results["table"].as_array().expect("table rows");
    assert!(rows.len() >= 15, "only {} rows", rows.len());
    // After each serve round the bench waits for its workers to answer
    // everything, so that work does not run during the next side's round.
    let drains = results["phases"]["1-2 ack"]["serve_drains"]
        .as_array()
        .expect("serve drains");
    assert_eq!(drains.len(), 2, "one drain per serve round: {drains:?}");
    assert!(
        drains
            .iter()
            .all(|d| d["drain"].as_str().is_some_and(|s| s.starts_with("in "))),
        "a serve round did not drain: {drains:?}"
    );
    // Phase 6 runs a loop per warm slot: 4 slots less the 1 kept fresh.
    assert_eq!(results["opts"]["slots"], 4, "--slots not applied");
    assert_eq!(
        results["phases"]["6 e2e"]["lanes"], 3,
        "lanes not from --slots"
    );
}

#[test]
fn a_pool_with_no_warm_slot_is_refused_before_anything_starts() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("results.json");
    // The quick run keeps 1 slot fresh: 1 slot leaves none to stay warm.
    let output = quick_run("1", &out, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted --slots 1:\n{stderr}");
    assert!(
        stderr.contains("--slots 1: needs more than the 1 fresh slots"),
        "unclear error:\n{stderr}"
    );
    assert!(!out.exists(), "a results file was written");
}

/// `bench/lua-costs` (a diagnostic for docs/performance.md) still runs the
/// queue's admit script with the arguments it builds by hand: after a
/// change to the script's arguments its check call gets an error or a
/// reply other than `queued ...`, and it exits non-zero.
#[test]
fn the_lua_costs_diagnostic_runs_the_admit_script() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lua-costs");
    let output = Command::new("bash")
        .arg(&script)
        .arg("320")
        .output()
        .expect("run bench/lua-costs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench/lua-costs failed:\n{stdout}\n{stderr}"
    );
    let figures = |part: &str| -> Vec<f64> {
        let line = stdout
            .lines()
            .find(|l| l.contains(part))
            .unwrap_or_else(|| panic!("no {part:?} line:\n{stdout}"));
        let numbers: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(numbers.len() >= 2, "figures missing in {line:?}");
        assert!(numbers.iter().all(|n| n.is_finite()), "{line:?}");
        numbers
    };
    // Measured directly: every figure there and above zero (a missing one
    // prints 0).
    for part in ["+ enqueue (the whole script)", "16 per call"] {
        let numbers = figures(part);
        assert!(numbers.iter().all(|n| *n > 0.0), "{part}: {numbers:?}");
    }
    // One call's cost in the script is the difference of two timed runs
    // (with and without the call), which at 320 calls under a loaded test
    // run can come out below zero for a call as cheap as TIME; Redis's own
    // time in the command is measured, so it must be above zero.
    for part in ["SET ", "TIME "] {
        let numbers = figures(part);
        let in_command = numbers[numbers.len() - 1];
        assert!(in_command > 0.0, "{part}: {numbers:?}");
    }
}

/// Processes whose parent is `pid`, and theirs, from /proc.
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (child, comm) in switchboard_bench::procs::children(p) {
            todo.push(child);
            out.push((child, comm));
        }
    }
    out
}

/// Call `done` every 50 ms until it holds or `timeout` passes; whether it held.
fn poll_until(timeout: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A bench run that the test stops, if it has not: SIGTERM, then SIGKILL.
struct Stoppable(std::process::Child);

impl Drop for Stoppable {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: signalling our own child by its pid; it is not reaped yet.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        if poll_until(std::time::Duration::from_secs(30), || {
            !matches!(self.0.try_wait(), Ok(None))
        }) {
            return;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Which of `started` still run (zombies count as gone).
fn still_running(started: &[(u32, String)]) -> Vec<(u32, String)> {
    started
        .iter()
        .filter(|(p, comm)| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|stat| stat.contains(&format!("({comm})")) && !stat.contains(") Z "))
        })
        .cloned()
        .collect()
}

/// Stopped with SIGTERM mid-phase (a CI timeout, `kill`), the bench stops
/// the redis-servers, Switchboard stacks and reference server it started
/// before it exits.
#[test]
fn a_stopped_run_leaves_no_process_behind() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let bins = bin_dir();
    let mut bench = Stoppable(
        Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
            .args(["all", "--quick", "--no-cpu", "--bin-dir"])
            .arg(&bins)
            .arg("--out")
            .arg(out_dir.path().join("results.json"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start switchboard-bench"),
    );
    let pid = bench.0.id();
    // Its stderr, line by line, read aside: a process it leaves behind may
    // hold the pipe open, so reading to the end here could wait forever.
    let pipe = bench.0.stderr.take().expect("stderr piped");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = String::new();
    // Wait until phases 1-2 run their reference server (`switchboard-bench
    // reference`, beside the main stack's Redis and `switchboard serve`),
    // or the bench exits.
    let mut in_phase = false;
    let mut started = Vec::new();
    let mut exited = false;
    let ready = poll_until(std::time::Duration::from_secs(180), || {
        while let Ok(line) = lines.try_recv() {
            in_phase |= line.starts_with("phases 1-2");
            stderr.push_str(&line);
            stderr.push('\n');
        }
        started = descendants(pid);
        let has = |name: &str| started.iter().any(|(_, comm)| comm == name);
        exited = !matches!(bench.0.try_wait(), Ok(None));
        exited || (in_phase && has("redis-server") && has("switchboard") && has("switchboard-ben"))
    });
    assert!(!exited, "the bench exited before phases 1-2:\n{stderr}");
    assert!(
        ready,
        "phases 1-2 did not start within 180 s: {started:?}\n{stderr}"
    );
    // SAFETY: signalling our own child by its pid; it is not reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let mut status = None;
    poll_until(std::time::Duration::from_secs(60), || {
        status = bench.0.try_wait().expect("try_wait");
        status.is_some()
    });
    // Grandchildren (the worker's agents) may take a moment to go after
    // their parents: wait for that too, with a deadline.
    let mut left = Vec::new();
    poll_until(std::time::Duration::from_secs(15), || {
        left = still_running(&started);
        left.is_empty()
    });
    for (p, _) in &left {
        // SAFETY: a process this test's child started, left running: end it.
        unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
    }
    while let Ok(line) = lines.recv_timeout(std::time::Duration::from_secs(2)) {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = status.unwrap_or_else(|| panic!("still running 60 s after SIGTERM:\n{stderr}"));
    assert!(left.is_empty(), "left running: {left:?}\n{stderr}");
    assert!(!status.success(), "a stopped run reported success");
    assert!(
        stderr.contains("SIGTERM: stopped the run"),
        "no word of the stop:\n{stderr}"
    );
}
