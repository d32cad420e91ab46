//! The conversation queue against a real redis-server.

use std::time::Duration;

use switchboard::domain::{ConversationId, Destination};
use switchboard::queue::{
    Charge, ClaimOutcome, EnqueueMode, Enqueued, FailOutcome, LeaseKeeper, OutboxKind, Owner,
    Queue, QueueError, SessionSave,
};

use crate::helpers::*;
use crate::queue_support::*;

#[tokio::test]
async fn messages_arriving_during_a_turn_become_the_next_batch_in_order() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "collect", fast_settings());
    let w = worker("w1");
    enqueue(&queue, "c1", 0).await;
    let first = claim(&queue, &w).await.expect("claim first");
    assert_eq!(texts(&first), ["message 0"]);
    for n in 1..=3 {
        assert!(matches!(
            enqueue(&queue, "c1", n).await,
            Enqueued::Queued { .. }
        ));
    }
    // Nothing else can be claimed while the turn runs.
    assert!(claim(&queue, &worker("w2")).await.is_none());
    queue
        .commit(&first.lease, &reply("one"))
        .await
        .expect("commit");
    let second = claim(&queue, &w).await.expect("claim second");
    assert_eq!(texts(&second), ["message 1", "message 2", "message 3"]);
    assert_eq!(second.attempt, 1);
    assert!(second.lease.epoch > first.lease.epoch);
    queue
        .commit(&second.lease, &reply("two"))
        .await
        .expect("commit");
    assert!(claim(&queue, &w).await.is_none(), "inbox is empty");
    let replies = finals(&queue).await;
    assert_eq!(replies.len(), 2);
    assert_ne!(
        replies[0].0, replies[1].0,
        "each batch has its own reply id"
    );
}

#[tokio::test]
async fn a_claim_says_whether_more_is_ready_so_the_worker_need_not_pop_an_empty_queue() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "more", fast_settings());
    let w = worker("w1");
    enqueue(&queue, "c1", 0).await;
    enqueue(&queue, "c2", 0).await;
    let first = claim(&queue, &w).await.expect("claim c1");
    assert!(first.more_ready, "c2 is still ready");
    let second = claim(&queue, &w).await.expect("claim c2");
    assert!(!second.more_ready, "nothing else is ready");
    // Routed to this worker's own queue (affinity): counted there too.
    queue.heartbeat(&w).await.expect("heartbeat");
    for c in [&first, &second] {
        commit_owned(&queue, c, "done", (&w, 0, 1)).await;
    }
    enqueue(&queue, "c1", 1).await;
    enqueue(&queue, "c2", 1).await;
    let first = claim(&queue, &w).await.expect("claim c1 again");
    assert!(first.more_ready, "c2 waits in the affinity queue");
    let second = claim(&queue, &w).await.expect("claim c2 again");
    assert!(!second.more_ready);
}

/// A claim made because the last one said more was ready takes the wake-up
/// queued with what it pops (from the shared list, or from the worker's own
/// for its affinity queue), so the worker's next wait does not end at once
/// only to pop an empty queue. A claim after a wake-up leaves the lists alone.
#[tokio::test]
async fn a_claim_made_because_more_was_ready_takes_the_wake_up_of_what_it_pops() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "wakes", fast_settings());
    let w = worker("w1");
    let k = queue.keys().shard(0);
    let mut conn = queue.connection().await.expect("conn");
    enqueue(&queue, "c1", 0).await;
    enqueue(&queue, "c2", 0).await;
    assert_eq!(
        llen(&queue, &k.wake()).await,
        2,
        "one wake-up per scheduled conversation"
    );
    // The worker's wait takes one; the claim after it takes none.
    let _: Option<String> = redis::cmd("LPOP")
        .arg(k.wake())
        .query_async(&mut *conn)
        .await
        .expect("lpop");
    let first = claim(&queue, &w).await.expect("claim c1");
    assert!(first.more_ready);
    assert_eq!(llen(&queue, &k.wake()).await, 1);
    // Popping on because more was ready takes c2's wake-up with c2.
    let ClaimOutcome::Claimed(second) = queue.claim_more(&w, 0).await.expect("claim") else {
        panic!("c2 was ready");
    };
    assert!(!second.more_ready);
    assert_eq!(
        llen(&queue, &k.wake()).await,
        0,
        "no wake-up left for an empty pop"
    );

    // The same for the worker's own list and affinity queue.
    queue.heartbeat(&w).await.expect("heartbeat");
    for c in [&first, &*second] {
        commit_owned(&queue, c, "done", (&w, 0, 1)).await;
    }
    enqueue(&queue, "c1", 1).await;
    enqueue(&queue, "c2", 1).await;
    let own = k.wake_worker(w.as_str());
    assert_eq!(llen(&queue, &own).await, 2);
    let first = claim(&queue, &w).await.expect("claim c1 again");
    assert!(first.more_ready);
    let ClaimOutcome::Claimed(_) = queue.claim_more(&w, 0).await.expect("claim") else {
        panic!("c2 was ready");
    };
    assert_eq!(
        llen(&queue, &own).await,
        1,
        "only the pop made for more took one"
    );
}

#[tokio::test]
async fn a_wait_claims_what_woke_it_in_the_same_call_and_takes_its_wake_up() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "waitclaim", fast_settings());
    let w = worker("w1");
    let k = queue.keys().shard(0);
    // Nothing queued: the wait ends at its timeout with nothing claimed.
    assert!(matches!(
        queue
            .wait_and_claim(&w, 0, Duration::from_millis(50))
            .await
            .expect("wait"),
        ClaimOutcome::Empty
    ));
    // Waiting first: a message queued meanwhile wakes the wait, which
    // returns it claimed.
    let waiting = {
        let (queue, w) = (queue.clone(), w.clone());
        tokio::spawn(async move { queue.wait_and_claim(&w, 0, Duration::from_secs(30)).await })
    };
    wait_until(Duration::from_secs(10), "the wait to block", || {
        let queue = queue.clone();
        async move {
            let mut conn = queue.connection().await.ok()?;
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut *conn)
                .await
                .ok()?;
            clients.contains("cmd=blpop").then_some(())
        }
    })
    .await;
    enqueue(&queue, "c1", 0).await;
    let ClaimOutcome::Claimed(claim) = waiting.await.expect("join").expect("wait") else {
        panic!("c1 woke the wait and was claimed");
    };
    assert_eq!(texts(&claim), ["message 0"]);
    assert!(!claim.more_ready);
    assert_eq!(
        llen(&queue, &k.wake()).await,
        0,
        "the wait took its wake-up"
    );
    // Queued before the wait: its wake-up ends the wait at once.
    let second = commit_then_wait_for(&queue, &w, &claim, "c2").await;
    assert_ne!(second.lease.conversation, claim.lease.conversation);
    // Redis lost its scripts (a restart): the claim behind the pop fails
    // with NOSCRIPT, and the call claims the plain way instead.
    let mut conn = queue.connection().await.expect("conn");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut *conn)
        .await
        .expect("script flush");
    commit_then_wait_for(&queue, &w, &second, "c3").await;
    assert_eq!(llen(&queue, &k.wake()).await, 0);
}

/// Commit `done`, queue the first message of `cid`, and claim it with
/// `wait_and_claim`.
async fn commit_then_wait_for(
    queue: &Queue,
    w: &switchboard::queue::WorkerId,
    done: &switchboard::queue::Claim,
    cid: &str,
) -> Box<switchboard::queue::Claim> {
    queue
        .commit(&done.lease, &reply("done"))
        .await
        .expect("commit");
    enqueue(queue, cid, 0).await;
    let ClaimOutcome::Claimed(claim) = queue
        .wait_and_claim(w, 0, Duration::from_secs(30))
        .await
        .expect("wait")
    else {
        panic!("{cid} was ready");
    };
    assert_eq!(texts(&claim), ["message 0"]);
    assert_eq!(claim.lease.conversation.to_string(), cid);
    claim
}

async fn llen(queue: &Queue, key: &str) -> u64 {
    let mut conn = queue.connection().await.expect("conn");
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut *conn)
        .await
        .expect("llen")
}

#[tokio::test]
async fn a_final_reply_carries_its_destination_to_egress() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "dest", fast_settings());
    enqueue(&queue, "c1", 0).await;
    let c = claim(&queue, &worker("w")).await.expect("claim");
    queue.commit(&c.lease, &reply("one")).await.expect("commit");
    let entries = queue.outbox_entries(0).await.expect("outbox");
    let last = entries.last().expect("a final reply");
    assert_eq!(last.kind, OutboxKind::Final);
    assert_eq!(last.destination, Some(dest()));
}

/// A final reply is fresh (egress need not read its reply state) only when
/// nothing was published under its ids before: not after progress, not on a
/// later attempt, and not when egress reads it again as a pending entry.
#[tokio::test]
async fn a_final_reply_is_fresh_only_when_nothing_was_published_under_its_ids() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "fresh", fast_settings());
    queue.ensure_outbox_group().await.expect("group");
    let w = worker("w");
    enqueue(&queue, "first", 0).await;
    let c = claim(&queue, &w).await.expect("claim");
    queue.commit(&c.lease, &reply("one")).await.expect("commit");

    enqueue(&queue, "progressed", 0).await;
    let c = claim(&queue, &w).await.expect("claim");
    queue
        .progress(&c.lease, 0, 1, "so far")
        .await
        .expect("progress");
    queue.commit(&c.lease, &reply("two")).await.expect("commit");

    enqueue(&queue, "retried", 0).await;
    let c = claim(&queue, &w).await.expect("claim");
    queue.fail(&c.lease, "boom", true).await.expect("fail");
    let c = claim(&queue, &w).await.expect("claim again");
    assert_eq!(c.attempt, 2);
    queue
        .commit(&c.lease, &reply("three"))
        .await
        .expect("commit");

    let fresh = |entries: Vec<switchboard::queue::OutboxEntry>| -> Vec<(String, bool)> {
        entries
            .into_iter()
            .filter(|e| e.kind == OutboxKind::Final)
            .map(|e| (e.text, e.fresh))
            .collect()
    };
    let expected = vec![
        ("one".to_string(), true),
        ("two".to_string(), false),
        ("three".to_string(), false),
    ];
    let block = Duration::from_millis(10);
    let read = queue.read_outbox(0, 100, block, None).await.expect("read");
    assert_eq!(fresh(read), expected);
    // Read again as the leader's pending entries: none is fresh any more.
    let again = queue
        .read_outbox(0, 100, block, Some("0"))
        .await
        .expect("read");
    assert!(fresh(again).iter().all(|(_, f)| !f));
}

#[tokio::test]
async fn a_duplicate_enqueue_is_not_queued_twice() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "dupe", fast_settings());
    assert!(matches!(
        enqueue(&queue, "c1", 0).await,
        Enqueued::Queued { position: 1, .. }
    ));
    assert_eq!(enqueue(&queue, "c1", 0).await, Enqueued::Duplicate);
    let c = claim(&queue, &worker("w")).await.expect("claim");
    assert_eq!(c.messages.len(), 1);
}

#[tokio::test]
async fn follow_ups_need_an_existing_conversation_when_asked() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "existing", fast_settings());
    let m = message("c9", 1);
    let got = queue
        .enqueue(&m, &dest(), EnqueueMode::ExistingOnly)
        .await
        .expect("enqueue");
    assert_eq!(got, Enqueued::NoConversation);
    assert!(
        !queue
            .conversation_exists(&m.conversation)
            .await
            .expect("exists")
    );
    enqueue(&queue, "c9", 0).await;
    let got = queue
        .enqueue(&m, &dest(), EnqueueMode::ExistingOnly)
        .await
        .expect("enqueue");
    assert!(matches!(got, Enqueued::Queued { .. }));
    assert_eq!(
        queue.destination(&m.conversation).await.expect("dest"),
        Some(dest())
    );
}

#[tokio::test]
async fn two_workers_racing_for_one_conversation_exactly_one_wins() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "race", fast_settings());
    let (wa, wb) = (worker("wa"), worker("wb"));
    for round in 0..20 {
        let cid = format!("race-{round}");
        enqueue(&queue, &cid, 0).await;
        let (a, b) = tokio::join!(claim(&queue, &wa), claim(&queue, &wb));
        let winners = [a.is_some(), b.is_some()].iter().filter(|&&x| x).count();
        assert_eq!(winners, 1, "round {round}");
        let c = a.or(b).expect("one claim");
        queue.commit(&c.lease, &reply("ok")).await.expect("commit");
    }
}

#[tokio::test]
async fn a_stalled_worker_is_fenced_out_after_its_lease_is_reclaimed() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "stall", fast_settings());
    enqueue(&queue, "c1", 0).await;
    let stalled = claim(&queue, &worker("slow")).await.expect("claim");
    // The stalled worker renews nothing; the reaper reclaims after the TTL.
    wait_until(Duration::from_secs(5), "reclaim", || {
        let queue = queue.clone();
        async move { (queue.reap().await.expect("reap").reclaimed > 0).then_some(()) }
    })
    .await;
    let fresh = claim(&queue, &worker("fast"))
        .await
        .expect("reclaimed claim");
    assert_eq!(fresh.attempt, 2, "the lost attempt counts");
    assert_eq!(fresh.batch, stalled.batch, "the same frozen batch");
    // The stalled worker wakes up: every fenced call is refused.
    assert!(matches!(
        queue.progress(&stalled.lease, 0, 1, "late").await,
        Err(QueueError::Fenced(_))
    ));
    assert!(matches!(
        queue.renew(&stalled.lease).await,
        Err(QueueError::Fenced(_))
    ));
    assert!(matches!(
        queue.save_session(&stalled.lease, "s", b"t").await,
        Err(QueueError::Fenced(_))
    ));
    assert!(matches!(
        queue.commit(&stalled.lease, &reply("late")).await,
        Err(QueueError::Fenced(_))
    ));
    queue
        .commit(&fresh.lease, &reply("on time"))
        .await
        .expect("commit");
    let replies = finals(&queue).await;
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].1, "on time");
}

#[tokio::test]
async fn lease_keeper_renews_past_the_ttl_and_reports_loss_when_fenced() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "keeper", fast_settings());
    enqueue(&queue, "c1", 0).await;
    let c = claim(&queue, &worker("w")).await.expect("claim");
    let keeper = LeaseKeeper::start(queue.clone(), c.lease.clone());
    // Two TTLs later the lease is still held: reaping finds nothing.
    let until = tokio::time::Instant::now() + 2 * queue.settings().lease_ttl;
    while tokio::time::Instant::now() < until {
        assert_eq!(queue.reap().await.expect("reap").reclaimed, 0);
        assert!(!keeper.lost().is_cancelled());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Fail the turn from outside: the keeper's next renewal is refused.
    queue.fail(&c.lease, "test", true).await.expect("fail");
    wait_until(Duration::from_secs(3), "keeper notices", || {
        let lost = keeper.lost().is_cancelled();
        async move { lost.then_some(()) }
    })
    .await;
    keeper.stop().await;
}

#[tokio::test]
async fn lease_keeper_gives_up_before_the_server_deadline_when_redis_is_unreachable() {
    let redis = TestRedis::start();
    let (queue, prefix) = test_queue(&redis, "partition", fast_settings());
    enqueue(&queue, "c1", 0).await;
    let c = claim(&queue, &worker("w")).await.expect("claim");
    // Renewals go to a port where nothing listens: a network partition.
    let cut_off = queue_on(
        &format!("redis://127.0.0.1:{}/", free_port()),
        &prefix,
        fast_settings(),
    );
    let started = std::time::Instant::now();
    let keeper = LeaseKeeper::start(cut_off, c.lease.clone());
    wait_until(Duration::from_secs(3), "keeper gives up", || {
        let lost = keeper.lost().is_cancelled();
        async move { lost.then_some(()) }
    })
    .await;
    let waited = started.elapsed();
    let s = queue.settings();
    assert!(
        waited < s.lease_ttl,
        "gave up after {waited:?}, before the lease TTL"
    );
    // At that moment the lease is still live on the server: nobody else has it yet.
    assert_eq!(queue.reap().await.expect("reap").reclaimed, 0);
    keeper.stop().await;
}

#[tokio::test]
async fn a_batch_whose_worker_always_dies_is_dead_lettered_with_one_error_reply() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "deadletter", fast_settings());
    enqueue(&queue, "c1", 0).await;
    enqueue(&queue, "c1", 1).await;
    let max = queue.settings().max_attempts;
    for attempt in 1..=max {
        let c = claim(&queue, &worker("doomed")).await.expect("claim");
        assert_eq!(c.attempt, attempt);
        assert_eq!(texts(&c), ["message 0", "message 1"]);
        // The worker dies: no commit, no fail. Wait for the reaper.
        wait_until(Duration::from_secs(5), "reclaim", || {
            let queue = queue.clone();
            async move { (queue.reap().await.expect("reap").reclaimed > 0).then_some(()) }
        })
        .await;
    }
    let outcome = queue.claim(&worker("doomed"), 0).await.expect("claim");
    assert!(matches!(outcome, ClaimOutcome::DeadLettered { .. }));
    let replies = finals(&queue).await;
    assert_eq!(replies.len(), 1, "exactly one error reply: {replies:?}");
    assert!(replies[0].2.is_some(), "it is marked as an error");
    let dead = queue.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, max);
    assert_eq!(dead[0].messages.len(), 2, "all the batch's messages");
    assert!(
        dead[0].reason.contains("lease expired"),
        "{}",
        dead[0].reason
    );
    // The conversation moves on: a new message is served normally.
    enqueue(&queue, "c1", 2).await;
    let c = claim(&queue, &worker("w"))
        .await
        .expect("claim after dead letter");
    assert_eq!(texts(&c), ["message 2"]);
    // An admin retries the dead letter: its messages are queued again.
    queue.commit(&c.lease, &reply("ok")).await.expect("commit");
    assert!(
        queue
            .retry_dead_letter(dead[0].shard, &dead[0].id)
            .await
            .expect("retry")
    );
    let c = claim(&queue, &worker("w")).await.expect("claim retried");
    assert_eq!(texts(&c), ["message 0", "message 1"]);
    assert!(queue.dead_letters(10).await.expect("dead").is_empty());
}

#[tokio::test]
async fn a_non_retryable_failure_dead_letters_at_once() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "fail", fast_settings());
    enqueue(&queue, "c1", 0).await;
    let c = claim(&queue, &worker("w")).await.expect("claim");
    assert_eq!(
        queue
            .fail(&c.lease, "agent refused", true)
            .await
            .expect("fail"),
        FailOutcome::Retrying
    );
    let c = claim(&queue, &worker("w")).await.expect("retry claim");
    assert_eq!(c.attempt, 2);
    assert_eq!(
        queue
            .fail(&c.lease, "bad input", false)
            .await
            .expect("fail"),
        FailOutcome::DeadLettered
    );
    assert_eq!(finals(&queue).await.len(), 1);
    assert!(claim(&queue, &worker("w")).await.is_none());
}

#[tokio::test]
async fn affinity_routes_to_a_live_owner_and_falls_back_when_its_heartbeat_expires() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "affinity", fast_settings());
    let (owner, other) = (worker("owner"), worker("other"));
    queue.heartbeat(&owner).await.expect("hb");
    queue.heartbeat(&other).await.expect("hb");
    enqueue(&queue, "c1", 0).await;
    let c = claim(&queue, &owner).await.expect("claim");
    commit_owned(&queue, &c, "hi", (&owner, 3, 7)).await;
    // A follow-up is routed to the owner: the other worker cannot take it.
    enqueue(&queue, "c1", 1).await;
    assert!(claim(&queue, &other).await.is_none());
    let c = claim(&queue, &owner)
        .await
        .expect("owner claims its conversation");
    assert_eq!(
        c.owner,
        Some(Owner {
            worker: owner.clone(),
            slot: 3,
            generation: 7
        })
    );
    commit_owned(&queue, &c, "hi", (&owner, 3, 7)).await;
    // The owner goes quiet: its routed work returns to the shared queue.
    enqueue(&queue, "c1", 2).await;
    assert!(claim(&queue, &other).await.is_none());
    wait_until(
        Duration::from_secs(5),
        "owner's heartbeat to expire",
        || {
            let (queue, other) = (queue.clone(), other.clone());
            async move {
                queue.heartbeat(&other).await.expect("hb");
                (queue.reap().await.expect("reap").workers_expired > 0).then_some(())
            }
        },
    )
    .await;
    let c = claim(&queue, &other).await.expect("no message stranded");
    assert_eq!(texts(&c), ["message 2"]);
    assert_eq!(
        c.owner.map(|o| o.worker),
        Some(owner.clone()),
        "the claim shows the old owner, so the slot resumes"
    );
    // New messages for a conversation whose owner is dead go to the shared queue.
    queue.commit(&c.lease, &reply("x")).await.expect("commit");
    enqueue(&queue, "c1", 3).await;
    assert!(claim(&queue, &other).await.is_some());
}

#[tokio::test]
async fn a_deregistered_worker_hands_back_its_routed_work_at_once() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "deregister", fast_settings());
    let (owner, other) = (worker("owner"), worker("other"));
    queue.heartbeat(&owner).await.expect("hb");
    enqueue(&queue, "c1", 0).await;
    let c = claim(&queue, &owner).await.expect("claim");
    commit_owned(&queue, &c, "hi", (&owner, 0, 1)).await;
    enqueue(&queue, "c1", 1).await;
    enqueue(&queue, "c2", 0).await;
    let held = claim(&queue, &owner).await.expect("owner holds one");
    queue.deregister(&owner).await.expect("deregister");
    let got = claim(&queue, &other).await.expect("handed back");
    assert_ne!(got.lease.conversation, held.lease.conversation);
    let got2 = claim(&queue, &other)
        .await
        .expect("its held lease handed back too");
    assert_eq!(got2.lease.conversation, held.lease.conversation);
    assert!(matches!(
        queue.commit(&held.lease, &reply("late")).await,
        Err(QueueError::Fenced(_))
    ));
}

#[tokio::test]
async fn inbox_overflow_gets_one_reply_and_is_dead_lettered() {
    let redis = TestRedis::start();
    let mut settings = fast_settings();
    settings.inbox_cap = 3;
    let (queue, _) = test_queue(&redis, "overflow", settings);
    for n in 0..3 {
        assert!(matches!(
            enqueue(&queue, "c1", n).await,
            Enqueued::Queued { .. }
        ));
    }
    for n in 3..6 {
        assert_eq!(enqueue(&queue, "c1", n).await, Enqueued::Overflow);
    }
    let replies = finals(&queue).await;
    assert_eq!(replies.len(), 1, "one 'too many messages' reply, not three");
    assert_eq!(replies[0].2.as_deref(), Some("inbox_overflow"));
    assert_eq!(queue.dead_letters(10).await.expect("dead").len(), 3);
    // The first three are still served.
    let c = claim(&queue, &worker("w")).await.expect("claim");
    assert_eq!(c.messages.len(), 3);
    queue.commit(&c.lease, &reply("ok")).await.expect("commit");
    // After a reply, a new overflow is told again.
    for n in 10..13 {
        enqueue(&queue, "c1", n).await;
    }
    assert_eq!(enqueue(&queue, "c1", 13).await, Enqueued::Overflow);
    assert_eq!(
        finals(&queue)
            .await
            .iter()
            .filter(|r| r.2.is_some())
            .count(),
        2
    );
}

#[tokio::test]
async fn idle_conversations_and_their_sessions_expire() {
    let redis = TestRedis::start();
    let mut settings = fast_settings();
    settings.idle_ttl = Duration::from_secs(1);
    let (queue, _) = test_queue(&redis, "idle", settings);
    enqueue(&queue, "c1", 0).await;
    let c = claim(&queue, &worker("w")).await.expect("claim");
    queue
        .save_session(&c.lease, "sess-1", b"transcript")
        .await
        .expect("save");
    queue.commit(&c.lease, &reply("ok")).await.expect("commit");
    let cid = ConversationId::new("c1");
    assert!(queue.conversation_exists(&cid).await.expect("exists"));
    assert_eq!(
        queue.load_session(&cid).await.expect("load"),
        Some(b"transcript".to_vec())
    );
    wait_until(Duration::from_secs(5), "idle expiry", || {
        let (queue, cid) = (queue.clone(), cid.clone());
        async move {
            let gone = !queue.conversation_exists(&cid).await.expect("exists")
                && queue.load_session(&cid).await.expect("load").is_none();
            gone.then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn sessions_are_saved_only_under_the_lease() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "session", fast_settings());
    enqueue(&queue, "c1", 0).await;
    let c = claim(&queue, &worker("w")).await.expect("claim");
    queue
        .save_session(&c.lease, "sess-1", b"t1")
        .await
        .expect("save");
    queue.commit(&c.lease, &reply("ok")).await.expect("commit");
    assert!(matches!(
        queue.save_session(&c.lease, "sess-2", b"t2").await,
        Err(QueueError::Fenced(_))
    ));
    enqueue(&queue, "c1", 1).await;
    let c = claim(&queue, &worker("w")).await.expect("claim");
    assert_eq!(c.session_id.as_deref(), Some("sess-1"));
}

#[tokio::test]
async fn a_commit_appends_the_new_part_of_a_transcript_only_onto_what_it_continues() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "append", fast_settings());
    let cid = ConversationId::new("c1");
    let with_session = |text: &str, transcript: &[u8], offset: u64| {
        let mut commit = reply(text);
        commit.session = Some(SessionSave {
            id: "sess-1".into(),
            transcript: transcript.to_vec(),
            offset,
        });
        commit
    };
    for (n, line, offset) in [(0, "line 1\n", 0), (1, "line 2\n", 7)] {
        enqueue(&queue, "c1", n).await;
        let c = claim(&queue, &worker("w")).await.expect("claim");
        queue
            .commit(&c.lease, &with_session("reply", line.as_bytes(), offset))
            .await
            .expect("commit whole, then the appended part");
    }
    let stored = queue.load_session(&cid).await.expect("load");
    assert_eq!(stored.as_deref(), Some(&b"line 1\nline 2\n"[..]));
    // A part that does not continue the stored transcript writes nothing,
    // not even the reply; sent whole, it commits.
    enqueue(&queue, "c1", 2).await;
    let c = claim(&queue, &worker("w")).await.expect("claim");
    assert!(matches!(
        queue
            .commit(&c.lease, &with_session("three", b"line 3\n", 7))
            .await,
        Err(QueueError::SessionMismatch(_))
    ));
    assert_eq!(finals(&queue).await.len(), 2);
    assert_eq!(
        queue.load_session(&cid).await.expect("load").as_deref(),
        Some(&b"line 1\nline 2\n"[..])
    );
    queue
        .commit(&c.lease, &with_session("three", b"whole\n", 0))
        .await
        .expect("commit whole again");
    assert_eq!(
        queue.load_session(&cid).await.expect("load").as_deref(),
        Some(&b"whole\n"[..])
    );
    assert_eq!(finals(&queue).await.len(), 3);
}

#[tokio::test]
async fn a_commit_charges_its_turn_from_any_shard_even_when_fenced() {
    let redis = TestRedis::start();
    for shards in [1, 8] {
        let mut settings = fast_settings();
        settings.shards = shards;
        let (queue, _) = test_queue(&redis, &format!("charge{shards}"), settings);
        let charged = |text: &str| {
            let mut commit = reply(text);
            commit.charge = Some(Charge {
                day: "2026-11-26".into(),
                spend_fields: vec!["spend_micro:user:T:U".into(), "spend_micro:team:T".into()],
                turns_field: "turns:user:T:U".into(),
                cost_usd: 0.25,
            });
            commit
        };
        let mut shards_seen = std::collections::BTreeSet::new();
        for i in 0..8 {
            let cid = format!("c{i}");
            shards_seen.insert(
                queue
                    .keys()
                    .for_conversation(&ConversationId::new(&cid))
                    .shard,
            );
            enqueue(&queue, &cid, 0).await;
        }
        assert!(
            shards == 1 || shards_seen.iter().any(|s| *s != 0),
            "{shards_seen:?}"
        );
        let w = worker("w");
        let mut last = None;
        while let Some(c) = claim(&queue, &w).await {
            queue
                .commit(&c.lease, &charged("ok"))
                .await
                .expect("commit");
            last = Some(c);
        }
        // Committing again is fenced, but the turn was spent: charged.
        let last = last.expect("claimed");
        assert!(matches!(
            queue.commit(&last.lease, &charged("again")).await,
            Err(QueueError::Fenced(_))
        ));
        let usage = switchboard::admission::usage(&queue, "2026-11-26")
            .await
            .expect("usage");
        assert_eq!(usage.get("turns:user:T:U"), Some(&9.0), "{usage:?}");
        assert_eq!(usage.get("spend:user:T:U"), Some(&2.25), "{usage:?}");
        assert_eq!(usage.get("spend:team:T"), Some(&2.25), "{usage:?}");
    }
}

#[tokio::test]
async fn a_slack_message_gets_an_acknowledgement_entry_only_when_asked() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "ack-entry", fast_settings());
    let slack = Destination::Slack {
        team: "T1".into(),
        channel: "C1".into(),
        thread_ts: None,
    };
    let acks = |queue: Queue, cid: &'static str| async move {
        let shard = queue.keys().shard_of(&ConversationId::new(cid));
        queue
            .outbox_entries(shard)
            .await
            .expect("outbox")
            .into_iter()
            .filter(|e| e.kind == OutboxKind::Ack && e.conversation.as_str() == cid)
            .flat_map(|e| e.acks)
            .collect::<Vec<_>>()
    };
    for (cid, acknowledge) in [("quiet", false), ("seen", true)] {
        let got = queue
            .enqueue_acknowledged(
                &message(cid, 7),
                &slack,
                EnqueueMode::CreateOrAppend,
                acknowledge,
            )
            .await
            .expect("enqueue");
        assert!(matches!(got, Enqueued::Queued { .. }));
    }
    assert!(acks(queue.clone(), "quiet").await.is_empty());
    assert_eq!(acks(queue.clone(), "seen").await, vec!["7".to_string()]);
    // Each reply names the acknowledgements egress removes: only the
    // acknowledged conversation's.
    let w = worker("w");
    for _ in 0..2 {
        let c = claim(&queue, &w).await.expect("claim");
        let text = c.lease.conversation.as_str().to_string();
        queue.commit(&c.lease, &reply(&text)).await.expect("commit");
    }
    let mut finals: Vec<(String, Vec<String>)> = Vec::new();
    for cid in ["quiet", "seen"] {
        let shard = queue.keys().shard_of(&ConversationId::new(cid));
        for e in queue.outbox_entries(shard).await.expect("outbox") {
            if e.kind == OutboxKind::Final && e.conversation.as_str() == cid {
                finals.push((e.text, e.acks));
            }
        }
    }
    assert_eq!(
        finals,
        vec![
            ("quiet".to_string(), vec![]),
            ("seen".to_string(), vec!["7".to_string()])
        ]
    );
}

/// The claim freezes a batch up to the newest message, as enqueue recorded
/// it; without that record (a conversation queued before it was kept), or
/// with one that no longer names a message, it finds the newest itself.
#[tokio::test]
async fn a_claim_takes_every_waiting_message_whatever_the_newest_on_record() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(&redis, "newest", fast_settings());
    let w = worker("w");
    let cid = ConversationId::new("c1");
    let conv = queue.keys().shard_of(&cid);
    let conv = queue.keys().shard(conv).conv(&cid);
    let mut client = redis.client();
    let mut next = 0;
    for record in [None, Some("1-0"), Some("keep")] {
        for n in next..next + 2 {
            enqueue(&queue, "c1", n).await;
        }
        match record {
            None => redis::cmd("HDEL")
                .arg(&conv)
                .arg("last_id")
                .exec(&mut client),
            Some("keep") => Ok(()),
            Some(id) => redis::cmd("HSET")
                .arg(&conv)
                .arg("last_id")
                .arg(id)
                .exec(&mut client),
        }
        .expect("edit the record");
        let c = claim(&queue, &w).await.expect("claim");
        assert_eq!(
            texts(&c),
            [format!("message {next}"), format!("message {}", next + 1)],
            "with the newest on record: {record:?}"
        );
        queue.commit(&c.lease, &reply("ok")).await.expect("commit");
        assert!(claim(&queue, &w).await.is_none(), "nothing left behind");
        next += 2;
    }
}

#[tokio::test]
async fn a_pooled_connection_is_reused_without_a_ping_unless_idle_or_broken() {
    use deadpool::managed::{Manager as _, Metrics};
    use switchboard::config::{RedisSettings, Secret};
    let mut redis = TestRedis::start();
    let pool = switchboard::store::connect(&Secret::new(redis.url()), &RedisSettings::default())
        .expect("pool");
    let manager = pool.manager();
    let mut conn = manager.create().await.expect("connection");
    let now = std::time::Instant::now();
    let just_used = Metrics {
        created: now,
        recycled: Some(now),
        recycle_count: 1,
    };
    let idle = Metrics {
        recycled: now.checked_sub(switchboard::store::IDLE_BEFORE_PING * 2),
        ..just_used
    };
    assert!(manager.recycle(&mut conn, &just_used).await.is_ok());
    assert!(
        manager.recycle(&mut conn, &idle).await.is_ok(),
        "live: PING answered"
    );
    // Redis restarts: the connection is closed under us.
    redis.restart();
    assert!(
        manager.recycle(&mut conn, &idle).await.is_err(),
        "an idle connection is checked and found dead"
    );
    let mut conn = manager.create().await.expect("connection");
    redis.restart();
    assert!(
        manager.recycle(&mut conn, &just_used).await.is_ok(),
        "a connection just used is not pinged"
    );
    let failed = redis::cmd("PING").query_async::<String>(&mut conn).await;
    assert!(failed.is_err(), "its next command fails");
    assert!(
        manager.recycle(&mut conn, &just_used).await.is_err(),
        "and the pool drops it"
    );
}

/// A shared token bucket grants up to its burst, then says how long to
/// wait; its key expires when unused, and a busy bucket renews its TTL at
/// most every 10 s (most takes skip the PEXPIRE) but never loses it.
#[tokio::test]
async fn token_buckets_grant_their_burst_and_renew_their_ttl_every_ten_seconds() {
    let redis = TestRedis::start();
    let (queue, _) = test_queue(
        &redis,
        "buckets",
        switchboard::queue::QueueSettings::default(),
    );
    let key = queue.keys().shard(0).bucket("b");
    // 1 token per second, burst 2: two granted, the third waits ~1 s.
    for _ in 0..2 {
        assert_eq!(
            queue
                .take_tokens("b", 1.0, 2.0, 1.0, 0.0)
                .await
                .expect("take"),
            None
        );
    }
    let wait = queue
        .take_tokens("b", 1.0, 2.0, 1.0, 0.0)
        .await
        .expect("take")
        .expect("short");
    assert!(
        wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    let mut conn = queue.connection().await.expect("conn");
    let ttl = pttl(&mut conn, &key).await;
    assert!(
        ttl > 55_000 && ttl <= 62_000,
        "a minute past a full refill: {ttl}"
    );
    // Renewed within the last 10 s: a take leaves the TTL alone.
    let _: () = redis::cmd("PERSIST")
        .arg(&key)
        .query_async(&mut *conn)
        .await
        .expect("persist");
    queue
        .take_tokens("b", 1.0, 2.0, 1.0, 0.0)
        .await
        .expect("take");
    assert_eq!(
        pttl(&mut conn, &key).await,
        -1,
        "no PEXPIRE within 10 s of the last"
    );
    // Last renewed 20 s ago: the next take renews it.
    let at: i64 = redis::cmd("HGET")
        .arg(&key)
        .arg("ttl_at")
        .query_async(&mut *conn)
        .await
        .expect("ttl_at");
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("ttl_at")
        .arg(at - 20_000)
        .query_async(&mut *conn)
        .await
        .expect("hset");
    queue
        .take_tokens("b", 1.0, 2.0, 1.0, 0.0)
        .await
        .expect("take");
    let ttl = pttl(&mut conn, &key).await;
    assert!(ttl > 55_000, "renewed: {ttl}");
}

async fn pttl(conn: &mut switchboard::store::Connection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut **conn)
        .await
        .expect("pttl")
}
