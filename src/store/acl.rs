//! The worker's Redis user: a Redis ACL user limited to the queue's key
//! prefix and the commands workers send (directly or from the queue's Lua
//! scripts, which Redis checks against the caller's ACL too). Workers run
//! agents that run tools, so a worker's credentials must not open the rest
//! of Redis: no other keys, no CONFIG, no FLUSHALL, no KEYS.
//!
//! `switchboard redis-acl` prints the rule for an ACL file; the Docker
//! runtime can install it itself (`pool.docker.install_acl`).

use sha2::{Digest, Sha256};

use crate::config::Secret;

/// Commands a worker uses: connection set-up, the eviction-policy check
/// (INFO), script calls, and every command inside the scripts it runs.
pub const WORKER_COMMANDS: &[&str] = &[
    // connection
    "ping",
    "hello",
    "select",
    "client|setname",
    // (CLIENT SETINFO is left out: Redis before 7.2 refuses it in a rule,
    // and redis-rs ignores its failure.)
    "info",
    "time",
    // scripts
    "evalsha",
    "eval",
    "script|load",
    "script|exists",
    // data, by type
    "exists",
    "get",
    "set",
    "expire",
    "pexpire",
    "hget",
    "hmget",
    "hgetall",
    "hset",
    "hsetnx",
    "hdel",
    "hincrby",
    "rpush",
    "ltrim",
    "blpop",
    "lpop",
    "zadd",
    "zrem",
    "zscore",
    "zrank",
    "zcard",
    "zpopmin",
    "zrangebyscore",
    "zrangebylex",
    "xadd",
    "xdel",
    "xlen",
    "xtrim",
    "xrange",
    "xrevrange",
];

/// Why no ACL rule can be made.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("the Redis user name {0:?} must be letters, digits, '-', '_' or '.'")]
    User(String),
    #[error("the key prefix {0:?} must not hold glob characters (* ? [ ] \\) or spaces")]
    Prefix(String),
}

/// The rule's parts after the user name: `reset on #<sha256> ~<prefix>:*
/// resetchannels -@all +cmd ...`. For `ACL SETUSER <user> <parts...>`.
pub fn worker_rules(prefix: &str, password: &Secret) -> Result<Vec<String>, AclError> {
    if prefix.is_empty()
        || prefix
            .chars()
            .any(|c| matches!(c, '*' | '?' | '[' | ']' | '\\') || c.is_whitespace())
    {
        return Err(AclError::Prefix(prefix.to_string()));
    }
    let hash = hex::encode(Sha256::digest(password.expose().as_bytes()));
    let mut rules = vec![
        "reset".to_string(),
        "on".to_string(),
        format!("#{hash}"),
        format!("~{prefix}:*"),
        "resetchannels".to_string(),
        "-@all".to_string(),
    ];
    rules.extend(WORKER_COMMANDS.iter().map(|c| format!("+{c}")));
    Ok(rules)
}

/// One line for an ACL file (`aclfile` in redis.conf): `user <name> ...`.
pub fn worker_acl_line(user: &str, prefix: &str, password: &Secret) -> Result<String, AclError> {
    check_user(user)?;
    let rules = worker_rules(prefix, password)?;
    Ok(format!("user {user} {}", rules.join(" ")))
}

/// How a worker reaches Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRedis {
    /// The URL workers use (with the worker user's credentials when set).
    pub url: Secret,
    /// Redis's unix socket on this host, when workers reach Redis through
    /// it (the Docker runtime mounts it into containers).
    pub socket: Option<std::path::PathBuf>,
}

/// Where a mounted Redis socket's directory appears inside a container.
pub const CONTAINER_SOCKET_DIR: &str = "/run/switchboard-redis";

/// The Redis URL for workers: `explicit` (WORKER_REDIS_URL) when set; else
/// `base` (REDIS_URL) with the worker user's name and `password` in place
/// of the gateway's credentials. With `in_container`, a unix socket's path
/// becomes its mounted path. Without a password the gateway's own URL is
/// returned unchanged (fine for local processes, refused by the Docker
/// runtime, which must not hand out the gateway's credentials).
pub fn worker_redis(
    base: &Secret,
    explicit: Option<&Secret>,
    user: &str,
    password: Option<&Secret>,
    in_container: bool,
) -> Result<WorkerRedis, String> {
    if let Some(url) = explicit {
        return Ok(WorkerRedis {
            url: url.clone(),
            socket: None,
        });
    }
    let mut url =
        url::Url::parse(base.expose()).map_err(|e| format!("REDIS_URL is not a valid URL: {e}"))?;
    let unix = matches!(url.scheme(), "unix" | "redis+unix");
    let socket = unix.then(|| std::path::PathBuf::from(url.path()));
    if unix {
        // redis-rs reads a unix socket's credentials from the query.
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "user" && k != "pass")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        {
            let mut query = url.query_pairs_mut();
            query.clear();
            for (k, v) in &kept {
                query.append_pair(k, v);
            }
            if let Some(password) = password {
                query.append_pair("user", user);
                query.append_pair("pass", password.expose());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        if in_container {
            let name = socket
                .as_ref()
                .and_then(|s| s.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "redis.sock".into());
            url.set_path(&format!("{CONTAINER_SOCKET_DIR}/{name}"));
        }
    } else if let Some(password) = password {
        url.set_username(user)
            .and_then(|()| url.set_password(Some(password.expose())))
            .map_err(|()| "REDIS_URL cannot take a user name and password".to_string())?;
    }
    if password.is_none() && in_container {
        return Err("workers in containers need their own Redis user: set \
             SWITCHBOARD_WORKER_REDIS_PASSWORD (the password of pool.worker_redis_user), \
             or WORKER_REDIS_URL"
            .into());
    }
    Ok(WorkerRedis {
        url: Secret::new(url.to_string()),
        socket,
    })
}

pub(crate) fn check_user(user: &str) -> Result<(), AclError> {
    if user.is_empty()
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(AclError::User(user.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_holds_a_hash_not_the_password() {
        let password = Secret::new("s3cret-pass".to_string());
        let line = worker_acl_line("switchboard-worker", "sb", &password).expect("line");
        assert!(line.starts_with("user switchboard-worker reset on #"));
        assert!(!line.contains("s3cret-pass"));
        assert!(line.contains(" ~sb:* "));
        assert!(line.contains(" -@all "));
        assert!(!line.contains("+config"));
    }

    #[test]
    fn worker_urls_carry_the_worker_user_not_the_gateway_one() {
        let pw = Secret::new("wpw".to_string());
        let tcp = Secret::new("redis://admin:apw@10.0.0.5:6379/0".to_string());
        let got = worker_redis(&tcp, None, "wk", Some(&pw), true).expect("tcp");
        assert_eq!(got.url.expose(), "redis://wk:wpw@10.0.0.5:6379/0");
        assert_eq!(got.socket, None);

        let unix = Secret::new("unix:///data/redis.sock?db=0&pass=apw".to_string());
        let got = worker_redis(&unix, None, "wk", Some(&pw), true).expect("unix");
        assert_eq!(
            got.url.expose(),
            "unix:///run/switchboard-redis/redis.sock?db=0&user=wk&pass=wpw"
        );
        assert_eq!(got.socket, Some("/data/redis.sock".into()));

        let local = worker_redis(&unix, None, "wk", None, false).expect("local");
        assert_eq!(local.url.expose(), "unix:///data/redis.sock?db=0");
        assert!(worker_redis(&unix, None, "wk", None, true).is_err());

        let explicit = Secret::new("redis://wk:x@redis:6379".to_string());
        let got = worker_redis(&tcp, Some(&explicit), "wk", None, true).expect("explicit");
        assert_eq!(got.url, explicit);
    }

    #[test]
    fn glob_prefixes_and_odd_user_names_are_refused() {
        let password = Secret::new("p".to_string());
        assert!(worker_acl_line("w", "a*", &password).is_err());
        assert!(worker_acl_line("w", "", &password).is_err());
        assert!(worker_acl_line("w x", "sb", &password).is_err());
    }
}
