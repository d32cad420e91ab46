//! The pool's status for `/admin/pool`: each worker's slots with their
//! state, conversation, pid, turns, memory and age.

use serde_json::{Value, json};

use super::worker::{Shared, lock};

/// This worker's status as published to Redis.
pub(super) fn worker_status(shared: &Shared) -> Value {
    let table = lock(&shared.table);
    let slots: Vec<Value> = table
        .iter()
        .filter(|s| s.state != super::slots::SlotState::Retired)
        .map(|s| {
            json!({
                "index": s.index,
                "state": s.state,
                "generation": s.generation,
                "conversation": s.conversation.as_ref().map(|c| c.as_str()),
                "pid": s.pid,
                "turns": s.turns,
                "rss_bytes": s.rss_bytes,
                "age_seconds": s.started.map(|t| t.elapsed().as_secs()),
                "idle_seconds": s.last_used.elapsed().as_secs(),
            })
        })
        .collect();
    json!({
        "worker": shared.id.as_str(),
        "pid": std::process::id(),
        "rss_bytes": own_rss(),
        "target_slots": shared.target_slots.load(std::sync::atomic::Ordering::Relaxed),
        "slots": slots,
    })
}

fn own_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
