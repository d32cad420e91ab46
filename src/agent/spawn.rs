//! Spawning agent processes from one long-lived thread, and stopping them.
//!
//! The parent-death signal (`PR_SET_PDEATHSIG`) fires when the *thread*
//! that forked the child exits. Tokio runs `spawn` on whatever thread polls
//! it, and blocking-pool threads come and go, so every agent is forked by
//! one dedicated thread that lives as long as the process.
//!
//! That thread uses `std::process`: a tokio `Child` is tied to the runtime
//! that spawned it, and tests (and tools) run several runtimes. The child's
//! pipes are turned into tokio pipes by the caller, inside its runtime, and
//! the child is reaped by polling `try_wait` (cheap, and only while waiting
//! for an exit).

use std::io;
use std::process::{Child, ExitStatus};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::process::{ChildOptions, configure};

struct Request {
    command: std::process::Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();

fn spawner() -> io::Result<&'static mpsc::Sender<Request>> {
    if let Some(sender) = SPAWNER.get() {
        return Ok(sender);
    }
    let (sender, receiver) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("agent-spawner".into())
        .spawn(move || {
            for mut request in receiver {
                let result = request.command.spawn();
                if let Err(Ok(mut child)) = request.reply.send(result) {
                    // The caller went away: do not leave the child running.
                    kill_group(child.id(), libc::SIGKILL);
                    // An error means it is already reaped.
                    let _ = child.wait();
                }
            }
        })?;
    // Two callers may race here; the loser's thread ends when its sender drops.
    Ok(SPAWNER.get_or_init(|| sender))
}

/// Spawn `command` from the spawner thread, in its own process group, with
/// SIGKILL as its parent-death signal.
pub(crate) async fn spawn(mut command: tokio::process::Command) -> io::Result<AgentChild> {
    configure(
        &mut command,
        ChildOptions {
            own_process_group: true,
            parent_death_signal: Some(libc::SIGKILL),
        },
    );
    let (reply, answer) = oneshot::channel();
    spawner()?
        .send(Request {
            command: command.into_std(),
            reply,
        })
        .map_err(|_| io::Error::other("the agent spawner thread is gone"))?;
    let child = answer
        .await
        .map_err(|_| io::Error::other("the agent spawner thread is gone"))??;
    let pid = child.id();
    Ok(AgentChild {
        pid,
        // Opened once: read after every turn, it is then one pread.
        statm: std::fs::File::open(format!("/proc/{pid}/statm")).ok(),
        child: Some(child),
        status: None,
        group_killed: false,
    })
}

/// Send `signal` to the process group led by `pid`. A missing group (it
/// has exited) is not an error: the caller waits for the exit either way.
pub(crate) fn kill_group(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory effects. The group is our child's and
        // stays reserved while the child is unreaped.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// A spawned agent process (the leader of its own process group).
#[derive(Debug)]
pub(crate) struct AgentChild {
    child: Option<Child>,
    pid: u32,
    /// `/proc/<pid>/statm`, held open (it names this process, not whoever
    /// gets the pid next).
    statm: Option<std::fs::File>,
    status: Option<ExitStatus>,
    /// The group got its final SIGKILL; never signal it again.
    group_killed: bool,
}

impl AgentChild {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Take the pipes the command was given.
    pub(crate) fn take_stdio(
        &mut self,
    ) -> (
        Option<std::process::ChildStdin>,
        Option<std::process::ChildStdout>,
        Option<std::process::ChildStderr>,
    ) {
        match &mut self.child {
            Some(c) => (c.stdin.take(), c.stdout.take(), c.stderr.take()),
            None => (None, None, None),
        }
    }

    /// The exit status, if it has exited (reaping it).
    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = &mut self.child
        {
            match child.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) => {}
                Err(e) => tracing::debug!(pid = self.pid, error = %e, "try_wait failed"),
            }
        }
        self.status
    }

    /// Whether the process is still running.
    pub(crate) fn running(&mut self) -> bool {
        self.child.is_some() && self.try_status().is_none()
    }

    /// Wait up to `timeout` for the process to exit.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM to the group, SIGKILL after `timeout`, reap. Whatever is left
    /// of the group (tools the agent started) gets SIGKILL too, once: after
    /// that the group id may be reused, so later calls signal nothing.
    pub(crate) async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.child.is_none() || self.group_killed {
            return self.status;
        }
        if self.try_status().is_none() {
            kill_group(self.pid, libc::SIGTERM);
            if self.wait_exit(timeout).await.is_none() {
                tracing::warn!(
                    pid = self.pid,
                    "agent did not stop after SIGTERM; killing it"
                );
            }
        }
        kill_group(self.pid, libc::SIGKILL);
        self.group_killed = true;
        let status = self.wait_exit(Duration::from_secs(5)).await;
        if status.is_none() {
            tracing::error!(pid = self.pid, "agent survived SIGKILL for 5s");
        }
        status
    }

    /// SIGKILL the group and reap, without waiting for it here.
    pub(crate) fn kill_now(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.group_killed {
            return;
        }
        kill_group(self.pid, libc::SIGKILL);
        self.group_killed = true;
        if self.status.is_some() || matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.pid;
        let reaper = std::thread::Builder::new()
            .name("agent-reaper".into())
            .spawn(move || child.wait());
        if let Err(e) = reaper {
            tracing::warn!(pid, error = %e, "cannot start a thread to reap the agent");
        }
    }

    /// Resident memory in bytes (VmRSS), while it runs. Read after every
    /// turn, so from `statm` (a few numbers) rather than `status` (which
    /// the kernel formats at ten times the cost).
    pub(crate) fn resident_memory_bytes(&self) -> Option<u64> {
        if self.child.is_none() || self.status.is_some() {
            return None;
        }
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 256];
        let n = self.statm.as_ref()?.read_at(&mut buf, 0).ok()?;
        statm_rss_bytes(std::str::from_utf8(&buf[..n]).ok()?, page_size())
    }
}

/// The resident size of a /proc/PID/statm text (in pages), in bytes.
pub(crate) fn statm_rss_bytes(statm: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size)
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

impl Drop for AgentChild {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// VmRSS of a /proc/PID/status text, in bytes (checks `statm_rss_bytes`).
#[cfg(test)]
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// An exit status in words: "exit code 3", "killed by signal 9".
pub(crate) fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => s.to_string(),
        },
        None => "still running".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tclaude\nVmPeak:\t  300000 kB\nVmRSS:\t  158720 kB\nThreads:\t12\n";
        assert_eq!(vm_rss_bytes(status), Some(158_720 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn statm_rss_is_read_in_bytes_and_matches_vm_rss() {
        assert_eq!(
            statm_rss_bytes("75000 39680 5000 100 0 30000 0\n", 4096),
            Some(39_680 * 4096)
        );
        assert_eq!(statm_rss_bytes("", 4096), None);
        let me = std::process::id();
        let statm = std::fs::read_to_string(format!("/proc/{me}/statm")).expect("statm");
        let status = std::fs::read_to_string(format!("/proc/{me}/status")).expect("status");
        let (a, b) = (
            statm_rss_bytes(&statm, page_size()).expect("statm rss"),
            vm_rss_bytes(&status).expect("VmRSS"),
        );
        // Read one after the other: the test's own memory may move a little.
        assert!(a.abs_diff(b) < 4 * 1024 * 1024, "statm {a} vs status {b}");
    }
}
