//! The store's typed errors. Each says what went wrong, where, and what to do.

use nix::errno::Errno;
use thiserror::Error;

use super::layout::LayoutError;
use crate::candle::Interval;
use crate::names::NameError;

/// Creating a segment failed.
#[derive(Debug, Error)]
pub enum StoreCreateError {
    /// The capacities cannot be laid out.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A segment of that name exists. Only the holder of the instance lock may
    /// remove it (see the engine's runtime module).
    #[error("shared-memory segment {name} already exists")]
    AlreadyExists {
        /// Segment name.
        name: String,
    },
    /// `/dev/shm` cannot hold the segment.
    #[error(
        "shared-memory segment {name} needs {needed} bytes ({} MiB) but /dev/shm has {} free: lower the store's capacities, or give /dev/shm more room (in Docker: --shm-size)",
        needed / (1 << 20),
        match free { Some(f) => format!("{f} bytes ({} MiB)", f / (1 << 20)), None => "too little".to_owned() }
    )]
    NoSpace {
        /// Segment name.
        name: String,
        /// Its size.
        needed: u64,
        /// What `/dev/shm` had free, if known.
        free: Option<u64>,
    },
    /// The random generation number could not be drawn.
    #[error("could not draw a random generation number: {0}")]
    Entropy(String),
    /// A system call failed.
    #[error("creating shared-memory segment {name}: {op} failed: {source}")]
    Os {
        /// Segment name.
        name: String,
        /// The call that failed.
        op: &'static str,
        /// Its error.
        #[source]
        source: Errno,
    },
}

/// Opening a segment read-only failed; each way a segment can be unusable is
/// its own variant so callers (and tests) can tell them apart.
#[derive(Debug, Error)]
pub enum OpenError {
    /// No segment of that name.
    #[error("no shared-memory segment {name}: is the coordinator for this instance running?")]
    NotFound {
        /// Segment name.
        name: String,
    },
    /// The segment exists but its creator has not finished writing the header.
    #[error("shared-memory segment {name} is still being initialised: retry shortly")]
    Initialising {
        /// Segment name.
        name: String,
    },
    /// Smaller than a header: not a store, or cut short.
    #[error(
        "shared-memory segment {name} is truncated: {size} bytes, a store needs at least {min}"
    )]
    Truncated {
        /// Segment name.
        name: String,
        /// Its size.
        size: usize,
        /// The header size.
        min: usize,
    },
    /// The magic number is not shmkline's.
    #[error(
        "shared-memory segment {name} is not a shmkline store (magic {found:#018x}): another program owns this name"
    )]
    Foreign {
        /// Segment name.
        name: String,
        /// The first word found.
        found: u64,
    },
    /// A shmkline store of another layout version.
    #[error(
        "shared-memory segment {name} has layout version {found}, this build reads version {expected}: run the coordinator and workers from the same build"
    )]
    VersionMismatch {
        /// Segment name.
        name: String,
        /// Version in the segment.
        found: u64,
        /// Version this build understands.
        expected: u64,
    },
    /// The header's capacities make no sense.
    #[error("shared-memory segment {name} has a corrupt header: {reason}")]
    CorruptHeader {
        /// Segment name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The size on disk does not match what the header describes.
    #[error(
        "shared-memory segment {name} is {actual} bytes but its header describes {expected}: it was truncated or overwritten"
    )]
    SizeMismatch {
        /// Segment name.
        name: String,
        /// Size computed from the header.
        expected: usize,
        /// Size of the object.
        actual: usize,
    },
    /// A system call failed.
    #[error("opening shared-memory segment {name}: {op} failed: {source}")]
    Os {
        /// Segment name.
        name: String,
        /// The call that failed.
        op: &'static str,
        /// Its error.
        #[source]
        source: Errno,
    },
}

/// A symbol registration or series lookup the store refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum WriteError {
    /// The symbol directory is full.
    #[error(
        "symbol table is full ({capacity} symbols): cannot add {symbol}; start the coordinator with a larger --max-symbols"
    )]
    SymbolTableFull {
        /// Directory capacity.
        capacity: usize,
        /// The symbol refused.
        symbol: String,
    },
    /// Invalid symbol name.
    #[error(transparent)]
    SymbolName(#[from] NameError),
    /// The symbol id does not belong to this store.
    #[error("unknown symbol id {0}")]
    UnknownSymbol(u32),
    /// The store keeps no ring for this interval.
    #[error("interval {interval} is not kept by this store (it keeps {kept})")]
    IntervalNotKept {
        /// Requested interval.
        interval: Interval,
        /// The store's intervals.
        kept: String,
    },
}

/// An upsert the store refused. Nothing was written. Small and `Copy`: it is
/// returned from the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum UpsertError {
    /// The series id does not belong to this store.
    #[error("unknown series id {0}")]
    UnknownSeries(u32),
    /// Older than the series' latest candle: history is never rewritten.
    #[error("candle at {open_time} is older than the series' latest candle at {latest}: rejected")]
    Stale {
        /// The rejected open time.
        open_time: i64,
        /// The latest open time in the series.
        latest: i64,
    },
    /// A price or the volume is NaN or infinite.
    #[error("candle at {open_time} has a non-finite price or volume: rejected")]
    NonFinite {
        /// Its open time.
        open_time: i64,
    },
}

/// A read that could not produce a consistent answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// The series id does not belong to this store.
    #[error("unknown series id {0}")]
    UnknownSeries(u32),
    /// The symbol id does not belong to this store.
    #[error("unknown symbol id {0}")]
    UnknownSymbol(u32),
    /// The store keeps no ring for this interval.
    #[error("interval {0} is not kept by this store")]
    IntervalNotKept(Interval),
    /// A slot stayed mid-write (odd sequence) or kept changing past the stall
    /// timeout: the writer most likely died in the middle of a write.
    #[error(
        "series {series} slot for candle {index} stayed mid-write (sequence {seq}) for {waited_us} us: the writer is stalled or dead"
    )]
    Stalled {
        /// Series index.
        series: u32,
        /// Absolute candle index being read.
        index: u64,
        /// Last sequence seen.
        seq: u64,
        /// How long the reader retried.
        waited_us: u64,
    },
    /// The ring no longer holds a candle that was asked for.
    #[error("series {series}: candle {index} is gone from the ring (oldest kept: {oldest})")]
    Gone {
        /// Series index.
        series: u32,
        /// The candle asked for.
        index: u64,
        /// The oldest candle the ring still holds.
        oldest: u64,
    },
    /// A candle past the last one appended was asked for.
    #[error("series {series}: candles up to {end} asked for, only {head} appended")]
    NotYet {
        /// Series index.
        series: u32,
        /// End of the requested range.
        end: u64,
        /// Candles appended so far.
        head: u64,
    },
    /// The writer wrapped the ring past the candles being read, repeatedly.
    #[error(
        "series {series}: the writer overwrote the candles being read {attempts} times in a row"
    )]
    Lapped {
        /// Series index.
        series: u32,
        /// Attempts made.
        attempts: u32,
    },
    /// A futex wait failed unexpectedly.
    #[error("waiting for the publish counter failed: {0}")]
    Wait(Errno),
}
