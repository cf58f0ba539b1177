//! Shared memory, seqlock and futex: the one place in shmkline with `unsafe`.
//!
//! Everything above this module sees the segment as a slice of `AtomicU64`
//! words and never touches a raw pointer. Each `unsafe` block below carries a
//! `// SAFETY:` comment with the invariant it relies on.

#![allow(unsafe_code)]

pub mod seqlock;
mod sync;

#[cfg(all(not(loom), feature = "testing"))]
pub mod fault;
#[cfg(not(loom))]
pub mod futex;
#[cfg(not(loom))]
pub(crate) mod mapping;
#[cfg(not(loom))]
pub mod scratch;
