//! `shmkline bench backfill`: a fresh live start of many series against the
//! loopback Binance stand-in, timed to all-live, with the REST requests made
//! and the peak weight the stand-in counted in a wall-clock minute.
//!
//! The baseline is the floor the weight budget sets, computed from the same
//! run's request count: a bucket of `--rest-weight-per-minute` full at start
//! and refilled at that rate cannot spend `W` weight in less than
//! `(W - budget) / (budget / 60 s)`. The ratio says how close the client
//! comes to its budget; the peak says whether it stayed inside Binance's
//! 6,000 a minute. Candles stream while the backfill runs (one every
//! `--stream-every-ms`), and every series is checked complete at the end.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use engine::feed::live::{self, LiveFeed, LiveOptions};
use engine::instance::Instance;
use protocol::store::{StoreConfig, StoreReader};
use protocol::{InstanceName, Interval, SymbolName};
use serde::Serialize;
use testkit::exchange::{MockBinance, timeline};

use super::{Target, ratio};

/// The ring of each series: the default plan's least.
const RING: usize = 1440;
/// What a klines request of 100 to 1,000 rows weighs (Binance: 2).
const KLINES_WEIGHT: f64 = 2.0;
/// What the symbol check (`exchangeInfo`, all symbols) weighs.
const EXCHANGE_INFO_WEIGHT: f64 = 20.0;
/// Longest a run may take before it is reported as stuck.
const GIVE_UP: Duration = Duration::from_secs(1800);

/// The report.
#[derive(Debug, Serialize)]
pub struct BackfillReport {
    /// Series started fresh (1m each).
    pub series: usize,
    /// Closed candles the stand-in held per series at start.
    pub history: usize,
    /// Candles streamed while the backfill ran.
    pub streamed: usize,
    /// The client's budget, weight per minute.
    pub rest_weight_per_minute: u32,
    /// Start to every series live, seconds.
    pub to_all_live_s: f64,
    /// REST requests the stand-in answered.
    pub rest_requests: u64,
    /// Weight they cost (documented costs).
    pub rest_weight: f64,
    /// The least time the budget allows for that weight, seconds.
    pub budget_floor_s: f64,
    /// to_all_live_s / budget_floor_s.
    pub time_vs_budget_floor: f64,
    /// The most weight the stand-in counted in one wall-clock minute.
    pub peak_weight_per_minute: u64,
    /// Answers 429 or 418 (each one a step towards a ban).
    pub refusals: u64,
    /// Events dropped at the queue's bound.
    pub overflowed: u64,
    /// Targets.
    pub targets: Vec<Target>,
}

/// Runs the benchmark.
pub fn run(
    base: &InstanceName,
    series: usize,
    history: usize,
    budget: u32,
    stream_every: Duration,
) -> Result<BackfillReport> {
    let names: Vec<String> = (0..series).map(|k| format!("B{k:05}USDT")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Room for a candle streamed every interval for the floor's length, twice.
    let floor = budget_floor(series, history, budget);
    let room = 2 * (floor.as_millis() as usize / stream_every.as_millis().max(1) as usize) + 100;
    let mock = MockBinance::start(timeline(&refs, history + room)?, history, Vec::new())?;
    let config = StoreConfig::uniform(series as u32, &[Interval::M1], RING as u32);
    let name = InstanceName::new(&format!(
        "{}-bf",
        &base.as_str()[..base.as_str().len().min(29)]
    ))?;
    let inst = Instance::start(&name, &config)?;
    let symbols = names
        .iter()
        .map(|n| SymbolName::new(n))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut feed = LiveFeed::start(
        LiveOptions {
            symbols,
            intervals: vec![Interval::M1],
            ws_url: mock.ws_url.clone(),
            rest_url: mock.rest_url.clone(),
            silence_timeout: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(3600),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
            backfill: [(Interval::M1, live::backfill_for_ring(RING))].into(),
            ca_file: None,
            trace: false,
            rest_weight_per_minute: budget,
            skip_unknown: false,
            max_queued_bytes: live::DEFAULT_QUEUED_BYTES,
            opens_per_window: live::OPENS_PER_WINDOW,
        },
        inst.store.clone(),
        &config.intervals(),
        None,
    )?;
    let mut streamed = 0;
    let mut next_candle = started + stream_every;
    let to_all_live = loop {
        let status = feed.health().status();
        if let Some(e) = feed.health().fatal() {
            bail!("the live feed could not start: {e}");
        }
        if status.series.live == series {
            break started.elapsed();
        }
        if started.elapsed() > GIVE_UP {
            bail!(
                "not all live after {GIVE_UP:?}: {} of {series}",
                status.series.live
            );
        }
        if Instant::now() >= next_candle && streamed < room {
            mock.stream(1, 1, Duration::ZERO);
            streamed += 1;
            next_candle += stream_every;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The last candle streamed reaches every series; then each must hold the
    // stand-in's candles from the backfill's first on.
    mock.stream(1, 1, Duration::ZERO);
    streamed += 1;
    let reader = StoreReader::open(&name)?;
    let last = mock
        .closed()
        .first()
        .and_then(|(_, c)| c.last())
        .map_or(0, |c| c.open_time);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind = names
            .iter()
            .filter(|n| !caught_up(&reader, n, last))
            .count();
        if behind == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{behind} of {series} series never caught up with the stand-in");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = feed.health().status();
    feed.stop();
    if status.counters.missing_candles > 0 {
        bail!(
            "the store has gaps: {} candles missing",
            status.counters.missing_candles
        );
    }
    let requests = mock.rest_requests();
    let klines = mock
        .rest_log()
        .iter()
        .filter(|t| t.starts_with("/api/v3/klines"))
        .count();
    let weight = klines as f64 * KLINES_WEIGHT + EXCHANGE_INFO_WEIGHT;
    let floor = floor_for(weight, budget);
    let (rate_limited, banned, _) = mock.rest_refusals();
    let peak = mock.peak_weight();
    let to_all_live_s = to_all_live.as_secs_f64();
    Ok(BackfillReport {
        series,
        history,
        streamed,
        rest_weight_per_minute: budget,
        to_all_live_s,
        rest_requests: requests,
        rest_weight: weight,
        budget_floor_s: floor.as_secs_f64(),
        time_vs_budget_floor: ratio(to_all_live_s, floor.as_secs_f64()),
        peak_weight_per_minute: peak,
        refusals: rate_limited + banned,
        overflowed: status.overflowed,
        targets: vec![
            Target::at_most(
                "peak weight a minute (Binance: 6,000)",
                peak as f64,
                f64::from(live::EXCHANGE_WEIGHT_LIMIT),
            ),
            Target::at_most("answers 429 or 418", (rate_limited + banned) as f64, 0.0),
            Target::at_most(
                "events dropped at the queue bound",
                status.overflowed as f64,
                0.0,
            ),
        ],
    })
}

/// Whether `symbol`'s newest stored candle is the stand-in's last, closed.
fn caught_up(reader: &StoreReader, symbol: &str, last_open: i64) -> bool {
    reader
        .symbol_id(symbol)
        .and_then(|id| reader.series(id, Interval::M1).ok())
        .and_then(|series| reader.latest(series).ok().flatten())
        .is_some_and(|c| c.closed && c.candle.open_time == last_open)
}

/// The budget's floor for a fresh start of `series` with `history` each.
fn budget_floor(series: usize, history: usize, budget: u32) -> Duration {
    let pages = history
        .min(live::backfill_for_ring(RING))
        .div_ceil(1000)
        .max(1);
    floor_for(
        series as f64 * pages as f64 * KLINES_WEIGHT + EXCHANGE_INFO_WEIGHT,
        budget,
    )
}

fn floor_for(weight: f64, budget: u32) -> Duration {
    let budget = f64::from(budget);
    Duration::from_secs_f64(((weight - budget).max(0.0)) / (budget / 60.0))
}
