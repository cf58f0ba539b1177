//! The `shmkline` command line, as a library the thin `main.rs` drives:
//! [`args`] (what clap parses), [`options`] (from flags to engine options),
//! [`commands`] (run, backtest, store), [`client`] (status, traders,
//! kill-worker over the control socket), [`render`] (their typed answers
//! for a human), [`tools`] (bench, chaos and soak, handed to
//! `shmkline-tools`).

pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod options;
pub mod render;
pub mod tools;
pub mod top;

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use protocol::InstanceName;

/// The parent process when this one started: `--exit-with-parent` compares
/// against it, and a parent that dies during start-up must still count as
/// gone, so `main` reads it before anything else.
static PARENT_AT_START: OnceLock<i32> = OnceLock::new();

/// Reads the parent process now (first thing in `main`).
pub fn remember_parent() {
    PARENT_AT_START.get_or_init(|| nix::unistd::getppid().as_raw());
}

/// The parent process when this one started.
pub fn parent_at_start() -> i32 {
    *PARENT_AT_START.get_or_init(|| nix::unistd::getppid().as_raw())
}

/// `--instance`, else `$SHMKLINE_INSTANCE`, else `default`.
pub fn instance_or_default(given: Option<InstanceName>) -> Result<InstanceName> {
    Ok(match given {
        Some(name) => name,
        None => InstanceName::from_env_or("default")?,
    })
}

/// The worker binary given, or `shmkline-worker` next to this executable.
pub fn worker_bin_or_default(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("shmkline-worker"))
            .ok_or_else(|| anyhow!("cannot locate shmkline-worker: pass --worker-bin")),
    }
}
