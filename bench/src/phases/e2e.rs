//! Phase 6: end-to-end throughput, event to complete reply at the Slack
//! stand-in, zero think time, one closed loop per warm conversation lane,
//! gateway vs the pipeline reference in interleaved rounds.
//! Phase 7: resident memory of the gateway and worker processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::events::{Signer, post};
use crate::pipeline::Lane;
use crate::procs::{Redis, agents_seconds, children, cpu_seconds, machine_busy_seconds};
use crate::report::{PhaseOut, Row, num};
use crate::stack::StackSpec;
use crate::stats::{median, ratio_median};
use crate::{Ctx, log};

/// Which DM channel message `k` of `lane` goes to in `round`.
fn channel(tag: &str, round: usize, lane: usize, k: usize, turns: usize) -> String {
    format!("D{tag}{round}l{lane}g{}", k / turns)
}

/// The processes whose CPU phase 6 accounts for, on one side.
#[derive(Clone, Copy)]
struct Sides {
    /// `switchboard serve` (the gateway); none for the pipeline.
    serve: Option<u32>,
    /// The worker process `serve` started; none for the pipeline.
    worker: Option<u32>,
    /// Whose stand-in agents count: the worker's, or the bench's.
    agents_of: u32,
    redis: u32,
}

impl Sides {
    fn gateway(serve: u32, redis: u32) -> Self {
        let worker = children(serve)
            .into_iter()
            .find(|(_, comm)| comm == "switchboard")
            .map(|(pid, _)| pid);
        Self {
            serve: Some(serve),
            worker,
            agents_of: worker.unwrap_or(serve),
            redis,
        }
    }

    fn pipeline(redis: u32) -> Self {
        Self {
            serve: None,
            worker: None,
            agents_of: std::process::id(),
            redis,
        }
    }

    /// CPU seconds used so far by: gateway, worker, agents, Redis, the
    /// bench process (load, Slack stand-in, the pipeline's own work), and
    /// the whole machine.
    fn now(&self) -> [f64; 6] {
        [
            self.serve.map_or(0.0, cpu_seconds),
            self.worker.map_or(0.0, cpu_seconds),
            agents_seconds(self.agents_of),
            cpu_seconds(self.redis),
            cpu_seconds(std::process::id()),
            machine_busy_seconds(),
        ]
    }
}

/// Where a side's CPU went over its rounds, summed.
#[derive(Default)]
struct CpuUse {
    seconds: [f64; 6],
    replies: usize,
}

impl CpuUse {
    fn add(&mut self, before: [f64; 6], after: [f64; 6], replies: usize) {
        for (sum, (b, a)) in self.seconds.iter_mut().zip(before.iter().zip(after)) {
            *sum += a - b;
        }
        self.replies += replies;
    }

    /// µs per reply: gateway, worker, agents, Redis, bench, the rest
    /// (kernel work not charged to a process, anything else), machine.
    /// For the pipeline the agents' count includes every child the bench
    /// reaped meanwhile.
    fn per_reply(&self) -> [f64; 7] {
        let n = self.replies.max(1) as f64 * 1e-6;
        let [gateway, worker, agents, redis, bench, all] = self.seconds.map(|s| s / n);
        let rest = all - gateway - worker - agents - redis - bench;
        [gateway, worker, agents, redis, bench, rest, all]
    }

    fn log(&self, side: &str) {
        let [gateway, worker, agents, redis, bench, rest, all] = self.per_reply();
        log!(
            "  {side} CPU per reply: gateway {gateway:.0} µs, worker {worker:.0} µs, \
             agents {agents:.0} µs, Redis {redis:.0} µs, bench {bench:.0} µs, \
             rest {rest:.0} µs, machine {all:.0} µs"
        );
    }

    fn json(&self) -> serde_json::Value {
        let [gateway, worker, agents, redis, bench, rest, all] = self.per_reply();
        json!({"replies": self.replies, "gateway_us": gateway, "worker_us": worker,
            "agents_us": agents, "redis_us": redis, "bench_us": bench, "rest_us": rest,
            "machine_us": all})
    }
}

/// One gateway round: messages answered per second.
async fn gateway_round(
    ctx: &Ctx,
    signer: &Arc<Signer>,
    (url, tag): (&str, &'static str),
    round: usize,
    per_lane: usize,
) -> (usize, f64) {
    let started = Instant::now();
    let deadline = started + ctx.opts.max_loop * 6;
    let tasks: Vec<_> = (0..ctx.opts.lanes())
        .map(|lane| {
            let (http, url, stub, signer) = (
                ctx.http.clone(),
                url.to_string(),
                ctx.stub.clone(),
                signer.clone(),
            );
            let turns = ctx.opts.turns_per_conversation;
            tokio::spawn(async move {
                let mut done = 0;
                for k in 0..per_lane {
                    if Instant::now() > deadline {
                        break;
                    }
                    let event = signer.dm(&channel(tag, round, lane, k, turns), "");
                    let reply = stub.wait_reply(event.n);
                    if post(&http, &url, &event).await != 200 {
                        continue;
                    }
                    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(30), reply).await {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.unwrap_or(0);
    }
    (done, done as f64 / started.elapsed().as_secs_f64())
}

/// One pipeline round: messages through the bare pipeline per second.
async fn pipeline_round(
    ctx: &Ctx,
    lanes: Vec<Lane>,
    round: usize,
    per_lane: usize,
) -> (Vec<Lane>, usize, f64) {
    let started = Instant::now();
    let deadline = started + ctx.opts.max_loop * 6;
    let turns = ctx.opts.turns_per_conversation;
    let tasks: Vec<_> = lanes
        .into_iter()
        .enumerate()
        .map(|(i, mut lane)| {
            tokio::spawn(async move {
                let mut done = 0;
                for k in 0..per_lane {
                    if Instant::now() > deadline {
                        break;
                    }
                    if k > 0
                        && k % turns == 0
                        && let Err(e) = lane.new_conversation().await
                    {
                        eprintln!("pipeline lane {i}: {e:#}");
                        break;
                    }
                    let text = format!("bm{} ", 900_000_000 + k);
                    match lane.one(&channel("p", round, i, k, turns), &text).await {
                        Ok(()) => done += 1,
                        Err(e) => {
                            eprintln!("pipeline lane {i}: {e:#}");
                            break;
                        }
                    }
                }
                (lane, done)
            })
        })
        .collect();
    let (mut back, mut done) = (Vec::new(), 0);
    for task in tasks {
        if let Ok((lane, n)) = task.await {
            back.push(lane);
            done += n;
        }
    }
    (back, done, done as f64 / started.elapsed().as_secs_f64())
}

/// Phase 6.
pub async fn e2e(ctx: &Ctx) -> anyhow::Result<PhaseOut> {
    let signer = Arc::new(Signer::new()?);
    let dir = ctx.dir.join("pipeline");
    let redis = Redis::start(&dir.join("redis")).await?;
    let mut lanes = Vec::new();
    for i in 0..ctx.opts.lanes() {
        lanes.push(Lane::start(&ctx.bins, &dir, i, &redis.url, &ctx.stub.base_url()).await?);
    }
    // The pipeline's one Slack call per message against the same work in
    // Switchboard: no acknowledgement reaction (as deployed, egress adds one
    // to each message and removes it with the reply, two more calls).
    let plain = ctx
        .stack(StackSpec {
            ack_reaction: String::new(),
            ..StackSpec::serve("e2e-plain", ctx.opts.slots, ctx.opts.min_fresh)
        })
        .await?;
    let (main_url, plain_url) = (ctx.main.events_url(), plain.events_url());
    let per_lane = ctx.opts.n_e2e / ctx.opts.rounds / ctx.opts.lanes();
    let (mut gw, mut plain_rates, mut rf, mut raw) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut plain_cpu, mut pipeline_cpu) = (CpuUse::default(), CpuUse::default());
    for r in 0..ctx.opts.rounds {
        // Rotate who goes first, so drift over time hits all alike.
        for i in 0..3 {
            match (r + i) % 3 {
                0 => {
                    let (done, rate) =
                        gateway_round(ctx, &signer, (&main_url, "e"), r, per_lane).await;
                    log!("  round {r} serve   : {done} replies, {rate:.0}/s");
                    gw.push(rate);
                    raw.push(json!({"round": r, "target": "serve", "done": done, "per_s": rate}));
                }
                1 => {
                    let sides = Sides::gateway(plain.serve.pid(), plain.redis.proc.pid());
                    let before = sides.now();
                    let (done, rate) =
                        gateway_round(ctx, &signer, (&plain_url, "n"), r, per_lane).await;
                    plain_cpu.add(before, sides.now(), done);
                    log!("  round {r} plain   : {done} replies, {rate:.0}/s");
                    plain_rates.push(rate);
                    raw.push(json!({"round": r, "target": "serve-no-reaction", "done": done, "per_s": rate}));
                }
                _ => {
                    let sides = Sides::pipeline(redis.proc.pid());
                    let before = sides.now();
                    let (back, done, rate) = pipeline_round(ctx, lanes, r, per_lane).await;
                    pipeline_cpu.add(before, sides.now(), done);
                    lanes = back;
                    log!("  round {r} pipeline: {done} replies, {rate:.0}/s");
                    rf.push(rate);
                    raw.push(
                        json!({"round": r, "target": "pipeline", "done": done, "per_s": rate}),
                    );
                }
            }
        }
    }
    drop(lanes);
    plain_cpu.log("serve-no-reaction");
    pipeline_cpu.log("pipeline");
    // Where the goal side's Redis time goes, per reply (the phase's only
    // traffic on that stack's Redis, apart from start-up and idle polling).
    let replies: u64 = raw
        .iter()
        .filter(|r| r["target"] == "serve-no-reaction")
        .filter_map(|r| r["done"].as_u64())
        .sum();
    let commandstats = plain.redis.commandstats().await;
    log!("  serve-no-reaction's Redis, per reply ({replies} replies):");
    for (command, calls, usec) in &commandstats {
        log!(
            "    {command:<16} {:>6.2} calls {:>7.2} µs",
            *calls as f64 / replies.max(1) as f64,
            usec / replies.max(1) as f64
        );
    }
    let io_counts = plain.redis.io_counts().await;
    for (counter, count) in &io_counts {
        log!(
            "    {counter:<28} {:>6.2}",
            *count as f64 / replies.max(1) as f64
        );
    }
    plain.stop();
    let plain_ratio = ratio_median(&plain_rates, &rf);
    let ratio = ratio_median(&gw, &rf);
    let rows = vec![
        Row::new(
            "6",
            &format!(
                "e2e replies/s, {} warm conversations, think 0, one Slack call per message",
                ctx.opts.lanes()
            ),
            format!("{}/s", num(median(&plain_rates))),
        )
        .reference(format!("{}/s pipeline", num(median(&rf))))
        .ratio(plain_ratio)
        .goal(">= 0.5x", plain_ratio >= 0.5),
        Row::new(
            "6",
            "e2e replies/s as deployed (+ ack reaction added and removed: 3 Slack calls)",
            format!("{}/s", num(median(&gw))),
        )
        .reference(format!("{}/s pipeline", num(median(&rf))))
        .ratio(ratio)
        .note("informational"),
    ];
    Ok(PhaseOut {
        rows,
        raw: json!({"lanes": ctx.opts.lanes(), "rounds": raw,
            "cpu_per_reply": {"serve_no_reaction": plain_cpu.json(),
                "pipeline": pipeline_cpu.json()},
            "serve_no_reaction_redis_commandstats":
                crate::procs::commandstats_json(&commandstats),
            "serve_no_reaction_redis_io": io_counts.iter().map(|(k, v)| (k.clone(), json!(v)))
                .collect::<serde_json::Map<String, serde_json::Value>>()}),
    })
}

/// Memory of the main stack, before (idle) and now.
pub struct Memory {
    pub gateway_kib: u64,
    pub workers_kib: Vec<u64>,
}

impl Memory {
    pub fn of(stack: &crate::stack::Stack) -> Self {
        let (gateway_kib, workers_kib) = stack.memory();
        Self {
            gateway_kib,
            workers_kib,
        }
    }

    fn worker(&self) -> f64 {
        self.workers_kib.iter().sum::<u64>() as f64 / 1024.0
    }
}

/// Phase 7.
pub async fn memory(ctx: &Ctx, idle: &Memory, messages: usize) -> anyhow::Result<PhaseOut> {
    let after = Memory::of(&ctx.main);
    let one = ctx.stack(StackSpec::serve("one-slot", 1, 0)).await?;
    let single = Memory::of(&one);
    one.stop();
    let slots = ctx.opts.slots as f64;
    let per_slot_idle = (idle.worker() - single.worker()) / (slots - 1.0).max(1.0);
    let per_slot_after = (after.worker() - single.worker()) / (slots - 1.0).max(1.0);
    let mib = |k: u64| k as f64 / 1024.0;
    let rows = vec![
        Row::new(
            "7",
            "gateway RSS idle",
            format!("{} MiB", num(mib(idle.gateway_kib))),
        )
        .goal("<= 30 MB", mib(idle.gateway_kib) <= 30.0),
        Row::new(
            "7",
            &format!("gateway RSS after {messages} messages"),
            format!("{} MiB", num(mib(after.gateway_kib))),
        ),
        Row::new(
            "7",
            &format!("worker RSS idle / after, {} slots", ctx.opts.slots),
            format!("{} / {} MiB", num(idle.worker()), num(after.worker())),
        )
        .reference(format!("{} MiB with 1 slot", num(single.worker()))),
        Row::new(
            "7",
            "worker overhead per extra slot, idle",
            format!("{} MiB", num(per_slot_idle)),
        )
        .goal("<= 1 MB", per_slot_idle <= 1.0),
        Row::new(
            "7",
            "worker overhead per extra slot, after load",
            format!("{} MiB", num(per_slot_after)),
        )
        .note("agents not counted"),
    ];
    let raw = json!({"idle": {"gateway_kib": idle.gateway_kib, "workers_kib": idle.workers_kib},
        "after": {"gateway_kib": after.gateway_kib, "workers_kib": after.workers_kib, "messages": messages},
        "one_slot": {"gateway_kib": single.gateway_kib, "workers_kib": single.workers_kib}});
    Ok(PhaseOut { rows, raw })
}
