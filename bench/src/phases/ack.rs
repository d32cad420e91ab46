//! Phases 1 and 2: ack latency at 100/s and 1000/s (open loop) and
//! saturated throughput, gateway vs reference in interleaved rounds.
//! Phase 3: ack latency with busy slots and a backlog vs idle, alternating.

use std::time::Duration;

use serde_json::json;
use switchboard::domain::{ConversationId, Destination, InboundMessage};
use switchboard::queue::EnqueueMode;

use crate::events::{Event, Signer};
use crate::load::{LoadResult, closed_loop, open_loop};
use crate::procs::{cpu_seconds, machine_busy_seconds};
use crate::report::{PhaseOut, Row, num};
use crate::stats::{median, ratio_median};
use crate::{Ctx, log};

/// DM channels the ack phases write to: as many conversations as stay warm,
/// each moving to a new channel after `turns_per_conversation` messages.
fn events(ctx: &Ctx, signer: &Signer, tag: &str, count: usize) -> Vec<Event> {
    let lanes = ctx.opts.lanes();
    let per = ctx.opts.turns_per_conversation * lanes;
    (0..count)
        .map(|i| signer.dm(&format!("D{tag}g{}c{}", i / per, i % lanes), ""))
        .collect()
}

/// The events of the gateway-alone side: the same lanes all phase long.
/// With no worker nothing is answered, so a conversation that moved to a
/// new channel would wait behind the others, and its sender be told their
/// place in line (egress work the reference does not do).
fn lane_events(ctx: &Ctx, signer: &Signer, count: usize) -> Vec<Event> {
    let lanes = ctx.opts.lanes();
    (0..count)
        .map(|i| signer.dm(&format!("Dingressc{}", i % lanes), ""))
        .collect()
}

/// Who answers the events of a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `switchboard serve` as deployed: its workers and agents answer every
    /// event on the same two cores, and egress adds and removes reactions.
    Serve,
    /// `switchboard gateway` alone (workers would run elsewhere), no
    /// acknowledgement reaction: the same work as the reference, plus
    /// admission and the conversation queue.
    Gateway,
    Reference,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Serve => "serve    ",
            Side::Gateway => "gateway  ",
            Side::Reference => "reference",
        }
    }
}

#[derive(Default)]
struct Series {
    p50_100: Vec<f64>,
    p99_100: Vec<f64>,
    p50_1000: Vec<f64>,
    p99_1000: Vec<f64>,
    sat: Vec<f64>,
    /// CPU µs per event while saturated: the server process, its Redis,
    /// the whole machine.
    sat_cpu_us: [Vec<f64>; 3],
    /// Cores busy while saturated.
    sat_cores: Vec<f64>,
    raw: Vec<serde_json::Value>,
}

impl Series {
    fn push(&mut self, round: usize, [a, b, c]: &[LoadResult; 3], cpu: SatCpu) {
        for (series, us) in self.sat_cpu_us.iter_mut().zip(cpu.us) {
            series.push(us);
        }
        self.sat_cores.push(cpu.cores);
        self.p50_100.push(a.latency_ms.p50);
        self.p99_100.push(a.latency_ms.p99);
        self.p50_1000.push(b.latency_ms.p50);
        self.p99_1000.push(b.latency_ms.p99);
        self.sat.push(c.throughput_per_s);
        let lat = |r: &LoadResult| -> Vec<f64> {
            r.samples
                .iter()
                .filter(|s| s.status == 200)
                .map(|s| (s.latency_ms() * 1000.0).round() / 1000.0)
                .collect()
        };
        self.raw.push(
            json!({"round": round, "at_100": a, "at_1000": b, "saturated": c,
            "saturated_cpu_us_per_event": {"server": cpu.us[0], "redis": cpu.us[1],
                "machine": cpu.us[2]},
            "saturated_cores_busy": cpu.cores,
            "latencies_100_ms": lat(a), "latencies_1000_ms": lat(b)}),
        );
    }
}

/// A side's server and its Redis, whose CPU time the saturated run counts.
#[derive(Clone, Copy)]
struct Pids {
    server: u32,
    redis: u32,
}

/// What the saturated run of a round used: CPU µs per event of the server,
/// its Redis and the whole machine (the load generator included), and the
/// cores busy on average (of `nproc`).
#[derive(Clone, Copy)]
struct SatCpu {
    us: [f64; 3],
    cores: f64,
}

/// The three runs of a round, and what its saturated run used.
async fn round(
    ctx: &Ctx,
    signer: &Signer,
    url: &str,
    (side, pids): (Side, Pids),
    tag: &str,
) -> ([LoadResult; 3], SatCpu) {
    let o = &ctx.opts;
    let events = |count| match side {
        Side::Gateway => lane_events(ctx, signer, count),
        Side::Serve | Side::Reference => events(ctx, signer, tag, count),
    };
    let a = open_loop(&ctx.http, url, events(o.n_100), 100.0, o.max_loop).await;
    let b = open_loop(&ctx.http, url, events(o.n_1000), 1000.0, o.max_loop).await;
    let cpu = || {
        [
            cpu_seconds(pids.server),
            cpu_seconds(pids.redis),
            machine_busy_seconds(),
        ]
    };
    let before = cpu();
    let start = std::time::Instant::now();
    let c = closed_loop(
        &ctx.http,
        url,
        events(o.n_saturated),
        o.connections,
        o.max_loop,
    )
    .await;
    let after = cpu();
    let elapsed = start.elapsed().as_secs_f64();
    let ok = c.ok.max(1) as f64;
    let per_event = |i: usize| (after[i] - before[i]) * 1e6 / ok;
    let cores = (after[2] - before[2]) / elapsed.max(1e-9);
    let us = [per_event(0), per_event(1), per_event(2)];
    ([a, b, c], SatCpu { us, cores })
}

/// Phases 1 and 2: three sides in rotating order each round.
pub async fn ack(ctx: &Ctx) -> anyhow::Result<PhaseOut> {
    let signer = Signer::new()?;
    let reference =
        crate::reference::RefServer::start(&ctx.bins, &ctx.dir.join("ref"), None).await?;
    let alone = ctx
        .stack(crate::stack::StackSpec {
            role: "gateway",
            ack_reaction: String::new(),
            ..crate::stack::StackSpec::serve("ingress", 1, 0)
        })
        .await?;
    let pids = |server: &crate::procs::Proc, redis: &crate::procs::Redis| Pids {
        server: server.pid(),
        redis: redis.proc.pid(),
    };
    let sides = [
        (
            Side::Serve,
            pids(&ctx.main.serve, &ctx.main.redis),
            ctx.main.events_url(),
        ),
        (
            Side::Gateway,
            pids(&alone.serve, &alone.redis),
            alone.events_url(),
        ),
        (
            Side::Reference,
            pids(&reference.proc, &reference.redis),
            reference.events_url(),
        ),
    ];
    // Warm all up (connections, caches, the first conversations' slots).
    for (side, _, url) in &sides {
        let warm = match side {
            Side::Gateway => lane_events(ctx, &signer, 200),
            _ => events(ctx, &signer, "warm", 200),
        };
        closed_loop(&ctx.http, url, warm, 8, ctx.opts.max_loop).await;
    }
    let (mut sv, mut gw, mut rf) = (Series::default(), Series::default(), Series::default());
    let mut drains = Vec::new();
    for r in 0..ctx.opts.rounds {
        // Rotate who goes first, so drift over time hits all alike.
        for i in 0..sides.len() {
            let (side, pids, url) = &sides[(r + i) % sides.len()];
            let series = match side {
                Side::Serve => &mut sv,
                Side::Gateway => &mut gw,
                Side::Reference => &mut rf,
            };
            let (runs, cpu) = round(ctx, &signer, url, (*side, *pids), &format!("a{r}")).await;
            let [a, b, c] = &runs;
            log!(
                "  round {r} {}: p99 @100/s {:.2} ms, p99 @1000/s {:.2} ms, saturated {:.0}/s ({} of {} ok)",
                side.label(),
                a.latency_ms.p99,
                b.latency_ms.p99,
                c.throughput_per_s,
                c.ok,
                c.planned
            );
            series.push(r, &runs, cpu);
            if *side == Side::Serve {
                // Its workers answer the round's events for a while after
                // the acks: not during the next side's round.
                let drain = wait_drained(&ctx.main, DRAIN_MAX).await;
                log!("  round {r} serve drained {drain}");
                drains.push(json!({"round": r, "drain": drain.to_string()}));
            }
        }
    }
    let commandstats = alone.redis.commandstats().await;
    log!("  gateway's Redis, µs per call by command:");
    for (command, calls, usec) in &commandstats {
        log!(
            "    {command:<16} {calls:>9} calls {:>8.2} µs/call",
            usec / (*calls).max(1) as f64
        );
    }
    drop(reference);
    alone.stop();
    let ms = |v: &[f64]| format!("{} ms", num(median(v)));
    let per_s = |v: &[f64]| format!("{}/s", num(median(v)));
    let us = |v: &[f64]| format!("{} µs", num(median(v)));
    let p99_ratio = ratio_median(&gw.p99_1000, &rf.p99_1000);
    let sat_ratio = ratio_median(&gw.sat, &rf.sat);
    let cpu_row = |i: usize, what: &str| {
        Row::new(
            "2",
            &format!("CPU per saturated ack, {what}"),
            us(&gw.sat_cpu_us[i]),
        )
        .reference(us(&rf.sat_cpu_us[i]))
        .ratio(ratio_median(&gw.sat_cpu_us[i], &rf.sat_cpu_us[i]))
        .note("informational")
    };
    let rows = vec![
        Row::new("2", "ack p50 @100/s, gateway", ms(&gw.p50_100))
            .reference(ms(&rf.p50_100))
            .ratio(ratio_median(&gw.p50_100, &rf.p50_100)),
        Row::new("2", "ack p99 @100/s, gateway", ms(&gw.p99_100))
            .reference(ms(&rf.p99_100))
            .ratio(ratio_median(&gw.p99_100, &rf.p99_100)),
        Row::new("2", "ack p50 @1000/s, gateway", ms(&gw.p50_1000))
            .reference(ms(&rf.p50_1000))
            .ratio(ratio_median(&gw.p50_1000, &rf.p50_1000)),
        Row::new("1,2", "ack p99 @1000/s, gateway", ms(&gw.p99_1000))
            .reference(ms(&rf.p99_1000))
            .ratio(p99_ratio)
            .goal("<= 1.5x", p99_ratio <= 1.5),
        Row::new("1,2", "saturated acks, gateway", per_s(&gw.sat))
            .reference(per_s(&rf.sat))
            .ratio(sat_ratio)
            .goal(">= 0.8x", sat_ratio >= 0.8),
        cpu_row(0, "gateway process"),
        cpu_row(1, "its Redis"),
        cpu_row(2, "whole machine (+ load generator)"),
        Row::new(
            "2",
            "cores busy while saturated",
            num(median(&gw.sat_cores)),
        )
        .reference(num(median(&rf.sat_cores)))
        .note(&format!(
            "of {}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        )),
        Row::new(
            "2",
            "ack p99 @100/s, serve (+ workers, agents, replies)",
            ms(&sv.p99_100),
        )
        .reference(ms(&rf.p99_100))
        .ratio(ratio_median(&sv.p99_100, &rf.p99_100))
        .note("informational"),
        Row::new(
            "2",
            "ack p99 @1000/s, serve (+ workers, agents, replies)",
            ms(&sv.p99_1000),
        )
        .reference(ms(&rf.p99_1000))
        .ratio(ratio_median(&sv.p99_1000, &rf.p99_1000))
        .note("informational"),
        Row::new(
            "2",
            "saturated acks, serve (+ workers, agents, replies)",
            per_s(&sv.sat),
        )
        .reference(per_s(&rf.sat))
        .ratio(ratio_median(&sv.sat, &rf.sat))
        .note("informational"),
    ];
    Ok(PhaseOut {
        rows,
        raw: json!({"serve": sv.raw, "gateway": gw.raw, "reference": rf.raw,
            "serve_drains": drains,
            "gateway_redis_commandstats": crate::procs::commandstats_json(&commandstats)}),
    })
}

/// Phase 3: two identical stacks, one idle, one with every slot busy and a
/// backlog; alternating rounds at 1000/s.
pub async fn backlog(ctx: &Ctx) -> anyhow::Result<PhaseOut> {
    let signer = Signer::new()?;
    let slots = 2;
    let spec = |name: &str| crate::stack::StackSpec::serve(name, slots, 0);
    let idle = ctx.stack(spec("idle")).await?;
    let busy = ctx.stack(spec("backlog")).await?;
    // Busy: every slot runs a turn that thinks for ten minutes.
    for i in 0..slots {
        let event = signer.dm(&format!("Dbusy{i}"), "[[delay:600000]]");
        crate::events::post(&ctx.http, &busy.events_url(), &event).await;
    }
    let started = std::time::Instant::now();
    fill_backlog(&busy, ctx.opts.backlog).await?;
    log!(
        "  backlog of {} queued in {:.1}s",
        ctx.opts.backlog,
        started.elapsed().as_secs_f64()
    );
    let (mut p99_idle, mut p99_busy, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..ctx.opts.rounds {
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_backlog in order {
            let stack = if with_backlog { &busy } else { &idle };
            let evs = events(ctx, &signer, &format!("b{r}"), ctx.opts.n_backlog_round);
            let res = open_loop(
                &ctx.http,
                &stack.events_url(),
                evs,
                1000.0,
                ctx.opts.max_loop,
            )
            .await;
            log!(
                "  round {r} {}: ack p99 @1000/s {:.2} ms ({} of {} ok)",
                if with_backlog { "backlog" } else { "idle   " },
                res.latency_ms.p99,
                res.ok,
                res.planned
            );
            if with_backlog {
                p99_busy.push(res.latency_ms.p99)
            } else {
                p99_idle.push(res.latency_ms.p99)
            }
            raw.push(json!({"round": r, "backlog": with_backlog, "result": res}));
        }
    }
    let queued = ready_count(&busy).await;
    idle.stop();
    busy.stop();
    let ratio = ratio_median(&p99_busy, &p99_idle);
    let rows = vec![
        Row::new(
            "3",
            &format!("ack p99 @1000/s, slots busy + {} backlog", ctx.opts.backlog),
            format!("{} ms", num(median(&p99_busy))),
        )
        .reference(format!("{} ms idle", num(median(&p99_idle))))
        .ratio(ratio)
        .goal("<= 1.5x", ratio <= 1.5),
    ];
    Ok(PhaseOut {
        rows,
        raw: json!({"rounds": raw, "conversations_waiting_at_end": queued}),
    })
}

/// Queue `n` messages straight into Redis through the queue API, 100 per
/// conversation (console destination: no acknowledgement reactions).
async fn fill_backlog(stack: &crate::stack::Stack, n: usize) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let queue = stack.queue.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < n {
                    let cid = ConversationId::new(format!("console:backlog{}", i / 100));
                    let message = InboundMessage {
                        conversation: cid,
                        dedupe_keys: vec![format!("backlog:{i}")],
                        sender: "UALICE".into(),
                        sender_name: None,
                        text: format!("backlog message {i}"),
                        files: vec![],
                        external_id: format!("b{i}"),
                        received_at_ms: 0,
                    };
                    let dest = Destination::Console {
                        session: "backlog".into(),
                    };
                    queue
                        .enqueue(&message, &dest, EnqueueMode::CreateOrAppend)
                        .await?;
                    i += 32;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(300), task).await???;
    }
    Ok(())
}

/// The longest wait for the serve stack to answer a round's events.
const DRAIN_MAX: Duration = Duration::from_secs(60);

/// How waiting for a stack to answer what it acknowledged ended.
enum Drain {
    /// Nothing waiting, leased or in the outbox after this long.
    Done(Duration),
    /// Still busy when the wait gave up; the next round runs beside it.
    TimedOut(Duration),
}

impl std::fmt::Display for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drain::Done(took) => write!(f, "in {:.1} s", took.as_secs_f64()),
            Drain::TimedOut(max) => write!(f, "NOT within {:.0} s", max.as_secs_f64()),
        }
    }
}

/// Wait until `stack` has answered everything it queued: no conversation
/// waiting or under a lease, and its outbox empty (egress deletes what it
/// delivered). Up to `max`.
async fn wait_drained(stack: &crate::stack::Stack, max: Duration) -> Drain {
    let started = std::time::Instant::now();
    let outbox = stack.queue.keys().shard(0).outbox();
    let drained = crate::procs::wait_for("the serve stack to drain", max, || async {
        let Ok(depth) = stack.queue.depth().await else {
            return false;
        };
        let Ok(mut conn) = stack.queue.connection().await else {
            return false;
        };
        let outboxed: i64 = redis::cmd("XLEN")
            .arg(&outbox)
            .query_async(&mut *conn)
            .await
            .unwrap_or(-1);
        depth.waiting() + depth.leased == 0 && outboxed == 0
    })
    .await;
    match drained {
        Ok(()) => Drain::Done(started.elapsed()),
        Err(_) => Drain::TimedOut(max),
    }
}

/// Conversations waiting in the shared ready queue.
async fn ready_count(stack: &crate::stack::Stack) -> i64 {
    let Ok(mut conn) = stack.redis.connection().await else {
        return -1;
    };
    let key = format!("{}:{{s0}}:ready", crate::stack::PREFIX);
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap_or(-1)
}
