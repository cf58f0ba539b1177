//! What both binaries share at their edges: exit codes (scripts rely on
//! them), how an error is reported, and how logging starts.

use std::path::PathBuf;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::store::OpenError;

/// Any failure; the message is on stderr.
pub const FAILURE: u8 = 1;
/// The command line was wrong (clap's own code).
pub const USAGE: u8 = 2;
/// The named instance is not running: it has no store segment.
pub const NOT_RUNNING: u8 = 3;

/// The exit code for an error: [`NOT_RUNNING`] if anything in its chain of
/// causes is a missing store, [`FAILURE`] otherwise.
pub fn code_for(err: &(dyn std::error::Error + 'static)) -> u8 {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(OpenError::NotFound { .. }) = e.downcast_ref::<OpenError>() {
            return NOT_RUNNING;
        }
        if e.downcast_ref::<NotRunning>().is_some() {
            return NOT_RUNNING;
        }
        cause = e.source();
    }
    FAILURE
}

/// No coordinator listens for the instance: its control socket is missing
/// or refuses connections.
#[derive(Debug, thiserror::Error)]
#[error("no instance is running there: no control socket at {}", .0.display())]
pub struct NotRunning(pub PathBuf);

/// Logs to stderr, filtered by `$SHMKLINE_LOG` (default `info`), coloured
/// only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("SHMKLINE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
}

/// Reports `err` on stderr with its chain of causes (`error: what: why`)
/// and gives the exit code for it.
pub fn report(err: &(dyn std::error::Error + 'static)) -> ExitCode {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    eprintln!("error: {message}");
    ExitCode::from(code_for(err))
}
