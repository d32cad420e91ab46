//! The queue's Lua scripts. Each state change that must be atomic is one
//! script and one round trip. Every script gets all its keys in KEYS, and all
//! of them belong to one shard (one hash slot): `ScriptCall` keeps the keys
//! apart so a test can check that.

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/prelude.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

/// The loaded scripts (each sent once, then called by SHA).
pub struct Scripts {
    pub enqueue: Script,
    /// admission, then enqueue (see admit.lua).
    pub admit: Script,
    /// pop and claim (one round trip).
    pub pop_claim: Script,
    pub renew: Script,
    pub progress: Script,
    pub save_session: Script,
    pub commit: Script,
    pub fail: Script,
    pub reclaim: Script,
    pub heartbeat: Script,
    pub reap_worker: Script,
    pub requeue_dead: Script,
    pub disown: Script,
    pub lead: Script,
    pub release: Script,
    pub take_tokens: Script,
    pub notice: Script,
}

impl Scripts {
    pub fn load() -> Self {
        Self {
            enqueue: script!("enqueue.lua"),
            admit: Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!("lua/admit.lua"),
                include_str!("lua/enqueue.lua")
            )),
            pop_claim: script!("pop_claim.lua"),
            renew: script!("renew.lua"),
            progress: script!("progress.lua"),
            save_session: script!("save_session.lua"),
            commit: script!("commit.lua"),
            fail: script!("fail.lua"),
            reclaim: script!("reclaim.lua"),
            heartbeat: script!("heartbeat.lua"),
            reap_worker: script!("reap_worker.lua"),
            requeue_dead: script!("requeue_dead.lua"),
            disown: script!("disown.lua"),
            lead: script!("lead.lua"),
            release: script!("release.lua"),
            take_tokens: script!("take_tokens.lua"),
            notice: script!("notice.lua"),
        }
    }
}

/// One script invocation: which script, its keys, its arguments.
pub struct ScriptCall<'a> {
    pub script: &'a Script,
    pub keys: Vec<String>,
    args: Args,
}

/// A call's arguments end to end in one buffer, and where each ends: two
/// allocations for a call, not one per argument.
struct Args {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Args {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let arg = self.data.get(start..end).unwrap_or_default();
            start = end;
            arg
        })
    }
}

impl redis::RedisWrite for Args {
    fn write_arg(&mut self, arg: &[u8]) {
        self.data.extend_from_slice(arg);
        self.ends.push(self.data.len());
    }

    fn writer_for_next_arg(&mut self) -> impl std::io::Write + '_ {
        ArgWriter(self)
    }
}

/// Writes one argument; it ends when the writer is dropped.
struct ArgWriter<'a>(&'a mut Args);

impl std::io::Write for ArgWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ArgWriter<'_> {
    fn drop(&mut self) {
        self.0.ends.push(self.0.data.len());
    }
}

impl<'a> ScriptCall<'a> {
    pub fn new(script: &'a Script, keys: Vec<String>) -> Self {
        Self {
            script,
            keys,
            args: Args {
                data: Vec::with_capacity(512),
                ends: Vec::with_capacity(16),
            },
        }
    }

    /// One argument: a string or a number (integers are written without
    /// going through `fmt`). Only single-valued types belong here: a
    /// collection would add one argument per element.
    pub fn arg(mut self, arg: impl redis::ToRedisArgs) -> Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    pub fn arg_bytes(mut self, arg: &[u8]) -> Self {
        redis::RedisWrite::write_arg(&mut self.args, arg);
        self
    }

    /// An argument written straight into the call's buffer by `write`.
    pub fn arg_with<E>(
        mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Self, E> {
        write(&mut self.args.data)?;
        self.args.ends.push(self.args.data.len());
        Ok(self)
    }

    /// Run it on a pooled connection.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        conn: &mut crate::store::Connection,
    ) -> redis::RedisResult<T> {
        self.invoke_on(&mut **conn).await
    }

    /// Run it on `conn`: `EVALSHA` built straight from the keys and
    /// arguments; when Redis does not have the script yet (a restart, a new
    /// server), the script is loaded and the call made again.
    pub async fn invoke_on<T: redis::FromRedisValue, C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> redis::RedisResult<T> {
        match self.evalsha().query_async(conn).await {
            Err(e) if is_no_script(&e) => {
                let mut invocation = self.script.prepare_invoke();
                for key in &self.keys {
                    invocation.key(key);
                }
                for arg in self.args.iter() {
                    invocation.arg(arg);
                }
                invocation.invoke_async(conn).await
            }
            other => other,
        }
    }

    /// The `EVALSHA` command alone (e.g. for a pipeline; see [`is_no_script`]
    /// for when Redis does not have the script).
    pub fn evalsha(&self) -> redis::Cmd {
        // Sized up front: a Slack event's call has some thirty arguments,
        // and growing the buffers one push at a time costs more than filling them.
        let count = 3 + self.keys.len() + self.args.len();
        let data = 64 + self.keys.iter().map(String::len).sum::<usize>() + self.args.data.len();
        let mut cmd = redis::Cmd::with_capacity(count, data);
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys);
        for arg in self.args.iter() {
            cmd.arg(arg);
        }
        cmd
    }
}

/// Whether `e` is Redis saying it does not have the script (NOSCRIPT).
pub fn is_no_script(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_sends_its_keys_then_its_arguments_in_order() {
        let script = Script::new("return 1");
        let call = ScriptCall::new(&script, vec!["k1".into(), "k2".into()])
            .arg("text")
            .arg(42u64)
            .arg("")
            .arg_bytes(b"raw \x00 bytes")
            .arg_with(|out| {
                out.extend_from_slice(b"{\"json\":1}");
                Ok::<(), ()>(())
            })
            .expect("written")
            .arg(-7i64);
        let cmd = call.evalsha();
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"<not a simple argument>".to_vec(),
            })
            .collect();
        let expected: Vec<&[u8]> = vec![
            b"EVALSHA",
            script.get_hash().as_bytes(),
            b"2",
            b"k1",
            b"k2",
            b"text",
            b"42",
            b"",
            b"raw \x00 bytes",
            b"{\"json\":1}",
            b"-7",
        ];
        assert_eq!(args, expected);
        // The fallback (when Redis lost the script) sends the same arguments.
        assert_eq!(call.args.iter().count(), 6);
    }
}
