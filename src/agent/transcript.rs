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
