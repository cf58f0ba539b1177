//! The workers' side of the store: a read-only mapping with no way to write.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::Serialize;

use super::error::{OpenError, ReadError};
use super::layout::*;
use super::writer::now_ms_u64;
use super::{SeriesId, StoredCandle, SymbolId};
use crate::candle::{Candle, Interval};
use crate::names::InstanceName;
use crate::shm::futex::{self, WaitOutcome};
use crate::shm::mapping::{Access, Mapping, Opened};
use crate::shm::seqlock::{self, Attempt};

/// How long a reader keeps retrying one slot before reporting
/// [`ReadError::Stalled`]. A live writer holds a slot odd for nanoseconds.
pub const STALL_TIMEOUT: Duration = Duration::from_millis(1);
/// Failed attempts spent spinning before the reader starts yielding and
/// watching the clock.
const SPIN_ATTEMPTS: u32 = 128;
/// Whole-read restarts allowed when the writer laps the ring mid-read.
const LAP_RETRIES: u32 = 8;

/// The outcome of [`StoreReader::wait_for_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The publish counter moved to this value.
    Changed(u64),
    /// The timeout passed with no change.
    TimedOut,
}

/// The outcome of [`StoreReader::changed_since`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangedSince {
    /// Every candle still in the ring changed after the given counter, so older
    /// candles that also changed may already have been overwritten. Callers
    /// that track the last index they processed can tell for sure.
    pub possible_gap: bool,
}

/// A snapshot of the header, for `shmkline store inspect` and status reports.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentInfo {
    /// Segment name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: usize,
    /// Layout version.
    pub layout_version: u64,
    /// Random number of the coordinator run that created the segment.
    pub generation: u64,
    /// Pid of that coordinator.
    pub writer_pid: u32,
    /// Whether a process with that pid exists now.
    pub writer_running: bool,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Last heartbeat, ms since the epoch.
    pub heartbeat_ms: u64,
    /// Milliseconds since the last heartbeat.
    pub heartbeat_age_ms: u64,
    /// Batches published.
    pub publish_counter: u64,
    /// Directory capacity.
    pub symbol_capacity: usize,
    /// Registered symbols, in directory order.
    pub symbols: Vec<String>,
    /// Intervals kept per symbol.
    pub intervals: Vec<Interval>,
    /// Candles per ring, per interval.
    pub rings: Vec<(Interval, usize)>,
}

/// A read-only view of a store segment. It has no method that writes: the
/// mapping is `PROT_READ`, and the kernel kills a process that tries.
#[derive(Debug)]
pub struct StoreReader {
    mapping: Mapping,
    name: String,
    layout: Layout,
    generation: u64,
    retries: AtomicU64,
}

/// One slot: the sequence word and the seven payload words.
type Slot = [AtomicU64; SLOT_WORDS];

#[inline(always)]
fn load_candle(slot: &Slot) -> StoredCandle {
    let f = |k: usize| f64::from_bits(slot[k].load(Ordering::Relaxed));
    let index = slot[P_INDEX].load(Ordering::Relaxed);
    StoredCandle {
        index: index & !CLOSED_BIT,
        closed: index & CLOSED_BIT != 0,
        candle: Candle {
            open_time: slot[P_OPEN_TIME].load(Ordering::Relaxed) as i64,
            open: f(2),
            high: f(3),
            low: f(4),
            close: f(5),
            volume: f(6),
        },
    }
}

impl StoreReader {
    /// Maps `/shmkline-<instance>` read-only and validates its header.
    pub fn open(instance: &InstanceName) -> Result<Self, OpenError> {
        Self::open_segment(&instance.segment_name())
    }

    fn open_segment(name: &str) -> Result<Self, OpenError> {
        let name = name.to_owned();
        let (mapping, actual) = match Mapping::open(&name, Access::ReadOnly) {
            Ok(Opened::Mapped(m, size)) => (m, size),
            Ok(Opened::Empty) => return Err(OpenError::Initialising { name }),
            Err((_, Errno::ENOENT)) => return Err(OpenError::NotFound { name }),
            Err((op, source)) => return Err(OpenError::Os { name, op, source }),
        };
        if actual < HEADER_BYTES {
            return Err(OpenError::Truncated {
                name,
                size: actual,
                min: HEADER_BYTES,
            });
        }
        let w = mapping.words();
        let load = |i: usize| w[i].load(Ordering::Relaxed);
        // Acquire pairs with the creator's Release store of the magic.
        match w[H_MAGIC].load(Ordering::Acquire) {
            MAGIC => {}
            0 => return Err(OpenError::Initialising { name }),
            found => return Err(OpenError::Foreign { name, found }),
        }
        let version = load(H_VERSION);
        if version != LAYOUT_VERSION {
            return Err(OpenError::VersionMismatch {
                name,
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        let corrupt = |reason: String| OpenError::CorruptHeader {
            name: name.clone(),
            reason,
        };
        let count = load(H_INTERVAL_COUNT);
        if count == 0 || count > MAX_INTERVALS as u64 {
            return Err(corrupt(format!("interval count {count}")));
        }
        let mut intervals = Vec::with_capacity(count as usize);
        for k in 0..count as usize {
            let code = load(H_INTERVALS + k);
            intervals.push(
                Interval::from_millis(code)
                    .ok_or_else(|| corrupt(format!("unknown interval code {code}")))?,
            );
        }
        let rings: Vec<(Interval, u64)> = intervals
            .iter()
            .enumerate()
            .map(|(k, &i)| (i, load(H_RINGS + k)))
            .collect();
        let layout =
            Layout::from_parts(load(H_SYMBOL_CAP), &rings).map_err(|e| corrupt(e.to_string()))?;
        let declared = load(H_SIZE);
        if declared != layout.size_bytes() as u64 {
            return Err(corrupt(format!(
                "declares {declared} bytes but its capacities need {}",
                layout.size_bytes()
            )));
        }
        if actual != layout.size_bytes() {
            return Err(OpenError::SizeMismatch {
                name,
                expected: layout.size_bytes(),
                actual,
            });
        }
        let generation = load(H_GENERATION);
        Ok(Self {
            mapping,
            name,
            layout,
            generation,
            retries: AtomicU64::new(0),
        })
    }

    fn words(&self) -> &[AtomicU64] {
        self.mapping.words()
    }

    /// The mapping, for the fault-injection test only.
    #[cfg(feature = "testing")]
    pub(crate) fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The generation of the coordinator run that created the segment.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The intervals kept per symbol.
    pub fn intervals(&self) -> &[Interval] {
        &self.layout.intervals
    }

    /// Candles kept in the ring of `series`.
    pub fn ring(&self, series: SeriesId) -> usize {
        self.layout.ring_of(series.0 as usize)
    }

    /// Candles kept in the rings of `interval`, if the store keeps it.
    pub fn ring_of(&self, interval: Interval) -> Option<usize> {
        self.layout
            .interval_index(interval)
            .map(|k| self.layout.rings[k])
    }

    /// Failed seqlock attempts (retries) since this reader was opened.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The number of batches published so far.
    pub fn publish_counter(&self) -> u64 {
        self.words()[H_PUBLISH].load(Ordering::Acquire)
    }

    /// The writer's last heartbeat, ms since the epoch.
    pub fn heartbeat_ms(&self) -> u64 {
        self.words()[H_HEARTBEAT].load(Ordering::Relaxed)
    }

    /// The pid of the coordinator that created the segment.
    pub fn writer_pid(&self) -> u32 {
        self.words()[H_WRITER_PID].load(Ordering::Relaxed) as u32
    }

    /// Symbols registered so far. The directory is append-only, so a count
    /// that did not change means the list did not either.
    pub fn symbol_count(&self) -> usize {
        // min: never index past the directory, whatever the word says.
        (self.words()[H_SYMBOL_COUNT].load(Ordering::Acquire) as usize).min(self.layout.symbols)
    }

    fn symbol_entry(&self, i: usize) -> ([u8; DIR_ENTRY_WORDS * 8], usize) {
        let mut entry = [0u8; DIR_ENTRY_WORDS * 8];
        let base = self.layout.dir_base + i * DIR_ENTRY_WORDS;
        for k in 0..DIR_ENTRY_WORDS {
            let word = self.words()[base + k].load(Ordering::Relaxed).to_le_bytes();
            entry[k * 8..k * 8 + 8].copy_from_slice(&word);
        }
        let len = usize::from(entry[0]).min(entry.len() - 1);
        (entry, len)
    }

    /// Registered symbols, in directory order.
    pub fn symbols(&self) -> Vec<String> {
        (0..self.symbol_count())
            .map(|i| {
                let (entry, len) = self.symbol_entry(i);
                String::from_utf8_lossy(&entry[1..=len]).into_owned()
            })
            .collect()
    }

    /// Registered symbols with their ids, in directory order.
    pub fn symbols_with_ids(&self) -> Vec<(SymbolId, String)> {
        self.symbols()
            .into_iter()
            .enumerate()
            .map(|(i, name)| (SymbolId(i as u32), name))
            .collect()
    }

    /// The id of `symbol`, if registered.
    pub fn symbol_id(&self, symbol: &str) -> Option<SymbolId> {
        (0..self.symbol_count())
            .find(|&i| {
                let (entry, len) = self.symbol_entry(i);
                &entry[1..=len] == symbol.as_bytes()
            })
            .map(|i| SymbolId(i as u32))
    }

    /// The ring of `symbol` at `interval`.
    pub fn series(&self, symbol: SymbolId, interval: Interval) -> Result<SeriesId, ReadError> {
        if symbol.0 as usize >= self.symbol_count() {
            return Err(ReadError::UnknownSymbol(symbol.0));
        }
        let k = self
            .layout
            .interval_index(interval)
            .ok_or(ReadError::IntervalNotKept(interval))?;
        Ok(SeriesId(
            (symbol.0 as usize * self.layout.intervals.len() + k) as u32,
        ))
    }

    /// The header word and ring word of `series`.
    fn series_words(&self, series: SeriesId) -> Result<(usize, usize), ReadError> {
        if series.0 as usize >= self.layout.series_count() {
            return Err(ReadError::UnknownSeries(series.0));
        }
        let s = series.0 as usize;
        Ok((self.layout.header_word(s), self.layout.ring_word(s)))
    }

    /// Reads one slot through its seqlock. The first attempt is inlined into
    /// the caller's loop (the common, uncontended case); retries are cold.
    #[inline(always)]
    fn read_consistent<T>(
        &self,
        series: SeriesId,
        index: u64,
        seq: &AtomicU64,
        load: impl Fn() -> T,
    ) -> Result<T, ReadError> {
        let attempt = seqlock::read_once(seq, &load);
        if attempt.accepted {
            return Ok(attempt.value);
        }
        self.retry_read(series, index, seq, load)
    }

    /// Retries a slot (spin, then yield) until a consistent snapshot or
    /// [`STALL_TIMEOUT`] after the spinning phase.
    #[cold]
    #[inline(never)]
    fn retry_read<T>(
        &self,
        series: SeriesId,
        index: u64,
        seq: &AtomicU64,
        load: impl Fn() -> T,
    ) -> Result<T, ReadError> {
        let mut failures = 1u32;
        let mut since: Option<Instant> = None;
        loop {
            self.retries.fetch_add(1, Ordering::Relaxed);
            if failures < SPIN_ATTEMPTS {
                spin_loop();
            } else {
                let started = *since.get_or_insert_with(Instant::now);
                let waited = started.elapsed();
                if waited >= STALL_TIMEOUT {
                    return Err(ReadError::Stalled {
                        series: series.0,
                        index,
                        seq: seq.load(Ordering::Relaxed),
                        waited_us: waited.as_micros() as u64,
                    });
                }
                std::thread::yield_now();
            }
            let attempt = seqlock::read_once(seq, &load);
            if attempt.accepted {
                return Ok(attempt.value);
            }
            failures = failures.saturating_add(1);
        }
    }

    /// The slot at ring position `pos` of the ring starting at word `rw`.
    #[inline(always)]
    fn slot(&self, rw: usize, pos: usize) -> &Slot {
        let start = self.layout.slot_word(rw, pos);
        // In bounds: `rw` is a validated ring and `pos < ring`. The
        // fixed-size array lets the compiler drop per-word bounds checks.
        self.words()[start..start + SLOT_WORDS]
            .try_into()
            .expect("a slot is SLOT_WORDS words")
    }

    #[inline(always)]
    fn read_candle(
        &self,
        series: SeriesId,
        rw: usize,
        index: u64,
        pos: usize,
    ) -> Result<StoredCandle, ReadError> {
        let slot = self.slot(rw, pos);
        self.read_consistent(series, index, &slot[0], || load_candle(slot))
    }

    /// How many candles `series` has ever appended (the next absolute index).
    pub fn appended(&self, series: SeriesId) -> Result<u64, ReadError> {
        let (hw, _) = self.series_words(series)?;
        Ok(self.words()[hw + S_HEAD].load(Ordering::Acquire))
    }

    /// The latest candle of `series` (possibly still in progress), if any.
    pub fn latest(&self, series: SeriesId) -> Result<Option<StoredCandle>, ReadError> {
        let (hw, rw) = self.series_words(series)?;
        for _ in 0..LAP_RETRIES {
            let head = self.words()[hw + S_HEAD].load(Ordering::Acquire);
            if head == 0 {
                return Ok(None);
            }
            let ring = self.layout.ring_of(series.0 as usize);
            let c = self.read_candle(series, rw, head - 1, Layout::pos(ring, head - 1))?;
            if c.index == head - 1 {
                return Ok(Some(c));
            }
        }
        Err(ReadError::Lapped {
            series: series.0,
            attempts: LAP_RETRIES,
        })
    }

    /// The last `n` candles of `series`, oldest first, into `out` (cleared
    /// first). Fewer if the series holds fewer; never more than the ring.
    pub fn last_n(
        &self,
        series: SeriesId,
        n: usize,
        out: &mut Vec<StoredCandle>,
    ) -> Result<(), ReadError> {
        let (hw, _) = self.series_words(series)?;
        for _ in 0..LAP_RETRIES {
            let head = self.words()[hw + S_HEAD].load(Ordering::Acquire);
            let n = (n as u64)
                .min(head)
                .min(self.layout.ring_of(series.0 as usize) as u64);
            match self.read_range(series, head - n, head, out) {
                Err(ReadError::Gone { .. }) => continue, // lapped mid-read: from the new head
                other => return other,
            }
        }
        out.clear();
        Err(ReadError::Lapped {
            series: series.0,
            attempts: LAP_RETRIES,
        })
    }

    /// The candles of `series` with absolute indices `start..end`, oldest
    /// first, into `out` (cleared first). Fails with [`ReadError::Gone`] if the
    /// ring no longer holds `start` (or overwrote it while reading), and with
    /// [`ReadError::NotYet`] if `end` is past the last appended candle.
    pub fn read_range(
        &self,
        series: SeriesId,
        start: u64,
        end: u64,
        out: &mut Vec<StoredCandle>,
    ) -> Result<(), ReadError> {
        let (hw, rw) = self.series_words(series)?;
        out.clear();
        let head = self.words()[hw + S_HEAD].load(Ordering::Acquire);
        if end > head {
            return Err(ReadError::NotYet {
                series: series.0,
                end,
                head,
            });
        }
        if start >= end {
            return Ok(());
        }
        let ring = self.layout.ring_of(series.0 as usize);
        let oldest = head.saturating_sub(ring as u64);
        if start < oldest {
            return Err(ReadError::Gone {
                series: series.0,
                index: start,
                oldest,
            });
        }
        out.reserve((end - start) as usize);
        let mut pos = Layout::pos(ring, start);
        for index in start..end {
            let slot = self.slot(rw, pos);
            // Load straight into the caller's buffer (private memory) and
            // take it back if the attempt is rejected: building the candle
            // in a temporary and copying it costs a store-forwarding stall
            // per candle, more than the read itself.
            let attempt = seqlock::read_once(&slot[0], || {
                let c = load_candle(slot);
                out.push(c);
                c.index
            });
            let mut read_index = attempt.value;
            if !attempt.accepted {
                out.pop();
                let c = self.retry_read(series, index, &slot[0], || load_candle(slot))?;
                read_index = c.index;
                out.push(c);
            }
            if read_index != index {
                // Overwritten by a later lap of the ring while we read.
                out.clear();
                let head = self.words()[hw + S_HEAD].load(Ordering::Acquire);
                return Err(ReadError::Gone {
                    series: series.0,
                    index,
                    oldest: head.saturating_sub(ring as u64),
                });
            }
            pos = Layout::next_pos(ring, pos);
        }
        Ok(())
    }

    /// The candles of `series` written in batches published after
    /// `publish_counter`, oldest first, into `out` (cleared first): the
    /// appended candles and the in-progress candle if it was updated.
    pub fn changed_since(
        &self,
        series: SeriesId,
        publish_counter: u64,
        out: &mut Vec<StoredCandle>,
    ) -> Result<ChangedSince, ReadError> {
        let (hw, rw) = self.series_words(series)?;
        out.clear();
        if self.words()[hw + S_LAST_PUBLISH].load(Ordering::Acquire) <= publish_counter {
            return Ok(ChangedSince::default());
        }
        let w = self.words();
        let ring = self.layout.ring_of(series.0 as usize);
        'attempt: for _ in 0..LAP_RETRIES {
            out.clear();
            let head = w[hw + S_HEAD].load(Ordering::Acquire);
            let oldest = head.saturating_sub(ring as u64);
            let mut index = head;
            let mut pos = Layout::pos(ring, head);
            let mut reached_oldest = true;
            while index > oldest {
                index -= 1;
                pos = Layout::prev_pos(ring, pos);
                let slot = self.slot(rw, pos);
                let stamp_word = &w[self.layout.stamp_word(rw, pos)];
                let (c, stamp) = self.read_consistent(series, index, &slot[0], || {
                    (load_candle(slot), stamp_word.load(Ordering::Relaxed))
                })?;
                if c.index != index {
                    continue 'attempt;
                }
                if stamp <= publish_counter {
                    reached_oldest = false;
                    break;
                }
                out.push(c);
            }
            out.reverse();
            return Ok(ChangedSince {
                possible_gap: reached_oldest && oldest > 0,
            });
        }
        out.clear();
        Err(ReadError::Lapped {
            series: series.0,
            attempts: LAP_RETRIES,
        })
    }

    /// The latest candle of every interval of `symbol`, into `out` (cleared first).
    pub fn symbol_latest(
        &self,
        symbol: SymbolId,
        out: &mut Vec<(Interval, Option<StoredCandle>)>,
    ) -> Result<(), ReadError> {
        out.clear();
        for &interval in &self.layout.intervals {
            let series = self.series(symbol, interval)?;
            out.push((interval, self.latest(series)?));
        }
        Ok(())
    }

    /// Blocks until the publish counter differs from `seen` or `timeout`
    /// passes. Sleeps on the shared futex (the writer wakes once per batch);
    /// spurious wake-ups and signals are absorbed here.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> Result<Wait, ReadError> {
        let word = &self.words()[H_PUBLISH];
        let deadline = Instant::now() + timeout;
        loop {
            let now_value = word.load(Ordering::Acquire);
            if now_value != seen {
                return Ok(Wait::Changed(now_value));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(Wait::TimedOut);
            }
            match futex::wait(word, seen, Some(remaining)) {
                Ok(
                    WaitOutcome::Woken
                    | WaitOutcome::ValueChanged
                    | WaitOutcome::Interrupted
                    | WaitOutcome::TimedOut,
                ) => {}
                Err(e) => return Err(ReadError::Wait(e)),
            }
        }
    }

    /// One seqlock attempt on the slot of `index`, with no retry: the payload as
    /// loaded and whether the protocol accepted it. For tools that count
    /// rejected torn reads (`bench torn`, the stress test); use the other
    /// methods to read candles.
    pub fn read_attempt(
        &self,
        series: SeriesId,
        index: u64,
    ) -> Result<Attempt<StoredCandle>, ReadError> {
        let (_, rw) = self.series_words(series)?;
        let slot = self.slot(
            rw,
            Layout::pos(self.layout.ring_of(series.0 as usize), index),
        );
        Ok(seqlock::read_once(&slot[0], || load_candle(slot)))
    }

    /// A snapshot of the header and directory.
    pub fn info(&self) -> SegmentInfo {
        let w = self.words();
        let load = |i: usize| w[i].load(Ordering::Relaxed);
        let writer_pid = self.writer_pid();
        let heartbeat_ms = self.heartbeat_ms();
        let writer_running = i32::try_from(writer_pid)
            .ok()
            .filter(|&p| p > 0)
            .is_some_and(|p| !matches!(kill(Pid::from_raw(p), None), Err(Errno::ESRCH)));
        SegmentInfo {
            name: self.name.clone(),
            size_bytes: self.layout.size_bytes(),
            layout_version: load(H_VERSION),
            generation: self.generation,
            writer_pid,
            writer_running,
            created_ms: load(H_CREATED_MS),
            heartbeat_ms,
            heartbeat_age_ms: now_ms_u64().saturating_sub(heartbeat_ms),
            publish_counter: self.publish_counter(),
            symbol_capacity: self.layout.symbols,
            symbols: self.symbols(),
            intervals: self.layout.intervals.clone(),
            rings: self
                .layout
                .intervals
                .iter()
                .copied()
                .zip(self.layout.rings.iter().copied())
                .collect(),
        }
    }
}
