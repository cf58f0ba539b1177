//! Where everything lives in the segment, in 8-byte words.
//!
//! ```text
//! header     8 lines of 128 bytes (hot fields each on their own line)
//!   line 0   magic, layout version, symbol capacity, interval count,
//!            largest ring, total size, generation, writer pid, created ms
//!   line 1   interval codes (length in ms), up to 16
//!   line 5   candles per ring of each interval, in the order of line 1
//!   line 2   heartbeat (ms, CLOCK_REALTIME)
//!   line 3   publish counter: bumped once per batch; its low half is the futex
//!   line 4   symbol count (append-only directory)
//! directory  symbol capacity x 32 bytes: length byte + up to 31 name bytes
//!            (rings are sized per interval: a symbol's rings lie together,
//!            interval after interval)
//! headers    one 64-byte header per series (symbol-major, then interval):
//!            head (candles ever appended), last publish that changed the
//!            series, ring position of the next append (the writer's own
//!            bookkeeping, so its hot path needs no 64-bit division)
//! rings      one ring per series, in groups of 8 candles, each group:
//!   stamps   8 x 8 bytes: the publish counter of the batch that last wrote
//!            each slot (written inside that slot's seqlock window)
//!   slots    8 x 64 bytes: seq, open time, o, h, l, c, v, absolute index
//!            (top bit: the feed marked the candle closed)
//! ```
//! Headers are packed together and stamps sit next to their slots so that an
//! upsert or a slice read touches few cache lines and pages: with headers and
//! stamps at the far ends of each ring, every upsert cost three pages and an
//! L1 TLB miss. Regions and rings start on 128-byte boundaries; slots are
//! 64-byte aligned. Prices and volume are `f64::to_bits`.
//! `magic` is written last, with Release, so a reader that sees it sees a
//! complete header.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::candle::Interval;

/// "SHMKLIN1" in little-endian bytes.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMKLIN1");
/// Bumped whenever the byte layout changes.
pub const LAYOUT_VERSION: u64 = 3;

const LINE: usize = 16;
pub(crate) const HEADER_WORDS: usize = 8 * LINE;
/// Smallest possible segment: a header alone.
pub const HEADER_BYTES: usize = HEADER_WORDS * 8;

pub(crate) const H_MAGIC: usize = 0;
pub(crate) const H_VERSION: usize = 1;
pub(crate) const H_SYMBOL_CAP: usize = 2;
pub(crate) const H_INTERVAL_COUNT: usize = 3;
pub(crate) const H_RING_CAP: usize = 4;
pub(crate) const H_SIZE: usize = 5;
pub(crate) const H_GENERATION: usize = 6;
pub(crate) const H_WRITER_PID: usize = 7;
pub(crate) const H_CREATED_MS: usize = 8;
pub(crate) const H_INTERVALS: usize = LINE;
pub(crate) const H_HEARTBEAT: usize = 2 * LINE;
pub(crate) const H_PUBLISH: usize = 3 * LINE;
pub(crate) const H_SYMBOL_COUNT: usize = 4 * LINE;
pub(crate) const H_RINGS: usize = 5 * LINE;

pub(crate) const DIR_ENTRY_WORDS: usize = 4;
pub(crate) const SERIES_HEADER_WORDS: usize = 8;
pub(crate) const S_HEAD: usize = 0;
pub(crate) const S_LAST_PUBLISH: usize = 1;
pub(crate) const S_NEXT_POS: usize = 2;
pub(crate) const SLOT_WORDS: usize = 8;
/// Slots per group (one stamp line serves a group).
const GROUP_SLOTS: usize = 8;
/// Words per group: the stamp line, then the slots.
const GROUP_WORDS: usize = GROUP_SLOTS + GROUP_SLOTS * SLOT_WORDS;
/// Payload word offsets within a slot (word 0 is the sequence).
pub(crate) const P_OPEN_TIME: usize = 1;
pub(crate) const P_INDEX: usize = 7;
/// Top bit of the index word: the feed marked the candle closed (final).
pub(crate) const CLOSED_BIT: u64 = 1 << 63;

/// Largest symbol capacity accepted.
pub const MAX_SYMBOLS: u32 = 65_536;
/// Largest number of intervals per symbol.
pub const MAX_INTERVALS: usize = LINE;
/// Largest ring accepted (candles per series).
pub const MAX_CANDLES_PER_SERIES: u32 = 1 << 20;
/// Largest segment accepted, so a typo in a capacity cannot ask for terabytes.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 30;

/// The capacities a store is created with; memory is fixed by them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Symbol directory capacity.
    pub symbols: u32,
    /// The intervals kept for every symbol, each in its own ring of this
    /// many candles.
    pub rings: Vec<(Interval, u32)>,
}

/// Candles per ring when nothing asks for more: a day of minutes.
pub const DEFAULT_RING: u32 = 1440;

impl StoreConfig {
    /// `symbols` symbols, each with a ring of `candles` for every interval.
    pub fn uniform(symbols: u32, intervals: &[Interval], candles: u32) -> Self {
        Self {
            symbols,
            rings: intervals.iter().map(|&i| (i, candles)).collect(),
        }
    }

    /// The intervals kept, in order.
    pub fn intervals(&self) -> Vec<Interval> {
        self.rings.iter().map(|&(i, _)| i).collect()
    }

    /// Candles in the rings of `interval`, if it is kept.
    pub fn ring(&self, interval: Interval) -> Option<u32> {
        self.rings
            .iter()
            .find(|&&(i, _)| i == interval)
            .map(|&(_, n)| n)
    }

    /// The segment's size in bytes, or why it cannot be laid out.
    pub fn size_bytes(&self) -> Result<u64, LayoutError> {
        Layout::new(self).map(|l| l.size_bytes() as u64)
    }
}

impl Default for StoreConfig {
    /// 256 symbols x (1m, 5m, 15m, 1h, 4h, 1d) x 1440 candles: a day of
    /// minutes per series, about 152 MiB.
    fn default() -> Self {
        Self::uniform(
            256,
            &[
                Interval::M1,
                Interval::M5,
                Interval::M15,
                Interval::H1,
                Interval::H4,
                Interval::D1,
            ],
            DEFAULT_RING,
        )
    }
}

/// A capacity that cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// Symbol capacity out of range.
    #[error("symbol capacity {0} is out of range: use 1 to {MAX_SYMBOLS}")]
    Symbols(u64),
    /// Interval list empty, too long or repeated.
    #[error("interval list {0}: give 1 to {MAX_INTERVALS} distinct intervals")]
    Intervals(String),
    /// Ring length out of range.
    #[error("candles per series {0} is out of range: use 2 to {MAX_CANDLES_PER_SERIES}")]
    Candles(u64),
    /// The total would be too large.
    #[error(
        "the segment would need {0} bytes, more than the {MAX_SEGMENT_BYTES}-byte limit: lower a capacity"
    )]
    TooLarge(u128),
}

/// The resolved layout: word offsets for everything in the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub symbols: usize,
    pub intervals: Vec<Interval>,
    /// Candles per ring, per interval (in the order of `intervals`).
    pub rings: Vec<usize>,
    /// Word offset of each interval's ring among a symbol's rings.
    offsets: Vec<usize>,
    /// Words of all of one symbol's rings.
    symbol_words: usize,
    pub dir_base: usize,
    pub headers_base: usize,
    pub rings_base: usize,
    pub total_words: usize,
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Bytes of a ring's first `candles` slots (whole groups): what holding
/// that many candles has touched of it.
pub(crate) fn touched_bytes(candles: usize) -> u64 {
    (candles.div_ceil(GROUP_SLOTS) * GROUP_WORDS * 8) as u64
}

/// Bytes of one ring of `candles` candles, as laid out.
pub fn ring_bytes(candles: u32) -> u64 {
    block_words(candles as usize) as u64 * 8
}

/// Words of a ring of `ring` candles (whole groups, whole lines).
pub(crate) fn block_words(ring: usize) -> usize {
    round_up(ring.div_ceil(GROUP_SLOTS) * GROUP_WORDS, LINE)
}

impl Layout {
    pub(crate) fn new(config: &StoreConfig) -> Result<Self, LayoutError> {
        let rings: Vec<(Interval, u64)> = config
            .rings
            .iter()
            .map(|&(i, n)| (i, u64::from(n)))
            .collect();
        Self::from_parts(u64::from(config.symbols), &rings)
    }

    pub(crate) fn from_parts(symbols: u64, rings: &[(Interval, u64)]) -> Result<Self, LayoutError> {
        if !(1..=u64::from(MAX_SYMBOLS)).contains(&symbols) {
            return Err(LayoutError::Symbols(symbols));
        }
        let intervals: Vec<Interval> = rings.iter().map(|&(i, _)| i).collect();
        let mut sorted = intervals.clone();
        sorted.sort();
        sorted.dedup();
        if intervals.is_empty()
            || intervals.len() > MAX_INTERVALS
            || sorted.len() != intervals.len()
        {
            let list: Vec<&str> = intervals.iter().map(|i| i.as_str()).collect();
            return Err(LayoutError::Intervals(format!("[{}]", list.join(","))));
        }
        if let Some(&(_, ring)) = rings
            .iter()
            .find(|(_, r)| !(2..=u64::from(MAX_CANDLES_PER_SERIES)).contains(r))
        {
            return Err(LayoutError::Candles(ring));
        }
        // Bounded above, so these fit usize and the products below cannot overflow u128.
        let symbols = symbols as usize;
        let ring_sizes: Vec<usize> = rings.iter().map(|&(_, r)| r as usize).collect();
        let mut offsets = Vec::with_capacity(ring_sizes.len());
        let mut symbol_words = 0;
        for &r in &ring_sizes {
            offsets.push(symbol_words);
            symbol_words += block_words(r);
        }
        let series = symbols * intervals.len();
        let dir_base = HEADER_WORDS;
        let headers_base = dir_base + round_up(symbols * DIR_ENTRY_WORDS, LINE);
        let rings_base = headers_base + round_up(series * SERIES_HEADER_WORDS, LINE);
        let total = rings_base as u128 + symbols as u128 * symbol_words as u128;
        let bytes = total * 8;
        if bytes > u128::from(MAX_SEGMENT_BYTES) {
            return Err(LayoutError::TooLarge(bytes));
        }
        Ok(Self {
            symbols,
            intervals,
            rings: ring_sizes,
            offsets,
            symbol_words,
            dir_base,
            headers_base,
            rings_base,
            total_words: total as usize,
        })
    }

    /// The largest ring.
    pub(crate) fn largest_ring(&self) -> usize {
        self.rings.iter().copied().max().unwrap_or(0)
    }

    /// Candles in the ring of series `series`.
    #[inline]
    pub(crate) fn ring_of(&self, series: usize) -> usize {
        self.rings[series % self.intervals.len()]
    }

    pub(crate) fn size_bytes(&self) -> usize {
        self.total_words * 8
    }

    pub(crate) fn series_count(&self) -> usize {
        self.symbols * self.intervals.len()
    }

    pub(crate) fn interval_index(&self, interval: Interval) -> Option<usize> {
        self.intervals.iter().position(|&i| i == interval)
    }

    /// First word of series `series`' header.
    #[inline]
    pub(crate) fn header_word(&self, series: usize) -> usize {
        self.headers_base + series * SERIES_HEADER_WORDS
    }

    /// First word of series `series`' ring.
    #[inline]
    pub(crate) fn ring_word(&self, series: usize) -> usize {
        let n = self.intervals.len();
        self.rings_base + (series / n) * self.symbol_words + self.offsets[series % n]
    }

    /// The position (0..ring) of absolute index `index` in a ring of
    /// `ring` candles. Loops over consecutive candles compute this once and
    /// step with [`Layout::next_pos`]: a 64-bit division per candle costs
    /// more than reading the candle.
    #[inline]
    pub(crate) fn pos(ring: usize, index: u64) -> usize {
        (index % ring as u64) as usize
    }

    /// The position after `pos` in a ring of `ring`, wrapping.
    #[inline]
    pub(crate) fn next_pos(ring: usize, pos: usize) -> usize {
        if pos + 1 == ring { 0 } else { pos + 1 }
    }

    /// The position before `pos` in a ring of `ring`, wrapping.
    #[inline]
    pub(crate) fn prev_pos(ring: usize, pos: usize) -> usize {
        if pos == 0 { ring - 1 } else { pos - 1 }
    }

    /// First word (the sequence) of the slot at ring position `pos`.
    #[inline]
    pub(crate) fn slot_word(&self, ring_word: usize, pos: usize) -> usize {
        ring_word
            + (pos / GROUP_SLOTS) * GROUP_WORDS
            + GROUP_SLOTS
            + (pos % GROUP_SLOTS) * SLOT_WORDS
    }

    /// The stamp word of the slot at ring position `pos`.
    #[inline]
    pub(crate) fn stamp_word(&self, ring_word: usize, pos: usize) -> usize {
        ring_word + (pos / GROUP_SLOTS) * GROUP_WORDS + pos % GROUP_SLOTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_matches_the_documented_size() {
        let layout = Layout::new(&StoreConfig::default()).expect("default config is valid");
        // Header, directory (256 x 32 B), 1536 series headers (64 B each), then
        // 1536 rings of 180 groups of 8 candles (576 B per group).
        assert_eq!(block_words(1440), 180 * 72);
        assert_eq!(
            layout.size_bytes(),
            1024 + 8192 + 1536 * 64 + 1536 * 180 * 576
        );
        assert_eq!(layout.rings_base % LINE, 0);
        assert_eq!(block_words(1440) % LINE, 0);
    }

    #[test]
    fn slots_and_stamps_tile_each_ring_without_overlap() {
        let layout = Layout::from_parts(1, &[(Interval::M1, 21)]).expect("valid");
        let ring = layout.ring_word(0);
        let mut used = std::collections::BTreeSet::new();
        for pos in 0..21 {
            let slot = layout.slot_word(ring, pos);
            assert_eq!(slot % SLOT_WORDS, 0, "slot {pos} is 64-byte aligned");
            for w in slot..slot + SLOT_WORDS {
                assert!(used.insert(w), "word {w} used twice");
            }
            assert!(
                used.insert(layout.stamp_word(ring, pos)),
                "stamp {pos} overlaps"
            );
        }
        assert!(
            used.iter()
                .all(|&w| w >= ring && w < ring + block_words(21))
        );
        assert!(ring + block_words(21) <= layout.total_words);
    }

    #[test]
    fn rings_of_different_sizes_lie_together_per_symbol_and_never_overlap() {
        let rings = [(Interval::M1, 30), (Interval::H1, 100), (Interval::D1, 9)];
        let layout = Layout::from_parts(3, &rings).expect("valid");
        let mut spans: Vec<(usize, usize)> = (0..9)
            .map(|s| {
                let ring = layout.ring_of(s);
                assert_eq!(ring, rings[s % 3].1 as usize);
                (layout.ring_word(s), layout.ring_word(s) + block_words(ring))
            })
            .collect();
        spans.sort();
        assert_eq!(spans[0].0, layout.rings_base);
        for w in spans.windows(2) {
            assert_eq!(w[0].1, w[1].0, "rings are packed, none overlaps");
        }
        assert_eq!(spans[8].1, layout.total_words);
        assert_eq!(layout.largest_ring(), 100);
    }

    #[test]
    fn bad_capacities_name_the_field() {
        let bad = |s, i: &[Interval], r: u64| {
            let rings: Vec<(Interval, u64)> = i.iter().map(|&i| (i, r)).collect();
            Layout::from_parts(s, &rings).expect_err("refused")
        };
        assert!(matches!(
            bad(0, &[Interval::M1], 10),
            LayoutError::Symbols(0)
        ));
        assert!(matches!(bad(1, &[], 10), LayoutError::Intervals(_)));
        assert!(matches!(
            bad(1, &[Interval::M1, Interval::M1], 10),
            LayoutError::Intervals(_)
        ));
        assert!(matches!(
            bad(1, &[Interval::M1], 1),
            LayoutError::Candles(1)
        ));
        assert!(matches!(
            bad(65_536, &Interval::ALL, 1 << 20),
            LayoutError::TooLarge(_)
        ));
        assert!(
            bad(0, &[Interval::M1], 10)
                .to_string()
                .contains("use 1 to 65536")
        );
    }
}
