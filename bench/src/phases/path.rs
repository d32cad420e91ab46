//! Phase 4: one message's path, decomposed on one clock (unix ns in every
//! process): sent, acked, claimed (worker timing log), on the agent's stdin
//! and its result (agent log), committed to the outbox (worker timing log),
//! the complete reply at the Slack stand-in.
//! Phase 5: new conversations on fresh slots vs the agent's spawn-to-ready.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::agent::{self, AgentSettings, SessionStart, SlotDirs};

use crate::events::{Signer, ts_of};
use crate::load::open_loop;
use crate::report::{PhaseOut, Row, num};
use crate::stack::StackSpec;
use crate::stats::{Summary, ms_between};
use crate::{Ctx, agentlog, log};

fn ms(s: &Summary) -> String {
    format!("p50 {} / p99 {} ms", num(s.p50), num(s.p99))
}

/// Wait until the stand-in has a complete reply to each of `ns`, or `max`.
async fn wait_replies(ctx: &Ctx, ns: &[u64], max: Duration) -> usize {
    let deadline = Instant::now() + max;
    loop {
        let answered: std::collections::HashSet<u64> = ctx
            .stub
            .calls()
            .iter()
            .filter(|c| c.complete)
            .flat_map(|c| c.answers.clone())
            .collect();
        let done = ns.iter().filter(|n| answered.contains(n)).count();
        if done == ns.len() || Instant::now() > deadline {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Phase 4.
pub async fn path(ctx: &Ctx) -> anyhow::Result<PhaseOut> {
    let o = &ctx.opts;
    let signer = Signer::new()?;
    let lanes = o.lanes();
    let think = format!("[[delay:{}]]", o.think_ms);
    // Conversations move to a new channel every `turns_per_conversation`
    // turns, staggered so they do not all move at once.
    let events: Vec<_> = (0..o.n_path)
        .map(|i| {
            let (lane, turn) = (i % lanes, i / lanes);
            let generation =
                (turn + lane * o.turns_per_conversation / lanes) / o.turns_per_conversation;
            signer.dm(&format!("Dpath{lane}g{generation}"), &think)
        })
        .collect();
    let ns: Vec<u64> = events.iter().map(|e| e.n).collect();
    // Its own stack, the only one whose worker logs claim and commit times.
    let spec = StackSpec {
        timing_log: true,
        ..StackSpec::serve("path", o.slots, o.min_fresh)
    };
    let stack = ctx.stack(spec).await?;
    let load = open_loop(
        &ctx.http,
        &stack.events_url(),
        events,
        o.path_rate,
        o.max_loop * 6,
    )
    .await;
    let replied = wait_replies(ctx, &ns, Duration::from_secs(60)).await;
    let turns = agentlog::turns(&agentlog::read(&stack.stdin_log));
    let timing = agentlog::timing(&stack.stderr_log);
    stack.stop();
    let mut slack = std::collections::HashMap::new();
    for call in ctx.stub.calls().iter().filter(|c| c.complete) {
        for n in &call.answers {
            slack.entry(*n).or_insert(call.at_ns);
        }
    }
    let think_ms = o.think_ms as f64;
    let mut steps: [Vec<f64>; 9] = Default::default();
    let mut cold = 0;
    for s in &load.samples {
        let (Some(t), Some(&(Some(claimed), Some(committed))), Some(&at_slack)) =
            (turns.get(&s.n), timing.get(&ts_of(s.n)), slack.get(&s.n))
        else {
            continue;
        };
        let Some(result) = t.result_ns else { continue };
        if t.ready_ns.is_none_or(|r| r > s.sent_ns) {
            cold += 1; // its agent was started for it: phase 5's business
            continue;
        }
        let values = [
            ms_between(s.sent_ns, s.acked_ns),
            ms_between(s.acked_ns, claimed),
            ms_between(claimed, t.stdin_ns),
            ms_between(t.stdin_ns, result) - think_ms,
            ms_between(result, committed),
            ms_between(committed, at_slack),
            ms_between(s.sent_ns, t.stdin_ns),
            ms_between(result, at_slack),
            ms_between(s.sent_ns, at_slack) - think_ms,
        ];
        for (v, step) in values.into_iter().zip(steps.iter_mut()) {
            step.push(v);
        }
    }
    let names = [
        "sent -> acked",
        "acked -> claimed by worker",
        "claimed -> agent stdin",
        "agent stdin -> result (think subtracted)",
        "agent result -> committed to outbox",
        "outbox -> request at Slack stand-in",
        "event sent -> agent stdin (warm slot)",
        "agent result -> Slack request",
        "event sent -> Slack request (think subtracted)",
    ];
    let summaries: Vec<Summary> = steps.iter().map(|s| Summary::of(s)).collect();
    log!(
        "  {} messages sent, {} replied, {} decomposed, {} on a just-started agent",
        load.sent,
        replied,
        summaries[0].n,
        cold
    );
    let mut rows = Vec::new();
    for (i, (name, s)) in names.iter().zip(&summaries).enumerate() {
        let row = Row::new("4", name, ms(s));
        rows.push(match i {
            6 | 7 => row.note("p50 <= 1, p99 <= 5 ms (quiet machine)"),
            _ => row,
        });
    }
    let raw = json!({
        "rate_per_s": o.path_rate, "think_ms": o.think_ms, "sent": load.sent,
        "replied": replied, "decomposed": summaries[0].n, "cold": cold,
        "steps": names.iter().zip(&summaries).map(|(n, s)| json!({"step": n, "ms": s})).collect::<Vec<_>>(),
    });
    Ok(PhaseOut { rows, raw })
}

/// Phase 5.
pub async fn warm(ctx: &Ctx) -> anyhow::Result<PhaseOut> {
    let o = &ctx.opts;
    let signer = Signer::new()?;
    let events: Vec<_> = (0..o.n_new)
        .map(|i| signer.dm(&format!("Dnew{i}"), ""))
        .collect();
    let ns: Vec<u64> = events.iter().map(|e| e.n).collect();
    let load = open_loop(
        &ctx.http,
        &ctx.main.events_url(),
        events,
        o.new_rate,
        o.max_loop * 6,
    )
    .await;
    wait_replies(ctx, &ns, Duration::from_secs(30)).await;
    let turns = agentlog::turns(&agentlog::read(&ctx.main.stdin_log));
    let (mut warm, mut handoff) = (0, Vec::new());
    for s in &load.samples {
        let Some(t) = turns.get(&s.n) else { continue };
        if t.ready_ns.is_some_and(|r| r < s.sent_ns) {
            warm += 1;
            handoff.push(ms_between(s.sent_ns, t.stdin_ns));
        }
    }
    let hit = warm as f64 / load.samples.len().max(1) as f64;
    let fresh = Summary::of(&handoff);
    let cold = Summary::of(&cold_starts(ctx).await?);
    log!(
        "  warm hit {}/{}; fresh-slot handoff p50 {:.2} ms; cold spawn-to-ready p50 {:.2} ms",
        warm,
        load.samples.len(),
        fresh.p50,
        cold.p50
    );
    let rows = vec![
        Row::new(
            "5",
            "new conversation: event sent -> agent stdin (fresh slot)",
            ms(&fresh),
        )
        .reference(format!("spawn-to-ready {}", ms(&cold)))
        .ratio(fresh.p50 / cold.p50),
        Row::new(
            "5",
            &format!(
                "warm hit, {} new conversations at {}/s",
                load.samples.len(),
                o.new_rate
            ),
            format!("{:.1} %", hit * 100.0),
        )
        .goal(">= 99 %", hit >= 0.99),
    ];
    let raw = json!({"warm": warm, "new_conversations": load.samples.len(), "fresh_handoff_ms": fresh,
        "fresh_handoff_samples_ms": handoff, "cold_spawn_to_ready_ms": cold});
    Ok(PhaseOut { rows, raw })
}

/// Spawn-to-ready (initialize answered) of the same agent, as a slot starts it.
async fn cold_starts(ctx: &Ctx) -> anyhow::Result<Vec<f64>> {
    let settings = AgentSettings {
        command: ctx.bins.agent.to_string_lossy().into_owned(),
        ..AgentSettings::default()
    };
    let launcher = agent::launcher(&settings)?;
    let base = std::path::absolute(ctx.dir.join("cold"))?;
    let mut out = Vec::new();
    for i in 0..ctx.opts.cold_starts {
        let slot = SlotDirs::new(&base, &format!("cold-{i}"))?;
        let started = Instant::now();
        let mut process = launcher.start(&slot, SessionStart::New).await?;
        out.push(started.elapsed().as_secs_f64() * 1e3);
        process.terminate().await;
    }
    Ok(out)
}
