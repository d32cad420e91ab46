//! Session transcripts: where the CLI keeps them, and moving them between
//! slots so a conversation can resume on any slot of any worker.
//!
//! A session is one file, `<config dir>/projects/<project>/<id>.jsonl`,
//! where `<project>` is the agent's working directory with every character
//! other than an ASCII letter or digit replaced by `-` (each UTF-16 unit of
//! it, as the CLI's JavaScript does; `/` to `-` is the case that matters).
//! Names past 200 characters get a hash suffix in the CLI, which we do not
//! reproduce: such working directories are refused.

use std::path::{Path, PathBuf};

use super::SlotDirs;

/// Why a transcript could not be found, read or written.
#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    /// Not a session id we accept (letters, digits, `-`, `_`).
    #[error("invalid session id {0:?}")]
    InvalidSessionId(String),
    /// The working directory's name would be shortened by the CLI.
    #[error("working directory {0} is too long for a transcript folder name")]
    PathTooLong(PathBuf),
    /// No transcript for this session in the slot.
    #[error("no transcript at {0}")]
    Missing(PathBuf),
    /// The file system failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

const MAX_PROJECT_NAME: usize = 200;

/// Check that `id` is safe to use in a file name and on a command line.
pub fn validate_session_id(id: &str) -> Result<(), TranscriptError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(TranscriptError::InvalidSessionId(id.into()))
    }
}

/// The CLI's folder name for working directory `cwd`.
pub fn project_dir_name(cwd: &Path) -> Result<String, TranscriptError> {
    let mut name = String::new();
    for c in cwd.to_string_lossy().chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else {
            for _ in 0..c.len_utf16() {
                name.push('-');
            }
        }
    }
    if name.len() > MAX_PROJECT_NAME {
        return Err(TranscriptError::PathTooLong(cwd.into()));
    }
    Ok(name)
}

/// Where the CLI keeps session `session_id` with config directory `config`
/// and working directory `cwd`.
pub fn path(config: &Path, cwd: &Path, session_id: &str) -> Result<PathBuf, TranscriptError> {
    validate_session_id(session_id)?;
    Ok(config
        .join("projects")
        .join(project_dir_name(cwd)?)
        .join(format!("{session_id}.jsonl")))
}

/// The transcript of `session_id` in `slot`, as bytes (to store elsewhere).
pub async fn read(slot: &SlotDirs, session_id: &str) -> Result<Vec<u8>, TranscriptError> {
    let path = path(&slot.config, &slot.work, session_id)?;
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TranscriptError::Missing(path)),
        Err(source) => Err(TranscriptError::Io {
            what: "reading transcript",
            path,
            source,
        }),
    }
}

/// How many of a stored transcript's last bytes are kept to check that the
/// file still begins with what was stored.
const TAIL: usize = 64;

/// What was last stored of a session's transcript: enough to send only
/// what the agent appended since (the CLI appends to its JSONL file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub session_id: String,
    /// Bytes stored.
    pub len: u64,
    /// The stored transcript's last bytes (up to 64).
    tail: Vec<u8>,
}

impl Stored {
    /// `transcript`, stored whole for `session_id`.
    pub fn of(session_id: &str, transcript: &[u8]) -> Self {
        Self {
            session_id: session_id.to_string(),
            len: transcript.len() as u64,
            tail: transcript[transcript.len().saturating_sub(TAIL)..].to_vec(),
        }
    }

    /// This, followed by `more`.
    fn then(&self, more: &[u8]) -> Self {
        let mut tail = self.tail.clone();
        tail.extend_from_slice(more);
        let cut = tail.len().saturating_sub(TAIL);
        tail.drain(..cut);
        Self {
            session_id: self.session_id.clone(),
            len: self.len + more.len() as u64,
            tail,
        }
    }
}

/// A transcript read for storing: `bytes` from `offset` on (0: whole).
#[derive(Debug)]
pub struct NewPart {
    pub bytes: Vec<u8>,
    pub offset: u64,
    /// What is stored once these bytes are.
    pub stored: Stored,
}

/// The transcript of `session_id` in `slot`, from where `stored` ends when
/// it is this session's and the file still begins with it (else whole).
pub async fn read_new(
    slot: &SlotDirs,
    session_id: &str,
    stored: Option<&Stored>,
) -> Result<NewPart, TranscriptError> {
    let path = path(&slot.config, &slot.work, session_id)?;
    let stored = stored.filter(|s| s.session_id == session_id).cloned();
    let session_id = session_id.to_string();
    let io = |source, path| TranscriptError::Io {
        what: "reading transcript",
        path,
        source,
    };
    // What a turn appended is a few kB in the page cache: read in place,
    // without two thread hand-offs. A whole transcript (megabytes, for a
    // long session) is read on a blocking thread.
    let read = if stored.is_some() {
        Ok(read_new_blocking(&path, &session_id, stored))
    } else {
        let path = path.clone();
        tokio::task::spawn_blocking(move || read_new_blocking(&path, &session_id, stored)).await
    };
    match read {
        Ok(Ok(part)) => Ok(part),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(TranscriptError::Missing(path))
        }
        Ok(Err(e)) => Err(io(e, path)),
        Err(e) => Err(io(std::io::Error::other(e), path)),
    }
}

fn read_new_blocking(
    path: &Path,
    session_id: &str,
    stored: Option<Stored>,
) -> std::io::Result<NewPart> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if let Some(stored) = stored.filter(|s| s.len > 0 && s.len <= len) {
        let start = stored.len - stored.tail.len() as u64;
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
        file.read_to_end(&mut bytes)?;
        if bytes.starts_with(&stored.tail) {
            let bytes = bytes.split_off(stored.tail.len());
            return Ok(NewPart {
                offset: stored.len,
                stored: stored.then(&bytes),
                bytes,
            });
        }
        // Rewritten, not appended to: store it whole.
        file.seek(SeekFrom::Start(0))?;
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(NewPart {
        stored: Stored::of(session_id, &bytes),
        offset: 0,
        bytes,
    })
}

/// Put a transcript read elsewhere into `slot`, under the slot's own working
/// directory, so a process started there with `--resume session_id`
/// continues it. The file is handed to `agent.user` when the process starts.
pub async fn write(slot: &SlotDirs, session_id: &str, bytes: &[u8]) -> Result<(), TranscriptError> {
    let path = path(&slot.config, &slot.work, session_id)?;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| TranscriptError::Io {
                what: "creating transcript folder",
                path: dir.into(),
                source,
            })?;
    }
    // Write a temporary file and rename it, so a reader never sees half.
    let partial = path.with_extension("jsonl.partial");
    tokio::fs::write(&partial, bytes)
        .await
        .map_err(|source| TranscriptError::Io {
            what: "writing transcript",
            path: partial.clone(),
            source,
        })?;
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(|source| TranscriptError::Io {
            what: "renaming transcript into place",
            path: path.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_follows_the_cli_scheme() {
        let p = path(
            Path::new("/slots/a/config"),
            Path::new("/slots/a/work"),
            "5f1c0d1e-aaaa-bbbb-cccc-0123456789ab",
        )
        .expect("path");
        assert_eq!(
            p,
            Path::new(
                "/slots/a/config/projects/-slots-a-work/5f1c0d1e-aaaa-bbbb-cccc-0123456789ab.jsonl"
            )
        );
    }

    #[test]
    fn every_non_alphanumeric_character_becomes_a_dash() {
        let name = project_dir_name(Path::new("/tmp/.tmpAb_1/my proj/é")).expect("name");
        assert_eq!(name, "-tmp--tmpAb-1-my-proj--");
        assert_eq!(project_dir_name(Path::new("/a/😀")).expect("name"), "-a---");
        let long = format!("/{}", "x".repeat(250));
        assert!(project_dir_name(Path::new(&long)).is_err());
    }

    #[test]
    fn session_ids_cannot_escape_the_folder() {
        for bad in ["", "../x", "a/b", "a b", "x\n"] {
            assert!(validate_session_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_session_id("abc-DEF_123").is_ok());
    }

    #[tokio::test]
    async fn only_what_was_appended_since_the_last_store_is_read() {
        let base = tempfile::tempdir().expect("tempdir");
        let a = SlotDirs::new(base.path(), "a").expect("slot a");
        let first = "{\"turn\":1}\n".repeat(10);
        write(&a, "s1", first.as_bytes()).await.expect("write");
        let whole = read_new(&a, "s1", None).await.expect("read whole");
        assert_eq!(
            (whole.offset, whole.bytes.as_slice()),
            (0, first.as_bytes())
        );
        // The agent appends a turn: only that is read.
        let file = path(&a.config, &a.work, "s1").expect("path");
        let second = format!("{first}{{\"turn\":2}}\n");
        std::fs::write(&file, &second).expect("append");
        let part = read_new(&a, "s1", Some(&whole.stored))
            .await
            .expect("read part");
        assert_eq!(part.offset, first.len() as u64);
        assert_eq!(part.bytes, b"{\"turn\":2}\n");
        assert_eq!(part.stored, Stored::of("s1", second.as_bytes()));
        // Another session's record, or a file rewritten rather than
        // appended to, is read whole.
        let other = read_new(&a, "s1", Some(&Stored::of("s2", first.as_bytes())))
            .await
            .expect("read other");
        assert_eq!(other.offset, 0);
        let rewritten = second.replace("turn", "TURN");
        std::fs::write(&file, &rewritten).expect("rewrite");
        let again = read_new(&a, "s1", Some(&part.stored))
            .await
            .expect("read rewritten");
        assert_eq!((again.offset, again.bytes), (0, rewritten.into_bytes()));
    }

    #[tokio::test]
    async fn transcripts_move_between_slots() {
        let base = tempfile::tempdir().expect("tempdir");
        let a = SlotDirs::new(base.path(), "a").expect("slot a");
        let b = SlotDirs::new(base.path(), "b").expect("slot b");
        assert!(matches!(
            read(&a, "s1").await,
            Err(TranscriptError::Missing(_))
        ));
        write(&a, "s1", b"{\"type\":\"user\"}\n")
            .await
            .expect("write a");
        let bytes = read(&a, "s1").await.expect("read a");
        write(&b, "s1", &bytes).await.expect("write b");
        let in_b = path(&b.config, &b.work, "s1").expect("path");
        assert!(in_b.to_string_lossy().contains("-b-work/s1.jsonl"));
        assert_eq!(std::fs::read(in_b).expect("read b"), bytes);
    }
}
