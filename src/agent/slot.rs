//! A slot's directories, the unix user agents may run as, and the agent's
//! command line environment: cleared, then only what is listed here.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{AgentSettings, StartError};

/// The directories of one slot. The agent's HOME is `root`; its working
/// directory, config directory (`CLAUDE_CONFIG_DIR`) and temp directory
/// (`TMPDIR`, `CLAUDE_CODE_TMPDIR`) are inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDirs {
    /// The slot's name (also its folder name).
    pub name: String,
    /// HOME of the agent.
    pub root: PathBuf,
    /// Working directory of the agent.
    pub work: PathBuf,
    /// `CLAUDE_CONFIG_DIR`: settings and session transcripts.
    pub config: PathBuf,
    /// `TMPDIR` and `CLAUDE_CODE_TMPDIR`.
    pub tmp: PathBuf,
}

impl SlotDirs {
    /// The directories of slot `name` under `base` (created by [`Self::create`]
    /// or at start). `base` must be absolute, so session paths are stable; a
    /// name is letters, digits, `-` and `_` only.
    pub fn new(base: &Path, name: &str) -> Result<Self, StartError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(StartError::Config(format!("invalid slot name {name:?}")));
        }
        if !base.is_absolute() {
            return Err(StartError::Config(format!(
                "slot base directory {} is not absolute",
                base.display()
            )));
        }
        let root = base.join(name);
        Ok(Self {
            name: name.into(),
            work: root.join("work"),
            config: root.join("config"),
            tmp: root.join("tmp"),
            root,
        })
    }

    /// Create the directories (idempotent), readable only by their owner.
    pub fn create(&self) -> Result<(), StartError> {
        use std::os::unix::fs::PermissionsExt;
        for dir in [&self.root, &self.work, &self.config, &self.tmp] {
            std::fs::create_dir_all(dir).map_err(|source| StartError::SlotDir {
                path: dir.clone(),
                source,
            })?;
        }
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| StartError::SlotDir {
                path: self.root.clone(),
                source,
            },
        )
    }

    /// Hand the whole slot tree to `user`.
    pub fn chown_to(&self, user: &UnixUser) -> Result<(), StartError> {
        chown_tree(&self.root, user).map_err(|source| StartError::SlotDir {
            path: self.root.clone(),
            source,
        })
    }
}

fn chown_tree(path: &Path, user: &UnixUser) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// A unix user agents run as, looked up once (never between fork and exec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixUser {
    /// The user name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

impl UnixUser {
    /// Look `name` up in the user database.
    pub fn lookup(name: &str) -> Result<Self, StartError> {
        let c_name = CString::new(name)
            .map_err(|_| StartError::Config(format!("invalid user name {name:?}")))?;
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: passwd is plain data; getpwnam_r fills it with pointers
        // into `buffer`, which we do not read after copying the ids out.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and the buffer length
        // is its real length.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        if rc != 0 {
            return Err(StartError::Config(format!(
                "looking up user {name:?}: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        if found.is_null() {
            return Err(StartError::Config(format!("no such user {name:?}")));
        }
        Ok(Self {
            name: name.into(),
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        })
    }

    /// The user agents run as under `settings`: `None` to run as ourselves.
    /// Switching users needs root; asking for another user without it is an
    /// error rather than a silent loss of isolation.
    pub fn from_settings(settings: &AgentSettings) -> Result<Option<Self>, StartError> {
        let Some(name) = &settings.user else {
            return Ok(None);
        };
        let user = Self::lookup(name)?;
        // SAFETY: geteuid cannot fail and has no memory effects.
        let euid = unsafe { libc::geteuid() };
        if euid == user.uid {
            return Ok(None);
        }
        if euid != 0 {
            return Err(StartError::Config(format!(
                "agent.user = {name:?} needs switchboard to run as root"
            )));
        }
        Ok(Some(user))
    }
}

/// The agent program with a cleared environment holding only PATH, HOME,
/// LANG, the slot's directories, `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC`
/// and `agent.env`; run in the slot's working directory as `user`.
pub(crate) fn base_command(
    settings: &AgentSettings,
    slot: &SlotDirs,
    user: Option<&UnixUser>,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(&settings.command);
    command
        .args(&settings.args)
        .current_dir(&slot.work)
        .env_clear()
        .env("PATH", &settings.path)
        .env("HOME", &slot.root)
        .env("LANG", &settings.lang)
        .env("CLAUDE_CONFIG_DIR", &slot.config)
        .env("TMPDIR", &slot.tmp)
        .env("CLAUDE_CODE_TMPDIR", &slot.tmp)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .envs(&settings.env)
        .envs(settings.secret_env.iter().map(|(k, v)| (k, v.expose())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(user) = user {
        // std applies these (setgid, setgroups(0), setuid) before the
        // pre_exec hooks, which matters: changing credentials clears the
        // parent-death signal, so it must be set afterwards.
        command.uid(user.uid).gid(user.gid);
    }
    command
}

/// Keeps the last few KiB of a process's stderr, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct StderrTail {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: tokio::sync::watch::Receiver<bool>,
}

const STDERR_TAIL_BYTES: usize = 2048;

impl StderrTail {
    /// Read `stderr` to its end in a task, keeping the tail.
    pub(crate) fn collect(stderr: Option<std::process::ChildStderr>, pid: u32) -> Self {
        use tokio::io::AsyncReadExt;
        let (finished, done) = tokio::sync::watch::channel(false);
        let tail = Self {
            bytes: Default::default(),
            done,
        };
        let stderr = match stderr.map(tokio::process::ChildStderr::from_std) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(pid, error = %e, "cannot read agent stderr");
                finished.send_replace(true);
                return tail;
            }
            None => {
                finished.send_replace(true);
                return tail;
            }
        };
        let keep = tail.clone();
        tokio::spawn(async move {
            let mut stderr = stderr;
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
                tracing::debug!(pid, bytes = n, "agent wrote to stderr");
                keep.push(&chunk[..n]);
            }
            finished.send_replace(true);
        });
        tail
    }

    fn push(&self, bytes: &[u8]) {
        let mut tail = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        tail.extend_from_slice(bytes);
        if tail.len() > STDERR_TAIL_BYTES {
            let cut = tail.len() - STDERR_TAIL_BYTES;
            tail.drain(..cut);
        }
    }

    /// The tail so far, as text.
    pub(crate) fn text(&self) -> String {
        let tail = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&tail).trim().to_string()
    }

    /// The tail once stderr is closed (after the process exited), waiting a
    /// little for the last bytes; tools the agent started may hold it open.
    pub(crate) async fn settled_text(&self) -> String {
        let mut done = self.done.clone();
        // A timeout or a closed channel both mean: take what we have.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            done.wait_for(|finished| *finished),
        )
        .await;
        self.text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_checked() {
        let base = Path::new("/srv/slots");
        let slot = SlotDirs::new(base, "w1-3").expect("valid");
        assert_eq!(slot.work, Path::new("/srv/slots/w1-3/work"));
        assert!(SlotDirs::new(base, "../x").is_err());
        assert!(SlotDirs::new(base, "").is_err());
        assert!(SlotDirs::new(Path::new("relative"), "a").is_err());
    }

    #[test]
    fn root_user_is_found_and_unknown_users_are_errors() {
        let root = UnixUser::lookup("root").expect("root exists");
        assert_eq!(root.uid, 0);
        assert!(UnixUser::lookup("no-such-user-switchboard").is_err());
    }
}
