//! The ring plan: per interval, the candles the traders need (the longest
//! rule window plus cooldown among that interval's traders) and the ring
//! that holds them with headroom. Logged at start, shown in `status`.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{Result, bail};
use protocol::Interval;
use protocol::control::{Ring, SizedBy};
use protocol::store::{DEFAULT_RING, StoreConfig, ring_bytes};
use protocol::trader::TraderSpec;

/// The least headroom: the feed runs up to half a ring ahead of the slowest
/// worker, so a ring must hold at least twice the longest window.
pub const MIN_HEADROOM: f64 = 2.0;

/// `--candles-per-series`: one size for every interval (`1440`), sizes per
/// interval (`1m=1440,1h=6000`), or both (`2000,1h=6000`). What it leaves
/// out, the plan sizes from the traders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingSpec {
    /// Every interval not named.
    pub all: Option<u32>,
    /// Named intervals.
    pub per: BTreeMap<Interval, u32>,
}

impl FromStr for RingSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut spec = RingSpec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let count = |n: &str| {
                n.trim().parse::<u32>().map_err(|_| {
                    format!("{n:?} is not a number of candles: write 1440, or 1m=1440,1h=6000")
                })
            };
            match item.split_once('=') {
                Some((interval, n)) => {
                    let interval: Interval = interval
                        .trim()
                        .parse()
                        .map_err(|e| format!("{item:?}: {e}"))?;
                    if spec.per.insert(interval, count(n)?).is_some() {
                        return Err(format!("{interval} is given twice"));
                    }
                }
                None if spec.all.is_none() => spec.all = Some(count(item)?),
                None => return Err(format!("{item:?}: one size for every interval at most")),
            }
        }
        if spec.all.is_none() && spec.per.is_empty() {
            return Err("empty: write 1440, or 1m=1440,1h=6000".into());
        }
        Ok(spec)
    }
}

/// One interval's line of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct RingPlan {
    /// The interval.
    pub interval: Interval,
    /// Candles per ring.
    pub candles: u32,
    /// The longest window (rule and cooldown) among its traders at start.
    pub needed: u32,
    /// Its traders at start.
    pub traders: usize,
    /// Bytes of one ring.
    pub ring_bytes: u64,
    /// What set the size: the flag, the traders (headroom x the need) or
    /// the default (the need is small).
    pub sized_by: SizedBy,
}

impl RingPlan {
    /// Its line in `status`.
    pub fn status(&self) -> Ring {
        Ring {
            interval: self.interval,
            candles: self.candles,
            needed: self.needed,
            traders: self.traders as u64,
            ring_bytes: self.ring_bytes,
            sized_by: self.sized_by,
        }
    }
}

/// Sizes the ring of each of `intervals`: what `spec` says, else the larger
/// of [`DEFAULT_RING`] and `headroom` x the longest window of the interval's
/// `traders` (a trader that does not compile counts for nothing here: it is
/// refused by name later).
pub fn plan(
    intervals: &[Interval],
    spec: &RingSpec,
    headroom: f64,
    traders: &[TraderSpec],
) -> Result<Vec<RingPlan>> {
    if !(headroom.is_finite() && headroom >= MIN_HEADROOM) {
        bail!(
            "--headroom {headroom}: use at least {MIN_HEADROOM} (the feed runs up to half a ring ahead of the slowest worker)"
        );
    }
    if let Some(i) = spec.per.keys().find(|i| !intervals.contains(i)) {
        bail!("--candles-per-series names {i}, which --intervals does not keep");
    }
    let mut needed: BTreeMap<Interval, (u32, usize)> = BTreeMap::new();
    for t in traders {
        let window = t
            .compile()
            .map_or(0, |r| r.lookback() + t.cooldown as usize);
        let e = needed.entry(t.interval).or_default();
        e.0 = e.0.max(u32::try_from(window).unwrap_or(u32::MAX));
        e.1 += 1;
    }
    Ok(intervals
        .iter()
        .map(|&interval| {
            let (need, traders) = needed.get(&interval).copied().unwrap_or_default();
            let wanted = (f64::from(need) * headroom).ceil().min(f64::from(u32::MAX)) as u32;
            let (candles, sized_by) = match spec.per.get(&interval).or(spec.all.as_ref()) {
                Some(&n) => (n, SizedBy::Flag),
                None if wanted > DEFAULT_RING => (wanted, SizedBy::Traders),
                None => (DEFAULT_RING, SizedBy::Default),
            };
            RingPlan {
                interval,
                candles,
                needed: need,
                traders,
                ring_bytes: ring_bytes(candles),
                sized_by,
            }
        })
        .collect())
}

/// The store of `symbols` symbols laid out by `plan`.
pub fn store_config(symbols: u32, plan: &[RingPlan]) -> StoreConfig {
    StoreConfig {
        symbols,
        rings: plan.iter().map(|p| (p.interval, p.candles)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::trader::Symbols;

    fn trader(interval: Interval, rule: &str, cooldown: u32) -> TraderSpec {
        TraderSpec {
            id: format!("t{}", rule.len()),
            version: 0,
            symbols: Symbols::All,
            interval,
            rule: rule.into(),
            cooldown,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn specs_parse_and_say_what_is_wrong() {
        let s: RingSpec = "2000,1h=6000, 1d=400".parse().expect("valid");
        assert_eq!(s.all, Some(2000));
        assert_eq!(s.per[&Interval::H1], 6000);
        assert_eq!("1440".parse::<RingSpec>().expect("one").all, Some(1440));
        for (bad, why) in [
            ("", "empty"),
            ("x", "not a number"),
            ("2m=5", "2m"),
            ("1h=5,1h=6", "twice"),
            ("5,6", "at most"),
        ] {
            let err = bad.parse::<RingSpec>().expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn each_interval_holds_twice_its_longest_window_and_never_less_than_the_default() {
        let traders = [
            trader(Interval::M1, "close > ema(close, 200)", 0),
            trader(Interval::M1, "close > sma(close, 10)", 5),
            trader(
                Interval::H1,
                "crosses_above(ema(close, 50), ema(close, 200))",
                0,
            ),
            trader(Interval::M5, "close > sma(close, 30)", 0),
        ];
        let intervals = [Interval::M1, Interval::M5, Interval::H1, Interval::D1];
        let plan = plan(&intervals, &RingSpec::default(), 2.0, &traders).expect("plan");
        let ema200 = traders[0].compile().expect("valid").lookback() as u32;
        assert!(ema200 > 2500, "{ema200}");
        assert_eq!((plan[0].needed, plan[0].candles), (ema200, 2 * ema200));
        assert_eq!((plan[0].traders, plan[0].sized_by), (2, SizedBy::Traders));
        assert_eq!(
            (plan[1].candles, plan[1].sized_by),
            (DEFAULT_RING, SizedBy::Default)
        );
        assert!(
            plan[2].candles >= 2 * (ema200 + 1),
            "a cross reads one more"
        );
        assert_eq!((plan[3].needed, plan[3].candles), (0, DEFAULT_RING));
        // What the flag names, it sets; the rest is planned.
        let spec: RingSpec = "1h=100000".parse().expect("valid");
        let flagged = super::plan(&intervals, &spec, 3.0, &traders).expect("plan");
        assert_eq!(
            (flagged[2].candles, flagged[2].sized_by),
            (100_000, SizedBy::Flag)
        );
        assert_eq!(flagged[0].candles, 3 * ema200);
        let config = store_config(10, &flagged);
        assert_eq!(config.ring(Interval::H1), Some(100_000));
        assert!(config.size_bytes().expect("fits") > 10 * flagged[2].ring_bytes);
    }

    #[test]
    fn a_headroom_below_two_or_an_interval_not_kept_is_refused() {
        let err = plan(&[Interval::M1], &RingSpec::default(), 1.5, &[]).expect_err("1.5");
        assert!(err.to_string().contains("--headroom 1.5"), "{err}");
        let spec: RingSpec = "4h=10".parse().expect("valid");
        let err = plan(&[Interval::M1], &spec, 2.0, &[]).expect_err("4h");
        assert!(err.to_string().contains("names 4h"), "{err}");
    }
}
