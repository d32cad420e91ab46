//! The foundation: `serve` on its embedded Redis, config checks, Redis
//! safety checks, probes and the admin listener.

use std::process::Command;
use std::time::Duration;

use switchboard::app::Role;
use switchboard::config::Settings;

use crate::helpers::*;

async fn status(url: String) -> u16 {
    reqwest::get(url)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn serve_without_config_runs_its_own_redis_and_stops_cleanly_on_sigterm() {
    let mut serve = ServeProcess::start(&["serve"], &[("SWITCHBOARD__SHUTDOWN_TIMEOUT", "10s")]);
    let (gateway, admin) = serve.addresses();
    assert_eq!(status(format!("http://{gateway}/healthz")).await, 200);
    assert_eq!(status(format!("http://{gateway}/readyz")).await, 200);
    assert_eq!(status(format!("http://{admin}/metrics")).await, 200);

    let children = descendants(serve.child.id());
    assert!(
        children.iter().any(|&p| comm(p) == "redis-server"),
        "serve should run redis-server as a child, found {:?}",
        children.iter().map(|&p| comm(p)).collect::<Vec<_>>()
    );
    // The AOF is on and fsynced always.
    let socket = serve._dir.path().join("switchboard-data/redis/redis.sock");
    let mut conn = redis::Client::open(format!("unix://{}", socket.display()))
        .and_then(|c| c.get_connection())
        .expect("connect to embedded redis");
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query(&mut conn)
        .expect("config");
    assert_eq!(aof, vec!["appendfsync".to_string(), "always".to_string()]);
    drop(conn);

    let pid = libc::pid_t::try_from(serve.child.id()).expect("pid");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = serve.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "serve exited with {status}");
    for child in children {
        assert!(
            !alive(child),
            "child {child} ({}) outlived serve",
            comm(child)
        );
    }
}

#[tokio::test]
async fn serve_killed_with_sigkill_leaves_no_redis_behind() {
    let mut serve = ServeProcess::start(&["serve"], &[]);
    serve.addresses();
    let children = descendants(serve.child.id());
    assert!(!children.is_empty());
    serve.child.kill().expect("kill -9");
    serve.child.wait().expect("reap");
    wait_until(
        Duration::from_secs(30),
        "its children to die with it",
        || {
            let left = children.iter().any(|&p| alive(p));
            async move { (!left).then_some(()) }
        },
    )
    .await;
}

#[test]
fn check_config_rejects_an_unknown_key_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[redis]\nkey_prefix = \"x\"\nmax_poolsize = 3\n").expect("write");
    let out = Command::new(switchboard_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run check-config");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_poolsize"), "{stderr}");
    assert!(stderr.contains("redis"), "{stderr}");
}

#[test]
fn check_config_rejects_a_bad_value_naming_field_and_expectation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[gateway]\nlisten = \"not an address\"\n").expect("write");
    let out = Command::new(switchboard_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run check-config");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gateway.listen"), "{stderr}");
    assert!(stderr.contains("socket address"), "{stderr}");
}

#[test]
fn check_config_prints_effective_config_with_secrets_redacted() {
    let out = Command::new(switchboard_bin())
        .args(["check-config", "--config"])
        .arg(repo_root().join("config/switchboard.toml"))
        .env("SLACK_BOT_TOKEN", "xoxb-must-not-show")
        .env("SWITCHBOARD__REDIS__POOL_SIZE", "7")
        .output()
        .expect("run check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("xoxb-must-not-show"));
    assert!(stdout.contains("SLACK_BOT_TOKEN = [redacted]"), "{stdout}");
    assert!(
        stdout.contains("pool_size = 7"),
        "env override applied: {stdout}"
    );
}

#[test]
fn every_shipped_config_file_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("config")).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("read");
            Settings::from_toml_str(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1, "config/ should ship at least one TOML file");
}

#[test]
fn shipped_config_states_the_built_in_defaults() {
    let text = std::fs::read_to_string(repo_root().join("config/switchboard.toml")).expect("read");
    let shipped = Settings::from_toml_str(&text).expect("parses");
    assert_eq!(
        shipped.render_redacted(),
        Settings::default().render_redacted()
    );
}

#[test]
fn start_up_is_refused_against_a_redis_that_can_evict_keys() {
    let redis = TestRedis::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let out = Command::new(switchboard_bin())
        .arg("gateway")
        .env("REDIS_URL", redis.url())
        .env("SWITCHBOARD__GATEWAY__LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD__ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run gateway");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allkeys-lru"), "{stderr}");
    assert!(stderr.contains("noeviction"), "{stderr}");
}

#[test]
fn gateway_without_redis_url_says_what_is_missing() {
    let out = Command::new(switchboard_bin())
        .arg("gateway")
        .env_remove("REDIS_URL")
        .output()
        .expect("run gateway");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("REDIS_URL"));
}

#[test]
fn serve_without_redis_installed_names_the_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(switchboard_bin())
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("REDIS_URL")
        .env("SWITCHBOARD__REDIS__SERVER_BINARY", "redis-server-not-here")
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("apt-get install redis-server"));
}

#[tokio::test]
async fn readyz_fails_while_redis_is_down() {
    let mut redis = TestRedis::start();
    let app = spawn_app(test_settings(&redis, "readyz"), Role::Gateway).await;
    assert_eq!(app.get_status(&app.gateway_url("/readyz")).await, 200);
    redis.kill();
    assert_eq!(app.get_status(&app.gateway_url("/readyz")).await, 503);
    assert_eq!(app.get_status(&app.gateway_url("/healthz")).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn admin_listener_requires_the_bearer_token_when_one_is_set() {
    let redis = TestRedis::start();
    let mut settings = test_settings(&redis, "admin-token");
    settings.secrets.admin_token = Some(switchboard::config::Secret::new("s3cret"));
    let app = spawn_app(settings, Role::Gateway).await;
    assert_eq!(app.get_status(&app.admin_url("/metrics")).await, 401);
    let authorized = app
        .http
        .get(app.admin_url("/metrics"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("request");
    assert_eq!(authorized.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_second_serve_on_the_same_data_directory_is_refused() {
    let first = ServeProcess::start(&["serve"], &[]);
    first.addresses();
    let out = Command::new(switchboard_bin())
        .arg("serve")
        .current_dir(first._dir.path())
        .env_remove("REDIS_URL")
        .env("SWITCHBOARD__GATEWAY__LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD__ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run a second serve");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already runs its Redis"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first one is unharmed.
    let socket = first._dir.path().join("switchboard-data/redis/redis.sock");
    assert!(socket.exists());
}
