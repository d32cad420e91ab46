//! The warm pool: a worker with real stand-in agent processes on real Redis.

use std::time::Duration;

use switchboard::domain::ConversationId;
use switchboard::queue::{OutboxKind, Queue, WorkerId};

use crate::helpers::*;
use crate::pool_support::*;
use crate::queue_support::*;

#[tokio::test]
async fn a_new_conversation_is_served_by_a_pre_started_slot_and_its_follow_up_by_the_same_process()
{
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "warm", pool_queue_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    let w = TestWorker::start(&queue, "warm", pool(2, 1), agent_settings(dir.path())).await;
    let pids = fresh_pids(&queue, &w.id, 2).await;
    say(&queue, "c1", 0, "[[pid]] hello").await;
    let (first, error) = nth_reply(&queue, "c1", 1).await;
    assert!(error.is_none(), "{first}");
    let pid = reported_pid(&first);
    assert!(
        pids.contains(&pid),
        "served by pid {pid}, which was not one of the pre-started {pids:?}"
    );
    assert!(
        first.contains("reply to: Ada (U1): [[pid]] hello"),
        "{first}"
    );
    say(&queue, "c1", 1, "[[pid]] and again").await;
    let (second, _) = nth_reply(&queue, "c1", 2).await;
    assert_eq!(
        reported_pid(&second),
        pid,
        "the follow-up went back to the same process"
    );
    assert!(second.contains("earlier: 1"), "{second}");
    w.shutdown().await;
    for pid in pids {
        assert!(!alive(pid), "agent {pid} outlived the worker's shutdown");
    }
}

#[tokio::test]
async fn a_reply_done_soon_after_its_first_text_is_not_streamed_and_a_slow_one_is() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "stream", pool_queue_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    let w = TestWorker::start(&queue, "stream", pool(2, 1), agent_settings(dir.path())).await;
    fresh_pids(&queue, &w.id, 2).await;
    let progress = |cid: &'static str| {
        let queue = queue.clone();
        async move {
            queue
                .outbox_entries(0)
                .await
                .expect("outbox")
                .into_iter()
                .filter(|e| e.kind == OutboxKind::Progress)
                .filter(|e| e.conversation == ConversationId::new(cid))
                .count()
        }
    };
    // Its deltas come over 60 ms, well within the first update's delay:
    // one final entry only.
    say(&queue, "quick", 0, "[[delay:60]] hello").await;
    let (text, _) = nth_reply(&queue, "quick", 1).await;
    assert!(text.contains("hello"), "{text}");
    assert_eq!(progress("quick").await, 0, "a quick reply is posted once");
    // Deltas spread over 1.5 s: progress while it runs, then the final.
    say(&queue, "slow", 0, "[[delay:1500]] take your time").await;
    nth_reply(&queue, "slow", 1).await;
    assert!(progress("slow").await >= 2, "a slow reply streams");
    w.shutdown().await;
}

/// Maintenance rounds an hour apart: within a test, only the top-up when a
/// fresh slot is taken (or a slot is freed) can make a fresh slot.
const NO_ROUNDS: Duration = Duration::from_secs(3600);

/// The pid of a fresh slot of `worker` that is not in `not`.
async fn another_fresh_pid(queue: &Queue, worker: &WorkerId, not: &[u32]) -> u32 {
    wait_until(Duration::from_secs(20), "a new fresh slot", || {
        let (queue, worker) = (queue.clone(), worker.clone());
        async move {
            slots_of(&queue, &worker)
                .await
                .into_iter()
                .filter(|s| s.0 == "fresh")
                .find_map(|s| s.1.filter(|pid| !not.contains(pid)))
        }
    })
    .await
}

#[tokio::test]
async fn taking_the_last_fresh_slot_starts_a_replacement_at_once_for_the_next_new_conversation() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "topup", pool_queue_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_settings(dir.path());
    let w = TestWorker::start_maintained_every(&queue, "topup", pool(2, 1), agent, NO_ROUNDS).await;
    fresh_pids(&queue, &w.id, 2).await;
    say(&queue, "c1", 0, "[[pid]] first").await;
    let p1 = reported_pid(&nth_reply(&queue, "c1", 1).await.0);
    say(&queue, "c2", 0, "[[pid]] second").await;
    let p2 = reported_pid(&nth_reply(&queue, "c2", 1).await.0);
    // c2 took the last fresh slot: c1's idle slot is restarted fresh.
    let p3 = another_fresh_pid(&queue, &w.id, &[p1, p2]).await;
    say(&queue, "c3", 0, "[[pid]] third").await;
    let (reply, error) = nth_reply(&queue, "c3", 1).await;
    assert!(error.is_none(), "{reply}");
    assert_eq!(
        reported_pid(&reply),
        p3,
        "the third conversation went to the pre-started replacement"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn a_slot_freed_while_the_pool_is_short_of_fresh_ones_is_made_fresh_at_once() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "topup-busy", pool_queue_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_settings(dir.path());
    let w = TestWorker::start_maintained_every(&queue, "topup-busy", pool(2, 2), agent, NO_ROUNDS)
        .await;
    let pids = fresh_pids(&queue, &w.id, 2).await;
    // Both slots must stay fresh: when c1's turn ends, its slot is the only
    // one to evict, and that happens then rather than at the next round.
    say(&queue, "c1", 0, "[[pid]] hello").await;
    nth_reply(&queue, "c1", 1).await;
    another_fresh_pid(&queue, &w.id, &pids).await;
    assert_eq!(fresh_pids(&queue, &w.id, 2).await.len(), 2);
    w.shutdown().await;
}

#[tokio::test]
async fn with_two_slots_and_three_conversations_eviction_then_resume_keeps_the_earlier_turns() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "evict", pool_queue_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    let w = TestWorker::start(&queue, "evict", pool(2, 0), agent_settings(dir.path())).await;
    fresh_pids(&queue, &w.id, 2).await;
    say(&queue, "c1", 0, "remember the word avocado").await;
    nth_reply(&queue, "c1", 1).await;
    say(&queue, "c2", 0, "second conversation").await;
    nth_reply(&queue, "c2", 1).await;
    say(&queue, "c3", 0, "third conversation").await;
    nth_reply(&queue, "c3", 1).await;
    // c1's slot was the least recently used: evicted for c3. c1 comes back.
    say(&queue, "c1", 1, "[[pid]] what was the word?").await;
    let (reply, error) = nth_reply(&queue, "c1", 2).await;
    assert!(error.is_none(), "{reply}");
    assert!(
        reply.contains("earlier: 1"),
        "the resumed session kept the first turn: {reply}"
    );
    assert!(reply.contains("avocado"), "{reply}");
    let evictions = replies_for(&queue, "c2").await.len() + replies_for(&queue, "c3").await.len();
    assert_eq!(evictions, 2, "each other conversation answered once");
    w.shutdown().await;
}

#[tokio::test]
async fn a_hung_agent_is_killed_by_the_watchdog_and_the_turn_retried() {
    let redis = TestRedis::start();
    let mut settings = pool_queue_settings();
    settings.max_attempts = 2;
    let (queue, _) = test_queue(&redis, "hang", settings);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = agent_settings(dir.path());
    agent.silence_timeout = Duration::from_millis(800);
    let w = TestWorker::start(&queue, "hang", pool(2, 1), agent).await;
    let pids = fresh_pids(&queue, &w.id, 2).await;
    say(&queue, "c1", 0, "[[hang]]").await;
    let (reply, error) = nth_reply(&queue, "c1", 1).await;
    assert!(
        error.is_some(),
        "after the attempts, an honest error reply: {reply}"
    );
    let dead = queue.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2, "the hung turn was retried once");
    assert!(
        dead[0].reason.to_lowercase().contains("silen") || dead[0].reason.contains("output"),
        "{}",
        dead[0].reason
    );
    // The hung processes were killed.
    wait_until(Duration::from_secs(10), "hung agents killed", || {
        let gone = pids.iter().filter(|&&p| !alive(p)).count();
        async move { (gone >= 1).then_some(()) }
    })
    .await;
    // The pool is healthy again: the next conversation is answered.
    say(&queue, "c2", 0, "still there?").await;
    assert!(nth_reply(&queue, "c2", 1).await.1.is_none());
    w.shutdown().await;
}

#[tokio::test]
async fn a_crashing_agent_ends_in_one_error_reply_and_a_dead_letter() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "crash", pool_queue_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    let w = TestWorker::start(&queue, "crash", pool(2, 1), agent_settings(dir.path())).await;
    fresh_pids(&queue, &w.id, 2).await;
    say(&queue, "c1", 0, "[[crash]]").await;
    let (reply, error) = nth_reply(&queue, "c1", 1).await;
    assert!(error.is_some(), "{reply}");
    let dead = queue.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, queue.settings().max_attempts);
    // Exactly one reply, even after everything settles.
    say(&queue, "c1", 1, "after the crash").await;
    let (after, error) = nth_reply(&queue, "c1", 2).await;
    assert!(error.is_none(), "{after}");
    assert_eq!(replies_for(&queue, "c1").await.len(), 2);
    w.shutdown().await;
}

#[tokio::test]
async fn agents_run_as_another_user_cannot_read_the_worker_or_see_redis_credentials() {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (agent.user = nobody); the test command runs as root");
    }
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "user", pool_queue_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
    }
    let mut agent = agent_settings(dir.path());
    agent.user = Some("nobody".into());
    agent.command = stand_in_for_other_users().display().to_string();
    agent.secret_env.insert(
        "ANTHROPIC_API_KEY".into(),
        switchboard::config::Secret::new("sk-agent-own-key"),
    );
    let w = TestWorker::start(&queue, "user", pool(1, 1), agent).await;
    fresh_pids(&queue, &w.id, 1).await;
    let me = std::process::id();
    say(
        &queue,
        "c1",
        0,
        &format!("[[env]] [[read:/proc/{me}/environ]]"),
    )
    .await;
    let (reply, error) = nth_reply(&queue, "c1", 1).await;
    assert!(error.is_none(), "{reply}");
    assert!(
        reply.contains(&format!("read /proc/{me}/environ: error")),
        "{reply}"
    );
    assert!(
        !reply.contains("REDIS"),
        "no Redis credentials in the agent's environment: {reply}"
    );
    assert!(!reply.contains(&redis.url()), "{reply}");
    assert!(!reply.contains("SLACK"), "{reply}");
    assert!(
        reply.contains("env ANTHROPIC_API_KEY=sk-agent-own-key"),
        "the agent gets its own key: {reply}"
    );
    w.shutdown().await;
}
