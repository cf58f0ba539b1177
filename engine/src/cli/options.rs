//! From parsed flags to the engine's options: the feed, the pace, the
//! capacities, the traders, and `run`'s options.

use anyhow::Result;
use protocol::trader::TraderSpec;

use crate::run::plan::{RingPlan, plan, store_config};
use protocol::store::StoreConfig;

use protocol::{Interval, SymbolName};

use super::args::{CapacityArgs, FeedArgs, PaceArgs};
use crate::feed::replay::ReplayOptions;
use crate::feed::{FeedConfig, FeedKind, Pace};

impl FeedArgs {
    /// The trader file's traders, or the built-in set.
    pub fn traders(&self) -> Result<Vec<protocol::trader::TraderSpec>> {
        match &self.traders {
            Some(path) => crate::traders::load(path),
            None => Ok(crate::traders::defaults()),
        }
    }

    /// The feed, with `candles` for the synthetic one; `store` gives the
    /// live feed its intervals and sizes its backfills (three quarters of
    /// each interval's ring).
    pub fn config(&self, candles: Option<u64>, store: &StoreConfig) -> Result<FeedConfig> {
        if self.feed != FeedKind::Synthetic && candles.is_some() {
            anyhow::bail!("--candles is for the synthetic feed: a replay ends with its files");
        }
        if !matches!(self.feed, FeedKind::Replay(_))
            && (self.symbol.is_some() || self.interval.is_some() || self.strict)
        {
            anyhow::bail!("--symbol, --interval and --strict are for --feed replay:PATH");
        }
        match &self.feed {
            FeedKind::Synthetic => Ok(FeedConfig::Synthetic {
                seed: self.seed,
                symbols: self.symbols.trim().parse().map_err(|_| {
                    anyhow::anyhow!(
                        "--symbols {:?}: the synthetic feed takes a number of symbols",
                        self.symbols
                    )
                })?,
                candles,
            }),
            FeedKind::Nats(addr) => Ok(FeedConfig::Nats(addr.clone())),
            FeedKind::Replay(paths) => Ok(FeedConfig::Replay(ReplayOptions {
                paths: paths.clone(),
                symbol: self.symbol.clone(),
                interval: self.interval,
                strict: self.strict,
            })),
            FeedKind::Binance => {
                let mut symbols: Vec<SymbolName> = Vec::new();
                for s in self
                    .symbols
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    let name = SymbolName::new(s).map_err(|e| anyhow::anyhow!("--symbols: {e}"))?;
                    if !symbols.contains(&name) {
                        symbols.push(name);
                    }
                }
                if symbols
                    .iter()
                    .all(|s| s.as_str().bytes().all(|b| b.is_ascii_digit()))
                {
                    anyhow::bail!(
                        "--feed binance needs the symbols by name: --symbols btcusdt,ethusdt (got {:?})",
                        self.symbols
                    );
                }
                let (ws, rest) = self
                    .endpoint
                    .split_once(',')
                    .unwrap_or((self.endpoint.as_str(), crate::feed::live::BINANCE_REST));
                Ok(FeedConfig::Binance(crate::feed::live::LiveOptions {
                    symbols,
                    intervals: store.intervals(),
                    ws_url: ws.trim().to_owned(),
                    rest_url: rest.trim().to_owned(),
                    silence_timeout: std::time::Duration::from_millis(self.silence_timeout),
                    max_connection_age: std::time::Duration::from_secs(self.max_connection_age),
                    reconnect_min: std::time::Duration::from_millis(self.reconnect_min),
                    reconnect_max: std::time::Duration::from_millis(self.reconnect_max),
                    backfill: store
                        .rings
                        .iter()
                        .map(|&(i, n)| (i, crate::feed::live::backfill_for_ring(n as usize)))
                        .collect(),
                    ca_file: self.ca_file.clone(),
                    trace: false,
                    rest_weight_per_minute: self.rest_weight_per_minute,
                    skip_unknown: self.skip_unknown,
                    opens_per_window: self.max_connection_opens as usize,
                    max_queued_bytes: (self.max_queued_mib as usize) << 20,
                }))
            }
        }
    }

    /// The intervals to build from 1-minute candles, given the store's.
    pub fn aggregate(&self, kept: &[Interval]) -> Result<Vec<Interval>> {
        match &self.aggregate {
            None if self.feed == FeedKind::Binance => Ok(Vec::new()),
            Some(_) if self.feed == FeedKind::Binance => anyhow::bail!(
                "--aggregate is for the synthetic and replay feeds: the live feed subscribes to every --intervals stream, built by the exchange"
            ),
            None => Ok(kept
                .iter()
                .copied()
                .filter(|i| *i != Interval::M1)
                .collect()),
            Some(list) if list.len() == 1 && list[0] == "none" => Ok(Vec::new()),
            Some(list) => list
                .iter()
                .map(|i| {
                    let i: Interval = i.parse()?;
                    if i == Interval::M1 {
                        anyhow::bail!("--aggregate 1m: 1-minute candles are the input, not built");
                    }
                    Ok(i)
                })
                .collect(),
        }
    }
}

impl PaceArgs {
    pub fn pace(&self, feed: &FeedKind) -> Pace {
        match (self.rate, self.speed) {
            (Some(rate), _) => Pace::Rate(rate),
            (None, Some(speed)) => Pace::Speed(speed),
            (None, None) if *feed == FeedKind::Synthetic => Pace::Rate(10.0),
            (None, None) => Pace::Fast,
        }
    }
}

impl Default for CapacityArgs {
    fn default() -> Self {
        let c = StoreConfig::default();
        Self {
            max_symbols: c.symbols,
            intervals: c.intervals(),
            candles_per_series: None,
            headroom: crate::run::plan::MIN_HEADROOM,
        }
    }
}

impl CapacityArgs {
    /// The rings planned for `traders` (see [`crate::run::plan`]).
    pub fn plan(&self, traders: &[TraderSpec]) -> Result<Vec<RingPlan>> {
        plan(
            &self.intervals,
            &self.candles_per_series.clone().unwrap_or_default(),
            self.headroom,
            traders,
        )
    }

    /// The store for `traders`.
    pub fn config_for(&self, traders: &[TraderSpec]) -> Result<StoreConfig> {
        Ok(store_config(self.max_symbols, &self.plan(traders)?))
    }
}
