//! The answers about traders: `traders` (the list), `add` and `remove`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Interval;
use crate::trader::Symbols;

/// The answer to `traders`: every trader, where it runs and whether its
/// worker holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraderList {
    /// Held traders by slot, then the quarantined ones.
    pub traders: Vec<TraderRow>,
}

/// One trader, told apart by `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TraderRow {
    /// Its worker acknowledged it: it is judged.
    Running(HeldTrader),
    /// Held by its slot, not yet acknowledged by its worker.
    Pending(HeldTrader),
    /// Taken out after crashing its workers.
    Quarantined(QuarantinedTrader),
}

impl TraderRow {
    /// Its id.
    pub fn id(&self) -> &str {
        match self {
            TraderRow::Running(t) | TraderRow::Pending(t) => &t.id,
            TraderRow::Quarantined(q) => &q.id,
        }
    }

    /// Its slot.
    pub fn slot(&self) -> u32 {
        match self {
            TraderRow::Running(t) | TraderRow::Pending(t) => t.slot,
            TraderRow::Quarantined(q) => q.slot,
        }
    }

    /// Its state's name (`running`, `pending`, `quarantined`).
    pub fn state(&self) -> &'static str {
        match self {
            TraderRow::Running(_) => "running",
            TraderRow::Pending(_) => "pending",
            TraderRow::Quarantined(_) => "quarantined",
        }
    }

    /// What a held trader is (none for a quarantined one).
    pub fn held(&self) -> Option<&HeldTrader> {
        match self {
            TraderRow::Running(t) | TraderRow::Pending(t) => Some(t),
            TraderRow::Quarantined(_) => None,
        }
    }
}

/// A trader a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldTrader {
    /// Its id.
    pub id: String,
    /// The slot holding it.
    pub slot: u32,
    /// The interval it judges.
    pub interval: Interval,
    /// The symbols it watches.
    pub symbols: Symbols,
    /// Its rule, as written.
    pub rule: String,
    /// Candles of silence after a signal, per series.
    pub cooldown: u32,
    /// Carried into every signal.
    pub labels: BTreeMap<String, String>,
    /// Added while running: the store's publish counter then (it judges
    /// the candles written after it).
    pub added_at_publish: Option<u64>,
    /// Candles a verdict reads: its rule's warm-up and its cooldown.
    pub window: u64,
    /// Per series it watches, whether the store holds its window yet.
    pub series: Vec<SeriesWarmth>,
}

/// One series a trader watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesWarmth {
    /// The symbol.
    pub symbol: String,
    /// Candles the store holds of it.
    pub held: u64,
    /// Candles the trader's window needs.
    pub needed: u64,
    /// Whether it holds them: verdicts from its first warm candle on.
    pub warm: bool,
}

/// A trader taken out after crashing its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedTrader {
    /// Its id.
    pub id: String,
    /// The slot it was taken from.
    pub slot: u32,
}

/// The answer to an `add`: every trader added, none refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// Each trader and the slot it went to.
    pub added: Vec<AddedTrader>,
    /// The store's publish counter when they were added: they judge the
    /// candles written after it.
    pub from_publish: u64,
    /// When a finite feed delivered its last batch, ms (none for a live feed).
    pub last_batch_at: Option<i64>,
    /// The new trader set was kept in the state directory before anything
    /// changed (always true: a set that cannot be kept is refused).
    pub persisted: bool,
}

/// One trader added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedTrader {
    /// Its id.
    pub id: String,
    /// The slot it went to.
    pub slot: u32,
}

/// The answer to a `remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The trader's id.
    pub removed: String,
    /// Where it was.
    #[serde(flatten)]
    pub from: RemovedFrom,
    /// The set without it was kept in the state directory first (always
    /// true: a set that cannot be kept is refused).
    pub persisted: bool,
}

/// Where a removed trader was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RemovedFrom {
    /// A slot: its worker stops judging it, its signals are dropped from now.
    Slot {
        /// The slot.
        slot: u32,
        /// When a finite feed delivered its last batch, ms.
        last_batch_at: Option<i64>,
    },
    /// The quarantine.
    Quarantine {
        /// `quarantined`.
        was: WasQuarantined,
    },
}

/// The one value of [`RemovedFrom::Quarantine`]'s `was`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WasQuarantined {
    /// `"quarantined"`.
    Quarantined,
}
