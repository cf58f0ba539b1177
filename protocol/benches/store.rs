//! Criterion benchmarks of the store's hot paths, each beside a baseline in
//! the same run: an upsert against the same bookkeeping with plain stores into
//! a `Vec`, and a 100-candle slice read.
//!
//! `cargo bench -p shmkline-protocol`. `shmkline bench store` reports the same
//! figures (plus cross-process ones) as JSON for scripts.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use protocol::store::{StoreConfig, StoreReader, StoreWriter};
use protocol::{Candle, InstanceName, Interval, SymbolName};

const SERIES: usize = 64;
const RING: usize = 1024;

/// Removes the benchmark's segment even if a benchmark panics.
struct Segment(InstanceName);

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = StoreWriter::unlink_stale(&self.0);
    }
}

fn candle(open_time: i64, x: f64) -> Candle {
    Candle {
        open_time,
        open: x,
        high: x + 2.0,
        low: x - 2.0,
        close: x + 1.0,
        volume: 1.0,
    }
}

fn store(c: &mut Criterion) {
    let seg =
        Segment(InstanceName::new(&format!("crit{}", std::process::id())).expect("valid name"));
    let _ = StoreWriter::unlink_stale(&seg.0);
    let config = StoreConfig::uniform(SERIES as u32 + 1, &[Interval::M1], RING as u32);
    let mut w = StoreWriter::create(&seg.0, &config).expect("create segment");
    let series: Vec<_> = (0..SERIES)
        .map(|k| {
            let symbol = SymbolName::new(&format!("S{k}")).expect("symbol");
            w.register_series(&symbol, Interval::M1).expect("register")
        })
        .collect();

    let mut group = c.benchmark_group("upsert");
    let mut op = 0usize;
    let mut open_times = [0i64; SERIES];
    group.bench_function("store", |b| {
        b.iter(|| {
            let s = op % SERIES;
            if (op / SERIES).is_multiple_of(4) {
                open_times[s] += 60_000;
            }
            op += 1;
            black_box(w.upsert(series[s], &candle(open_times[s], op as f64)))
        })
    });
    // Baseline: the same open-time check and the same eight words written
    // with plain stores into plain memory (no seqlock, no atomics).
    let mut plain = vec![0u64; SERIES * RING * 9];
    let mut heads = [0u64; SERIES];
    let mut op = 0usize;
    let mut open_times = [0i64; SERIES];
    group.bench_function("plain_baseline", |b| {
        b.iter(|| {
            let s = op % SERIES;
            if (op / SERIES).is_multiple_of(4) {
                open_times[s] += 60_000;
            }
            op += 1;
            let c = candle(open_times[s], op as f64);
            let base = s * RING * 9;
            let head = heads[s];
            let last = base + ((head.max(1) - 1) as usize % RING) * 9;
            let index = if head > 0 && plain[last] as i64 == c.open_time {
                head - 1
            } else {
                heads[s] = head + 1;
                head
            };
            let at = base + (index as usize % RING) * 9;
            let words = &mut plain[at..at + 8];
            words[0] = c.open_time as u64;
            words[1] = c.open.to_bits();
            words[2] = c.high.to_bits();
            words[3] = c.low.to_bits();
            words[4] = c.close.to_bits();
            words[5] = c.volume.to_bits();
            words[6] = index;
            words[7] = 1;
            black_box(&words[0]);
        })
    });
    group.finish();

    // The read bench fills its own series (the upsert benches may be filtered out).
    let read_series = {
        let id = w
            .register_symbol(&SymbolName::new("READ").expect("symbol"))
            .expect("register");
        w.series(id, Interval::M1).expect("series")
    };
    for i in 0..RING as i64 {
        w.upsert(read_series, &candle(i * 60_000, i as f64))
            .expect("fill");
    }
    w.publish();
    let reader = StoreReader::open(&seg.0).expect("open read-only");
    let mut out = Vec::with_capacity(100);
    c.bench_function("read/last_100", |b| {
        b.iter(|| {
            reader.last_n(read_series, 100, &mut out).expect("read");
            assert_eq!(out.len(), 100);
            black_box(&out);
        })
    });
    drop(w);
}

criterion_group!(benches, store);
criterion_main!(benches);
