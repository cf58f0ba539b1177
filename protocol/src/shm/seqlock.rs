//! The per-slot seqlock: one writer, any number of readers that only load.
//!
//! # Protocol
//!
//! A slot is a sequence word `seq` plus payload words, all `AtomicU64`
//! (relaxed atomic accesses, never plain or volatile copies: those would be
//! data races, i.e. undefined behaviour, whenever a read overlaps a write).
//!
//! Writer (exactly one per slot, here: the coordinator):
//! ```text
//! s = seq                        (its own last store; Relaxed)
//! seq = s + 1                    Relaxed        -- odd: write in progress
//! fence(Release)                                -- W1
//! payload[i] = v[i]              Relaxed
//! seq = s + 2                    Release        -- W2
//! ```
//! Reader:
//! ```text
//! s1 = seq                       Relaxed
//! fence(Acquire)                                -- R1
//! v[i] = payload[i]              Relaxed
//! fence(Acquire)                                -- R2
//! s2 = seq                       Relaxed
//! accept v  iff  s1 is even and s2 == s1
//! ```
//!
//! # Why each ordering is needed
//!
//! * R1 pairs with W2: if `s1` is the value a completed write stored, every
//!   payload store of that write happens-before the payload loads, so the
//!   reader cannot see payload older than `s1` claims.
//! * W1 pairs with R2: if any payload load saw a store of a later write, the
//!   `seq = s+1` of that write happens-before `s2`'s load, so `s2 != s1` and
//!   the mixed payload is rejected.
//! * W2 being `Release` is what R1 synchronises with.
//!
//! `tests/loom_seqlock.rs` removes each of W1, R1, R2 in turn (through
//! [`Variant`]) and shows loom finds an accepted torn read every time; the
//! correct protocol passes.
//!
//! Readers only load, so the protocol works on a `PROT_READ` mapping: no CAS,
//! no `fetch_add`, no 128-bit atomics on the read side, ever.

use super::sync::{AtomicU64, Ordering, fence};

/// Which orderings the protocol uses. Production code always uses
/// [`Variant::CORRECT`]; the other settings exist so the loom model can prove
/// that removing any one of them is caught. The flags are constants at every
/// call site, so the branches compile away.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// W1: the writer's Release fence after marking the slot odd.
    pub writer_release_fence: bool,
    /// R1: the reader's Acquire fence after its first load of `seq`.
    pub reader_first_acquire: bool,
    /// R2: the reader's Acquire fence before it re-checks `seq`.
    pub reader_final_acquire: bool,
}

impl Variant {
    /// The protocol as documented above.
    pub const CORRECT: Variant = Variant {
        writer_release_fence: true,
        reader_first_acquire: true,
        reader_final_acquire: true,
    };
}

/// One read attempt: the payload as loaded and whether the protocol accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<T> {
    /// What the payload loads returned; trustworthy only if `accepted`.
    pub value: T,
    /// The sequence observed before the payload loads.
    pub seq: u64,
    /// True when the value is a consistent snapshot of one completed write.
    pub accepted: bool,
}

/// Writes one slot. `store_payload` must store every payload word with
/// `Ordering::Relaxed` and nothing else. The caller must be the slot's only writer.
#[inline(always)]
pub fn write<F: FnOnce()>(seq: &AtomicU64, store_payload: F) {
    write_with(Variant::CORRECT, seq, store_payload)
}

/// [`write`] with the orderings chosen by `variant` (for the model check).
#[doc(hidden)]
#[inline(always)]
pub fn write_with<F: FnOnce()>(variant: Variant, seq: &AtomicU64, store_payload: F) {
    // Single writer: this is our own last store, so Relaxed sees it.
    let s = seq.load(Ordering::Relaxed);
    debug_assert!(
        s.is_multiple_of(2),
        "seqlock writer found its slot odd ({s})"
    );
    seq.store(s.wrapping_add(1), Ordering::Relaxed);
    if variant.writer_release_fence {
        fence(Ordering::Release);
    }
    store_payload();
    seq.store(s.wrapping_add(2), Ordering::Release);
}

/// Makes one read attempt. `load_payload` must load every payload word with
/// `Ordering::Relaxed` and must not store into the shared segment (it may be
/// mapped read-only); writing what it loaded into private memory is fine.
#[inline(always)]
pub fn read_once<T, F: FnOnce() -> T>(seq: &AtomicU64, load_payload: F) -> Attempt<T> {
    read_once_with(Variant::CORRECT, seq, load_payload)
}

/// [`read_once`] with the orderings chosen by `variant` (for the model check).
#[doc(hidden)]
#[inline(always)]
pub fn read_once_with<T, F: FnOnce() -> T>(
    variant: Variant,
    seq: &AtomicU64,
    load_payload: F,
) -> Attempt<T> {
    let s1 = seq.load(Ordering::Relaxed);
    if variant.reader_first_acquire {
        fence(Ordering::Acquire);
    }
    let value = load_payload();
    if variant.reader_final_acquire {
        fence(Ordering::Acquire);
    }
    let s2 = seq.load(Ordering::Relaxed);
    Attempt {
        value,
        seq: s1,
        accepted: s1.is_multiple_of(2) && s1 == s2,
    }
}
