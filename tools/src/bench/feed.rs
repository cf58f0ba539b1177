//! `shmkline bench feed`: replay parsing and writing rates, and the live
//! path's latency against the loopback Binance stand-in.
//!
//! Each figure comes with a baseline measured in the same run, the paths
//! interleaved round by round so drift on a shared machine hits them alike:
//! * parse: reading the CSV's lines without parsing them, vs the replay
//!   (read, parse, check, merge);
//! * write: bare `upsert_closed` + `publish` per candle, vs the feed writer
//!   (order and gap checks) with and without building 5m..1d from each minute;
//! * end to end: the replay into the store through the writer, aggregation on;
//! * live: message received to `publish` returned with no reader (the
//!   target; an upper bound of received-to-visible), and, with a reader
//!   polling the counter, received to seen and server send to seen.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use engine::feed::live::{LiveFeed, LiveOptions};
use engine::feed::replay::{Replay, ReplayOptions};
use engine::feed::synthetic::SymbolStream;
use engine::feed::writer::FeedWriter;
use engine::instance::Instance;
use engine::kline::Kline;
use protocol::store::{StoreConfig, StoreReader};
use protocol::{Candle, InstanceName, Interval, SymbolName};
use serde::Serialize;
use testkit::exchange::{End, Episode, MockBinance, timeline};
use testkit::rows::{RowFormat, format_row};

use super::{Percentiles, Target, median, ratio};

/// Target: replay parsing and writing, candles per second.
pub const TARGET_CANDLES_PER_S: f64 = 1_000_000.0;
/// The live benchmark's ring, filled with history before the stream starts.
const LIVE_RING: usize = 1000;
/// Target: live message received to visible in shared memory, p99.
pub const TARGET_LIVE_P99_NS: f64 = 50_000.0;

/// The report.
#[derive(Debug, Serialize)]
pub struct FeedReport {
    /// Candles per measured pass.
    pub candles: usize,
    /// Timed rounds (medians are reported).
    pub rounds: usize,
    /// Reading lines only (baseline), candles/s.
    pub read_lines_per_s: f64,
    /// Replay parse (read + parse + check + merge), candles/s.
    pub parse_per_s: f64,
    /// parse time / read-lines time.
    pub parse_vs_read_lines: f64,
    /// Bare `upsert_closed` + `publish` (baseline), candles/s.
    pub plain_upsert_per_s: f64,
    /// Feed writer, 1m only, candles/s.
    pub write_per_s: f64,
    /// Feed writer building 5m, 15m, 1h, 4h, 1d from each minute, candles/s.
    pub write_aggregated_per_s: f64,
    /// write time / plain time.
    pub write_vs_plain: f64,
    /// Replay from the file into the store, aggregation on, candles/s.
    pub end_to_end_per_s: f64,
    /// Live, no reader running: message received by the feed thread to its
    /// `publish` returned, on that thread's clock. The candle is visible from
    /// the counter store inside `publish`, so this bounds received-to-visible
    /// from above (it also holds the FUTEX_WAKE). The target's figure.
    pub live_received_to_published: Option<Percentiles>,
    /// Live, a second pass with a reader polling the publish counter:
    /// received to the reader seeing the candle (adds the reader's own
    /// scheduling: on 2 shared vCPUs it is preempted now and then).
    pub live_received_to_seen: Option<Percentiles>,
    /// The same pass: server send to seen (loopback TCP and the feed
    /// thread's wake-up included).
    pub live_sent_to_seen: Option<Percentiles>,
    /// Targets.
    pub targets: Vec<Target>,
}

fn instance(base: &InstanceName, suffix: &str) -> Result<InstanceName> {
    let name = format!("{}-{suffix}", base.as_str());
    InstanceName::new(&name[..name.len().min(32)]).map_err(Into::into)
}

/// A Binance spot dump of `n` minutes, microsecond timestamps, 12 columns.
fn write_dump(path: &std::path::Path, n: usize) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut stream = SymbolStream::new(7, 0);
    for _ in 0..n {
        let c = stream.next_candle();
        writeln!(
            out,
            "{}",
            format_row(&c, Interval::M1, RowFormat::Dump12Micros)
        )?;
    }
    out.flush()?;
    Ok(())
}

fn replay_opts(path: &std::path::Path) -> ReplayOptions {
    ReplayOptions {
        paths: vec![path.to_path_buf()],
        symbol: None,
        interval: None,
        strict: true,
    }
}

fn time_read_lines(path: &std::path::Path) -> Result<(usize, Duration)> {
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(1 << 16, std::fs::File::open(path)?);
    let mut line = String::new();
    let mut n = 0;
    while reader.read_line(&mut line)? > 0 {
        n += usize::from(!line.is_empty());
        line.clear();
    }
    Ok((std::hint::black_box(n), started.elapsed()))
}

fn time_parse(path: &std::path::Path) -> Result<(Vec<Kline>, Duration)> {
    let started = Instant::now();
    let out = Replay::open(&replay_opts(path))?.read_all()?;
    Ok((out, started.elapsed()))
}

/// Runs the benchmark with `candles` per pass.
pub fn run(
    base: &InstanceName,
    candles: usize,
    rounds: usize,
    live_messages: usize,
) -> Result<FeedReport> {
    // The live path first: after the replay part, the kernel is still
    // writing the 100 MB dump back and reclaiming, which shows in the tail.
    let live = live(base, live_messages)?;
    let dir = tempfile::tempdir().context("a temporary directory for the dump")?;
    let path = dir.path().join("BTCUSDT-1m-bench.csv");
    write_dump(&path, candles)?;
    // BTCUSDT plus two writer symbols per round.
    let config = StoreConfig::uniform(
        2 * rounds as u32 + 2,
        &StoreConfig::default().intervals(),
        1440,
    );
    let aggregate: Vec<Interval> = config
        .intervals()
        .iter()
        .copied()
        .filter(|i| *i != Interval::M1)
        .collect();
    let inst = Instance::start(&instance(base, "feed")?, &config)?;
    let (klines, _) = time_parse(&path)?;
    if klines.len() != candles {
        bail!("the dump parsed to {} candles, not {candles}", klines.len());
    }

    let (mut read_s, mut parse_s, mut plain_s, mut write_s, mut agg_s, mut e2e_s) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let symbol = SymbolName::new("BTCUSDT")?;
    for round in 0..rounds {
        // A fresh store per write measurement would cost a segment each; the
        // candles are shifted forward instead so every pass appends.
        let shift = (round as i64 * 4 + 1) * candles as i64 * 60_000;
        let shifted = |k: &Kline, by: i64| Candle {
            open_time: k.candle.open_time + by,
            ..k.candle
        };
        let (_, t) = time_read_lines(&path)?;
        read_s.push(t.as_secs_f64());
        let (_, t) = time_parse(&path)?;
        parse_s.push(t.as_secs_f64());
        {
            let mut store = inst.store.lock();
            let id = store.register_symbol(&symbol)?;
            let series = store.series(id, Interval::M1)?;
            let started = Instant::now();
            for k in &klines {
                store.upsert_closed(series, &shifted(k, shift))?;
                store.publish();
            }
            plain_s.push(started.elapsed().as_secs_f64());
        }
        for (agg, out, by) in [
            (&[][..], &mut write_s, shift + 60_000 * candles as i64),
            (
                &aggregate[..],
                &mut agg_s,
                shift + 2 * 60_000 * candles as i64,
            ),
        ] {
            let mut store = inst.store.lock();
            let name = SymbolName::new(&format!("W{}{round}", agg.len()))?;
            let mut writer = FeedWriter::new(&config.intervals(), agg);
            writer.register(&mut *store, &name)?;
            let started = Instant::now();
            for k in &klines {
                let kline = Kline {
                    symbol: name.clone(),
                    candle: shifted(k, by),
                    ..k.clone()
                };
                writer
                    .apply(&mut *store, &kline)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                store.publish();
            }
            out.push(started.elapsed().as_secs_f64());
            drop(store);
        }
        // End to end: the file's symbol is fixed, so a fresh store.
        {
            let inst2 = Instance::start(&instance(base, "feed-e2e")?, &config)?;
            let mut store = inst2.store.lock();
            let started = Instant::now();
            // As `run` writes a replay going as fast as it can: a publish
            // every FAST_BATCHES_PER_PUBLISH batches.
            let mut source = engine::feed::Source::replay(&replay_opts(&path))?;
            let mut writer = FeedWriter::new(&config.intervals(), &aggregate);
            let mut batches = 0u64;
            while engine::feed::write_batch(&mut source, &mut writer, &mut *store)?.is_some() {
                batches += 1;
                if batches.is_multiple_of(engine::feed::pump::FAST_BATCHES_PER_PUBLISH) {
                    store.publish();
                }
            }
            store.publish();
            e2e_s.push(started.elapsed().as_secs_f64());
        }
    }
    let rate = |v: &mut Vec<f64>| candles as f64 / median(v);
    let (read, parse, plain, write, agg, e2e) = (
        rate(&mut read_s),
        rate(&mut parse_s),
        rate(&mut plain_s),
        rate(&mut write_s),
        rate(&mut agg_s),
        rate(&mut e2e_s),
    );
    drop(inst);
    let mut targets = vec![
        Target::at_least(
            "replay parse, candles/s",
            parse.round(),
            TARGET_CANDLES_PER_S,
        ),
        Target::at_least(
            "replay write with aggregation, candles/s",
            agg.round(),
            TARGET_CANDLES_PER_S,
        ),
        Target::at_least(
            "replay end to end, candles/s",
            e2e.round(),
            TARGET_CANDLES_PER_S,
        ),
    ];
    if let Some(p) = &live.received_to_published {
        targets.push(Target::at_most(
            "live received to visible (publish returned) p99, ns",
            p.p99_ns as f64,
            TARGET_LIVE_P99_NS,
        ));
    }
    Ok(FeedReport {
        candles,
        rounds,
        read_lines_per_s: read.round(),
        parse_per_s: parse.round(),
        parse_vs_read_lines: ratio(read, parse),
        plain_upsert_per_s: plain.round(),
        write_per_s: write.round(),
        write_aggregated_per_s: agg.round(),
        write_vs_plain: ratio(plain, write),
        end_to_end_per_s: e2e.round(),
        live_received_to_published: live.received_to_published,
        live_received_to_seen: live.received_to_seen,
        live_sent_to_seen: live.sent_to_seen,
        targets,
    })
}

/// Live latency figures.
pub(super) struct Live {
    pub(super) received_to_published: Option<Percentiles>,
    pub(super) received_to_seen: Option<Percentiles>,
    pub(super) sent_to_seen: Option<Percentiles>,
}

/// What one streaming pass recorded.
struct Pass {
    /// Received-to-published times of the feed thread.
    published: Vec<u32>,
    /// (open time, received) per streamed candle.
    receipts: Vec<(i64, Instant)>,
    /// When the reader saw each candle, by index (empty without a reader).
    seen: Vec<Option<Instant>>,
    /// When the server sent each candle's close, by index.
    sent: Vec<Option<Instant>>,
    t0: i64,
}

/// The live path, in two passes of `n` candles streamed one every 200 µs:
/// without a reader, the feed thread's received-to-`publish`-returned time
/// (the candle is visible from the counter store inside `publish`, so this
/// bounds received-to-visible from above, on one thread's clock); with a
/// reader polling the publish counter, when that reader saw each candle
/// (which adds the reader's own scheduling on a shared machine).
pub(super) fn live(base: &InstanceName, n: usize) -> Result<Live> {
    if n == 0 {
        return Ok(Live {
            received_to_published: None,
            received_to_seen: None,
            sent_to_seen: None,
        });
    }
    // The first 100 candles of a pass are warm-up (connection, page faults).
    let alone = live_pass(base, n, false)?;
    let mut published: Vec<u64> = alone
        .published
        .iter()
        .skip(100)
        .map(|&ns| u64::from(ns))
        .collect();
    let observed = live_pass(base, n, true)?;
    let index = |open_time: i64| ((open_time - observed.t0) / 60_000) as usize;
    let mut received_to_seen: Vec<u64> = observed
        .receipts
        .iter()
        .filter(|(t, _)| index(*t) >= 100)
        .filter_map(|&(t, received)| {
            let seen = observed.seen.get(index(t)).copied().flatten()?;
            Some(seen.saturating_duration_since(received).as_nanos() as u64)
        })
        .collect();
    let mut sent_to_seen: Vec<u64> = (100..n)
        .filter_map(|k| {
            let seen = observed.seen.get(k).copied().flatten()?;
            let sent = observed.sent.get(k).copied().flatten()?;
            Some(seen.saturating_duration_since(sent).as_nanos() as u64)
        })
        .collect();
    Ok(Live {
        received_to_published: Percentiles::of(&mut published),
        received_to_seen: Percentiles::of(&mut received_to_seen),
        sent_to_seen: Percentiles::of(&mut sent_to_seen),
    })
}

fn live_pass(base: &InstanceName, n: usize, with_reader: bool) -> Result<Pass> {
    // A ring's worth of history first, served by REST at connect: the
    // measured candles then land in slots written before, as in a running
    // feed (a fresh segment's first write to each page is a page fault,
    // ~25 us on this VM, once per 64 slots).
    let series = timeline(&["BTCUSDT"], LIVE_RING + n)?;
    let t0 = series[0].1[LIVE_RING].open_time;
    let script = vec![Episode {
        skip: 0,
        stream: n,
        updates: 0,
        pause: Duration::from_micros(200),
        garbage: false,
        end: End::Idle,
    }];
    let config = StoreConfig::uniform(4, &[Interval::M1], LIVE_RING as u32);
    let name = instance(base, "live")?;
    let inst = Instance::start(&name, &config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader_stop = Arc::clone(&stop);
    let reader_name = name.clone();
    let reader = with_reader
        .then(|| {
            std::thread::Builder::new()
                .name("bench-reader".into())
                .spawn(move || poll_reader(&reader_name, n, t0, &reader_stop))
        })
        .transpose()?;
    let mock = MockBinance::start(series, LIVE_RING, script)?;
    let mut feed = LiveFeed::start(
        LiveOptions {
            symbols: vec![SymbolName::new("BTCUSDT")?],
            intervals: vec![Interval::M1],
            ws_url: mock.ws_url.clone(),
            rest_url: mock.rest_url.clone(),
            silence_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(3600),
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(100),
            backfill: [(Interval::M1, LIVE_RING)].into(),
            ca_file: None,
            trace: true,
            rest_weight_per_minute: engine::feed::live::DEFAULT_WEIGHT_PER_MINUTE,
            skip_unknown: false,
            max_queued_bytes: engine::feed::live::DEFAULT_QUEUED_BYTES,
            opens_per_window: engine::feed::live::OPENS_PER_WINDOW,
        },
        inst.store.clone(),
        &config.intervals(),
        None,
    )?;
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_micros(400 * n as u64);
    while mock.clock() < LIVE_RING + n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let published = feed.health().latency_samples();
    let receipts = feed.health().receipts();
    feed.stop();
    stop.store(true, Ordering::Release);
    let seen = match reader {
        Some(r) => r
            .join()
            .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??,
        None => Vec::new(),
    };
    if mock.clock() < LIVE_RING + n {
        bail!(
            "the live benchmark streamed {} of {n} candles in time",
            mock.clock().saturating_sub(LIVE_RING)
        );
    }
    let sent = (0..n).map(|k| mock.sent_at(LIVE_RING + k)).collect();
    Ok(Pass {
        published,
        receipts,
        seen,
        sent,
        t0,
    })
}

/// Polls the publish counter (as a worker in spin mode does) and notes when
/// each candle was first seen.
fn poll_reader(
    name: &InstanceName,
    n: usize,
    t0: i64,
    stop: &AtomicBool,
) -> Result<Vec<Option<Instant>>> {
    let reader = StoreReader::open(name)?;
    let mut seen = vec![None; n];
    let mut counter = reader.publish_counter();
    let mut series = None;
    while !stop.load(Ordering::Acquire) {
        let now = reader.publish_counter();
        if now == counter {
            std::hint::spin_loop();
            continue;
        }
        counter = now;
        let at = Instant::now();
        if series.is_none() {
            series = reader
                .symbol_id("BTCUSDT")
                .and_then(|id| reader.series(id, Interval::M1).ok());
        }
        if let Some(s) = series
            && let Some(latest) = reader.latest(s)?
        {
            let k = ((latest.candle.open_time - t0) / 60_000) as usize;
            if let Some(slot) = seen.get_mut(k)
                && slot.is_none()
            {
                *slot = Some(at);
            }
        }
    }
    Ok(seen)
}
