//! A seeded randomized test: several workers, stalls (partitions), crashes,
//! failures, duplicate enqueues and reaper ticks over hundreds of
//! conversations; then the queue's promises are checked on what happened.
//! Set QUEUE_CHAOS_SEED to replay a run; the seed is printed on failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchboard::queue::{
    Claim, ClaimOutcome, Commit, Enqueued, LeaseKeeper, Owner, Queue, QueueSettings, WorkerId,
};

use crate::helpers::*;
use crate::queue_support::*;

const CONVERSATIONS: u32 = 150;
const WORKERS: u32 = 6;

/// A batch's position (its inbox id) and the message numbers it held.
type Batch = ((u64, u64), Vec<u32>);

/// One turn as it ran: which conversation, when it started and stopped.
#[derive(Debug, Clone)]
struct Turn {
    cid: String,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct Log {
    turns: Vec<Turn>,
    crashes: usize,
    partitions: usize,
    zombie_commits_fenced: usize,
}

fn settings() -> QueueSettings {
    QueueSettings {
        lease_ttl: Duration::from_millis(700),
        lease_margin: Duration::from_millis(300),
        reaper_interval: Duration::from_millis(50),
        heartbeat_ttl: Duration::from_millis(500),
        max_attempts: 6,
        ..QueueSettings::default()
    }
}

/// Parse "m:<cid>#<n>" tokens out of a reply.
fn answered_in(text: &str) -> Vec<(String, u32)> {
    text.split_whitespace()
        .filter_map(|t| t.strip_prefix("m:"))
        .filter_map(|t| t.rsplit_once('#'))
        .filter_map(|(c, n)| n.parse().ok().map(|n| (c.to_string(), n)))
        .collect()
}

fn batch_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

struct WorkerCtx {
    queue: Queue,
    cut_off: Queue,
    log: Arc<Mutex<Log>>,
    done: tokio_util::sync::CancellationToken,
    seed: u64,
}

async fn run_worker(ctx: Arc<WorkerCtx>, index: u32) {
    let mut rng = SmallRng::seed_from_u64(ctx.seed.wrapping_add(u64::from(index)));
    let mut generation = 0u32;
    let mut me = WorkerId::new(format!("w{index}-{generation}")).expect("id");
    let mut heartbeat = spawn_heartbeat(ctx.queue.clone(), me.clone());
    while !ctx.done.is_cancelled() {
        if rng.random_bool(0.05) {
            let _ = ctx.queue.reap().await;
        }
        let claim = match ctx.queue.claim(&me, 0).await.expect("claim") {
            ClaimOutcome::Claimed(c) => *c,
            _ => {
                let _ = ctx
                    .queue
                    .wait_for_work(&me, Duration::from_millis(50))
                    .await;
                continue;
            }
        };
        let start = Instant::now();
        let dice: f64 = rng.random();
        if dice < 0.04 {
            // The worker process dies mid-turn: no commit, no heartbeat.
            record(&ctx, &claim, start);
            ctx.log.lock().expect("log").crashes += 1;
            heartbeat.abort();
            generation += 1;
            me = WorkerId::new(format!("w{index}-{generation}")).expect("id");
            heartbeat = spawn_heartbeat(ctx.queue.clone(), me.clone());
        } else if dice < 0.08 {
            partitioned_turn(&ctx, &claim, start, &mut rng).await;
        } else if dice < 0.11 {
            record(&ctx, &claim, start);
            let _ = ctx.queue.fail(&claim.lease, "injected failure", true).await;
        } else {
            normal_turn(&ctx, &claim, start, &me, &mut rng).await;
        }
    }
    heartbeat.abort();
}

fn spawn_heartbeat(queue: Queue, me: WorkerId) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = queue.heartbeat(&me).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn record(ctx: &WorkerCtx, claim: &Claim, start: Instant) {
    let turn = Turn {
        cid: claim.lease.conversation.to_string(),
        start,
        end: Instant::now(),
    };
    ctx.log.lock().expect("log").turns.push(turn);
}

fn reply_text(claim: &Claim) -> String {
    claim
        .messages
        .iter()
        .map(|m| format!("m:{}#{}", m.message.conversation, m.message.external_id))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Renewals cannot reach Redis: the keeper gives up, the turn stops; later
/// the worker (wrongly) tries to commit anyway.
async fn partitioned_turn(ctx: &WorkerCtx, claim: &Claim, start: Instant, rng: &mut SmallRng) {
    let keeper = LeaseKeeper::start(ctx.cut_off.clone(), claim.lease.clone());
    keeper.lost().cancelled().await;
    record(ctx, claim, start);
    keeper.stop().await;
    let ttl = ctx.queue.settings().lease_ttl;
    tokio::time::sleep(ttl.mul_f64(rng.random_range(0.0..2.0))).await;
    let commit = Commit {
        parts: vec![reply_text(claim)],
        owner: None,
        cost_usd: 0.0,
        final_seq: 1_000,
        session: None,
        charge: None,
    };
    // Usually fenced; accepted only if nobody reclaimed it in the meantime.
    let fenced = match ctx.queue.commit(&claim.lease, &commit).await {
        Ok(()) => false,
        Err(switchboard::queue::QueueError::Fenced(_)) => true,
        Err(e) => panic!(
            "seed {}: a late commit failed with {e}, not a fence",
            ctx.seed
        ),
    };
    let mut log = ctx.log.lock().expect("log");
    log.partitions += 1;
    log.zombie_commits_fenced += usize::from(fenced);
}

async fn normal_turn(
    ctx: &WorkerCtx,
    claim: &Claim,
    start: Instant,
    me: &WorkerId,
    rng: &mut SmallRng,
) {
    let keeper = LeaseKeeper::start(ctx.queue.clone(), claim.lease.clone());
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
    let _ = ctx.queue.progress(&claim.lease, 0, 1, "thinking").await;
    if keeper.lost().is_cancelled() {
        record(ctx, claim, start);
        keeper.stop().await;
        return;
    }
    record(ctx, claim, start);
    keeper.stop().await;
    let owner = rng.random_bool(0.3).then(|| Owner {
        worker: me.clone(),
        slot: 0,
        generation: 1,
    });
    let commit = Commit {
        parts: vec![reply_text(claim)],
        owner,
        cost_usd: 0.01,
        final_seq: 1_000,
        session: None,
        charge: None,
    };
    let _ = ctx.queue.commit(&claim.lease, &commit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_workers_with_stalls_and_crashes_keep_every_promise() {
    let seed: u64 = std::env::var("QUEUE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("queue chaos seed: {seed} (replay with QUEUE_CHAOS_SEED={seed})");
    let redis = TestRedis::start();
    let (queue, prefix) = test_queue(&redis, "chaos", settings());
    let cut_off = queue_on(
        &format!("redis://127.0.0.1:{}/", free_port()),
        &prefix,
        settings(),
    );
    let log = Arc::new(Mutex::new(Log::default()));
    let done = tokio_util::sync::CancellationToken::new();
    let ctx = Arc::new(WorkerCtx {
        queue: queue.clone(),
        cut_off,
        log: log.clone(),
        done: done.clone(),
        seed,
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| tokio::spawn(run_worker(ctx.clone(), i)))
        .collect();
    let reaper = tokio::spawn(switchboard::queue::Reaper::new(queue.clone()).run(done.clone()));

    // Enqueue: per conversation in order, conversations interleaved, with duplicates.
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut plan: Vec<(u32, u32)> = Vec::new();
    let counts: Vec<u32> = (0..CONVERSATIONS)
        .map(|_| rng.random_range(1..=4))
        .collect();
    let mut next = vec![0u32; CONVERSATIONS as usize];
    let total: u32 = counts.iter().sum();
    while plan.len() < total as usize {
        let c = rng.random_range(0..CONVERSATIONS);
        if next[c as usize] < counts[c as usize] {
            plan.push((c, next[c as usize]));
            next[c as usize] += 1;
        }
    }
    for (c, n) in &plan {
        let cid = format!("chaos-{c}");
        let mut m = message(&cid, *n);
        m.external_id = n.to_string();
        let got = queue
            .enqueue(&m, &dest(), switchboard::queue::EnqueueMode::CreateOrAppend)
            .await
            .expect("enqueue");
        assert!(
            matches!(got, Enqueued::Queued { .. }),
            "seed {seed}: {got:?}"
        );
        if rng.random_bool(0.1) {
            let again = queue
                .enqueue(&m, &dest(), switchboard::queue::EnqueueMode::CreateOrAppend)
                .await
                .expect("enqueue");
            assert_eq!(again, Enqueued::Duplicate, "seed {seed}");
        }
        if rng.random_bool(0.2) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..3))).await;
        }
    }

    // Run until every message is in an answered batch (a reply or a dead letter).
    let answered = wait_until(Duration::from_secs(120), "every message answered", || {
        let queue = queue.clone();
        async move {
            let finals = finals(&queue).await;
            let dead = queue.dead_letters(10_000).await.expect("dead");
            let n: usize = finals
                .iter()
                .map(|f| answered_in(&f.1).len())
                .sum::<usize>()
                + dead.iter().map(|d| d.messages.len()).sum::<usize>();
            (n >= total as usize).then_some((finals, dead))
        }
    })
    .await;
    done.cancel();
    for w in workers {
        w.await.expect("worker task");
    }
    reaper.await.expect("reaper");
    let (finals, dead) = answered;
    // Late (zombie) commits were all attempted before the workers stopped:
    // none of them may have added a reply.
    let finals_after = crate::queue_support::finals(&queue).await;
    assert_eq!(
        finals_after.len(),
        finals.len(),
        "seed {seed}: a reply was added after every message was answered"
    );

    // Exactly one reply per batch.
    let mut per_reply: HashMap<&str, usize> = HashMap::new();
    for f in &finals {
        *per_reply.entry(f.0.as_str()).or_default() += 1;
    }
    let doubled: Vec<_> = per_reply.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "seed {seed}: batches with more than one reply: {doubled:?}"
    );

    // Every message in exactly one answered batch; per-conversation order kept.
    let mut batches: BTreeMap<String, Vec<Batch>> = BTreeMap::new();
    for f in finals.iter().filter(|f| f.2.is_none()) {
        let batch = f.0.split('/').nth(1).unwrap_or_default();
        let msgs = answered_in(&f.1);
        let cid = msgs.first().map(|m| m.0.clone()).unwrap_or_default();
        batches
            .entry(cid)
            .or_default()
            .push((batch_key(batch), msgs.iter().map(|m| m.1).collect()));
    }
    for d in &dead {
        let ns = d
            .messages
            .iter()
            .filter_map(|m| m.external_id.parse().ok())
            .collect();
        batches
            .entry(d.conversation.to_string())
            .or_default()
            .push((batch_key(&d.batch), ns));
    }
    let mut seen = HashSet::new();
    for c in 0..CONVERSATIONS {
        let cid = format!("chaos-{c}");
        let mut list = batches.remove(&cid).unwrap_or_default();
        list.sort_by_key(|b| b.0);
        let order: Vec<u32> = list.into_iter().flat_map(|b| b.1).collect();
        let expected: Vec<u32> = (0..counts[c as usize]).collect();
        assert_eq!(
            order, expected,
            "seed {seed}: conversation {cid} answered out of order or not exactly once"
        );
        seen.insert(cid);
    }
    assert!(
        batches.is_empty(),
        "seed {seed}: replies for unknown conversations"
    );

    // Never two turns of one conversation at once.
    let log = log.lock().expect("log");
    let mut per_conv: HashMap<&str, Vec<&Turn>> = HashMap::new();
    for t in &log.turns {
        per_conv.entry(t.cid.as_str()).or_default().push(t);
    }
    for (cid, turns) in per_conv.iter_mut() {
        turns.sort_by_key(|t| t.start);
        for pair in turns.windows(2) {
            assert!(
                pair[0].end <= pair[1].start,
                "seed {seed}: two turns of {cid} overlapped: {:?}",
                pair
            );
        }
    }
    eprintln!(
        "queue chaos: {} messages, {} turns, {} replies, {} dead letters, {} crashes, {} partitions ({} late commits fenced)",
        total,
        log.turns.len(),
        finals.len(),
        dead.len(),
        log.crashes,
        log.partitions,
        log.zombie_commits_fenced
    );
    assert!(
        log.crashes > 0 && log.partitions > 0,
        "seed {seed}: the run injected no faults"
    );
}
