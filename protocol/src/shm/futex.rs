//! Shared (cross-process) futex wait and wake on a word of a mapping.
//!
//! Never `FUTEX_PRIVATE_FLAG`: the waiter and the waker are different
//! processes, and the kernel keys a shared futex on the backing page, so the
//! same word works on a read-write and a read-only mapping of it.
//!
//! A futex is 32 bits wide, the words here are 64: the futex is the word's
//! low half (little-endian, enforced below). A waiter compares that half, so a
//! wait could miss a change only if the 64-bit counter moved by an exact
//! multiple of 2^32 between the caller's load and the syscall.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use nix::errno::Errno;

#[cfg(not(target_endian = "little"))]
compile_error!("futex-on-the-low-half requires a little-endian target");

/// Why a wait returned. Callers always re-check the word: wake-ups can be spurious.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// A `FUTEX_WAKE` arrived.
    Woken,
    /// The word no longer held the expected value when the kernel looked.
    ValueChanged,
    /// The timeout passed.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// Sleeps while the low 32 bits of `word` equal those of `expected`, at most
/// `timeout` (forever with `None`).
pub fn wait(
    word: &AtomicU64,
    expected: u64,
    timeout: Option<Duration>,
) -> Result<WaitOutcome, Errno> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, 8-byte-aligned atomic, so its low half is a
    // valid, aligned 4-byte futex word for the whole call; FUTEX_WAIT only reads
    // it. `ts_ptr` is null or points at `ts`, alive until the call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr().cast::<u32>(),
            libc::FUTEX_WAIT,
            expected as u32,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == 0 {
        return Ok(WaitOutcome::Woken);
    }
    match Errno::last() {
        Errno::EAGAIN => Ok(WaitOutcome::ValueChanged),
        Errno::ETIMEDOUT => Ok(WaitOutcome::TimedOut),
        Errno::EINTR => Ok(WaitOutcome::Interrupted),
        e => Err(e),
    }
}

/// Wakes every waiter on `word`; returns how many were woken.
pub fn wake_all(word: &AtomicU64) -> Result<usize, Errno> {
    // SAFETY: as in `wait`; FUTEX_WAKE uses the address only as a key and does
    // not access the memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr().cast::<u32>(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc as usize)
    }
}
