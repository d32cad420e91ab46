//! Child processes that cannot outlive us: each may get its own process
//! group (a terminal's Ctrl-C does not reach it, and the group can be
//! signalled as a whole) and a parent-death signal.
//!
//! The parent-death signal fires when the *thread* that spawned the child
//! exits, not the process. Spawn such children only from long-lived threads
//! (the main thread, a runtime worker, or a dedicated spawner thread), never
//! from a short-lived blocking-pool thread.

use std::time::Duration;

use tokio::process::{Child, Command};

/// How a child is set up between fork and exec.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildOptions {
    /// Put the child in a process group of its own.
    pub own_process_group: bool,
    /// Signal the child gets when its parent thread dies.
    pub parent_death_signal: Option<i32>,
}

/// Apply `options` to `command`.
pub fn configure(command: &mut Command, options: ChildOptions) {
    command.kill_on_drop(true);
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (setpgid, prctl, getppid).
    unsafe {
        command.pre_exec(move || {
            if options.own_process_group && libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(signal) = options.parent_death_signal {
                if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() == 1 {
                    libc::raise(signal);
                }
            }
            Ok(())
        });
    }
}

/// Send `signal` to one process. Errors (it is already gone) are ignored by
/// design: the caller waits for the exit either way.
pub fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory effects; a stale pid is the only risk,
        // and we only signal children we have not yet reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// SIGTERM, wait up to `timeout`, then SIGKILL, and reap the child.
pub async fn terminate(child: &mut Child, timeout: Duration) {
    if let Some(pid) = child.id() {
        signal(pid, libc::SIGTERM);
    }
    if tokio::time::timeout(timeout, child.wait()).await.is_err() {
        tracing::warn!(pid = ?child.id(), "child did not stop after SIGTERM; killing it");
        // An error here means the child is already gone, which is the goal.
        let _ = child.kill().await;
    }
}
