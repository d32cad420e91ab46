//! The Docker runtime against the real engine: worker containers built from
//! docker/Dockerfile on a local Debian base, managed by real gateways on a
//! real Redis whose unix socket is mounted into the containers. Each test
//! reports itself not run (and why) when there is no engine.

use std::time::Duration;

use crate::docker_support::*;
use crate::helpers::*;

const START: Duration = Duration::from_secs(120);

/// The pool's workers, as (worker id, live, busy slot conversations).
async fn workers(queue: &switchboard::queue::Queue) -> Vec<(String, bool, Vec<String>)> {
    queue
        .pool_status()
        .await
        .expect("pool status")
        .into_iter()
        .map(|(id, live, status)| {
            let busy = status["slots"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|s| s["state"] == "busy")
                .filter_map(|s| s["conversation"].as_str().map(String::from))
                .collect();
            (id, live, busy)
        })
        .collect()
}

#[tokio::test]
async fn a_docker_pool_serves_conversations_and_replaces_a_container_killed_mid_turn() {
    let image = match worker_image() {
        Ok(image) => image,
        Err(why) => return not_run("docker pool", &why),
    };
    let guard = PoolGuard::new("serve");
    let redis = SocketRedis::start();
    let prefix = unique_prefix("dockerserve");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = docker_config(dir.path(), &prefix, &guard, &image, 2);
    redis.install_worker_acl(&config);
    let gateway = start_gateway(&redis, &config);
    let queue = assertion_queue(&redis, &prefix);
    let ids = guard.wait_running(2, START).await;

    // The sandbox: limits set, no gateway secret in the environment.
    for id in &ids {
        let inspect: serde_json::Value =
            serde_json::from_str(&docker(&["inspect", id]).expect("docker inspect"))
                .expect("inspect json");
        let c = &inspect[0];
        assert_eq!(c["HostConfig"]["Memory"], 256 * 1024 * 1024, "memory limit");
        assert_eq!(c["HostConfig"]["NanoCpus"], 500_000_000, "cpu limit");
        let env: Vec<String> = c["Config"]["Env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| e.as_str().map(String::from))
            .collect();
        let joined = env.join("\n");
        for secret in [
            "xoxb-secret-bot-token",
            "secret-signing-secret",
            "SLACK_",
            "IMAP",
            "SMTP",
        ] {
            assert!(
                !joined.contains(secret),
                "{secret} in a container's env: {joined}"
            );
        }
        let redis_url = env
            .iter()
            .find_map(|e| e.strip_prefix("REDIS_URL="))
            .expect("REDIS_URL");
        assert!(
            redis_url.contains(&format!("user={WORKER_USER}")),
            "workers use their own Redis user: {redis_url}"
        );
        assert!(
            c["Config"]["Healthcheck"]["Test"]
                .to_string()
                .contains("worker-alive")
        );
    }

    // 20 conversations, each answered once.
    let cids: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    for cid in &cids {
        ask(&queue, cid, 0, &format!("hello from {cid}")).await;
    }
    all_answered_once(&queue, &cids, Duration::from_secs(120)).await;

    // Kill the container running a slow turn: it is replaced, and the
    // conversation is answered once, elsewhere.
    ask(&queue, "slow", 0, "[[delay:6000]] take your time").await;
    let holder = wait_until(Duration::from_secs(30), "the slow turn to start", || {
        let queue = queue.clone();
        async move {
            workers(&queue)
                .await
                .into_iter()
                .find(|(_, live, busy)| *live && busy.iter().any(|c| c == "slow"))
                .map(|(id, _, _)| id)
        }
    })
    .await;
    // Worker ids are `<hostname>-<pid>`; a container's hostname is its id.
    let victim = ids
        .iter()
        .find(|id| holder.starts_with(&id[..12]))
        .unwrap_or_else(|| panic!("no container for worker {holder} in {ids:?}"))
        .clone();
    docker(&["kill", &victim]).expect("docker kill");
    all_answered_once(&queue, &["slow".to_string()], Duration::from_secs(90)).await;
    let after = guard.wait_running(2, START).await;
    assert!(
        !after.contains(&victim),
        "the killed container was replaced"
    );
    assert!(
        after.iter().any(|id| ids.contains(id)),
        "the other one kept running"
    );
    let finals = console_finals(&queue, "slow").await;
    assert!(finals[0].contains("take your time"), "{finals:?}");
    drop(gateway);
}

#[tokio::test]
async fn a_docker_pool_resizes_2_3_1_while_messages_flow_without_loss_or_duplicates() {
    let image = match worker_image() {
        Ok(image) => image,
        Err(why) => return not_run("docker resize", &why),
    };
    let guard = PoolGuard::new("resize");
    let redis = SocketRedis::start();
    let prefix = unique_prefix("dockerresize");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = docker_config(dir.path(), &prefix, &guard, &image, 2);
    redis.install_worker_acl(&config);
    let gateway = start_gateway(&redis, &config);
    let queue = assertion_queue(&redis, &prefix);
    guard.wait_running(2, START).await;

    let mut convs = Conversations::new("r");
    for cid in convs.next(6) {
        ask(&queue, &cid, 0, &format!("[[delay:800]] before {cid}")).await;
    }
    // Grow to 3 (config file edit, picked up while running).
    write_docker_config(&config, &prefix, &guard, &image, 3, 2);
    for cid in convs.next(6) {
        ask(&queue, &cid, 0, &format!("[[delay:800]] growing {cid}")).await;
    }
    guard.wait_running(3, START).await;
    for cid in convs.next(6) {
        ask(&queue, &cid, 0, &format!("[[delay:800]] at three {cid}")).await;
    }
    // Shrink to 1 while those run (SIGHUP this time).
    write_docker_config(&config, &prefix, &guard, &image, 1, 2);
    signal_pid(gateway.child.id(), libc::SIGHUP);
    for cid in convs.next(6) {
        ask(&queue, &cid, 0, &format!("[[delay:300]] shrinking {cid}")).await;
    }
    all_answered_once(&queue, &convs.all, Duration::from_secs(180)).await;
    let left = guard.wait_running(1, Duration::from_secs(90)).await;
    assert_eq!(left.len(), 1);
    // And a follow-up still works on the one left.
    ask(&queue, "r1", 1, "still there?").await;
    wait_until(Duration::from_secs(60), "the follow-up", || {
        let queue = queue.clone();
        async move { (console_finals(&queue, "r1").await.len() == 2).then_some(()) }
    })
    .await;
    // The only gateway stops: it drains and removes its containers.
    let mut gateway = gateway;
    signal_pid(gateway.child.id(), libc::SIGTERM);
    let status = gateway.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert!(
        guard.containers().is_empty(),
        "containers left: {:?}",
        guard.containers()
    );
}

#[tokio::test]
async fn gateways_adopt_running_containers_and_hand_over_management_when_the_leader_dies() {
    let image = match worker_image() {
        Ok(image) => image,
        Err(why) => return not_run("docker leader", &why),
    };
    let guard = PoolGuard::new("leader");
    let redis = SocketRedis::start();
    let prefix = unique_prefix("dockerleader");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = docker_config(dir.path(), &prefix, &guard, &image, 2);
    redis.install_worker_acl(&config);
    let mut first = start_gateway(&redis, &config);
    first.wait_for_message("managing the Docker pool", START);
    let ids = guard.wait_running(2, START).await;

    // A second gateway: it does not manage, and nothing is duplicated.
    let second = start_gateway(&redis, &config);
    second.wait_for_message("another gateway manages the Docker pool", START);
    assert_eq!(guard.running(), ids, "still the same 2 containers");

    // The leader dies: the other takes over and adopts the same containers.
    first.child.kill().expect("kill -9 the leader");
    first.child.wait().expect("reap");
    second.wait_for_message("managing the Docker pool", Duration::from_secs(60));
    let queue = assertion_queue(&redis, &prefix);
    ask(&queue, "after-failover", 0, "hello").await;
    all_answered_once(
        &queue,
        &["after-failover".to_string()],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(guard.running(), ids, "adopted, not replaced or duplicated");

    // A gateway restarted while containers run adopts them too.
    let mut second = second;
    second.child.kill().expect("kill -9 the second gateway");
    second.child.wait().expect("reap");
    let restarted = start_gateway(&redis, &config);
    restarted.wait_for_message("managing the Docker pool", Duration::from_secs(60));
    ask(&queue, "after-restart", 0, "hello again").await;
    all_answered_once(
        &queue,
        &["after-restart".to_string()],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(guard.running(), ids, "still 2, not 4");
    drop(restarted);
}
