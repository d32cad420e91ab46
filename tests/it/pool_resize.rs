//! Resizing the process runtime while messages flow, the worker Redis user
//! (installed by the gateway, used by the workers, locked out of the rest of
//! Redis), and a clear error when the Docker engine is not there.

use std::time::Duration;

use crate::docker_support::*;
use crate::helpers::*;
use crate::pool_support::STAND_IN;

fn process_config(path: &std::path::Path, prefix: &str, containers: u32, slots: u32) {
    let slots_dir = path.with_file_name("slots");
    let text = format!(
        r#"{common}
[pool]
runtime = "process"
containers = {containers}
slots_per_container = {slots}
min_fresh = 1
drain_timeout = "10s"
[agent]
command = "{STAND_IN}"
slots_dir = "{slots_dir}"
interrupt_grace = "1s"
terminate_timeout = "2s"
"#,
        slots_dir = slots_dir.display(),
        common = common_config(prefix),
    );
    std::fs::write(path, text).expect("write config");
}

/// Live workers and how many slots each runs (retired ones not counted).
async fn shape(queue: &switchboard::queue::Queue) -> Vec<usize> {
    let mut out: Vec<usize> = queue
        .pool_status()
        .await
        .expect("pool status")
        .into_iter()
        .filter(|(_, live, _)| *live)
        .map(|(_, _, s)| {
            s["slots"]
                .as_array()
                .map(|a| a.iter().filter(|s| s["state"] != "stopping").count())
                .unwrap_or(0)
        })
        .collect();
    out.sort();
    out
}

async fn wait_shape(queue: &switchboard::queue::Queue, want: Vec<usize>) {
    wait_until(
        Duration::from_secs(90),
        &format!("pool shape {want:?}"),
        || {
            let (queue, want) = (queue.clone(), want.clone());
            async move { (shape(&queue).await == want).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn the_process_pool_resizes_2x2_3x3_1x1_while_messages_flow_without_loss_or_duplicates() {
    let redis = SocketRedis::start();
    let prefix = unique_prefix("procresize");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("switchboard.toml");
    process_config(&config, &prefix, 2, 2);
    let config_arg = config.display().to_string();
    let serve = ServeProcess::start(
        &["serve", "--config", &config_arg],
        &[
            ("REDIS_URL", redis.redis.url().as_str()),
            ("SWITCHBOARD_WORKER_REDIS_PASSWORD", WORKER_PASSWORD),
        ],
    );
    let queue = assertion_queue(&redis, &prefix);
    wait_shape(&queue, vec![2, 2]).await;

    let mut convs = Conversations::new("p");
    for cid in convs.next(6) {
        ask(&queue, &cid, 0, &format!("[[delay:800]] first {cid}")).await;
    }
    // Grow: 3 workers of 3 slots (a config file edit).
    process_config(&config, &prefix, 3, 3);
    for cid in convs.next(6) {
        ask(&queue, &cid, 0, &format!("[[delay:800]] growing {cid}")).await;
    }
    wait_shape(&queue, vec![3, 3, 3]).await;
    for cid in convs.next(9) {
        ask(&queue, &cid, 0, &format!("[[delay:800]] at nine {cid}")).await;
    }
    // Shrink to 1 x 1 while those run (SIGHUP).
    process_config(&config, &prefix, 1, 1);
    signal_pid(serve.child.id(), libc::SIGHUP);
    for cid in convs.next(4) {
        ask(&queue, &cid, 0, &format!("[[delay:200]] shrinking {cid}")).await;
    }
    all_answered_once(&queue, &convs.all, Duration::from_secs(180)).await;
    wait_shape(&queue, vec![1]).await;
    let workers: Vec<u32> = descendants(serve.child.id())
        .into_iter()
        .filter(|&p| comm(p) == "switchboard" && alive(p))
        .collect();
    assert_eq!(workers.len(), 1, "one worker process left: {workers:?}");

    // An invalid config is refused; the pool keeps its size.
    std::fs::write(&config, "[pool]\nslots_per_container = 0\n").expect("write");
    signal_pid(serve.child.id(), libc::SIGHUP);
    let refused = serve.wait_for_message(
        "reload refused; the running settings stay",
        Duration::from_secs(30),
    );
    assert!(
        refused["error"].to_string().contains("slots_per_container"),
        "{refused}"
    );
    ask(&queue, "p1", 1, "still served?").await;
    wait_until(Duration::from_secs(60), "the follow-up", || {
        let queue = queue.clone();
        async move { (console_finals(&queue, "p1").await.len() == 2).then_some(()) }
    })
    .await;
    assert_eq!(shape(&queue).await, vec![1]);
    drop(serve);
}

#[tokio::test]
async fn the_worker_redis_user_reaches_only_the_queue_keys() {
    let redis = SocketRedis::start();
    let prefix = unique_prefix("acl");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("switchboard.toml");
    process_config(&config, &prefix, 1, 1);
    redis.install_worker_acl(&config);
    let mut admin = redis.redis.client();
    redis::cmd("SET")
        .arg("other:secret")
        .arg("x")
        .query::<()>(&mut admin)
        .expect("set");
    let url = format!(
        "redis://{WORKER_USER}:{WORKER_PASSWORD}@127.0.0.1:{}/",
        redis.redis.port
    );
    let mut worker = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("the worker user logs in");
    let own: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg(format!("{prefix}:{{s0}}:x"))
        .query(&mut worker);
    assert!(own.is_ok(), "its own keys: {own:?}");
    let other: redis::RedisResult<Option<String>> =
        redis::cmd("GET").arg("other:secret").query(&mut worker);
    let err = other.expect_err("a key outside the prefix");
    assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
    let config_get: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("requirepass")
        .query(&mut worker);
    let err = config_get.expect_err("CONFIG");
    assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
    let keys: redis::RedisResult<Vec<String>> = redis::cmd("KEYS").arg("*").query(&mut worker);
    assert!(keys.is_err(), "KEYS is refused");
}

#[tokio::test]
async fn a_docker_pool_without_an_engine_is_a_clear_error_at_start() {
    let redis = SocketRedis::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nformat = \"json\"\n[pool]\nruntime = \"docker\"\n[pool.docker]\nhost = \"unix://{}\"\n",
            dir.path().join("no-docker.sock").display()
        ),
    )
    .expect("write");
    let config_arg = config.display().to_string();
    let mut gateway = ServeProcess::start(
        &["gateway", "--config", &config_arg],
        &[
            ("REDIS_URL", redis.gateway_url().as_str()),
            ("SWITCHBOARD_WORKER_REDIS_PASSWORD", WORKER_PASSWORD),
        ],
    );
    let status = gateway.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "it must not start");
    let line = gateway
        .wait_for_message_containing("cannot reach the Docker engine", Duration::from_secs(5));
    assert!(line.to_string().contains("no-docker.sock"), "{line}");
}
