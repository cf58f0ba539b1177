//! The `stdout` sink: its thread writes each batch in one write. Stdout has
//! no durable position: it gets every signal of this run, and a reader that
//! does not keep up holds up the reader threads (nothing may be dropped).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::{Batch, Output};

/// How often an idle output thread looks whether stdout's reader is gone.
const OUTPUT_POLL: Duration = Duration::from_millis(100);

/// The output thread: writes each batch to stdout in one write, counting
/// what was written. A closed stdout (the reader of a pipe went away, as
/// with `| head`) ends the run, as it ends any Unix tool: its lines count
/// as lost, the coordinator sees [`Output::closed`], stops in order and
/// exits in error.
pub fn spawn_output(
    batches: Receiver<Batch>,
    output: Arc<Output>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("output".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            let mut closed = false;
            loop {
                let batch = match batches.recv_timeout(OUTPUT_POLL) {
                    Ok(batch) => batch,
                    Err(RecvTimeoutError::Timeout) => {
                        // Quiet: a reader that went away shows on the pipe
                        // itself, so the run ends without waiting for a signal.
                        if !closed && reader_gone(&stdout) {
                            tracing::error!("stdout was closed (its reader went away): stopping");
                            closed = true;
                            output.closed.store(true, Ordering::Release);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let mut out = stdout.lock();
                let ok = !closed
                    && out
                        .write_all(&batch.text)
                        .and_then(|()| out.flush())
                        .is_ok();
                if ok {
                    output.count(batch.lines, true);
                } else {
                    if !closed {
                        tracing::error!("stdout was closed (its reader went away): stopping");
                    }
                    closed = true;
                    output.closed.store(true, Ordering::Release);
                    output.count(batch.lines, false);
                }
            }
        })
}

/// Whether stdout is a pipe or socket whose reader is gone (poll says
/// POLLERR or POLLHUP); a terminal or a file never is.
fn reader_gone(stdout: &std::io::Stdout) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}
