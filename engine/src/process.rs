//! Child processes the engine starts and must never leave behind.

use std::process::{Child, ExitStatus};

/// SIGKILLs `child` (if it still runs) and reaps it: no zombie, whatever
/// state it was in. Returns its exit status when it could be read.
pub fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    // An error means it already exited; `wait` reaps it either way.
    let _ = child.kill();
    child.wait().ok()
}
