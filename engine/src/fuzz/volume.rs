//! The volume fuzzer: a target run on mutations of its seeds and kept
//! inputs, panics caught and reported with their inputs. No coverage
//! guidance (that is libFuzzer's, in `tests/fuzz/`); stable Rust only, so
//! it always runs, in the suite and in `scripts/fuzz.sh`'s fallback.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Instant;

use protocol::splitmix::SplitMix64;

use super::Target;

/// What a volume run found.
#[derive(Debug, Default)]
pub struct VolumeReport {
    /// Inputs run.
    pub tried: u64,
    /// Inputs that panicked, with the panic's message.
    pub crashes: Vec<(Vec<u8>, String)>,
}

/// Crashes kept per run (the first ones; the count goes on).
const CRASHES_KEPT: usize = 16;
/// Largest input made, bytes.
const MAX_INPUT: usize = 64 << 10;

/// Runs `target` on mutations of its seeds and of `corpus` (the
/// regression inputs) until `budget` inputs or `until`, whichever first;
/// deterministic for a `seed` and a count budget. Panics are caught and
/// reported with their input.
pub fn volume(
    target: &Target,
    corpus: &[Vec<u8>],
    seed: u64,
    budget: u64,
    until: Option<Instant>,
) -> VolumeReport {
    let mut pool: Vec<Vec<u8>> = (target.seeds)();
    pool.extend(corpus.iter().cloned());
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let mut rng = SplitMix64::new(seed);
    let mut report = VolumeReport::default();
    let _quiet = Quiet::new();
    while report.tried < budget && until.is_none_or(|t| Instant::now() < t) {
        let input = mutate(&mut rng, &pool, target.dictionary);
        report.tried += 1;
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            if report.crashes.len() < CRASHES_KEPT {
                report.crashes.push((input, message));
            }
        }
    }
    report
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Silences panic messages on this thread while it lives (the crashes are
/// reported with their inputs instead). The process-wide hook is wrapped
/// once, so fuzzing threads running side by side (tests) cannot leave it
/// swapped, and other threads' panics still print.
struct Quiet;

impl Quiet {
    fn new() -> Self {
        static WRAP: std::sync::Once = std::sync::Once::new();
        WRAP.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(std::cell::Cell::get) {
                    previous(info);
                }
            }));
        });
        QUIET.with(|q| q.set(true));
        Self
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        QUIET.with(|q| q.set(false));
    }
}

/// One input: a pool entry (or nothing) under a few random edits.
fn mutate(rng: &mut SplitMix64, pool: &[Vec<u8>], words: &[&str]) -> Vec<u8> {
    let mut b = if rng.below(32) == 0 {
        Vec::new()
    } else {
        pool[rng.below(pool.len())].clone()
    };
    for _ in 0..=rng.below(8) {
        let at = rng.below(b.len() + 1);
        match rng.below(9) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                const ODD: [u8; 10] = [0, 0xff, 0x7f, 0x80, b'"', b'{', b'\n', b'9', b'-', b'.'];
                b[i] = ODD[rng.below(ODD.len())];
            }
            2 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            3 if !b.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                let start = at.min(end);
                b.drain(start..end);
            }
            4 if !b.is_empty() => {
                // A stretch repeated: long numbers, deep nesting.
                let start = rng.below(b.len());
                let end = (start + 1 + rng.below(32)).min(b.len());
                let piece = b[start..end].to_vec();
                for _ in 0..=rng.below(64) {
                    b.splice(start..start, piece.iter().copied());
                }
            }
            5 if !words.is_empty() => {
                let w = words[rng.below(words.len())];
                b.splice(at..at, w.bytes());
            }
            6 => {
                // Another entry's tail spliced in.
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len() + 1);
                b.truncate(at);
                b.extend_from_slice(&other[from..]);
            }
            7 if b.len() >= 8 => {
                // A little-endian word set to a boundary value: lengths,
                // counts and header fields.
                let i = rng.below(b.len() - 7) & !7;
                const WORDS: [u64; 6] = [0, 1, u64::MAX, u32::MAX as u64, 1 << 31, 4096];
                b[i..i + 8].copy_from_slice(&WORDS[rng.below(WORDS.len())].to_le_bytes());
            }
            _ if !b.is_empty() => {
                let i = rng.below(b.len());
                b.truncate(i);
            }
            _ => {}
        }
    }
    b.truncate(MAX_INPUT);
    b
}

/// The regression inputs of `target` kept in `dir/<target>/`, sorted by
/// name.
pub fn regressions(dir: &Path, target: &Target) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let dir = dir.join(target.name);
    let mut all = Vec::new();
    if !dir.exists() {
        return Ok(all);
    }
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            all.push((
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path())?,
            ));
        }
    }
    all.sort();
    Ok(all)
}
