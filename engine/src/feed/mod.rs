//! Where candles come from and how they reach a store.
//!
//! * [`synthetic`]: the built-in deterministic feed.
//! * [`binance`]: Binance's formats (dump CSV, WebSocket payload, REST rows).
//! * [`replay`]: recorded files, streamed and merged in time order.
//! * [`live`]: the Binance WebSocket client with reconnect and REST backfill.
//! * [`writer`]: checks, gap accounting and higher-interval aggregation,
//!   over the shared-memory store or an in-memory copy.
//! * [`aggregate`]: one higher-interval bucket.
//!
//! `run` and `backtest` drive a finite feed through the same [`Source`] and
//! [`writer::FeedWriter`], so the candles they see are identical.

pub mod aggregate;
pub mod binance;
pub mod live;
pub mod nats;

pub mod progress;
pub mod pump;
pub mod replay;
pub mod synthetic;
pub mod writer;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use protocol::Interval;

use self::replay::{Replay, ReplayError, ReplayOptions};
use self::synthetic::SymbolStream;
use crate::kline::{BadLine, Kline};

/// The `--feed` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedKind {
    /// The built-in synthetic feed.
    Synthetic,
    /// `replay:PATH[,PATH...]`.
    Replay(Vec<PathBuf>),
    /// Live Binance.
    Binance,
    /// A JetStream candle stream (`nats://HOST:PORT[/PREFIX]`).
    Nats(crate::nats::NatsAddr),
}

impl FromStr for FeedKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "synthetic" => Ok(FeedKind::Synthetic),
            "binance" => Ok(FeedKind::Binance),
            _ if s.starts_with("nats://") => s.parse().map(FeedKind::Nats),
            _ => match s.strip_prefix("replay:") {
                Some(paths) if !paths.is_empty() => Ok(FeedKind::Replay(
                    paths
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                        .collect(),
                )),
                _ => Err(format!(
                    "unknown feed {s:?}: use synthetic, binance, replay:PATH[,PATH...] (Binance kline CSV dumps or JSON lines of WebSocket kline payloads) or nats://HOST:PORT[/PREFIX] (a candle stream another coordinator publishes)"
                )),
            },
        }
    }
}

/// A feed as `run` and `backtest` are told it.
#[derive(Debug, Clone)]
pub enum FeedConfig {
    /// The built-in synthetic feed.
    Synthetic {
        /// Same seed, same candles.
        seed: u64,
        /// Symbols `SYN000`, `SYN001`, ...
        symbols: usize,
        /// Candles per symbol; `None` runs until stopped.
        candles: Option<u64>,
    },
    /// Recorded files.
    Replay(ReplayOptions),
    /// Live Binance.
    Binance(live::LiveOptions),
    /// A JetStream candle stream.
    Nats(crate::nats::NatsAddr),
}

impl FeedConfig {
    /// The feed's name in `status`.
    pub fn kind(&self) -> &'static str {
        match self {
            FeedConfig::Synthetic { .. } => "synthetic",
            FeedConfig::Replay(_) => "replay",
            FeedConfig::Binance(_) => "binance",
            FeedConfig::Nats(_) => "nats",
        }
    }

    /// Opens a finite source (not the live feed).
    pub fn source(&self) -> Result<Source, SourceError> {
        match self {
            FeedConfig::Synthetic {
                seed,
                symbols,
                candles,
            } => Ok(Source::synthetic(*seed, *symbols, *candles)),
            FeedConfig::Replay(opts) => Source::replay(opts),
            FeedConfig::Binance(_) | FeedConfig::Nats(_) => Err(SourceError::NotFinite),
        }
    }
}

/// How fast a finite feed is written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Batches per second (per symbol, one candle each).
    Rate(f64),
    /// A multiple of real time: batches as far apart as their candles' times,
    /// divided by this.
    Speed(f64),
    /// As fast as the traders keep up.
    Fast,
}

impl Pace {
    /// Whether the batch delivered at `at` (ms), the `written`-th, is due,
    /// `elapsed` seconds after the first batch at `first_at`.
    pub fn due(self, elapsed: f64, written: u64, first_at: i64, at: i64) -> bool {
        match self {
            Pace::Rate(rate) => written < (elapsed * rate) as u64 + 1,
            Pace::Speed(speed) => (at.saturating_sub(first_at) as f64 / 1000.0) / speed <= elapsed,
            Pace::Fast => true,
        }
    }
}

/// A finite (or, for the synthetic feed without a limit, endless) source
/// of candle batches.
#[derive(Debug)]
pub enum Source {
    /// Synthetic symbols, `limit` candles each.
    Synthetic {
        /// One stream per symbol.
        streams: Vec<SymbolStream>,
        /// Candles per symbol; `None` never ends.
        limit: Option<u64>,
    },
    /// Recorded files.
    Replay(Box<Replay>),
    /// A JetStream candle stream: never ends.
    Nats(Box<nats::NatsSource>),
}

/// A source that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A replay error.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// A live feed has no end: it cannot be replayed or backtested.
    #[error(
        "a live or NATS feed has no end: backtest and chaos take --feed synthetic or replay:PATH"
    )]
    NotFinite,
}

impl Source {
    /// The synthetic feed.
    pub fn synthetic(seed: u64, symbols: usize, limit: Option<u64>) -> Self {
        Source::Synthetic {
            streams: (0..symbols).map(|k| SymbolStream::new(seed, k)).collect(),
            limit,
        }
    }

    /// A replay of `opts`' files.
    pub fn replay(opts: &ReplayOptions) -> Result<Self, SourceError> {
        Ok(Source::Replay(Box::new(Replay::open(opts)?)))
    }

    /// Only `shard`'s symbols from now on (`--shard K/N`).
    pub fn sharded(mut self, shard: crate::nats::Shard) -> Self {
        match &mut self {
            Source::Synthetic { streams, .. } => {
                streams.retain(|s| shard.owns(s.name.as_str()));
            }
            Source::Replay(r) => r.only(shard),
            // Sharded as it consumes (it was opened with its shard).
            Source::Nats(_) => {}
        }
        self
    }

    /// The symbols known before the first candle (a replay finds its own).
    pub fn known_symbols(&self) -> Vec<protocol::SymbolName> {
        match self {
            Source::Synthetic { streams, .. } => streams.iter().map(|s| s.name.clone()).collect(),
            Source::Replay(_) | Source::Nats(_) => Vec::new(),
        }
    }

    /// The next batch's delivery time, or `None` when the source is done.
    pub fn peek(&mut self) -> Result<Option<i64>, SourceError> {
        match self {
            Source::Synthetic { streams, limit } => {
                let produced = streams.first().map_or(0, SymbolStream::produced);
                if streams.is_empty() || limit.is_some_and(|l| produced >= l) {
                    return Ok(None);
                }
                Ok(Some(
                    synthetic::EPOCH_MS + (produced as i64 + 1) * synthetic::STEP_MS,
                ))
            }
            Source::Replay(r) => Ok(r.peek()?),
            // Never done: `waiting` tells the pump when nothing is there.
            Source::Nats(n) => Ok(Some(n.peek().unwrap_or(i64::MAX))),
        }
    }

    /// Hands the next batch's candles to `each` (a refusal is a bad line of
    /// a replayed file; the synthetic feed has none). `None` at the end.
    pub fn next_batch(
        &mut self,
        mut each: impl FnMut(&Kline) -> Result<(), BadLine>,
    ) -> Result<Option<i64>, SourceError> {
        let Some(at) = self.peek()? else {
            return Ok(None);
        };
        match self {
            Source::Synthetic { streams, .. } => {
                for stream in streams {
                    let kline = Kline {
                        symbol: stream.name.clone(),
                        interval: Interval::M1,
                        candle: stream.next_candle(),
                        closed: true,
                        at,
                    };
                    if let Err(e) = each(&kline) {
                        // Synthetic candles are valid by construction.
                        tracing::error!(error = %e, "synthetic candle refused");
                    }
                }
                Ok(Some(at))
            }
            Source::Replay(r) => Ok(r.next_batch(each)?),
            Source::Nats(n) => Ok(n.next_batch(each)),
        }
    }

    /// The replay, if this is one.
    pub fn as_replay(&self) -> Option<&Replay> {
        match self {
            Source::Replay(r) => Some(r),
            Source::Synthetic { .. } | Source::Nats(_) => None,
        }
    }

    /// The NATS feed, if this is one.
    pub fn as_nats(&mut self) -> Option<&mut nats::NatsSource> {
        match self {
            Source::Nats(n) => Some(n),
            Source::Synthetic { .. } | Source::Replay(_) => None,
        }
    }

    /// Whether nothing is there to write now (a stream between messages);
    /// a finite source is never waiting.
    pub fn waiting(&mut self) -> bool {
        self.as_nats().is_some_and(|n| n.waiting())
    }
}

/// Writes `source`'s next batch through `writer` into `sink`; returns its
/// delivery time, or `None` at the end. A replayed candle the writer refuses
/// is a bad line of its file (reported, or fatal with `--strict`); a sink
/// that cannot take a symbol is fatal.
pub fn write_batch<S: writer::Sink>(
    source: &mut Source,
    writer: &mut writer::FeedWriter<S::Series>,
    sink: &mut S,
) -> anyhow::Result<Option<i64>> {
    let mut fatal = None;
    let at = source.next_batch(|kline| match writer.apply(sink, kline) {
        Ok(_) => Ok(()),
        Err(writer::Refused::Bad(bad)) => Err(bad),
        Err(writer::Refused::Store(e)) => {
            fatal.get_or_insert(e);
            Ok(())
        }
    })?;
    if let Some(e) = fatal {
        return Err(anyhow::Error::new(e).context("the feed cannot write into the store"));
    }
    Ok(at)
}

/// Wall-clock-free pacing state of a finite feed.
#[derive(Debug)]
pub struct Pacer {
    /// The pace.
    pub pace: Pace,
    started: Option<Instant>,
    first_at: Option<i64>,
    /// Batches written.
    pub batches: u64,
}

impl Pacer {
    /// A pacer not started yet.
    pub fn new(pace: Pace) -> Self {
        Self {
            pace,
            started: None,
            first_at: None,
            batches: 0,
        }
    }

    /// Starts the clock (the first batch is due at once).
    pub fn start(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }

    /// Whether the batch at `at` is due now.
    pub fn due(&mut self, at: i64) -> bool {
        let Some(started) = self.started else {
            return false;
        };
        let first = *self.first_at.get_or_insert(at);
        self.pace
            .due(started.elapsed().as_secs_f64(), self.batches, first, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_flags_parse_or_say_what_is_accepted() {
        assert_eq!("synthetic".parse(), Ok(FeedKind::Synthetic));
        assert_eq!("binance".parse(), Ok(FeedKind::Binance));
        assert_eq!(
            "replay:a.csv,b.csv".parse(),
            Ok(FeedKind::Replay(vec!["a.csv".into(), "b.csv".into()]))
        );
        let err = "replay:".parse::<FeedKind>().expect_err("empty");
        assert!(err.contains("replay:PATH"), "{err}");
        assert!("kafka".parse::<FeedKind>().is_err());
    }

    #[test]
    fn paces() {
        assert!(Pace::Rate(10.0).due(0.0, 0, 0, 0));
        assert!(!Pace::Rate(10.0).due(0.05, 1, 0, 0));
        assert!(Pace::Rate(10.0).due(0.11, 1, 0, 0));
        // Minute candles at 60x: one per second.
        assert!(!Pace::Speed(60.0).due(0.5, 1, 0, 60_000));
        assert!(Pace::Speed(60.0).due(1.0, 1, 0, 60_000));
        assert!(Pace::Fast.due(0.0, 1_000_000, 0, i64::MAX));
    }

    #[test]
    fn the_synthetic_source_ends_at_its_limit() {
        let mut s = Source::synthetic(1, 3, Some(2));
        let mut n = 0;
        while s
            .next_batch(|_| {
                n += 1;
                Ok(())
            })
            .expect("synthetic")
            .is_some()
        {}
        assert_eq!(n, 6);
    }
}
