//! The candle store: a fixed-size segment holding a symbol directory and one
//! ring of candles per (symbol, interval).
//!
//! * [`StoreWriter`] (coordinator only) creates the segment and upserts
//!   candles; [`StoreWriter::publish`] ends a batch: it bumps the publish
//!   counter and wakes waiting readers once.
//! * [`StoreReader`] (workers) maps the segment read-only. It has no method
//!   that writes; every read goes through the per-slot seqlock.
//!
//! The byte layout is documented in [`layout`].

mod error;
pub mod layout;
mod reader;
mod writer;

pub use error::{OpenError, ReadError, StoreCreateError, UpsertError, WriteError};
pub use layout::{DEFAULT_RING, LayoutError, StoreConfig, ring_bytes};
pub use reader::{ChangedSince, SegmentInfo, StoreReader, Wait};
pub use writer::{StoreWriter, Upsert, WriterStats};

use serde::Serialize;

use crate::candle::Candle;

/// A symbol's position in the directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SymbolId(pub(crate) u32);

impl SymbolId {
    /// The directory index.
    pub fn index(self) -> u32 {
        self.0
    }
}

/// One (symbol, interval) ring. Obtained from [`StoreWriter::series`] or
/// [`StoreReader::series`]; ids are checked against the store they are used on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SeriesId(pub(crate) u32);

impl SeriesId {
    /// The ring's index in the segment.
    pub fn index(self) -> u32 {
        self.0
    }
}

/// A candle together with its absolute position in its series (0 for the
/// first candle ever written, counting across ring wrap-arounds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StoredCandle {
    /// Absolute index in the series.
    pub index: u64,
    /// The candle.
    pub candle: Candle,
    /// The feed marked it final. A candle followed by a newer one in its
    /// series is final too, whatever this says.
    pub closed: bool,
}
