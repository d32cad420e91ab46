//! Phase 8: instructions per ingress event, by callgrind. Each server runs
//! twice under `valgrind --tool=callgrind` with a different number of
//! requests. Counters are zeroed once the server is ready and dumped when
//! its requests are done (`callgrind_control`), and the difference divided
//! by the difference in requests cancels what zeroing and dumping cost
//! (the median of three such pairs in the full mode). The gateway runs as `switchboard gateway` (no
//! workers in the process; every event in one conversation), once with the acknowledgement reaction off
//! (ingress alone) and once as deployed (each event also makes egress add
//! a reaction through the Slack stand-in).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::events::Signer;
use crate::load::closed_loop;
use crate::reference::RefServer;
use crate::report::{PhaseOut, Row, num};
use crate::stack::StackSpec;
use crate::{Ctx, log};

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Reference,
    Gateway { reaction: bool },
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Reference => "reference",
            Server::Gateway { reaction: false } => "gateway-no-reaction",
            Server::Gateway { reaction: true } => "gateway",
        }
    }
}

/// Instructions executed by a server that answered `count` requests.
/// `pair` keeps each run's channels (and the Slack stand-in's record of
/// their reactions) apart from the other runs'.
async fn instructions(ctx: &Ctx, server: Server, count: usize, pair: usize) -> anyhow::Result<u64> {
    let signer = Signer::new()?;
    let tag = format!("{}-{count}-p{pair}", server.name());
    let out = ctx.dir.join(format!("callgrind.{tag}.out"));
    // One conversation: with no workers in the process, a second one would
    // wait behind the first for a slot, and admission would tell its sender
    // their place in line on every event (a Slack post by egress, not
    // ingress work).
    let events: Vec<_> = (0..count)
        .map(|_| signer.dm(&format!("Dcpu{tag}"), ""))
        .collect();
    let max = Duration::from_secs(120);
    match server {
        Server::Reference => {
            let mut reference =
                RefServer::start(&ctx.bins, &ctx.dir.join(&tag), Some(&out)).await?;
            let pid = reference.proc.pid();
            callgrind_control("-z", pid)?;
            let res = closed_loop(&ctx.http, &reference.events_url(), events, 4, max).await;
            anyhow::ensure!(res.ok == count, "{tag}: {} of {count} requests ok", res.ok);
            callgrind_control("-d", pid)?;
            reference.proc.stop(Duration::from_secs(60));
        }
        Server::Gateway { reaction } => {
            let spec = StackSpec {
                role: "gateway",
                ack_reaction: if reaction {
                    "eyes".into()
                } else {
                    String::new()
                },
                callgrind_out: Some(out.clone()),
                ..StackSpec::serve(&tag, 1, 0)
            };
            let stack = ctx.stack(spec).await?;
            let pid = stack.serve.pid();
            callgrind_control("-z", pid)?;
            let res = closed_loop(&ctx.http, &stack.events_url(), events, 4, max).await;
            anyhow::ensure!(res.ok == count, "{tag}: {} of {count} requests ok", res.ok);
            if reaction {
                // Let egress finish the reactions these events asked for.
                let prefix = format!("Dcpu{tag}");
                let deadline = Instant::now() + max;
                while Instant::now() < deadline {
                    let added = ctx
                        .stub
                        .calls()
                        .iter()
                        .filter(|c| c.method == "reactions.add" && c.channel.starts_with(&prefix))
                        .count();
                    if added >= count {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            callgrind_control("-d", pid)?;
            stack.stop();
        }
    }
    // The dump taken right after the requests (the first numbered one);
    // the file without a number is the rest, up to the exit.
    total(&out.with_extension("out.1"))
}

/// Zero (`-z`) or dump (`-d`) the counters of a process running under
/// callgrind, so that only the requests' window is counted: start-up,
/// whose length varies under valgrind, is left out.
fn callgrind_control(action: &str, pid: u32) -> anyhow::Result<()> {
    let out = std::process::Command::new("callgrind_control")
        .arg(action)
        .arg(pid.to_string())
        .output()
        .map_err(|e| anyhow::anyhow!("running callgrind_control: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "callgrind_control {action} {pid}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The `summary:` (or `totals:`) line of a callgrind output file.
fn total(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no summary in {}", path.display()))
}

/// Phase 8.
pub async fn cpu(ctx: &Ctx) -> anyhow::Result<PhaseOut> {
    let (small, large) = (ctx.opts.cpu_small, ctx.opts.cpu_large);
    let mut per_event = Vec::new();
    let mut raw = Vec::new();
    let mut servers = vec![Server::Reference, Server::Gateway { reaction: false }];
    if ctx.opts.mode == "full" {
        // The quick (CI) mode keeps valgrind runs few: they are slow.
        servers.push(Server::Gateway { reaction: true });
    }
    // Background work (timers, heartbeats) scales with a run's wall time,
    // which varies under valgrind: a pair can be a few per cent off, so the
    // full mode takes the median of three pairs.
    let pairs = if ctx.opts.mode == "full" { 3 } else { 1 };
    for server in servers {
        let mut pers = Vec::new();
        for pair in 0..pairs {
            let a = instructions(ctx, server, small, pair).await?;
            let b = instructions(ctx, server, large, pair).await?;
            let per = (b as f64 - a as f64) / (large - small) as f64;
            log!(
                "  {}: {a} instructions for {small} requests, {b} for {large}: {per:.0} per event",
                server.name()
            );
            raw.push(
                json!({"server": server.name(), "small": small, "large": large,
                "instructions_small": a, "instructions_large": b, "per_event": per}),
            );
            pers.push(per);
        }
        per_event.push(crate::stats::median(&pers));
    }
    let (reference, ingress) = (per_event[0], per_event[1]);
    let deployed = per_event.get(2).copied().unwrap_or(f64::NAN);
    let k = |x: f64| format!("{} k", num(x / 1000.0));
    let rows = vec![
        Row::new(
            "8",
            "instructions/event, ingress (reaction off)",
            k(ingress),
        )
        .reference(k(reference))
        .ratio(ingress / reference)
        .goal("<= 1.3x", ingress / reference <= 1.3),
        Row::new(
            "8",
            "instructions/event, as deployed (+ ack reaction via egress)",
            k(deployed),
        )
        .reference(k(reference))
        .ratio(deployed / reference)
        .note("informational"),
    ];
    Ok(PhaseOut {
        rows,
        raw: json!(raw),
    })
}
