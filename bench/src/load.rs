//! Load loops, each bounded in count and in time.
//!
//! Open loop: request `i` is due at `start + i / rate` whatever happened
//! before; its latency is measured from that due time, so a stall of the
//! server (or of the generator) shows up in the latencies instead of
//! silently lowering the offered rate (coordinated omission).
//! Closed loop: `connections` tasks post back to back (saturation).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::events::{Event, post};
use crate::stats::{Summary, now_ns};

/// One request's fate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub n: u64,
    /// When it was due (open loop) or sent (closed loop), unix ns.
    pub due_ns: u128,
    pub sent_ns: u128,
    pub acked_ns: u128,
    pub status: u16,
}

impl Sample {
    /// Due to answered, ms.
    pub fn latency_ms(&self) -> f64 {
        (self.acked_ns as f64 - self.due_ns as f64) / 1e6
    }
}

/// What one load loop measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub offered_per_s: Option<f64>,
    pub planned: usize,
    pub sent: usize,
    pub ok: usize,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub latency_ms: Summary,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

impl LoadResult {
    fn from_samples(
        offered: Option<f64>,
        planned: usize,
        samples: Vec<Sample>,
        elapsed: Duration,
    ) -> Self {
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.status == 200).collect();
        let latencies: Vec<f64> = ok.iter().map(|s| s.latency_ms()).collect();
        Self {
            offered_per_s: offered,
            planned,
            sent: samples.len(),
            ok: ok.len(),
            elapsed_s: elapsed.as_secs_f64(),
            throughput_per_s: ok.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: Summary::of(&latencies),
            samples,
        }
    }
}

/// Send `events` at `rate` per second, open loop, for at most `max`.
pub async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    events: Vec<Event>,
    rate: f64,
    max: Duration,
) -> LoadResult {
    let planned = events.len();
    let start = Instant::now() + Duration::from_millis(5);
    let start_ns = now_ns() + 5_000_000;
    let mut tasks = JoinSet::new();
    for (i, event) in events.into_iter().enumerate() {
        let offset = Duration::from_secs_f64(i as f64 / rate);
        if offset > max {
            break;
        }
        tokio::time::sleep_until((start + offset).into()).await;
        let due_ns = start_ns + offset.as_nanos();
        let (http, url) = (http.clone(), url.to_string());
        tasks.spawn(async move {
            let sent_ns = now_ns();
            let status = post(&http, &url, &event).await;
            Sample {
                n: event.n,
                due_ns,
                sent_ns,
                acked_ns: now_ns(),
                status,
            }
        });
    }
    let samples = collect(tasks, Duration::from_secs(15)).await;
    LoadResult::from_samples(Some(rate), planned, samples, start.elapsed())
}

/// Post `events` back to back over `connections` connections, for at most `max`.
pub async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    events: Vec<Event>,
    connections: usize,
    max: Duration,
) -> LoadResult {
    let planned = events.len();
    let events = Arc::new(events);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        let (http, url, events, next) =
            (http.clone(), url.to_string(), events.clone(), next.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(event) = events.get(i) else { break };
                if start.elapsed() > max {
                    break;
                }
                let sent_ns = now_ns();
                let status = post(&http, &url, event).await;
                out.push(Sample {
                    n: event.n,
                    due_ns: sent_ns,
                    sent_ns,
                    acked_ns: now_ns(),
                    status,
                });
            }
            out
        });
    }
    let mut samples = Vec::with_capacity(planned);
    let deadline = tokio::time::Instant::now() + max + Duration::from_secs(15);
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        if let Ok(mut part) = joined {
            samples.append(&mut part);
        }
    }
    let elapsed = start.elapsed();
    LoadResult::from_samples(None, planned, samples, elapsed)
}

async fn collect(mut tasks: JoinSet<Sample>, grace: Duration) -> Vec<Sample> {
    let mut samples = Vec::new();
    let deadline = tokio::time::Instant::now() + grace;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        if let Ok(sample) = joined {
            samples.push(sample);
        }
    }
    // Whatever did not answer within the grace is dropped (and aborted).
    samples.sort_by_key(|s| s.n);
    samples
}
