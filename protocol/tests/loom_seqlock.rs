//! Model check of the seqlock core (`protocol::shm::seqlock`) with loom.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p shmkline-protocol --test loom_seqlock --release`
//! (`scripts/test.sh` and `.ci/run` do). Loom runs the writer and the reader
//! under every interleaving and lets relaxed loads return any value the C++/Rust
//! memory model allows, so a missing fence shows up as an accepted torn read
//! even on x86, where the hardware would hide it.
//!
//! Each write stores version `v` into both payload words, so a read accepted at
//! sequence `s` must see exactly `(s / 2, s / 2)`. The correct protocol passes;
//! each variant with one ordering removed is expected to fail that check.

#![cfg(loom)]

use std::collections::BTreeSet;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering::Relaxed};
use loom::thread;
use protocol::shm::seqlock::{Variant, read_once_with, write_with};

struct Slot {
    seq: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

/// Writes made by the writer per execution. Two lets a reader observe a slot
/// between writes as well as during them.
const WRITES: u64 = 2;

/// What the reader saw in one execution: (sequence, accepted).
type Outcomes = std::sync::Arc<std::sync::Mutex<BTreeSet<(u64, bool)>>>;

/// Runs the model and returns every (sequence, accepted) outcome the reader
/// reached across all explored executions.
///
/// The writer runs on the model's main thread and the reader on a spawned
/// one: with the roles the other way round, loom 0.7.2 never scheduled the
/// writer ahead of the reader's first load and so missed the stale-read
/// executions entirely. The coverage assertions in the tests below guard
/// against such a blind spot returning.
fn check(variant: Variant) -> BTreeSet<(u64, bool)> {
    let outcomes: Outcomes = Default::default();
    let seen = outcomes.clone();
    loom::model(move || {
        let slot = Arc::new(Slot {
            seq: AtomicU64::new(0),
            a: AtomicU64::new(0),
            b: AtomicU64::new(0),
        });
        let r = Arc::clone(&slot);
        let seen = seen.clone();
        let reader = thread::spawn(move || {
            let attempt =
                read_once_with(variant, &r.seq, || (r.a.load(Relaxed), r.b.load(Relaxed)));
            seen.lock()
                .expect("outcome set poisoned")
                .insert((attempt.seq, attempt.accepted));
            if attempt.accepted {
                let version = attempt.seq / 2;
                assert_eq!(
                    attempt.value,
                    (version, version),
                    "torn read accepted at sequence {}",
                    attempt.seq
                );
            }
        });
        for v in 1..=WRITES {
            write_with(variant, &slot.seq, || {
                slot.a.store(v, Relaxed);
                slot.b.store(v, Relaxed);
            });
        }
        reader.join().expect("reader thread panicked");
    });
    let set = outcomes.lock().expect("outcome set poisoned").clone();
    set
}

#[test]
fn correct_protocol_never_accepts_a_torn_read() {
    let outcomes = check(Variant::CORRECT);
    // The model must have reached reads before, between and after the writes
    // (accepted at every even sequence) and reads that overlapped a write
    // (rejected), or passing would prove nothing.
    for version in 0..=WRITES {
        assert!(
            outcomes.contains(&(2 * version, true)),
            "no accepted read at version {version}: {outcomes:?}"
        );
    }
    assert!(
        outcomes.iter().any(|&(_, accepted)| !accepted),
        "no rejected read explored: {outcomes:?}"
    );
}

#[test]
#[should_panic(expected = "torn read accepted")]
fn without_the_writers_release_fence_a_torn_read_is_accepted() {
    check(Variant {
        writer_release_fence: false,
        ..Variant::CORRECT
    });
}

#[test]
#[should_panic(expected = "torn read accepted")]
fn without_the_readers_final_acquire_fence_a_torn_read_is_accepted() {
    check(Variant {
        reader_final_acquire: false,
        ..Variant::CORRECT
    });
}

#[test]
#[should_panic(expected = "torn read accepted")]
fn without_acquire_on_the_first_sequence_load_a_stale_read_is_accepted() {
    check(Variant {
        reader_first_acquire: false,
        ..Variant::CORRECT
    });
}
