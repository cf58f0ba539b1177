//! A worker's mapping is read-only in fact, not by convention: a store into it
//! kills the process with SIGSEGV and changes nothing.

use std::os::unix::process::ExitStatusExt;

use harness::TestInstance;
use protocol::store::{StoreConfig, StoreReader, StoreWriter};
use protocol::{Candle, Interval, SymbolName};

fn store(inst: &TestInstance) -> StoreWriter {
    let config = StoreConfig::uniform(2, &[Interval::M1], 8);
    let mut w = StoreWriter::create(&inst.name, &config).expect("create store");
    let id = w
        .register_symbol(&SymbolName::new("BTCUSDT").expect("symbol"))
        .expect("register");
    let s = w.series(id, Interval::M1).expect("series");
    let c = Candle {
        open_time: 60_000,
        open: 1.0,
        high: 2.0,
        low: 0.5,
        close: 1.5,
        volume: 7.0,
    };
    w.upsert(s, &c).expect("upsert");
    w.publish();
    w
}

#[test]
fn worker_attaches_read_only() {
    let inst = TestInstance::new("ro");
    let w = store(&inst);
    let out = inst
        .command("shmkline-worker")
        .output()
        .expect("run worker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("segment info JSON");
    assert_eq!(info["generation"].as_u64(), Some(w.generation()));
    assert_eq!(info["symbols"][0], "BTCUSDT");
}

#[test]
fn worker_writing_to_its_mapping_dies_with_sigsegv() {
    let inst = TestInstance::new("segv");
    let w = store(&inst);
    let out = inst
        .command("shmkline-worker")
        .args(["--test-fault", "write-segment"])
        .output()
        .expect("run worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mapped the store read-only"),
        "the worker attached first: {stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc_sigsegv()),
        "expected SIGSEGV, got {:?}",
        out.status
    );
    // The store is intact: same magic, same candle.
    let r = StoreReader::open(&inst.name).expect("still a valid store");
    let s = r
        .series(r.symbol_id("BTCUSDT").expect("symbol"), Interval::M1)
        .expect("series");
    assert_eq!(
        r.latest(s).expect("read").map(|c| c.candle.volume),
        Some(7.0)
    );
    drop(w);
    inst.assert_clean();
}

fn libc_sigsegv() -> i32 {
    nix::sys::signal::Signal::SIGSEGV as i32
}
