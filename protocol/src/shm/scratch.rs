//! A small named read-write region of words shared by cooperating processes
//! that both write (benchmarks' ping-pong baselines and acknowledgements).
//! The candle store never uses it: its readers are read-only.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use nix::errno::Errno;
use thiserror::Error;

use super::futex::{self, WaitOutcome};
use super::mapping::{self, Access, Mapping, Opened};

/// A failure to create or open a scratch region.
#[derive(Debug, Error)]
#[error("shared scratch region {name}: {op} failed: {source}")]
pub struct ScratchError {
    name: String,
    op: &'static str,
    #[source]
    source: Errno,
}

/// `len` words of read-write shared memory under a name. The creator unlinks
/// the name when dropped.
#[derive(Debug)]
pub struct SharedWords {
    mapping: Mapping,
    name: String,
    owner: bool,
}

impl SharedWords {
    /// Creates `name` (exclusively, mode 0600) with `len` zeroed words.
    pub fn create(name: &str, len: usize) -> Result<Self, ScratchError> {
        let err = |(op, source)| ScratchError {
            name: name.to_owned(),
            op,
            source,
        };
        let mapping = Mapping::create(name, len.max(1) * 8).map_err(err)?;
        Ok(Self {
            mapping,
            name: name.to_owned(),
            owner: true,
        })
    }

    /// Opens a region another process created.
    pub fn open(name: &str) -> Result<Self, ScratchError> {
        let err = |(op, source)| ScratchError {
            name: name.to_owned(),
            op,
            source,
        };
        match Mapping::open(name, Access::ReadWrite).map_err(err)? {
            Opened::Mapped(mapping, _) => Ok(Self {
                mapping,
                name: name.to_owned(),
                owner: false,
            }),
            Opened::Empty => Err(err(("fstat", Errno::ENODATA))),
        }
    }

    /// Word `i`; `None` past the end.
    pub fn word(&self, i: usize) -> Option<&AtomicU64> {
        debug_assert_eq!(self.mapping.access(), Access::ReadWrite);
        self.mapping.words().get(i)
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.mapping.len() / 8
    }

    /// Never true: a region has at least one word.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Futex-waits on word `i` while it holds `expected`.
    pub fn wait(
        &self,
        i: usize,
        expected: u64,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, Errno> {
        let word = self.word(i).ok_or(Errno::EINVAL)?;
        futex::wait(word, expected, timeout)
    }

    /// Wakes every waiter on word `i`.
    pub fn wake(&self, i: usize) -> Result<usize, Errno> {
        let word = self.word(i).ok_or(Errno::EINVAL)?;
        futex::wake_all(word)
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        if self.owner {
            let _ = mapping::unlink(&self.name);
        }
    }
}
