//! Behaviour of the store through its public API, in one process: the writer
//! on a read-write mapping, the reader on a read-only mapping of the same
//! segment.

#![cfg(not(loom))]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use protocol::store::{
    OpenError, ReadError, StoreConfig, StoreReader, StoreWriter, Upsert, UpsertError, Wait,
    WriteError,
};
use protocol::{Candle, InstanceName, Interval, SymbolName};

/// A unique instance per test; the segment is unlinked on drop even if the test fails.
struct Name(InstanceName);

impl Name {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(InstanceName::new(&format!("pt{}_{n}", std::process::id())).expect("valid name"))
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = nix::sys::mman::shm_unlink(self.0.segment_name().as_str());
    }
}

fn config(symbols: u32, candles: u32) -> StoreConfig {
    StoreConfig::uniform(symbols, &[Interval::M1, Interval::M5], candles)
}

fn candle(open_time: i64, close: f64) -> Candle {
    Candle {
        open_time,
        open: close - 1.0,
        high: close + 2.0,
        low: close - 2.0,
        close,
        volume: 10.0,
    }
}

fn series(w: &mut StoreWriter, symbol: &str, interval: Interval) -> protocol::store::SeriesId {
    let id = w.register_symbol(&sym(symbol)).expect("register");
    w.series(id, interval).expect("series")
}

fn sym(s: &str) -> SymbolName {
    SymbolName::new(s).expect("valid symbol")
}

#[test]
fn upsert_updates_in_place_appends_and_rejects_older() {
    let name = Name::new();
    let mut w = StoreWriter::create(&name.0, &config(4, 8)).expect("create");
    let btc = w.register_symbol(&sym("BTCUSDT")).expect("register");
    let s = w.series(btc, Interval::M1).expect("series");
    assert_eq!(w.upsert(s, &candle(60_000, 1.0)), Ok(Upsert::Appended(0)));
    assert_eq!(w.upsert(s, &candle(60_000, 2.0)), Ok(Upsert::Updated(0)));
    assert_eq!(w.upsert(s, &candle(120_000, 3.0)), Ok(Upsert::Appended(1)));
    assert_eq!(
        w.upsert(s, &candle(60_000, 9.0)),
        Err(UpsertError::Stale {
            open_time: 60_000,
            latest: 120_000
        })
    );
    let mut bad = candle(180_000, 1.0);
    bad.high = f64::NAN;
    assert!(matches!(
        w.upsert(s, &bad),
        Err(UpsertError::NonFinite { .. })
    ));
    w.publish();
    let stats = w.stats();
    assert_eq!(
        (
            stats.appended,
            stats.updated,
            stats.rejected_stale,
            stats.rejected_invalid
        ),
        (2, 1, 1, 1)
    );

    let r = StoreReader::open(&name.0).expect("open read-only");
    let rs = r
        .series(
            r.symbol_id("BTCUSDT").expect("symbol visible"),
            Interval::M1,
        )
        .expect("series");
    let mut out = Vec::new();
    r.last_n(rs, 10, &mut out).expect("read");
    let closes: Vec<(u64, i64, f64)> = out
        .iter()
        .map(|c| (c.index, c.candle.open_time, c.candle.close))
        .collect();
    // The in-place update replaced 1.0 by 2.0; the rejected writes left no trace.
    assert_eq!(closes, vec![(0, 60_000, 2.0), (1, 120_000, 3.0)]);
    assert_eq!(
        r.latest(rs).expect("read").map(|c| c.candle),
        Some(candle(120_000, 3.0))
    );
}

#[test]
fn ring_wraps_and_keeps_absolute_indices() {
    let name = Name::new();
    let mut w = StoreWriter::create(&name.0, &config(1, 4)).expect("create");
    let s = series(&mut w, "ETHUSDT", Interval::M5);
    for i in 0..10 {
        w.upsert(s, &candle(i * 300_000, i as f64)).expect("append");
    }
    w.publish();
    let r = StoreReader::open(&name.0).expect("open");
    let mut out = Vec::new();
    r.last_n(s, 100, &mut out).expect("read");
    let idx: Vec<u64> = out.iter().map(|c| c.index).collect();
    assert_eq!(idx, vec![6, 7, 8, 9], "only the ring's 4 newest remain");
    r.last_n(s, 2, &mut out).expect("read");
    assert_eq!(
        out.iter().map(|c| c.candle.close).collect::<Vec<_>>(),
        vec![8.0, 9.0]
    );
}

#[test]
fn changed_since_returns_what_later_batches_wrote() {
    let name = Name::new();
    let mut w = StoreWriter::create(&name.0, &config(2, 4)).expect("create");
    let s = series(&mut w, "AA", Interval::M1);
    let other = series(&mut w, "BB", Interval::M1);
    w.upsert(s, &candle(0, 1.0)).expect("write");
    w.upsert(s, &candle(60_000, 2.0)).expect("write");
    let p1 = w.publish();
    w.upsert(s, &candle(60_000, 2.5)).expect("update in place");
    w.upsert(s, &candle(120_000, 3.0)).expect("append");
    w.upsert(other, &candle(0, 7.0)).expect("write");
    let p2 = w.publish();
    let r = StoreReader::open(&name.0).expect("open");
    let mut out = Vec::new();
    let res = r.changed_since(s, p1, &mut out).expect("read");
    assert_eq!(
        out.iter()
            .map(|c| (c.index, c.candle.close))
            .collect::<Vec<_>>(),
        vec![(1, 2.5), (2, 3.0)]
    );
    assert!(!res.possible_gap);
    r.changed_since(s, p2, &mut out).expect("read");
    assert!(out.is_empty(), "nothing changed after the last batch");
    r.changed_since(s, 0, &mut out).expect("read");
    assert_eq!(out.len(), 3);
    // Five more appends wrap the 4-slot ring past everything changed since p2.
    for i in 3..8 {
        w.upsert(s, &candle(i * 60_000, i as f64)).expect("append");
    }
    w.publish();
    let res = r.changed_since(s, p2, &mut out).expect("read");
    assert_eq!(
        out.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    assert!(res.possible_gap, "candle 3 was overwritten unread");
}

#[test]
fn all_intervals_of_a_symbol() {
    let name = Name::new();
    let mut w = StoreWriter::create(&name.0, &config(2, 4)).expect("create");
    let id = w.register_symbol(&sym("SOLUSDT")).expect("register");
    let m5 = w.series(id, Interval::M5).expect("series");
    w.upsert(m5, &candle(300_000, 5.0)).expect("write");
    w.publish();
    let r = StoreReader::open(&name.0).expect("open");
    let mut out = Vec::new();
    r.symbol_latest(r.symbol_id("SOLUSDT").expect("symbol"), &mut out)
        .expect("read");
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], (Interval::M1, None));
    assert_eq!(out[1].0, Interval::M5);
    assert_eq!(out[1].1.map(|c| c.candle.close), Some(5.0));
    assert!(matches!(
        r.series(id, Interval::H1),
        Err(ReadError::IntervalNotKept(Interval::H1))
    ));
}

#[test]
fn full_symbol_table_is_an_error_not_a_drop() {
    let name = Name::new();
    let mut w = StoreWriter::create(&name.0, &config(2, 4)).expect("create");
    let a = w.register_symbol(&sym("AA")).expect("first");
    w.register_symbol(&sym("BB")).expect("second");
    assert_eq!(
        w.register_symbol(&sym("AA")),
        Ok(a),
        "re-registering is idempotent"
    );
    let err = w.register_symbol(&sym("CC")).expect_err("table is full");
    assert!(matches!(
        err,
        WriteError::SymbolTableFull { capacity: 2, .. }
    ));
    assert!(err.to_string().contains("--max-symbols"), "{err}");
    let r = StoreReader::open(&name.0).expect("open");
    assert_eq!(r.symbols(), vec!["AA".to_owned(), "BB".to_owned()]);
}

/// Needs the `testing` feature's fault injection (the workspace's tests
/// enable it).
#[cfg(feature = "testing")]
#[test]
fn reader_gives_up_on_a_slot_left_mid_write() {
    let name = Name::new();
    let mut w = StoreWriter::create(&name.0, &config(1, 4)).expect("create");
    let s = series(&mut w, "XX", Interval::M1);
    w.upsert(s, &candle(0, 1.0)).expect("write");
    w.publish();
    w.simulate_death_mid_write(s, 0);
    let r = StoreReader::open(&name.0).expect("open");
    let started = Instant::now();
    let err = r.latest(s).expect_err("slot is odd forever");
    // Liveness only (not a speed target): the read returns instead of spinning.
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        ReadError::Stalled {
            index,
            seq,
            waited_us,
            ..
        } => {
            assert_eq!(index, 0);
            assert_eq!(seq % 2, 1, "the reader saw the odd sequence");
            assert!(
                waited_us >= 1000,
                "gave up after the 1 ms stall timeout, not before: {waited_us}"
            );
        }
        other => panic!("expected Stalled, got {other:?}"),
    }
    assert!(r.retries() > 0);
}

#[test]
fn wait_for_change_wakes_on_publish_and_times_out_otherwise() {
    let name = Name::new();
    let mut w = StoreWriter::create(&name.0, &config(1, 4)).expect("create");
    let r = StoreReader::open(&name.0).expect("open");
    assert_eq!(
        r.wait_for_change(0, Duration::from_millis(20))
            .expect("wait"),
        Wait::TimedOut
    );
    let waiter = std::thread::spawn(move || r.wait_for_change(0, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(20));
    let published = w.publish();
    let got = waiter.join().expect("waiter thread").expect("wait");
    assert_eq!(got, Wait::Changed(published));
}

#[test]
fn info_reports_the_header() {
    let name = Name::new();
    let mut w = StoreWriter::create(&name.0, &config(3, 16)).expect("create");
    w.register_symbol(&sym("BTCUSDT")).expect("register");
    w.publish();
    let r = StoreReader::open(&name.0).expect("open");
    let info = r.info();
    assert_eq!(info.generation, w.generation());
    assert_eq!(info.writer_pid, std::process::id());
    assert!(info.writer_running);
    assert_eq!(info.publish_counter, 1);
    assert_eq!(info.symbols, vec!["BTCUSDT".to_owned()]);
    assert_eq!(info.size_bytes, w.size_bytes());
    assert_eq!(info.rings, vec![(Interval::M1, 16), (Interval::M5, 16)]);
}

#[test]
fn creating_twice_fails_and_dropping_the_writer_unlinks() {
    let name = Name::new();
    let w = StoreWriter::create(&name.0, &config(1, 4)).expect("create");
    assert!(matches!(
        StoreWriter::create(&name.0, &config(1, 4)),
        Err(protocol::store::StoreCreateError::AlreadyExists { .. })
    ));
    drop(w);
    assert!(matches!(
        StoreReader::open(&name.0),
        Err(OpenError::NotFound { .. })
    ));
}

#[test]
fn closed_flag_and_ranges() {
    let name = Name::new();
    let mut w = StoreWriter::create(&name.0, &config(1, 4)).expect("create");
    let s = series(&mut w, "BTCUSDT", Interval::M1);
    w.upsert(s, &candle(0, 1.0)).expect("in progress");
    w.upsert_closed(s, &candle(0, 1.5)).expect("closed");
    for i in 1..6 {
        w.upsert(s, &candle(i * 60_000, i as f64)).expect("append");
    }
    w.publish();
    let r = StoreReader::open(&name.0).expect("open");
    let mut out = Vec::new();
    r.read_range(s, 3, 6, &mut out).expect("in the ring");
    assert_eq!(
        out.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(
        out.iter().all(|c| !c.closed),
        "written without the closed mark"
    );
    assert!(matches!(
        r.read_range(s, 1, 3, &mut out),
        Err(ReadError::Gone {
            index: 1,
            oldest: 2,
            ..
        })
    ));
    assert!(matches!(
        r.read_range(s, 4, 7, &mut out),
        Err(ReadError::NotYet {
            end: 7,
            head: 6,
            ..
        })
    ));
    r.read_range(s, 5, 5, &mut out).expect("empty range");
    assert!(out.is_empty());
    // A closed mark survives the round trip.
    let name2 = Name::new();
    let mut w2 = StoreWriter::create(&name2.0, &config(1, 4)).expect("create");
    let s2 = series(&mut w2, "ETHUSDT", Interval::M1);
    w2.upsert_closed(s2, &candle(0, 2.0)).expect("closed");
    w2.publish();
    let r2 = StoreReader::open(&name2.0).expect("open");
    let latest = r2.latest(s2).expect("read").expect("a candle");
    assert!(latest.closed);
    assert_eq!(latest.candle.close, 2.0);
}

/// Rings of different sizes per interval: each series keeps its own ring's
/// worth, wraps at its own size, and a reader sees the sizes the writer made.
#[test]
fn each_interval_keeps_its_own_ring() {
    let name = Name::new();
    let config = StoreConfig {
        symbols: 2,
        rings: vec![(Interval::M1, 8), (Interval::H1, 40)],
    };
    let mut w = StoreWriter::create(&name.0, &config).expect("create");
    let m1 = series(&mut w, "AA", Interval::M1);
    let h1 = series(&mut w, "AA", Interval::H1);
    let b1 = series(&mut w, "BB", Interval::M1);
    for k in 0..50 {
        w.upsert(m1, &candle(k * 60_000, k as f64)).expect("m1");
        w.upsert(h1, &candle(k * 3_600_000, k as f64)).expect("h1");
        w.upsert(b1, &candle(k * 60_000, -(k as f64))).expect("b1");
    }
    w.publish();
    let r = StoreReader::open(&name.0).expect("open");
    assert_eq!((r.ring(m1), r.ring(h1)), (8, 40));
    assert_eq!(r.ring_of(Interval::H1), Some(40));
    let mut out = Vec::new();
    r.last_n(m1, 100, &mut out).expect("m1");
    assert_eq!(out.len(), 8, "a 1m ring keeps 8");
    assert_eq!(out.last().map(|c| c.index), Some(49));
    r.last_n(h1, 100, &mut out).expect("h1");
    assert_eq!(out.len(), 40, "a 1h ring keeps 40");
    assert_eq!(out.first().map(|c| c.index), Some(10));
    r.last_n(b1, 100, &mut out).expect("b1");
    assert!(out.iter().all(|c| c.candle.open <= 0.0), "B's ring is B's");
}
