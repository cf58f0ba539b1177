//! The instance's private runtime directory and its single-writer lock.
//!
//! ```text
//! <base>/                 0700, owned by us: $SHMKLINE_RUNTIME_DIR, else
//!                         $XDG_RUNTIME_DIR/shmkline, else /tmp/shmkline-<uid>
//! <base>/<instance>.lock  flock held by the running coordinator; holds its pid
//! <base>/<instance>/      0700, wiped at start: sockets and other run files
//! ```
//! Paths are kept short on purpose: unix socket paths are silently truncated
//! past 107 bytes.
//!
//! The lock is an `flock`, so the kernel releases it when its holder dies,
//! however it dies: a free lock means no live coordinator, which is what lets
//! the next one reclaim a segment left behind by a SIGKILLed one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::getuid;
use protocol::InstanceName;
use thiserror::Error;

/// Overrides the base directory (tests give each run its own).
pub const RUNTIME_DIR_ENV: &str = "SHMKLINE_RUNTIME_DIR";

/// Why the runtime directory could not be taken.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// Another coordinator runs this instance.
    #[error("instance '{instance}' is already running: coordinator pid {} holds {}; stop it or choose another --instance", pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()), lock_path.display())]
    HeldBy {
        /// The instance.
        instance: String,
        /// The holder's pid, as written in the lock file.
        pid: Option<u32>,
        /// The lock file.
        lock_path: PathBuf,
    },
    /// The base directory is not private to this user.
    #[error("runtime directory {} is not private ({reason}): fix its owner and mode (0700) or set {RUNTIME_DIR_ENV}", path.display())]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The base directory for all instances of this user.
pub fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("shmkline");
    }
    PathBuf::from(format!("/tmp/shmkline-{}", getuid()))
}

fn lock_path(base: &Path, instance: &InstanceName) -> PathBuf {
    base.join(format!("{instance}.lock"))
}

/// Creates `dir` with mode 0700 if missing and checks it is ours and private.
fn private_dir(dir: &Path) -> Result<(), RuntimeError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating directory", dir))?;
    let meta = fs::symlink_metadata(dir).map_err(io_err("inspecting directory", dir))?;
    let reason = if !meta.is_dir() {
        Some("not a directory".to_owned())
    } else if meta.uid() != getuid().as_raw() {
        Some(format!("owned by uid {}", meta.uid()))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!("mode {:o}", meta.mode() & 0o777))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RuntimeError::NotPrivate {
            path: dir.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The pid recorded in an instance's lock file, if any. Meaningful only while
/// the lock is held.
fn recorded_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The instance lock and runtime directory of a running coordinator. Dropping
/// it removes the directory and the lock file, then releases the lock.
#[derive(Debug)]
pub struct Runtime {
    instance: InstanceName,
    dir: PathBuf,
    lock_path: PathBuf,
    // Declared last so it is released after the files are removed.
    _lock: Flock<File>,
}

impl Runtime {
    /// Takes the lock for `instance` under [`base_dir`].
    pub fn acquire(instance: &InstanceName) -> Result<Self, RuntimeError> {
        Self::acquire_in(&base_dir(), instance)
    }

    /// Takes the lock for `instance` under `base`, then wipes and recreates the
    /// instance directory (anything in it belonged to a dead coordinator).
    pub fn acquire_in(base: &Path, instance: &InstanceName) -> Result<Self, RuntimeError> {
        private_dir(base)?;
        let lock_path = lock_path(base, instance);
        // A holder removes the lock file on exit; if we locked a file that was
        // unlinked meanwhile, the lock guards nothing: try again on the new file.
        let mut attempts = 0;
        let lock = loop {
            attempts += 1;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&lock_path)
                .map_err(io_err("opening lock file", &lock_path))?;
            let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(RuntimeError::HeldBy {
                        instance: instance.to_string(),
                        pid: recorded_pid(&lock_path),
                        lock_path,
                    });
                }
                Err((_, e)) => {
                    return Err(RuntimeError::Io {
                        what: "locking",
                        path: lock_path,
                        source: e.into(),
                    });
                }
            };
            let ours = lock
                .metadata()
                .map_err(io_err("inspecting lock file", &lock_path))?;
            let current = fs::metadata(&lock_path).ok();
            if current.is_some_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev()) {
                lock.set_len(0)
                    .map_err(io_err("writing lock file", &lock_path))?;
                lock.rewind()
                    .map_err(io_err("writing lock file", &lock_path))?;
                writeln!(lock, "{}", std::process::id())
                    .map_err(io_err("writing lock file", &lock_path))?;
                break lock;
            }
            if attempts >= 8 {
                return Err(RuntimeError::Io {
                    what: "locking (the lock file kept being replaced)",
                    path: lock_path,
                    source: io::Error::from(io::ErrorKind::WouldBlock),
                });
            }
        };
        let dir = base.join(instance.as_str());
        if dir.exists() {
            tracing::info!(dir = %dir.display(), "removing the runtime directory left by a previous run");
            fs::remove_dir_all(&dir).map_err(io_err("removing stale runtime directory", &dir))?;
        }
        private_dir(&dir)?;
        Ok(Self {
            instance: instance.clone(),
            dir,
            lock_path,
            _lock: lock,
        })
    }

    /// The instance this runtime belongs to.
    pub fn instance(&self) -> &InstanceName {
        &self.instance
    }

    /// The private per-instance directory (sockets and other run files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Still holding the lock: nobody else can be using these paths.
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the runtime directory");
        }
        if let Err(e) = fs::remove_file(&self.lock_path) {
            tracing::warn!(path = %self.lock_path.display(), error = %e, "could not remove the lock file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_base(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shmkline-rt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn second_acquire_names_the_holder_and_drop_cleans_up() {
        let base = temp_base("lock");
        let name = InstanceName::new("unit").expect("valid");
        let first = Runtime::acquire_in(&base, &name).expect("first lock");
        fs::write(first.dir().join("leftover"), b"x").expect("write run file");
        let err = Runtime::acquire_in(&base, &name).expect_err("second must fail");
        match &err {
            RuntimeError::HeldBy { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("expected HeldBy, got {other:?}"),
        }
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(!base.join("unit").exists(), "runtime directory removed");
        assert!(!base.join("unit.lock").exists(), "lock file removed");
        let again = Runtime::acquire_in(&base, &name).expect("free again after drop");
        drop(again);
        fs::remove_dir_all(&base).expect("clean base");
    }

    #[test]
    fn a_world_readable_base_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = temp_base("mode");
        fs::create_dir_all(&base).expect("mkdir");
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = Runtime::acquire_in(&base, &InstanceName::new("x").expect("valid"))
            .expect_err("not private");
        assert!(matches!(err, RuntimeError::NotPrivate { .. }), "{err}");
        fs::remove_dir_all(&base).expect("clean base");
    }
}
