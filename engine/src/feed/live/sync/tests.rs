//! The sync thread's repairs, event by event: the events a connection
//! thread would queue are handed to it directly, REST answers come from the
//! stand-in, and the store is read back after each step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use protocol::store::{StoreConfig, StoreReader, StoreWriter};
use protocol::{Candle, InstanceName, Interval, SymbolName};
use testkit::exchange::{MockBinance, timeline};

use super::super::conn::{self, Opener};
use super::super::health::LiveHealth;
use super::super::options::{DEFAULT_QUEUED_BYTES, LiveOptions};
use super::super::rest::{DEFAULT_WEIGHT_PER_MINUTE, Rest};
use super::{Phase, Sync};
use crate::feed::writer::FeedWriter;
use crate::kline::Kline;

/// A sync thread's state for BTCUSDT 1m, live, over an empty store, its
/// REST the stand-in's (12 candles closed), and the stand-in's candles.
struct Rig {
    sync: Sync,
    name: InstanceName,
    candles: Vec<Candle>,
    // Last: the servers outlive the client.
    _mock: MockBinance,
}

fn rig(tag: &str) -> Rig {
    let series = timeline(&["BTCUSDT"], 20).expect("timeline");
    let candles = series[0].1.clone();
    let mock = MockBinance::start(series, 12, Vec::new()).expect("the stand-in");
    let name = InstanceName::new(&format!("synct-{tag}-{}", std::process::id())).expect("name");
    let store = StoreWriter::create(&name, &StoreConfig::uniform(1, &[Interval::M1], 64))
        .expect("a store in /dev/shm");
    let symbol = SymbolName::new("BTCUSDT").expect("valid");
    let opts = LiveOptions {
        symbols: vec![symbol.clone()],
        intervals: vec![Interval::M1],
        ws_url: mock.ws_url.clone(),
        rest_url: mock.rest_url.clone(),
        silence_timeout: Duration::from_secs(30),
        max_connection_age: Duration::from_secs(3600),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        backfill: [(Interval::M1, 48)].into(),
        ca_file: None,
        trace: false,
        rest_weight_per_minute: DEFAULT_WEIGHT_PER_MINUTE,
        skip_unknown: false,
        max_queued_bytes: DEFAULT_QUEUED_BYTES,
        opens_per_window: 10,
    };
    let store: crate::instance::SharedStore = store.into();
    let mut writer = FeedWriter::new(&[Interval::M1], &[]);
    writer
        .register(&mut *store.lock(), &symbol)
        .expect("registered");
    let health = Arc::new(LiveHealth::default());
    let rest = Rest::new(&opts, ureq::tls::TlsConfig::default(), Arc::clone(&health));
    let shared = Arc::new(conn::Shared {
        opts: opts.clone(),
        tls: None,
        stop: Arc::new(AtomicBool::new(false)),
        health: Arc::clone(&health),
        opener: Opener::new(10),
        queued: AtomicUsize::new(0),
        overflowed: std::sync::Mutex::new(std::collections::HashSet::new()),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let mut sync = Sync::new(opts, store, writer, rest, health, shared, rx, tx, 1);
    // No connection thread: the test is the stream.
    sync.lay_out(&[symbol]);
    sync.series[0].phase = Phase::Live;
    Rig {
        sync,
        name,
        candles,
        _mock: mock,
    }
}

impl Rig {
    /// Candle `k` as streamed: final with `x: true`, else part of the way
    /// (the close still at the open, half the volume).
    fn event(&self, k: usize, closed: bool) -> Kline {
        let c = self.candles[k];
        let candle = if closed {
            c
        } else {
            Candle {
                close: c.open,
                high: c.open.max(c.close),
                low: c.open.min(c.close),
                volume: c.volume / 2.0,
                ..c
            }
        };
        Kline {
            symbol: SymbolName::new("BTCUSDT").expect("valid"),
            interval: Interval::M1,
            candle,
            closed,
            at: c.open_time + if closed { 60_000 } else { 30_000 },
        }
    }

    /// Streams candle `k`'s event to the sync thread.
    fn stream(&mut self, k: usize, closed: bool) {
        let kline = self.event(k, closed);
        self.sync
            .shared
            .queued
            .fetch_add(conn::EVENT_BYTES, Ordering::AcqRel);
        self.sync
            .on_event(conn::Event::Kline(Box::new(kline), Instant::now()));
    }

    /// The open time of the candle being repaired, if one is.
    fn repairing(&self) -> Option<i64> {
        self.sync.series[0].repair.as_ref().map(|r| r.open_time)
    }

    /// One REST step, once the gate lets a request go (the repair asks).
    fn rest(&mut self) {
        self.sync.rest_step();
    }

    /// Every stored candle, with its closed flag.
    fn stored(&self) -> Vec<(Candle, bool)> {
        let reader = StoreReader::open(&self.name).expect("the store");
        let id = reader.symbol_id("BTCUSDT").expect("BTCUSDT");
        let series = reader.series(id, Interval::M1).expect("1m");
        let head = reader.appended(series).expect("head");
        let mut out = Vec::new();
        reader.read_range(series, 0, head, &mut out).expect("read");
        out.into_iter().map(|s| (s.candle, s.closed)).collect()
    }

    /// (missing, repaired, late, provisional) closes.
    fn closes(&self) -> (u64, u64, u64, u64) {
        let h = &self.sync.health;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        (
            g(&h.missing_closes),
            g(&h.repaired_closes),
            g(&h.late_closes),
            g(&h.provisional_closes),
        )
    }
}

/// A second lost close among the events a repair holds (REST paused
/// meanwhile, as by a 429) is repaired in its turn: the successor that
/// would close it starts its repair, the events after it wait in that one,
/// and every candle ends with the exchange's final values.
#[test]
fn a_lost_close_among_held_events_is_repaired_in_its_turn() {
    let mut r = rig("held");
    for k in 0..3 {
        r.stream(k, true);
    }
    // Candle 3 loses its `x: true`: candle 4's first event starts its repair.
    r.stream(3, false);
    r.stream(4, false);
    assert_eq!(r.repairing(), Some(r.candles[3].open_time));
    // REST is not asked yet (paused): the stream goes on, and candle 5
    // loses its close too.
    r.stream(4, true);
    r.stream(5, false);
    r.stream(6, false);
    r.stream(6, true);
    r.stream(7, false);
    assert_eq!(r.stored().len(), 4, "the events after candle 3 are held");
    r.rest();
    assert_eq!(
        r.repairing(),
        Some(r.candles[5].open_time),
        "candle 5 is repaired next, not closed by candle 6: {:?}",
        r.stored()
    );
    assert_eq!(r.stored().len(), 6, "candles 0 to 5 stored; 6 and 7 wait");
    assert_eq!(r.closes(), (2, 1, 0, 0));
    r.rest();
    assert_eq!(r.repairing(), None);
    let stored = r.stored();
    assert_eq!(stored.len(), 8, "{stored:?}");
    for (k, (c, closed)) in stored[..7].iter().enumerate() {
        assert_eq!(*c, r.candles[k], "candle {k}");
        assert!(*closed, "candle {k} closed");
    }
    assert_eq!(stored[7], (r.event(7, false).candle, false));
    assert_eq!(r.closes(), (2, 2, 0, 0), "every lost close counted");
}

/// A repair given up (past its wait) leaves its candle as last streamed,
/// closed by its successor, and starts no second repair of it; a lost close
/// among the events it held is still repaired.
#[test]
fn a_repair_given_up_still_repairs_the_lost_closes_it_held() {
    let mut r = rig("given-up");
    for k in 0..3 {
        r.stream(k, true);
    }
    r.stream(3, false);
    r.stream(4, false);
    // Candle 4 loses its close too; candle 5's comes.
    r.stream(5, true);
    r.stream(6, false);
    if let Some(repair) = r.sync.series[0].repair.as_mut() {
        repair.deadline = Instant::now();
    }
    r.sync.expire_repairs();
    assert_eq!(
        r.repairing(),
        Some(r.candles[4].open_time),
        "candle 4 is repaired, candle 3 not again"
    );
    assert_eq!(r.closes(), (2, 0, 0, 1));
    r.rest();
    assert_eq!(r.repairing(), None);
    let stored = r.stored();
    assert_eq!(stored.len(), 7, "{stored:?}");
    for (k, (c, _)) in stored[..3].iter().enumerate() {
        assert_eq!(*c, r.candles[k], "candle {k}");
    }
    assert_eq!(
        stored[3],
        (r.event(3, false).candle, false),
        "candle 3 stays as last streamed (provisional)"
    );
    assert_eq!(stored[4], (r.candles[4], true), "candle 4 repaired");
    assert_eq!(stored[5], (r.candles[5], true));
    assert_eq!(stored[6], (r.event(6, false).candle, false));
    assert_eq!(r.closes(), (2, 1, 0, 1));
}
