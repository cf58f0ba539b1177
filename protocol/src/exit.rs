//! Exit codes of `shmkline` and `shmkline-worker`. Scripts rely on them, so
//! both binaries take them from here.

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
        cause = e.source();
    }
    FAILURE
}
