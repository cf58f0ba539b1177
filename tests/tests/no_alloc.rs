//! The write path never allocates, so memory cannot grow with updates; a
//! reader with a reused buffer does not allocate either.

use allocation_counter::measure;
use harness::TestInstance;
use protocol::store::{StoreConfig, StoreReader, StoreWriter, UpsertError};
use protocol::{Candle, Interval, SymbolName};

fn candle(open_time: i64, x: f64) -> Candle {
    Candle {
        open_time,
        open: x,
        high: x + 1.0,
        low: x - 1.0,
        close: x,
        volume: 1.0,
    }
}

#[test]
fn the_counter_sees_an_allocation_when_there_is_one() {
    // Without this, a counter that never counts would make the test below vacuous.
    let info = measure(|| {
        std::hint::black_box(vec![0u8; 64]);
    });
    assert!(info.count_total >= 1);
}

#[test]
fn upsert_publish_and_reads_do_not_allocate() {
    let inst = TestInstance::new("alloc");
    let config = StoreConfig::uniform(8, &[Interval::M1, Interval::M5], 64);
    let mut w = StoreWriter::create(&inst.name, &config).expect("create");
    let series: Vec<_> = (0..8)
        .map(|k| {
            let symbol = SymbolName::new(&format!("S{k}")).expect("symbol");
            w.register_series(&symbol, Interval::M1).expect("register")
        })
        .collect();
    let reader = StoreReader::open(&inst.name).expect("open");
    let mut out = Vec::with_capacity(64);
    let mut outcomes = [0u64; 3];
    let info = measure(|| {
        for op in 0..200_000i64 {
            let s = series[(op % 8) as usize];
            // Appends (wrapping the 64-slot ring many times), in-place updates,
            // and rejected stale and non-finite candles: every branch of upsert.
            let open_time = (op / 32) * 60_000;
            let result = match op % 97 {
                0 => w.upsert(s, &candle(open_time - 600_000, 1.0)),
                1 => w.upsert(s, &candle(open_time, f64::INFINITY)),
                _ => w.upsert(s, &candle(open_time, op as f64)),
            };
            match result {
                Ok(_) => outcomes[0] += 1,
                Err(UpsertError::Stale { .. }) => outcomes[1] += 1,
                Err(_) => outcomes[2] += 1,
            }
            if op % 64 == 0 {
                w.publish();
                reader.last_n(s, 64, &mut out).expect("read");
                reader.changed_since(s, 0, &mut out).expect("read");
                reader.latest(s).expect("read");
            }
        }
    });
    assert!(
        outcomes.iter().all(|&n| n > 0),
        "every branch ran: {outcomes:?}"
    );
    assert_eq!(
        info.count_total, 0,
        "allocations on the hot paths: {info:?}"
    );
    assert_eq!(out.capacity(), 64, "the reader's buffer never grew");
}
