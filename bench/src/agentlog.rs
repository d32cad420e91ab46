//! The stand-in agent's benchmark log (`STAND_IN_STDIN_LOG`): one
//! `<unix ns> <pid> <what>` line when a user turn reached its stdin (what:
//! the turn's text), when it answered `initialize` (`<<ready>>`) and when it
//! wrote a result (`<<result>>`). And the worker's timing log (JSON lines on
//! stderr, `switchboard::timing` target): `claimed` and `committed`.

use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Line {
    pub at_ns: u128,
    pub pid: u32,
    pub what: String,
}

pub fn read(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            Some(Line {
                at_ns: parts.next()?.parse().ok()?,
                pid: parts.next()?.parse().ok()?,
                what: parts.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// What the agent log says about one benchmark message.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    pub pid: u32,
    pub stdin_ns: u128,
    /// When the agent wrote the result of the turn that held the message.
    pub result_ns: Option<u128>,
    /// When this pid answered `initialize`.
    pub ready_ns: Option<u128>,
}

/// Per benchmark message number (`bm<n>` in the turn's text): where and when
/// its turn ran. A batch of several messages shows only the first number
/// in the (80-character) log line; later ones in the batch are missing.
pub fn turns(lines: &[Line]) -> HashMap<u64, Turn> {
    let mut ready: HashMap<u32, u128> = HashMap::new();
    let mut open: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut out: HashMap<u64, Turn> = HashMap::new();
    for line in lines {
        match line.what.as_str() {
            "<<ready>>" => {
                ready.insert(line.pid, line.at_ns);
            }
            "<<result>>" => {
                for n in open.remove(&line.pid).unwrap_or_default() {
                    if let Some(t) = out.get_mut(&n) {
                        t.result_ns = Some(line.at_ns);
                    }
                }
            }
            text => {
                let ns = crate::stub::answered(text);
                for &n in &ns {
                    out.insert(
                        n,
                        Turn {
                            pid: line.pid,
                            stdin_ns: line.at_ns,
                            result_ns: None,
                            ready_ns: ready.get(&line.pid).copied(),
                        },
                    );
                }
                open.insert(line.pid, ns);
            }
        }
    }
    out
}

/// Claimed/committed times (unix ns) per Slack message ts, from the
/// worker's JSON log lines.
pub fn timing(path: &Path) -> HashMap<String, (Option<u128>, Option<u128>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: HashMap<String, (Option<u128>, Option<u128>)> = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["target"] != "switchboard::timing" {
            continue;
        }
        let Some(at) = v["timestamp"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
        else {
            continue;
        };
        let what = v["message"].as_str().unwrap_or("");
        for id in v["ids"].as_str().unwrap_or("").split(',') {
            let entry = out.entry(id.to_string()).or_default();
            match what {
                "claimed" => entry.0 = Some(at),
                "committed" => entry.1 = Some(at),
                _ => {}
            }
        }
    }
    out
}
