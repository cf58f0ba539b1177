//! The other side of cross-process benchmarks: `shmkline-tools bench-child ...`
//! runs in a separate process, maps the store read-only and reports one JSON
//! object on stdout. Not meant to be run by hand.

use std::hint::spin_loop;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::shm::scratch::SharedWords;
use protocol::store::{SeriesId, StoreReader, StoredCandle, Wait};
use protocol::{Candle, InstanceName, Interval};
use serde::{Deserialize, Serialize};

use super::mono_ns;

/// Symbol the torn-read stress writes.
pub const STRESS_SYMBOL: &str = "STRESS";
/// Symbol the wake benchmark writes.
pub const WAKE_SYMBOL: &str = "WAKE";
/// Scratch words: the child's acknowledgement counter.
pub const ACK: usize = 0;
/// Scratch words: the raw baseline's ping counter.
pub const PING: usize = 1;
/// Scratch words: the raw baseline's timestamp.
pub const STAMP: usize = 2;
/// Samples a wake child discards before recording (cache and scheduler warm-up).
pub const WARMUP: usize = 100;
/// How long either side of a ping-pong waits before declaring the other dead.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);

fn checksum(open_time: i64, index: u64, k: u64) -> f64 {
    // 52 bits: exactly representable as f64.
    (protocol::splitmix::mix(open_time as u64 ^ index.rotate_left(21) ^ k.rotate_left(42))
        & ((1 << 52) - 1)) as f64
}

/// The stress record for update `k` of the candle at `index`: every field is
/// derived from `k`, and the volume is a checksum over the open time, the
/// absolute index and `k`, so any mix of two writes is detectable.
pub fn stress_candle(open_time: i64, index: u64, k: u64) -> Candle {
    let k = k & ((1 << 40) - 1);
    Candle {
        open_time,
        open: k as f64,
        high: (k + 1) as f64,
        low: (k + 2) as f64,
        close: (k + 3) as f64,
        volume: checksum(open_time, index, k),
    }
}

/// Whether a read is one whole stress record (not a mix of two).
pub fn is_whole_record(c: &StoredCandle) -> bool {
    let k = c.candle.open as u64;
    c.candle.high == (k + 1) as f64
        && c.candle.low == (k + 2) as f64
        && c.candle.close == (k + 3) as f64
        && c.candle.volume == checksum(c.candle.open_time, c.index, k)
}

/// What a torn-read stress reader saw.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TornCounts {
    /// Read attempts.
    pub attempts: u64,
    /// Attempts the seqlock accepted.
    pub accepted: u64,
    /// Accepted attempts whose record was not whole: must be 0.
    pub torn_accepted: u64,
    /// Attempts the seqlock rejected.
    pub rejected: u64,
    /// Rejected attempts whose record was indeed not whole: proof the race happened.
    pub torn_rejected: u64,
    /// Accepted attempts of a slot the ring had already reused for a later index.
    pub lapped: u64,
}

impl std::ops::AddAssign for TornCounts {
    fn add_assign(&mut self, o: Self) {
        self.attempts += o.attempts;
        self.accepted += o.accepted;
        self.torn_accepted += o.torn_accepted;
        self.rejected += o.rejected;
        self.torn_rejected += o.torn_rejected;
        self.lapped += o.lapped;
    }
}

fn series_of(reader: &StoreReader, symbol: &str) -> Result<SeriesId> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        if let Some(id) = reader.symbol_id(symbol) {
            return Ok(reader.series(id, Interval::M1)?);
        }
        if Instant::now() > deadline {
            bail!("symbol {symbol} never appeared in {}", reader.name());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Reads the latest slot of the stress series for `millis`, one seqlock
/// attempt at a time, and classifies every attempt.
pub fn torn_reader(instance: &InstanceName, millis: u64) -> Result<TornCounts> {
    let reader = StoreReader::open(instance)?;
    let series = series_of(&reader, STRESS_SYMBOL)?;
    let mut counts = TornCounts::default();
    let deadline = Instant::now() + Duration::from_millis(millis);
    loop {
        for _ in 0..1024 {
            let head = reader.appended(series)?;
            if head == 0 {
                continue;
            }
            let attempt = reader.read_attempt(series, head - 1)?;
            let whole = is_whole_record(&attempt.value);
            counts.attempts += 1;
            if attempt.accepted {
                counts.accepted += 1;
                counts.torn_accepted += u64::from(!whole);
                counts.lapped += u64::from(attempt.value.index != head - 1);
            } else {
                counts.rejected += 1;
                counts.torn_rejected += u64::from(!whole);
            }
        }
        if Instant::now() >= deadline {
            return Ok(counts);
        }
    }
}

/// How the wake benchmark's reader learns of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum WakeMode {
    /// Store write + publish; reader sleeps on the publish futex.
    StoreFutex,
    /// Store write + publish; reader busy-polls the publish counter.
    StoreSpin,
    /// Baseline: a raw shared word + FUTEX_WAKE; reader sleeps on it.
    RawFutex,
    /// Baseline: a raw shared word; reader busy-polls it.
    RawSpin,
}

impl WakeMode {
    /// Whether the reader sleeps (futex) rather than spins.
    pub fn blocking(self) -> bool {
        matches!(self, WakeMode::StoreFutex | WakeMode::RawFutex)
    }

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            WakeMode::StoreFutex => "store-futex",
            WakeMode::StoreSpin => "store-spin",
            WakeMode::RawFutex => "raw-futex",
            WakeMode::RawSpin => "raw-spin",
        }
    }
}

/// Spins until `word` differs from `seen`, or fails after [`PEER_TIMEOUT`].
pub fn spin_until_changed(load: impl Fn() -> u64, seen: u64) -> Result<u64> {
    let started = Instant::now();
    let mut n = 0u32;
    loop {
        let v = load();
        if v != seen {
            return Ok(v);
        }
        spin_loop();
        n = n.wrapping_add(1);
        if n.is_multiple_of(65_536) && started.elapsed() > PEER_TIMEOUT {
            bail!("the other process stopped responding");
        }
    }
}

/// Futex-waits until word `i` of `scratch` differs from `seen`.
pub fn wait_scratch(scratch: &SharedWords, i: usize, seen: u64) -> Result<u64> {
    let word = scratch.word(i).context("scratch word out of range")?;
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        let v = word.load(Ordering::Acquire);
        if v != seen {
            return Ok(v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the other process stopped responding");
        }
        scratch.wait(i, seen, Some(left))?;
    }
}

/// Observes `samples` changes made by the parent, timestamps each on arrival
/// and acknowledges it; returns the one-way latencies (ns) after warm-up.
pub fn wake_reader(
    instance: &InstanceName,
    scratch: &str,
    mode: WakeMode,
    samples: usize,
    base_ns: u64,
) -> Result<Vec<u64>> {
    let scratch = SharedWords::open(scratch)?;
    let ack = scratch.word(ACK).context("scratch too small")?;
    let ping = scratch.word(PING).context("scratch too small")?;
    let stamp_word = scratch.word(STAMP).context("scratch too small")?;
    let reader = match mode {
        WakeMode::StoreFutex | WakeMode::StoreSpin => {
            let reader = StoreReader::open(instance)?;
            let series = series_of(&reader, WAKE_SYMBOL)?;
            Some((reader, series))
        }
        WakeMode::RawFutex | WakeMode::RawSpin => None,
    };
    let mut latencies = Vec::with_capacity(samples);
    let mut seen = match &reader {
        Some((r, _)) => r.publish_counter(),
        None => ping.load(Ordering::Acquire),
    };
    for i in 0..samples {
        // Wait the mode's way; the arrival time is taken the moment the change
        // is seen, before reading the writer's timestamp.
        seen = match (&reader, mode.blocking()) {
            (Some((r, _)), true) => match r.wait_for_change(seen, PEER_TIMEOUT)? {
                Wait::Changed(v) => v,
                Wait::TimedOut => bail!("no publish within {PEER_TIMEOUT:?}"),
            },
            (Some((r, _)), false) => spin_until_changed(|| r.publish_counter(), seen)?,
            (None, true) => wait_scratch(&scratch, PING, seen)?,
            (None, false) => spin_until_changed(|| ping.load(Ordering::Acquire), seen)?,
        };
        let arrived = mono_ns();
        let sent = match &reader {
            Some((r, s)) => {
                r.latest(*s)?
                    .context("no candle after a publish")?
                    .candle
                    .volume as u64
            }
            None => stamp_word.load(Ordering::Relaxed),
        };
        let stamp = (arrived, sent);
        if i >= WARMUP {
            latencies.push(stamp.0.saturating_sub(stamp.1 + base_ns));
        }
        ack.store(i as u64 + 1, Ordering::Release);
        if mode.blocking() {
            scratch.wake(ACK)?;
        }
    }
    anyhow::ensure!(
        !latencies.is_empty(),
        "no samples after warm-up: raise --samples"
    );
    Ok(latencies)
}
