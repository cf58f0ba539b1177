//! Blame and quarantine: each slot's black box (the shared word its worker
//! marks the trader it evaluates in), the crashes pinned on each trader,
//! and the traders taken out after too many.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use protocol::InstanceName;
use protocol::control::{Quarantined, QuarantinedTrader, TraderRow};
use protocol::shm::scratch::SharedWords;
use protocol::trader::{black_box_name, trader_hash};

use super::emit::Emitter;
use super::slot::Slot;

/// The black boxes, the strikes and the quarantined traders.
#[derive(Debug)]
pub(super) struct Quarantine {
    /// Per slot: the shared word its worker marks the trader it evaluates in.
    black_boxes: Vec<Option<SharedWords>>,
    /// Crashes pinned on each trader.
    strikes: BTreeMap<String, u32>,
    /// Traders taken out after repeated crashes, with their slot.
    quarantined: Vec<(String, u32)>,
}

impl Quarantine {
    /// One black box per slot of `instance`, owned (and unlinked) here; a
    /// leftover of a killed coordinator is stale, as we hold the instance
    /// lock.
    pub(super) fn new(instance: &InstanceName, workers: u32) -> Self {
        let black_boxes = (0..workers)
            .map(|slot| {
                let name = black_box_name(instance, slot);
                let _ = nix::sys::mman::shm_unlink(name.as_str());
                SharedWords::create(&name, 1)
                    .map_err(|e| tracing::warn!(error = %e, "no black box: crashes cannot be pinned on a trader"))
                    .ok()
            })
            .collect();
        Self {
            black_boxes,
            strikes: BTreeMap::new(),
            quarantined: Vec::new(),
        }
    }

    /// The mark in slot `s`'s black box, taken (left at 0).
    fn take_mark(&self, s: usize) -> Option<u64> {
        let word = self.black_boxes.get(s)?.as_ref()?.word(0)?;
        Some(word.swap(0, Ordering::Relaxed))
    }

    /// Clears slot `s`'s black box before a new worker starts: a mark left
    /// by a predecessor killed from outside must not be pinned on its
    /// trader if the new worker fails before its first pass.
    pub(super) fn clear(&self, s: usize) {
        let _ = self.take_mark(s);
    }

    /// After a self-inflicted crash of `slot`'s worker: the trader it was
    /// evaluating, as its black box says, gets a strike; at `limit` strikes
    /// it is taken out of its slot, and the others keep running.
    pub(super) fn blame(&mut self, slot: &mut Slot, emitter: &Emitter, limit: u32) {
        let Some(hash) = self.take_mark(slot.id as usize).filter(|&h| h != 0) else {
            return;
        };
        let Some(trader) = slot
            .traders
            .keys()
            .find(|id| trader_hash(id) == hash)
            .cloned()
        else {
            return;
        };
        let strikes = self.strikes.entry(trader.clone()).or_default();
        *strikes += 1;
        tracing::warn!(slot = slot.id, %trader, strikes = *strikes, limit, "the worker crashed while evaluating this trader");
        if *strikes >= limit {
            tracing::error!(slot = slot.id, %trader, strikes = *strikes, "trader quarantined: it keeps crashing its workers; the others keep running");
            slot.drop_trader(&trader, emitter);
            self.quarantined.push((trader, slot.id));
            // The crashes were the trader's, not the slot's.
            slot.self_failures.clear();
        }
    }

    /// Whether trader `id` is quarantined.
    pub(super) fn holds(&self, id: &str) -> bool {
        self.quarantined.iter().any(|(t, _)| t == id)
    }

    /// The quarantined traders' ids.
    pub(super) fn ids(&self) -> impl Iterator<Item = &str> {
        self.quarantined.iter().map(|(t, _)| t.as_str())
    }

    /// Takes trader `id` out of the quarantine (removed by the operator),
    /// its strikes forgotten.
    pub(super) fn release(&mut self, id: &str) {
        self.quarantined.retain(|(t, _)| t != id);
        self.forgive(id);
    }

    /// Forgets trader `id`'s strikes: one removed and added again under the
    /// same id starts with a clean record.
    pub(super) fn forgive(&mut self, id: &str) {
        self.strikes.remove(id);
    }

    /// Whether none is quarantined.
    pub(super) fn is_empty(&self) -> bool {
        self.quarantined.is_empty()
    }

    /// Each quarantined trader, `id (slot N)`, for the run's exit error.
    pub(super) fn named(&self) -> Vec<String> {
        self.quarantined
            .iter()
            .map(|(t, slot)| format!("{t} (slot {slot})"))
            .collect()
    }

    /// As `status` shows them.
    pub(super) fn status(&self) -> Vec<Quarantined> {
        self.quarantined
            .iter()
            .map(|(t, slot)| Quarantined {
                trader: t.clone(),
                slot: *slot,
                strikes: self.strikes.get(t).copied().unwrap_or(0),
            })
            .collect()
    }

    /// As the trader list shows them.
    pub(super) fn rows(&self) -> impl Iterator<Item = TraderRow> + '_ {
        self.quarantined.iter().map(|(t, slot)| {
            TraderRow::Quarantined(QuarantinedTrader {
                id: t.clone(),
                slot: *slot,
            })
        })
    }
}
