//! The queue's Lua scripts. Each state change that must be atomic is one
//! script and one round trip. Every key a script touches belongs to one
//! shard (one hash slot, through the shard's hash tag). Most scripts get
//! all their keys in KEYS; a few name some keys themselves from a prefix
//! they are given, where the caller cannot know the key (pop_claim.lua's
//! popped conversation) or where passing it costs every event (enqueue.lua
//! and admit.lua). Tests check both the keys given and the names built.

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

/// One script invocation: which script, its keys, its arguments, written
/// as they are added into the `EVALSHA` command that is sent: no copy of
/// them is made on the way (a Slack event's call has some twenty arguments,
/// and copying each one more time cost more than filling it).
pub struct ScriptCall<'a> {
    script: &'a Script,
    nkeys: usize,
    cmd: redis::Cmd,
    /// Where [`ScriptCall::arg_with`] writes, before the argument is added.
    scratch: Vec<u8>,
}

impl<'a> ScriptCall<'a> {
    /// A call of `script` with all its `keys` (they go before the
    /// arguments, so every key is known here).
    pub fn new<K: AsRef<str>, I>(script: &'a Script, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        I::IntoIter: ExactSizeIterator,
    {
        let keys = keys.into_iter();
        let nkeys = keys.len();
        // Room for a Slack event's admit call (some twenty arguments).
        let mut cmd = redis::Cmd::with_capacity(3 + nkeys + 28, 1024);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(nkeys);
        for key in keys {
            cmd.arg(key.as_ref());
        }
        Self {
            script,
            nkeys,
            cmd,
            scratch: Vec::new(),
        }
    }

    /// One argument: a string or a number (integers are written without
    /// going through `fmt`). Only single-valued types belong here: a
    /// collection would add one argument per element.
    pub fn arg(mut self, arg: impl redis::ToRedisArgs) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn arg_bytes(mut self, arg: &[u8]) -> Self {
        self.cmd.arg(arg);
        self
    }

    /// An argument written by `write` (into a buffer the call keeps for
    /// the next such argument: the command's own writer goes through
    /// `io::Write` a few bytes at a time, which costs more than one copy).
    pub fn arg_with<E>(
        mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Self, E> {
        self.scratch.clear();
        write(&mut self.scratch)?;
        self.cmd.arg(&self.scratch[..]);
        Ok(self)
    }

    /// The call's keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.simple_args().skip(3).take(self.nkeys)
    }

    /// The call's arguments (after its keys), in order.
    fn args(&self) -> impl Iterator<Item = &[u8]> {
        self.simple_args().skip(3 + self.nkeys)
    }

    fn simple_args(&self) -> impl Iterator<Item = &[u8]> {
        self.cmd.args_iter().map(|arg| match arg {
            redis::Arg::Simple(bytes) => bytes,
            // Never written: `Cmd::arg` of one value is one simple argument.
            _ => &[],
        })
    }

    /// Run it on a pooled connection.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        conn: &mut crate::store::Connection,
    ) -> redis::RedisResult<T> {
        self.invoke_on(&mut **conn).await
    }

    /// Run it on `conn` (`EVALSHA`); when Redis does not have the script yet
    /// (a restart, a new server), the script is loaded and the call made
    /// again.
    pub async fn invoke_on<T: redis::FromRedisValue, C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> redis::RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if is_no_script(&e) => {
                let mut invocation = self.script.prepare_invoke();
                for key in self.keys() {
                    invocation.key(key);
                }
                for arg in self.args() {
                    invocation.arg(arg);
                }
                invocation.invoke_async(conn).await
            }
            other => other,
        }
    }

    /// The `EVALSHA` command alone (e.g. for a pipeline; see [`is_no_script`]
    /// for when Redis does not have the script).
    pub fn evalsha(&self) -> &redis::Cmd {
        &self.cmd
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
        let call = ScriptCall::new(&script, ["k1", "k2"])
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
        // The fallback (when Redis lost the script) sends the same keys and
        // arguments.
        assert_eq!(call.keys().collect::<Vec<_>>(), expected[3..5]);
        assert_eq!(call.args().collect::<Vec<_>>(), expected[5..]);
    }
}
