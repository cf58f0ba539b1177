//! A worker must refuse any segment that is not a complete shmkline store of
//! its own layout, with the right typed error and without panicking.
//!
//! Bad segments are made by writing bytes into a shared-memory object through
//! its file descriptor (starting from the bytes of a genuine store and breaking
//! one thing at a time).

#![cfg(not(loom))]

use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;
use proptest::prelude::*;
use protocol::store::layout::{HEADER_BYTES, LAYOUT_VERSION, MAGIC};
use protocol::store::{OpenError, StoreConfig, StoreReader, StoreWriter};
use protocol::{Candle, InstanceName, Interval, SymbolName};

struct Name(InstanceName);

impl Name {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(InstanceName::new(&format!("pv{}_{n}", std::process::id())).expect("valid name"))
    }

    /// Replaces the object's content with `bytes`.
    fn write(&self, bytes: &[u8]) {
        let name = self.0.segment_name();
        let _ = shm_unlink(name.as_str());
        let fd = shm_open(
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::from_bits_truncate(0o600),
        )
        .expect("shm_open");
        File::from(fd)
            .write_all(bytes)
            .expect("write segment bytes");
    }

    fn open(&self) -> Result<StoreReader, OpenError> {
        StoreReader::open(&self.0)
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = shm_unlink(self.0.segment_name().as_str());
    }
}

/// The bytes of a genuine, small store with one candle in it.
fn genuine_bytes() -> Vec<u8> {
    let name = Name::new();
    let config = StoreConfig::uniform(2, &[Interval::M1, Interval::H1], 4);
    let mut w = StoreWriter::create(&name.0, &config).expect("create");
    let id = w
        .register_symbol(&SymbolName::new("BTCUSDT").expect("symbol"))
        .expect("register");
    let s = w.series(id, Interval::M1).expect("series");
    w.upsert(
        s,
        &Candle {
            open_time: 0,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: 3.0,
        },
    )
    .expect("upsert");
    w.publish();
    let fd = shm_open(
        name.0.segment_name().as_str(),
        OFlag::O_RDONLY,
        Mode::empty(),
    )
    .expect("shm_open");
    let mut bytes = Vec::new();
    File::from(fd)
        .read_to_end(&mut bytes)
        .expect("read segment");
    bytes
}

fn set_word(bytes: &mut [u8], word: usize, value: u64) {
    bytes[word * 8..word * 8 + 8].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn genuine_copy_opens() {
    let name = Name::new();
    name.write(&genuine_bytes());
    let r = name
        .open()
        .expect("a byte-for-byte copy of a store is a store");
    assert_eq!(r.symbols(), vec!["BTCUSDT".to_owned()]);
}

#[test]
fn missing_segment_is_not_found() {
    let name = Name::new();
    let err = name.open().expect_err("nothing there");
    assert!(matches!(err, OpenError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("is the coordinator for this instance running?")
    );
}

#[test]
fn empty_or_unstamped_segment_is_initialising() {
    let name = Name::new();
    name.write(&[]);
    assert!(matches!(name.open(), Err(OpenError::Initialising { .. })));
    let mut bytes = genuine_bytes();
    set_word(&mut bytes, 0, 0); // the creator writes the magic last
    name.write(&bytes);
    assert!(matches!(name.open(), Err(OpenError::Initialising { .. })));
}

#[test]
fn shorter_than_a_header_is_truncated() {
    let name = Name::new();
    name.write(&genuine_bytes()[..100]);
    match name.open() {
        Err(OpenError::Truncated { size, min, .. }) => assert_eq!((size, min), (100, HEADER_BYTES)),
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn foreign_magic_is_foreign() {
    let name = Name::new();
    name.write(&[0x42; 4096]);
    match name.open() {
        Err(e @ OpenError::Foreign { found, .. }) => {
            assert_eq!(found, 0x4242_4242_4242_4242);
            assert!(e.to_string().contains("not a shmkline store"));
        }
        other => panic!("expected Foreign, got {other:?}"),
    }
}

#[test]
fn other_layout_version_is_a_version_mismatch() {
    let name = Name::new();
    let mut bytes = genuine_bytes();
    set_word(&mut bytes, 1, LAYOUT_VERSION + 1);
    name.write(&bytes);
    match name.open() {
        Err(OpenError::VersionMismatch {
            found, expected, ..
        }) => {
            assert_eq!((found, expected), (LAYOUT_VERSION + 1, LAYOUT_VERSION))
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

#[test]
fn wrong_size_is_a_size_mismatch() {
    let name = Name::new();
    let bytes = genuine_bytes();
    name.write(&bytes[..bytes.len() - 64]);
    assert!(matches!(name.open(), Err(OpenError::SizeMismatch { .. })));
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 8]);
    name.write(&longer);
    match name.open() {
        Err(OpenError::SizeMismatch {
            expected, actual, ..
        }) => assert_eq!(actual, expected + 8),
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
}

#[test]
fn nonsense_capacities_are_a_corrupt_header() {
    let name = Name::new();
    // Symbols, interval count, size, an interval code, a ring (line 5).
    for (word, value) in [(2, 0), (3, 99), (5, 12345), (16, 7), (80, 1), (80, 1 << 40)] {
        let mut bytes = genuine_bytes();
        set_word(&mut bytes, word, value);
        name.write(&bytes);
        match name.open() {
            Err(OpenError::CorruptHeader { .. }) => {}
            other => panic!("word {word} = {value}: expected CorruptHeader, got {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let name = Name::new();
        name.write(&bytes);
        // Random bytes cannot carry the magic number by accident often enough to matter;
        // if they ever do, the header checks still apply. Either way: no panic.
        let _ = name.open();
    }

}

/// Headers of a genuine store with 1 to 5 words overwritten by arbitrary
/// values (the magic kept): none makes `open` panic, and whatever survives
/// validation is safe to read everywhere. The mutations must reach both
/// outcomes, or the test would prove nothing about one of them: some
/// headers refused (a validated word broken), some accepted (only words the
/// reader does not rely on changed).
#[test]
fn mutated_headers_never_panic_and_reach_both_outcomes() {
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    let (accepted, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let mutations = proptest::collection::vec((0usize..HEADER_BYTES / 8, any::<u64>()), 1..6);
    runner
        .run(&mutations, |mutations| {
            let name = Name::new();
            let mut bytes = genuine_bytes();
            for &(word, value) in &mutations {
                set_word(&mut bytes, word, value);
            }
            set_word(&mut bytes, 0, MAGIC);
            name.write(&bytes);
            match name.open() {
                Ok(reader) => {
                    accepted.set(accepted.get() + 1);
                    let info = reader.info();
                    let mut out = Vec::new();
                    for symbol in info.symbols {
                        if let Some(id) = reader.symbol_id(&symbol) {
                            for &interval in reader.intervals() {
                                if let Ok(series) = reader.series(id, interval) {
                                    let _ = reader.last_n(series, usize::MAX, &mut out);
                                    let _ = reader.changed_since(series, 0, &mut out);
                                }
                            }
                        }
                    }
                }
                Err(_) => refused.set(refused.get() + 1),
            }
            Ok(())
        })
        .expect("no mutation makes open or a read panic");
    assert!(
        accepted.get() > 0 && refused.get() > 0,
        "both outcomes reached: {} accepted, {} refused",
        accepted.get(),
        refused.get()
    );
}
