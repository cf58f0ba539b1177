//! An instance's state directory: what survives a restart (the trader set,
//! with every `traders add` and `remove`), unlike the runtime directory,
//! which is wiped at start. `--state-dir DIR` or `$SHMKLINE_STATE_DIR`, else
//! `$XDG_STATE_HOME/shmkline/<instance>`, else
//! `~/.local/state/shmkline/<instance>`; mode 0700, checked. Files are
//! written atomically: a temporary file, fsync, rename, fsync the directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use protocol::InstanceName;
use protocol::trader::TraderSpec;

const TRADERS: &str = "traders.json";
/// Largest file read from the state directory: far past the trader set of
/// 64 full workers or the watermarks of their series; a bound on a mistake.
pub const MAX_STATE_FILE: u64 = 1 << 30;

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No directory was given and there is no home to put one in.
    #[error("no state directory: set --state-dir, $SHMKLINE_STATE_DIR, $XDG_STATE_HOME or $HOME")]
    Nowhere,
    /// A file operation failed.
    #[error("state directory {path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Others may read or write it, or it is not ours.
    #[error(
        "state directory {path}: {why}: it holds the trader set; `chmod 700` it or pass another --state-dir"
    )]
    Unsafe {
        /// The directory.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A file in it does not parse.
    #[error("state directory {path}: {file} does not parse ({why}): {fix}")]
    Corrupt {
        /// The directory.
        path: String,
        /// The file.
        file: String,
        /// The parse error.
        why: String,
        /// What the user can do.
        fix: &'static str,
    },
}

/// An instance's state directory, opened and checked.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Where the state of `instance` lives: `flag` (also
    /// `$SHMKLINE_STATE_DIR`, through the flag) as given, else under
    /// `$XDG_STATE_HOME`, else under `~/.local/state`.
    pub fn locate(flag: Option<&Path>, instance: &InstanceName) -> Result<PathBuf, StateError> {
        if let Some(dir) = flag {
            return Ok(dir.to_path_buf());
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".local/state"))
            })
            .ok_or(StateError::Nowhere)?;
        Ok(base.join("shmkline").join(instance.as_str()))
    }

    /// Creates `dir` (0700) if missing, and checks it is a directory of this
    /// user that nobody else may read or write, and that it takes files.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let name = dir.display().to_string();
        let io = |what| {
            let name = name.clone();
            move |source| StateError::Io {
                path: name,
                what,
                source,
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("creating it"))?;
        let meta = std::fs::metadata(dir).map_err(io("reading it"))?;
        if !meta.is_dir() {
            return Err(StateError::Unsafe {
                path: name,
                why: "not a directory".into(),
            });
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(StateError::Unsafe {
                path: name,
                why: format!("owned by uid {}, not this user", meta.uid()),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StateError::Unsafe {
                path: name,
                why: format!("mode {mode:o} lets others in"),
            });
        }
        let state = Self {
            dir: dir.to_path_buf(),
        };
        // Writable now, not at the first `traders add`.
        state.write_atomically(".probe", b"")?;
        let _ = std::fs::remove_file(dir.join(".probe"));
        Ok(state)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The trader set kept here, if any.
    pub fn traders(&self) -> Result<Option<Vec<TraderSpec>>, StateError> {
        let Some(text) = self.read(TRADERS)? else {
            return Ok(None);
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: self.dir.display().to_string(),
                file: TRADERS.into(),
                why: e.to_string(),
                fix: "fix or remove it, or pass --traders",
            })
    }

    /// Keeps `traders` as the trader set, atomically.
    pub fn save_traders(&self, traders: &[&TraderSpec]) -> Result<(), StateError> {
        let text = serde_json::to_vec_pretty(traders).map_err(|e| StateError::Io {
            path: self.dir.display().to_string(),
            what: "encoding the traders",
            source: std::io::Error::other(e),
        })?;
        self.write_atomically(TRADERS, &text)
    }

    /// The bytes of file `name` kept here, if it exists: a regular file of
    /// at most [`MAX_STATE_FILE`] bytes (a FIFO or a device put in its place
    /// is refused, never waited on or read without end).
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.dir.join(name);
        match crate::input::read_bounded(
            &path,
            MAX_STATE_FILE,
            "state file",
            crate::input::Accept::Files,
            ": not a file this engine wrote; move it away",
        ) {
            Ok(t) => Ok(Some(t)),
            Err(crate::input::InputError::Io { error, .. })
                if error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(StateError::Io {
                path: path.display().to_string(),
                what: "reading it",
                source: std::io::Error::other(e.cause()),
            }),
        }
    }

    /// `name` holds `bytes` after this returns, whole, even across a crash
    /// of the machine: a temporary file, fsync, rename, fsync the directory.
    pub fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let target = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |what| {
            let path = target.display().to_string();
            move |source| StateError::Io { path, what, source }
        };
        // A new file each time: whatever was left under the temporary name
        // (a FIFO would block the open) is removed first.
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing a leftover temporary file")(e)),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating its temporary file"))?;
        file.write_all(bytes).map_err(io("writing it"))?;
        file.sync_all().map_err(io("syncing it"))?;
        drop(file);
        std::fs::rename(&tmp, &target).map_err(io("renaming it into place"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traders_round_trip_and_bad_directories_are_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        let state = StateDir::open(&dir).expect("created");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(state.traders().expect("none").is_none());
        let t = crate::traders::defaults();
        state
            .save_traders(&t.iter().collect::<Vec<_>>())
            .expect("saved");
        assert_eq!(state.traders().expect("read"), Some(t));
        assert!(!dir.join(".traders.json.tmp").exists());

        std::fs::write(dir.join(TRADERS), "[{").expect("write");
        let e = state.traders().expect_err("corrupt").to_string();
        assert!(e.contains("traders.json does not parse"), "{e}");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let e = StateDir::open(&dir)
            .expect_err("open to others")
            .to_string();
        assert!(
            e.contains("mode 755 lets others in") && e.contains("chmod 700"),
            "{e}"
        );

        let file = tmp.path().join("plain");
        std::fs::write(&file, "").expect("write");
        let e = StateDir::open(&file.join("x"))
            .expect_err("under a file")
            .to_string();
        assert!(e.contains("creating it"), "{e}");
    }
}
