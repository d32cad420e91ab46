//! The queue-depth and pool gauges a real gateway exports for autoscalers.

use std::time::Duration;

use serde_json::json;
use switchboard::queue::QueueSettings;

use crate::helpers::{ServeProcess, TestRedis, wait_until};
use crate::queue_support::{claim, enqueue, test_queue, worker};

/// The value of the sample `series` (name and labels as printed) in a
/// Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn queue_depth_metrics_show_ready_and_leased_conversations_over_every_shard() {
    let redis = TestRedis::start();
    // Leases and heartbeats outlive the test, so the gateway's reaper leaves
    // this test's claims and worker alone.
    let settings = QueueSettings {
        shards: 2,
        lease_ttl: Duration::from_secs(600),
        heartbeat_ttl: Duration::from_secs(600),
        ..QueueSettings::default()
    };
    let (queue, prefix) = test_queue(&redis, "depth", settings);
    for n in 0..5 {
        enqueue(&queue, &format!("conv-{n}"), n).await;
    }
    let w = worker("depth-worker");
    assert!(claim(&queue, &w).await.is_some());
    assert!(claim(&queue, &w).await.is_some());
    queue.heartbeat(&w).await.expect("heartbeat");
    let status = json!({"slots": [{"state": "busy"}, {"state": "busy"}, {"state": "fresh"}]});
    queue.publish_status(&w, &status).await.expect("status");
    let depth = queue.depth().await.expect("depth");
    assert_eq!((depth.waiting(), depth.leased), (3, 2), "{depth:?}");

    let url = redis.url();
    let gateway = ServeProcess::start(
        &["gateway"],
        &[
            ("REDIS_URL", url.as_str()),
            ("SWITCHBOARD__REDIS__KEY_PREFIX", prefix.as_str()),
            ("SWITCHBOARD__QUEUE__SHARDS", "2"),
            ("SWITCHBOARD__QUEUE__LEASE_TTL", "10m"),
            ("SWITCHBOARD__QUEUE__HEARTBEAT_TTL", "10m"),
            ("SWITCHBOARD__POOL__RUNTIME", "external"),
        ],
    );
    let (_, admin) = gateway.addresses();
    let http = reqwest::Client::new();
    let metrics = format!("http://{admin}/metrics");
    let page = || async {
        let response = http.get(&metrics).send().await.ok()?;
        response.text().await.ok()
    };
    let expected = [
        ("switchboard_queue_ready_conversations", 3.0),
        ("switchboard_queue_leased_conversations", 2.0),
        ("switchboard_pool_workers", 1.0),
        ("switchboard_pool_slots{state=\"busy\"}", 2.0),
        ("switchboard_pool_slots{state=\"fresh\"}", 1.0),
    ];
    let shows = |page: &str, expected: &[(&str, f64)]| {
        expected
            .iter()
            .all(|(series, value)| sample(page, series) == Some(*value))
    };
    wait_until(Duration::from_secs(30), "the depth gauges", || async {
        page().await.filter(|p| shows(p, &expected))
    })
    .await;

    // One more claim: the gauges follow.
    assert!(claim(&queue, &w).await.is_some());
    let expected = [
        ("switchboard_queue_ready_conversations", 2.0),
        ("switchboard_queue_leased_conversations", 3.0),
    ];
    wait_until(
        Duration::from_secs(30),
        "the gauges after a claim",
        || async { page().await.filter(|p| shows(p, &expected)) },
    )
    .await;
}

#[test]
fn sample_reads_a_series_and_not_its_prefixes() {
    let page = "# TYPE a gauge\na_total 1\na 2\nb{state=\"busy\"} 3\n";
    assert_eq!(sample(page, "a"), Some(2.0));
    assert_eq!(sample(page, "b{state=\"busy\"}"), Some(3.0));
    assert_eq!(sample(page, "b{state=\"fresh\"}"), None);
}
