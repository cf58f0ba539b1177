//! The coordinator's side of the store: the only code that writes the segment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;

use super::error::{StoreCreateError, UpsertError, WriteError};
use super::layout::*;
use super::{SeriesId, SymbolId};
use crate::candle::{Candle, Interval};
use crate::names::{InstanceName, SymbolName};
use crate::shm::mapping::{self, Mapping};

/// The clock as the header stores it.
pub(crate) fn now_ms_u64() -> u64 {
    crate::clock::now_ms().max(0) as u64
}
use crate::shm::{futex, seqlock};

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A newer open time: a new candle was appended at this absolute index.
    Appended(u64),
    /// The same open time as the latest candle: updated in place.
    Updated(u64),
}

/// Counters kept by the writer (in its own memory, not the segment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterStats {
    /// Candles appended.
    pub appended: u64,
    /// In-progress candles updated in place.
    pub updated: u64,
    /// Upserts refused because the open time was older than the latest.
    pub rejected_stale: u64,
    /// Upserts refused for non-finite values.
    pub rejected_invalid: u64,
    /// Batches published.
    pub publishes: u64,
}

/// Owner of a store segment: creates it, writes it, and unlinks it when dropped.
///
/// There must be one writer per segment; the engine guarantees it with an
/// instance lock, and `&mut self` on every write keeps it single-threaded.
#[derive(Debug)]
pub struct StoreWriter {
    mapping: Mapping,
    name: String,
    layout: Layout,
    generation: u64,
    /// The publish counter value the current batch will be published as.
    pending: u64,
    symbols: HashMap<SymbolName, SymbolId>,
    stats: WriterStats,
}

impl StoreWriter {
    /// Creates the segment `/shmkline-<instance>` with `config`'s capacities.
    ///
    /// Fails with [`StoreCreateError::AlreadyExists`] if the name is taken; the
    /// caller, holding the instance lock, decides whether it is stale (see
    /// [`StoreWriter::unlink_stale`]).
    pub fn create(instance: &InstanceName, config: &StoreConfig) -> Result<Self, StoreCreateError> {
        let layout = Layout::new(config)?;
        let name = instance.segment_name();
        let generation = getrandom::u64().map_err(|e| StoreCreateError::Entropy(e.to_string()))?;
        let needed = layout.size_bytes() as u64;
        let free = mapping::shm_free_bytes();
        // Refused before a page is reserved, when it clearly cannot fit; the
        // reservation itself catches the rest (a race, or a limit statvfs
        // does not show).
        if free.is_some_and(|f| f < needed) {
            return Err(StoreCreateError::NoSpace { name, needed, free });
        }
        let mapping = Mapping::create(&name, layout.size_bytes()).map_err(|(op, source)| {
            if source == Errno::EEXIST {
                StoreCreateError::AlreadyExists { name: name.clone() }
            } else if source == Errno::ENOSPC
                || (op == "posix_fallocate" && source == Errno::ENOMEM)
            {
                StoreCreateError::NoSpace {
                    name: name.clone(),
                    needed,
                    free: mapping::shm_free_bytes(),
                }
            } else {
                StoreCreateError::Os {
                    name: name.clone(),
                    op,
                    source,
                }
            }
        })?;
        let w = mapping.words();
        let put = |i: usize, v: u64| w[i].store(v, Ordering::Relaxed);
        put(H_VERSION, LAYOUT_VERSION);
        put(H_SYMBOL_CAP, layout.symbols as u64);
        put(H_INTERVAL_COUNT, layout.intervals.len() as u64);
        put(H_RING_CAP, layout.largest_ring() as u64);
        put(H_SIZE, layout.size_bytes() as u64);
        put(H_GENERATION, generation);
        put(H_WRITER_PID, u64::from(std::process::id()));
        put(H_CREATED_MS, now_ms_u64());
        for (k, interval) in layout.intervals.iter().enumerate() {
            put(H_INTERVALS + k, interval.millis());
            put(H_RINGS + k, layout.rings[k] as u64);
        }
        put(H_HEARTBEAT, now_ms_u64());
        // Last, with Release: a reader that sees the magic sees the whole header.
        w[H_MAGIC].store(MAGIC, Ordering::Release);
        let symbols = HashMap::with_capacity(layout.symbols);
        Ok(Self {
            mapping,
            name,
            layout,
            generation,
            pending: 1,
            symbols,
            stats: WriterStats::default(),
        })
    }

    /// Removes a segment left behind by a coordinator that died without
    /// cleaning up. Only call this while holding the instance lock, which proves
    /// no live coordinator owns it. Returns whether there was one to remove.
    pub fn unlink_stale(instance: &InstanceName) -> Result<bool, Errno> {
        match mapping::unlink(&instance.segment_name()) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn words(&self) -> &[AtomicU64] {
        self.mapping.words()
    }

    /// The segment's name (`/shmkline-<instance>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Random number drawn for this segment; a restarted coordinator has a new one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Segment size in bytes, fixed at creation.
    pub fn size_bytes(&self) -> usize {
        self.layout.size_bytes()
    }

    /// Candles kept in the rings of `interval`, if the store keeps it.
    pub fn ring_of(&self, interval: Interval) -> Option<usize> {
        self.layout
            .interval_index(interval)
            .map(|k| self.layout.rings[k])
    }

    /// The registered symbols and, for `interval`, how many candles each
    /// holds now (at most its ring), in directory order.
    pub fn held(&self, interval: Interval) -> Vec<(SymbolName, u64)> {
        let Some(k) = self.layout.interval_index(interval) else {
            return Vec::new();
        };
        let w = self.words();
        let mut out: Vec<(SymbolName, u64, u32)> = self
            .symbols
            .iter()
            .map(|(name, id)| {
                let s = id.0 as usize * self.layout.intervals.len() + k;
                let head = w[self.layout.header_word(s) + S_HEAD].load(Ordering::Relaxed);
                (name.clone(), head.min(self.layout.rings[k] as u64), id.0)
            })
            .collect();
        out.sort_by_key(|&(_, _, id)| id);
        out.into_iter().map(|(n, h, _)| (n, h)).collect()
    }

    /// Candles ever appended to the series of `interval` (their heads'
    /// sum; updates of an open candle not counted).
    pub fn appended(&self, interval: Interval) -> u64 {
        let Some(k) = self.layout.interval_index(interval) else {
            return 0;
        };
        let w = self.words();
        self.symbols
            .values()
            .map(|id| {
                let s = id.0 as usize * self.layout.intervals.len() + k;
                w[self.layout.header_word(s) + S_HEAD].load(Ordering::Relaxed)
            })
            .sum()
    }

    /// Bytes of the segment written so far: the header, the directory, the
    /// series headers, and of each ring the groups its candles fill. With
    /// the whole segment reserved at creation this is not what it costs;
    /// it is what the feed's symbols use of it.
    pub fn touched_bytes(&self) -> u64 {
        let layout = &self.layout;
        let w = self.words();
        let rings: u64 = (0..self.symbols.len() * layout.intervals.len())
            .map(|s| {
                let head = w[layout.header_word(s) + S_HEAD].load(Ordering::Relaxed);
                touched_bytes((head as usize).min(layout.ring_of(s)))
            })
            .sum();
        layout.rings_base as u64 * 8 + rings
    }

    /// The smallest ring: how far a feed may run ahead of its readers is
    /// bounded by it.
    pub fn smallest_ring(&self) -> usize {
        self.layout.rings.iter().copied().min().unwrap_or(0)
    }

    /// Counters since creation.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// Adds `symbol` to the directory (or returns its id if present). A full
    /// directory is an error, never a silent drop.
    pub fn register_symbol(&mut self, symbol: &SymbolName) -> Result<SymbolId, WriteError> {
        if let Some(&id) = self.symbols.get(symbol) {
            return Ok(id);
        }
        let count = self.symbols.len();
        if count >= self.layout.symbols {
            return Err(WriteError::SymbolTableFull {
                capacity: self.layout.symbols,
                symbol: symbol.to_string(),
            });
        }
        let mut entry = [0u8; DIR_ENTRY_WORDS * 8];
        let bytes = symbol.as_str().as_bytes();
        // A SymbolName is at most MAX_SYMBOL_LEN bytes: it fits the entry
        // after its length byte.
        const _: () = assert!(crate::names::MAX_SYMBOL_LEN < DIR_ENTRY_WORDS * 8);
        entry[0] = bytes.len() as u8;
        entry[1..=bytes.len()].copy_from_slice(bytes);
        let base = self.layout.dir_base + count * DIR_ENTRY_WORDS;
        let w = self.words();
        for (k, chunk) in entry.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            w[base + k].store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        // Publish the entry: readers load the count with Acquire.
        w[H_SYMBOL_COUNT].store(count as u64 + 1, Ordering::Release);
        let id = SymbolId(count as u32);
        self.symbols.insert(symbol.clone(), id);
        Ok(id)
    }

    /// Registers `symbol` (if new) and gives its series of `interval`: what a
    /// feed, a benchmark or a test that writes one series needs.
    pub fn register_series(
        &mut self,
        symbol: &SymbolName,
        interval: Interval,
    ) -> Result<SeriesId, WriteError> {
        let id = self.register_symbol(symbol)?;
        self.series(id, interval)
    }

    /// The ring of `symbol` at `interval`.
    pub fn series(&self, symbol: SymbolId, interval: Interval) -> Result<SeriesId, WriteError> {
        if symbol.0 as usize >= self.symbols.len() {
            return Err(WriteError::UnknownSymbol(symbol.0));
        }
        let k =
            self.layout
                .interval_index(interval)
                .ok_or_else(|| WriteError::IntervalNotKept {
                    interval,
                    kept: self
                        .layout
                        .intervals
                        .iter()
                        .map(|i| i.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                })?;
        Ok(SeriesId(
            (symbol.0 as usize * self.layout.intervals.len() + k) as u32,
        ))
    }

    /// Writes `candle` into `series`: the same open time as the latest candle
    /// updates it in place, a newer one appends (overwriting the oldest slot
    /// once the ring is full), an older one is rejected and counted.
    ///
    /// Allocation-free and lock-free; readers see the change after [`publish`](Self::publish).
    #[inline]
    pub fn upsert(&mut self, series: SeriesId, candle: &Candle) -> Result<Upsert, UpsertError> {
        self.write_candle(series, candle, false)
    }

    /// [`upsert`](Self::upsert) of a candle the feed knows is final (Binance's
    /// `x: true`, a replayed file, the synthetic feed), so readers need not wait
    /// for the next candle to treat it as closed.
    #[inline]
    pub fn upsert_closed(
        &mut self,
        series: SeriesId,
        candle: &Candle,
    ) -> Result<Upsert, UpsertError> {
        self.write_candle(series, candle, true)
    }

    #[inline(always)]
    fn write_candle(
        &mut self,
        series: SeriesId,
        candle: &Candle,
        closed: bool,
    ) -> Result<Upsert, UpsertError> {
        let finite = candle.is_finite();
        if series.0 as usize >= self.layout.series_count() || !finite {
            return Err(self.refuse(series, candle));
        }
        let layout = &self.layout;
        let w = self.mapping.words();
        let hw = layout.header_word(series.0 as usize);
        let rw = layout.ring_word(series.0 as usize);
        // One bounds check for the whole header line.
        let header: &[AtomicU64; SERIES_HEADER_WORDS] = w[hw..hw + SERIES_HEADER_WORDS]
            .try_into()
            .expect("a series header is SERIES_HEADER_WORDS words");
        // Single writer: our own stores, so Relaxed loads see them.
        let head = header[S_HEAD].load(Ordering::Relaxed);
        // Where the next append goes; kept by the writer so the hot path needs
        // no 64-bit division. `min` keeps a wild value from indexing outside
        // the ring (it cannot happen: only this code writes it).
        let ring = layout.ring_of(series.0 as usize);
        let next_pos = (header[S_NEXT_POS].load(Ordering::Relaxed) as usize).min(ring - 1);
        let last_pos = Layout::prev_pos(ring, next_pos);
        let (outcome, pos) = if head == 0 {
            (Upsert::Appended(0), next_pos)
        } else {
            let latest =
                w[layout.slot_word(rw, last_pos) + P_OPEN_TIME].load(Ordering::Relaxed) as i64;
            if candle.open_time == latest {
                (Upsert::Updated(head - 1), last_pos)
            } else if candle.open_time > latest {
                (Upsert::Appended(head), next_pos)
            } else {
                return Err(self.refuse_stale(candle.open_time, latest));
            }
        };
        let index = match outcome {
            Upsert::Appended(i) | Upsert::Updated(i) => i,
        };
        let slot: &[AtomicU64; SLOT_WORDS] = w[layout.slot_word(rw, pos)..][..SLOT_WORDS]
            .try_into()
            .expect("a slot is SLOT_WORDS words");
        let stamp = &w[layout.stamp_word(rw, pos)];
        let pending = self.pending;
        seqlock::write(&slot[0], || {
            slot[P_OPEN_TIME].store(candle.open_time as u64, Ordering::Relaxed);
            slot[2].store(candle.open.to_bits(), Ordering::Relaxed);
            slot[3].store(candle.high.to_bits(), Ordering::Relaxed);
            slot[4].store(candle.low.to_bits(), Ordering::Relaxed);
            slot[5].store(candle.close.to_bits(), Ordering::Relaxed);
            slot[6].store(candle.volume.to_bits(), Ordering::Relaxed);
            slot[P_INDEX].store(
                index | if closed { CLOSED_BIT } else { 0 },
                Ordering::Relaxed,
            );
            stamp.store(pending, Ordering::Relaxed);
        });
        if let Upsert::Appended(_) = outcome {
            // After the slot's final Release: a reader that sees the new head
            // finds the slot complete (or retries on its seqlock).
            header[S_HEAD].store(head + 1, Ordering::Release);
            header[S_NEXT_POS].store(Layout::next_pos(ring, next_pos) as u64, Ordering::Relaxed);
            self.stats.appended += 1;
        } else {
            self.stats.updated += 1;
        }
        header[S_LAST_PUBLISH].store(pending, Ordering::Release);
        Ok(outcome)
    }

    /// The refusals, out of line: building and counting them must not weigh
    /// on the hot path's registers and prologue.
    #[cold]
    #[inline(never)]
    fn refuse(&mut self, series: SeriesId, candle: &Candle) -> UpsertError {
        if series.0 as usize >= self.layout.series_count() {
            return UpsertError::UnknownSeries(series.0);
        }
        self.stats.rejected_invalid += 1;
        UpsertError::NonFinite {
            open_time: candle.open_time,
        }
    }

    #[cold]
    #[inline(never)]
    fn refuse_stale(&mut self, open_time: i64, latest: i64) -> UpsertError {
        self.stats.rejected_stale += 1;
        UpsertError::Stale { open_time, latest }
    }

    /// Ends a batch: makes the publish counter the batch's number, refreshes
    /// the heartbeat and wakes every waiting reader (one `FUTEX_WAKE` per batch,
    /// not per candle). Returns the published counter.
    pub fn publish(&mut self) -> u64 {
        let published = self.pending;
        let w = self.mapping.words();
        w[H_PUBLISH].store(published, Ordering::Release);
        w[H_HEARTBEAT].store(now_ms_u64(), Ordering::Relaxed);
        // The wake can only fail for a bad address, which `words()` rules out;
        // a reader's wait has a timeout anyway, so a lost wake delays, never hangs.
        let _ = futex::wake_all(&w[H_PUBLISH]);
        self.pending += 1;
        self.stats.publishes += 1;
        published
    }

    /// Refreshes the heartbeat without publishing (for idle periods).
    pub fn heartbeat(&self) {
        self.words()[H_HEARTBEAT].store(now_ms_u64(), Ordering::Relaxed);
    }

    /// TEST ONLY (the `testing` feature): leaves the slot of `index` in
    /// `series` mid-write (odd sequence), exactly as a writer killed between
    /// its two sequence stores would. Used to prove readers give up with
    /// `Stalled` instead of spinning.
    #[cfg(feature = "testing")]
    pub fn simulate_death_mid_write(&mut self, series: SeriesId, index: u64) {
        let rw = self.layout.ring_word(series.0 as usize);
        let ring = self.layout.ring_of(series.0 as usize);
        let slot = self.layout.slot_word(rw, Layout::pos(ring, index));
        let w = self.mapping.words();
        let s = w[slot].load(Ordering::Relaxed);
        w[slot].store(s | 1, Ordering::Release);
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        // The owner removes the name; workers that still map it keep a valid
        // (now orphaned) mapping until they unmap it.
        let _ = mapping::unlink(&self.name);
    }
}
