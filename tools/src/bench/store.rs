//! `shmkline bench store` and `shmkline bench torn`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use engine::instance::Instance;
use protocol::store::{ReadError, SeriesId, StoreConfig, StoreReader, StoreWriter, StoredCandle};
use protocol::{Candle, InstanceName, Interval, SymbolName};
use serde::Serialize;

use super::child::{STRESS_SYMBOL, TornCounts, stress_candle};
use super::{BenchChild, Target, median, ratio};

/// Series written round-robin by the upsert benchmark.
const WRITE_SERIES: usize = 64;
/// Upserts per timed round.
const WRITE_OPS: usize = WRITE_SERIES * 1024;
/// One append per this many upserts of a series; the rest update in place.
const APPEND_EVERY: usize = 4;
/// Slices per timed read round.
const READ_SLICES: usize = 2_000;
/// Candles per slice, as the read target counts them.
const SLICE: usize = 100;

/// Knobs for `bench store` / `bench torn`.
#[derive(Debug, Clone)]
pub struct StoreBenchOptions {
    /// Timed rounds per measurement (the median is reported).
    pub rounds: usize,
    /// Reader processes in the torn-read stress.
    pub readers: usize,
    /// Duration of the torn-read stress.
    pub torn_millis: u64,
}

/// The `bench store` report. Every `*_ns` figure is a median over rounds.
#[derive(Debug, Serialize)]
pub struct StoreReport {
    /// Always "store".
    pub bench: &'static str,
    /// ns per upsert through the store (seqlock, atomics, checks).
    pub upsert_ns: f64,
    /// ns per upsert of the same loop into plain memory with plain stores.
    pub upsert_plain_baseline_ns: f64,
    /// upsert_ns / upsert_plain_baseline_ns (target <= 2).
    pub upsert_vs_baseline: f64,
    /// ns per publish (counter store + heartbeat + FUTEX_WAKE, no waiter).
    pub publish_ns: f64,
    /// ns per 100-candle slice, writer idle (target <= 500).
    pub read_100_idle_ns: f64,
    /// Seqlock retries per slice, writer idle.
    pub read_100_idle_retries_per_slice: f64,
    /// ns per 100-candle copy out of plain memory into the same kind of buffer.
    pub read_100_plain_baseline_ns: f64,
    /// ns per 100-candle slice while a writer thread hammers the same series.
    pub read_100_contended_ns: f64,
    /// Seqlock retries per slice under that contention.
    pub read_100_contended_retries_per_slice: f64,
    /// Slice reads that reported `Stalled` (the writer thread was descheduled
    /// mid-write for over the 1 ms stall timeout) and were made again.
    pub read_100_stalls: u64,
    /// How long a reader takes to report a slot left mid-write as Stalled
    /// (measured only in builds with the `testing` feature, whose fault
    /// injection leaves a slot mid-write; `scripts/bench.sh` builds with it).
    pub stall_detect_us: Option<f64>,
    /// The cross-process torn-read stress.
    pub torn: TornReport,
    /// Accepted torn reads (must be 0).
    pub torn_accepted: u64,
    /// Rejected torn reads (must be > 0: proof the race was exercised).
    pub torn_rejected: u64,
    /// The targets for these figures.
    pub targets: Vec<Target>,
}

/// The cross-process torn-read stress result.
#[derive(Debug, Serialize)]
pub struct TornReport {
    /// Reader processes.
    pub readers: usize,
    /// Duration.
    pub millis: u64,
    /// Upserts the writer made meanwhile.
    pub writes: u64,
    /// Summed over the readers.
    #[serde(flatten)]
    pub counts: TornCounts,
}

fn bench_config() -> StoreConfig {
    StoreConfig::uniform((WRITE_SERIES + 4) as u32, &[Interval::M1], 1024)
}

fn register(store: &mut StoreWriter, name: &str) -> Result<SeriesId> {
    Ok(store.register_series(&SymbolName::new(name)?, Interval::M1)?)
}

fn op_candle(op: usize, open_time: i64) -> Candle {
    let x = op as f64;
    Candle {
        open_time,
        open: x,
        high: x + 2.0,
        low: x - 2.0,
        close: x + 1.0,
        volume: 1.0,
    }
}

/// The baseline: the upsert loop's work with plain stores into plain memory.
struct PlainRing {
    words: Vec<u64>,
    heads: Vec<u64>,
    ring: usize,
}

impl PlainRing {
    fn new(series: usize, ring: usize) -> Self {
        Self {
            words: vec![0; series * ring * 9],
            heads: vec![0; series],
            ring,
        }
    }

    // Inlinable, like `StoreWriter::upsert`, so neither side pays a call the other does not.
    #[inline]
    fn upsert(&mut self, series: usize, c: &Candle) -> bool {
        let head = self.heads[series];
        let base = series * self.ring * 9;
        let slot_of = |i: u64| base + (i % self.ring as u64) as usize * 9;
        let index = if head > 0 && self.words[slot_of(head - 1)] as i64 == c.open_time {
            head - 1
        } else if head == 0 || c.open_time > self.words[slot_of(head - 1)] as i64 {
            self.heads[series] = head + 1;
            head
        } else {
            return false;
        };
        let s = slot_of(index);
        let w = &mut self.words[s..s + 8];
        w[0] = c.open_time as u64;
        w[1] = c.open.to_bits();
        w[2] = c.high.to_bits();
        w[3] = c.low.to_bits();
        w[4] = c.close.to_bits();
        w[5] = c.volume.to_bits();
        w[6] = index;
        w[7] = 1; // the stamp
        true
    }
}

/// Runs the upsert loop `rounds` times through `upsert` and returns the median ns/op.
/// One timed round of the upsert loop through `upsert`, in ns per upsert.
/// `open_times` carries each series' open time across rounds.
fn upsert_round(
    open_times: &mut [i64; WRITE_SERIES],
    upsert: &mut impl FnMut(usize, &Candle),
) -> f64 {
    let started = Instant::now();
    for op in 0..WRITE_OPS {
        let s = op % WRITE_SERIES;
        if (op / WRITE_SERIES).is_multiple_of(APPEND_EVERY) {
            open_times[s] += 60_000;
        }
        upsert(s, &op_candle(op, open_times[s]));
    }
    started.elapsed().as_nanos() as f64 / WRITE_OPS as f64
}

/// Median ns per upsert of two loops measured in alternating rounds (the
/// order rotating), so machine drift during the run hits both alike: run one
/// after the other, the later one came out slower on this VM.
fn time_upserts_interleaved(
    rounds: usize,
    mut a: impl FnMut(usize, &Candle),
    mut b: impl FnMut(usize, &Candle),
) -> (f64, f64) {
    let (mut ta, mut tb) = ([0i64; WRITE_SERIES], [0i64; WRITE_SERIES]);
    let (mut ra, mut rb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds {
        if round % 2 == 0 {
            ra.push(upsert_round(&mut ta, &mut a));
            rb.push(upsert_round(&mut tb, &mut b));
        } else {
            rb.push(upsert_round(&mut tb, &mut b));
            ra.push(upsert_round(&mut ta, &mut a));
        }
    }
    (median(&mut ra), median(&mut rb))
}

/// What a slice-read measurement found.
struct Slices {
    ns: f64,
    retries_per_slice: f64,
    /// Reads that gave up with `Stalled`: the writer was descheduled between
    /// its two sequence stores for longer than the 1 ms stall timeout. The
    /// reader reports it (as designed) and the read is simply made again.
    stalls: u64,
}

/// Median ns per 100-candle slice, retries per slice and stalls over `rounds` rounds.
fn time_slices(reader: &StoreReader, series: SeriesId, rounds: usize) -> Result<Slices> {
    let mut out = Vec::with_capacity(SLICE);
    let mut per_slice = Vec::with_capacity(rounds);
    let retries_before = reader.retries();
    let mut stalls = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..READ_SLICES {
            loop {
                match reader.last_n(series, SLICE, &mut out) {
                    Ok(()) => break,
                    Err(ReadError::Stalled { .. }) => stalls += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            black_box(&out);
        }
        per_slice.push(started.elapsed().as_nanos() as f64 / READ_SLICES as f64);
        ensure!(
            out.len() == SLICE,
            "slice came back with {} candles",
            out.len()
        );
    }
    let retries = (reader.retries() - retries_before) as f64 / (rounds * READ_SLICES) as f64;
    Ok(Slices {
        ns: median(&mut per_slice),
        retries_per_slice: retries,
        stalls,
    })
}

/// The read baseline: the same 100 candles copied out of a plain `Vec` into
/// the same kind of buffer, with no seqlock and no atomics.
fn time_plain_slices(reader: &StoreReader, series: SeriesId, rounds: usize) -> Result<f64> {
    let mut source = Vec::with_capacity(SLICE);
    reader.last_n(series, SLICE, &mut source)?;
    let mut out: Vec<StoredCandle> = Vec::with_capacity(SLICE);
    let mut per_slice = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..READ_SLICES {
            out.clear();
            for c in black_box(&source) {
                out.push(*c);
            }
            black_box(&out);
        }
        per_slice.push(started.elapsed().as_nanos() as f64 / READ_SLICES as f64);
    }
    Ok(median(&mut per_slice))
}

/// `shmkline bench store`.
pub fn run(instance: &InstanceName, opts: &StoreBenchOptions) -> Result<StoreReport> {
    let inst = Instance::start(instance, &bench_config())?;
    let mut guard = inst.store.lock();
    let store = &mut *guard;
    let series: Vec<SeriesId> = (0..WRITE_SERIES)
        .map(|k| register(store, &format!("S{k}")))
        .collect::<Result<_>>()?;

    let mut plain = PlainRing::new(WRITE_SERIES, store.smallest_ring());
    let (upsert_plain_baseline_ns, upsert_ns) = time_upserts_interleaved(
        opts.rounds,
        |s, c| {
            black_box(plain.upsert(black_box(s), c));
        },
        |s, c| {
            let _ = black_box(store.upsert(series[black_box(s)], c));
        },
    );
    let mut publish = Vec::with_capacity(opts.rounds);
    for _ in 0..opts.rounds {
        let started = Instant::now();
        for _ in 0..1000 {
            black_box(store.publish());
        }
        publish.push(started.elapsed().as_nanos() as f64 / 1000.0);
    }
    let publish_ns = median(&mut publish);

    let reader = StoreReader::open(instance)?;
    let target = series[0];
    let idle = time_slices(&reader, target, opts.rounds)?;
    let read_100_plain_baseline_ns = time_plain_slices(&reader, target, opts.rounds)?;

    // Contended: a writer thread rewrites the in-progress candle of the series
    // being read, and appends every 16th write, until the reader is done.
    let stop = AtomicBool::new(false);
    let contended = std::thread::scope(|scope| {
        let hammer = scope.spawn(|| {
            let mut open_time = 1 << 40;
            let mut op = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if op.is_multiple_of(16) {
                    open_time += 60_000;
                }
                let _ = store.upsert(target, &op_candle(op, open_time));
                op += 1;
            }
            op
        });
        let result = time_slices(&reader, target, opts.rounds);
        stop.store(true, Ordering::Relaxed);
        let writes = hammer.join();
        result.map(|r| (r, writes))
    })?;
    let (contended, _writes) = contended;

    #[cfg(feature = "testing")]
    let stall_detect_us = Some(measure_stall(store, &reader)?);
    #[cfg(not(feature = "testing"))]
    let stall_detect_us = None;
    let torn = torn_stress(instance, store, opts.readers, opts.torn_millis)?;
    let upsert_vs_baseline = ratio(upsert_ns, upsert_plain_baseline_ns);
    let targets = vec![
        Target::at_most("upsert_vs_baseline <= 2", upsert_vs_baseline, 2.0),
        Target::at_most("read_100_idle_ns <= 500", idle.ns, 500.0),
        Target::at_most("torn_accepted == 0", torn.counts.torn_accepted as f64, 0.0),
        Target::at_least("torn_rejected > 0", torn.counts.torn_rejected as f64, 1.0),
    ];
    Ok(StoreReport {
        bench: "store",
        upsert_ns,
        upsert_plain_baseline_ns,
        upsert_vs_baseline,
        publish_ns,
        read_100_idle_ns: idle.ns,
        read_100_idle_retries_per_slice: idle.retries_per_slice,
        read_100_plain_baseline_ns,
        read_100_contended_ns: contended.ns,
        read_100_contended_retries_per_slice: contended.retries_per_slice,
        read_100_stalls: idle.stalls + contended.stalls,
        stall_detect_us,
        torn_accepted: torn.counts.torn_accepted,
        torn_rejected: torn.counts.torn_rejected,
        torn,
        targets,
    })
}

/// Median time for a reader to give up on a slot a dead writer left odd.
#[cfg(feature = "testing")]
fn measure_stall(store: &mut StoreWriter, reader: &StoreReader) -> Result<f64> {
    let series = register(store, "STALL")?;
    store.upsert(series, &op_candle(0, 0))?;
    store.publish();
    store.simulate_death_mid_write(series, 0);
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        match reader.latest(series) {
            Err(ReadError::Stalled { .. }) => {
                times.push(started.elapsed().as_nanos() as f64 / 1000.0)
            }
            other => {
                anyhow::bail!("expected a Stalled error from a slot left mid-write, got {other:?}")
            }
        }
    }
    Ok(median(&mut times))
}

/// Runs `readers` reader processes against a writer hammering one series for
/// `millis`, and sums what they saw.
fn torn_stress(
    instance: &InstanceName,
    store: &mut StoreWriter,
    readers: usize,
    millis: u64,
) -> Result<TornReport> {
    let series = register(store, STRESS_SYMBOL)?;
    store.upsert(series, &stress_candle(0, 0, 0))?;
    store.publish();
    let children: Vec<BenchChild> = (0..readers)
        .map(|_| {
            BenchChild::spawn(&[
                "torn".into(),
                "--instance".into(),
                instance.to_string(),
                "--millis".into(),
                millis.to_string(),
            ])
        })
        .collect::<Result<_>>()?;
    let stop = AtomicBool::new(false);
    let (writes, results) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            // Mostly in-place updates of the slot the readers read (maximum
            // overlap), with an append every 64 writes so the ring wraps too.
            let (mut open_time, mut index, mut k) = (0i64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                if k % 64 == 0 {
                    open_time += 60_000;
                    index += 1;
                }
                let _ = store.upsert(series, &stress_candle(open_time, index, k));
                if k % 1024 == 0 {
                    store.publish();
                }
            }
            k
        });
        let results: Vec<Result<TornCounts>> =
            children.into_iter().map(BenchChild::finish).collect();
        stop.store(true, Ordering::Relaxed);
        (writer.join(), results)
    });
    let writes = writes.map_err(|_| anyhow::anyhow!("the stress writer thread panicked"))?;
    let mut counts = TornCounts::default();
    for r in results {
        counts += r.context("a torn-read stress reader failed")?;
    }
    Ok(TornReport {
        readers,
        millis,
        writes,
        counts,
    })
}

/// `shmkline bench torn`: the cross-process stress alone.
pub fn run_torn(instance: &InstanceName, readers: usize, millis: u64) -> Result<TornReport> {
    let inst = Instance::start(instance, &bench_config())?;
    torn_stress(instance, &mut inst.store.lock(), readers, millis)
}
