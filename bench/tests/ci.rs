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

#[test]
fn every_phase_runs_and_writes_its_results() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("results.json");
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["all", "--quick", "--bin-dir"])
        .arg(bin_dir())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run switchboard-bench");
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
}
