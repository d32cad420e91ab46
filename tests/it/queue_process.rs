//! Workers as real processes, paused with SIGSTOP or killed with SIGKILL
//! mid-turn. The child is this test binary re-run on `child_worker`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use switchboard::queue::{LeaseKeeper, QueueError};

use crate::helpers::*;
use crate::queue_support::*;

const CHILD_ENV: &str = "SB_CHILD_WORKER";

/// A worker process holding one conversation's lease.
struct ChildWorker {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl ChildWorker {
    fn start(redis: &TestRedis, prefix: &str, mode: &str) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .args([
                "--exact",
                "queue_process::child_worker",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, mode)
            .env("SB_CHILD_REDIS", redis.url())
            .env("SB_CHILD_PREFIX", prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("spawn child worker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line starting with `tag`, within 20 s.
    fn expect_line(&self, tag: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("child never printed {tag}"));
            if let Some(rest) = line.strip_prefix(tag) {
                return rest.trim().to_string();
            }
        }
    }

    fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for_reclaim(queue: &switchboard::queue::Queue) {
    wait_until(
        Duration::from_secs(10),
        "the reaper to reclaim the lease",
        || {
            let queue = queue.clone();
            async move { (queue.reap().await.expect("reap").reclaimed > 0).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_worker_paused_past_its_lease_cannot_commit_or_publish_after_resuming() {
    let redis = TestRedis::start();
    let (queue, prefix) = test_queue(&redis, "sigstop", fast_settings());
    enqueue(&queue, "c1", 0).await;
    let child = ChildWorker::start(&redis, &prefix, "stall");
    child.expect_line("CLAIMED");
    child.signal(libc::SIGSTOP);
    wait_for_reclaim(&queue).await;
    let other = claim(&queue, &worker("healthy")).await.expect("reclaimed");
    assert_eq!(other.attempt, 2);
    queue
        .commit(&other.lease, &reply("answer from the healthy worker"))
        .await
        .expect("commit");
    child.signal(libc::SIGCONT);
    let mut conn = redis.client();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:go"))
        .arg(1)
        .query(&mut conn)
        .expect("go");
    assert_eq!(child.expect_line("PROGRESS"), "fenced");
    assert_eq!(child.expect_line("COMMIT"), "fenced");
    let replies = finals(&queue).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].1, "answer from the healthy worker");
}

#[tokio::test]
async fn a_worker_killed_mid_turn_is_reclaimed_and_answered_once() {
    let redis = TestRedis::start();
    let (queue, prefix) = test_queue(&redis, "sigkill", fast_settings());
    enqueue(&queue, "c1", 0).await;
    enqueue(&queue, "c1", 1).await;
    let mut child = ChildWorker::start(&redis, &prefix, "hang");
    child.expect_line("CLAIMED");
    child.child.kill().expect("kill -9");
    child.child.wait().expect("reap child");
    wait_for_reclaim(&queue).await;
    let other = claim(&queue, &worker("healthy")).await.expect("reclaimed");
    assert_eq!(texts(&other), ["message 0", "message 1"]);
    queue
        .commit(&other.lease, &reply("answered"))
        .await
        .expect("commit");
    let replies = finals(&queue).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(claim(&queue, &worker("healthy")).await.is_none());
}

/// Not a test: the body of the child worker process the tests above run.
#[tokio::test]
#[ignore = "run as a child process by the SIGSTOP/SIGKILL tests"]
async fn child_worker() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let url = std::env::var("SB_CHILD_REDIS").expect("redis url");
    let prefix = std::env::var("SB_CHILD_PREFIX").expect("prefix");
    let queue = queue_on(&url, &prefix, fast_settings());
    let me = worker("child");
    let c = wait_until(Duration::from_secs(10), "a claim", || {
        let (queue, me) = (queue.clone(), me.clone());
        async move { claim(&queue, &me).await }
    })
    .await;
    let keeper = LeaseKeeper::start(queue.clone(), c.lease.clone());
    println!("CLAIMED {}", c.lease.epoch);
    if mode == "hang" {
        std::future::pending::<()>().await;
    }
    // Wait for the parent's go (after it paused and resumed us).
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    wait_until(Duration::from_secs(30), "go", || {
        let mut conn = conn.clone();
        let key = format!("{prefix}:go");
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .ok()
                .filter(|&n| n == 1)
        }
    })
    .await;
    let _ = redis::cmd("PING").query_async::<String>(&mut conn).await;
    // A well-behaved worker would stop here (the keeper says the lease is
    // lost); this one tries anyway, to show the fence holds.
    let progress = queue.progress(&c.lease, 0, 1, "late progress").await;
    println!("PROGRESS {}", outcome(progress));
    let commit = queue.commit(&c.lease, &reply("late answer")).await;
    println!("COMMIT {}", outcome(commit));
    println!("KEEPER_LOST {}", keeper.lost().is_cancelled());
}

fn outcome(result: Result<(), QueueError>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(QueueError::Fenced(_)) => "fenced".into(),
        Err(e) => format!("error: {e}"),
    }
}
