//! `traders add`, `remove` and `list` on a running engine.

use std::collections::{BTreeMap, BTreeSet};

use protocol::trader::Symbols;
use protocol::{Interval, SymbolName};

use protocol::control::{
    Added, AddedTrader, Answer, HeldTrader, Removed, RemovedFrom, SeriesWarmth, TraderList,
    TraderRow, WasQuarantined,
};
use protocol::message::Message;
use protocol::trader::{MAX_TRADERS_PER_WORKER, TraderSpec};

use super::coordinator::Coordinator;
use super::slot::{Purpose, State};

impl Coordinator {
    /// Every trader: where it runs and whether its worker holds it.
    /// Each trader's window (the candles a verdict reads: its rule's
    /// warm-up and its cooldown) and, per series it watches, whether the
    /// store holds that many yet (`warm`): a trader gives verdicts on a
    /// series from its first warm candle on.
    pub(super) fn traders_list(&self) -> TraderList {
        let mut list = Vec::new();
        let mut held: BTreeMap<Interval, Vec<(SymbolName, u64)>> = BTreeMap::new();
        for slot in &self.slots {
            let acked = slot.live.as_ref().map(|i| &i.acked);
            for t in slot.traders.values() {
                let window = slot
                    .windows
                    .get(&t.id)
                    .copied()
                    .unwrap_or_else(|| super::slot::window_of(t));
                let series = held
                    .entry(t.interval)
                    .or_insert_with(|| self.inst.store.lock().held(t.interval));
                let watched = series
                    .iter()
                    .filter(|(symbol, _)| match &t.symbols {
                        Symbols::All => true,
                        Symbols::List(l) => l.contains(symbol),
                    })
                    .map(|(symbol, n)| SeriesWarmth {
                        symbol: symbol.as_str().to_owned(),
                        held: *n,
                        needed: window,
                        warm: *n >= window,
                    })
                    .collect();
                let held = HeldTrader {
                    id: t.id.clone(),
                    slot: slot.id,
                    interval: t.interval,
                    symbols: t.symbols.clone(),
                    rule: t.rule.clone(),
                    cooldown: t.cooldown,
                    labels: t.labels.clone(),
                    added_at_publish: slot.starts.get(&t.id).copied(),
                    window,
                    series: watched,
                };
                list.push(if acked.is_some_and(|a| a.contains(&t.id)) {
                    TraderRow::Running(held)
                } else {
                    TraderRow::Pending(held)
                });
            }
        }
        list.extend(self.quarantine.rows());
        TraderList { traders: list }
    }

    /// Adds traders to a running engine, all or none. Each was checked
    /// (spec, rule, window, interval) on the client's thread
    /// (`events::forward_to`); here what needs the loop's state: no id
    /// taken, room in the workers. The new set is kept in the state
    /// directory before anything changes: a set that cannot be kept is
    /// not applied, and the answer says so. Each goes to the slot with the
    /// fewest traders and starts with the candles written after this moment.
    pub(super) fn traders_add(
        &mut self,
        traders: Vec<TraderSpec>,
        checked: Vec<(u64, Vec<String>)>,
    ) -> Answer {
        if self.stage.shutting_down() {
            return Answer::refused("the engine is shutting down: nothing was added");
        }
        #[cfg(feature = "testing")]
        test_delay();
        let mut taken: BTreeSet<&str> = self
            .slots
            .iter()
            .flat_map(|s| s.traders.keys().map(String::as_str))
            .chain(self.quarantine.ids())
            .collect();
        let removing: BTreeSet<&String> = self
            .slots
            .iter()
            .filter_map(|s| s.live.as_ref())
            .flat_map(|i| i.removing.iter())
            .collect();
        for t in &traders {
            if removing.contains(&t.id) {
                return Answer::refused(format!(
                    "trader {} is still being removed from its worker: try again in a moment; nothing was added",
                    t.id
                ));
            }
            if !taken.insert(&t.id) {
                return Answer::refused(format!(
                    "trader {} already exists (or appears twice): remove it first; nothing was added",
                    t.id
                ));
            }
        }
        if traders.is_empty() {
            return Answer::refused("no traders to add");
        }
        // Placed on the slot with the fewest, so no worker passes its limit
        // while the total stays within all of theirs.
        let held: usize = self.slots.iter().map(|s| s.traders.len()).sum();
        let capacity = self.slots.len() * MAX_TRADERS_PER_WORKER;
        if held + traders.len() > capacity {
            return Answer::refused(format!(
                "adding {} trader(s) to the {held} held would pass the limit of {MAX_TRADERS_PER_WORKER} per worker ({capacity} over {} workers): restart with more --workers; nothing was added",
                traders.len(),
                self.slots.len()
            ));
        }
        // Where each goes (the slot with the fewest), and every worker's
        // evaluation graph within its bound once they are there.
        let mut counts: Vec<usize> = self.slots.iter().map(|s| s.traders.len()).collect();
        let placement: Vec<usize> = traders
            .iter()
            .map(|_| {
                let s = (0..counts.len()).min_by_key(|&s| counts[s]).unwrap_or(0);
                counts[s] += 1;
                s
            })
            .collect();
        let nodes_of = |k: usize| -> Vec<String> {
            checked
                .get(k)
                .map_or_else(|| super::slot::nodes_of(&traders[k]), |c| c.1.clone())
        };
        for (s, slot) in self.slots.iter().enumerate() {
            let texts: Vec<String> = (0..traders.len())
                .filter(|&k| placement[k] == s)
                .flat_map(nodes_of)
                .collect();
            let adding = slot.nodes.adding(&texts);
            if slot.nodes.len() + adding > protocol::rule::NODE_BOUND {
                return Answer::refused(format!(
                    "adding these traders would give worker {s} {} distinct indicators and computed series to compute, past the limit of {} per worker: restart with more --workers, or use fewer distinct indicators; nothing was added",
                    slot.nodes.len() + adding,
                    protocol::rule::NODE_BOUND
                ));
            }
        }
        let kept: Vec<&TraderSpec> = self
            .slots
            .iter()
            .flat_map(|s| s.traders.values())
            .chain(&traders)
            .collect();
        if let Err(e) = self.opts.state.save_traders(&kept) {
            tracing::error!(error = %e, "traders not added: the new trader set could not be kept");
            return Answer::refused(format!(
                "the new trader set could not be kept ({e}): nothing was added; free space or fix the state directory and try again"
            ));
        }
        let from_publish = self.inst.store.lock().stats().publishes;
        let mut touched = BTreeSet::new();
        let mut added = Vec::with_capacity(traders.len());
        let mut checked = checked.into_iter();
        for (k, t) in traders.into_iter().enumerate() {
            let s = placement[k];
            touched.insert(s);
            tracing::debug!(trader = %t.id, slot = s, from_publish, "trader added");
            added.push(AddedTrader {
                id: t.id.clone(),
                slot: s as u32,
            });
            let (window, nodes) = checked.next().unzip();
            self.slots[s].add_trader(t, from_publish, super::slot::Checked { window, nodes });
        }
        tracing::info!(
            traders = added.len(),
            from_publish,
            "traders added and kept in the state directory"
        );
        // Once per slot, not per trader: thousands added at once stay
        // linear in the number of traders.
        for s in touched {
            self.slots[s].tell_holds(&self.emitter);
            if self.slots[s]
                .live
                .as_ref()
                .is_some_and(|i| i.state == State::Ready)
            {
                self.send_traders(s);
            }
        }
        Answer::Added(Added {
            added,
            from_publish,
            last_batch_at: self.feeding.last_batch_at(),
            persisted: true,
        })
    }

    /// Removes a trader; its worker stops evaluating it at once. The set
    /// without it is kept in the state directory first: if that fails,
    /// nothing is removed and the answer says so.
    pub(super) fn traders_remove(&mut self, id: &str) -> Answer {
        let quarantined = self.quarantine.holds(id);
        let slot = self.slots.iter().position(|s| s.traders.contains_key(id));
        if !quarantined && slot.is_none() {
            return Answer::refused(format!(
                "no trader {id}: `shmkline traders list` shows them"
            ));
        }
        let kept: Vec<&TraderSpec> = self
            .slots
            .iter()
            .flat_map(|s| s.traders.values())
            .filter(|t| t.id != id)
            .collect();
        if let Err(e) = self.opts.state.save_traders(&kept) {
            tracing::error!(error = %e, trader = id, "trader not removed: the new trader set could not be kept");
            return Answer::refused(format!(
                "the trader set without {id} could not be kept ({e}): nothing was removed; free space or fix the state directory and try again"
            ));
        }
        if quarantined {
            self.quarantine.release(id);
            return Answer::Removed(Removed {
                removed: id.to_owned(),
                from: RemovedFrom::Quarantine {
                    was: WasQuarantined::Quarantined,
                },
                persisted: true,
            });
        }
        let Some(s) = slot else {
            return Answer::refused(format!("no trader {id}"));
        };
        let slot = &mut self.slots[s];
        slot.drop_trader(id, &self.emitter);
        let live = match slot.live.as_mut() {
            Some(inc) if inc.live() => {
                inc.acked.remove(id);
                inc.removing.insert(id.to_owned());
                true
            }
            Some(inc) => {
                inc.acked.remove(id);
                false
            }
            None => false,
        };
        // A fixed trader re-added under the same id starts with a clean record.
        self.quarantine.forgive(id);
        if live {
            self.request(
                s,
                Message::RemoveTrader { id: id.to_owned() },
                Purpose::RemoveTrader(id.to_owned()),
            );
        }
        tracing::info!(trader = id, slot = s, "trader removed from its slot");
        Answer::Removed(Removed {
            removed: id.to_owned(),
            from: RemovedFrom::Slot {
                slot: s as u32,
                last_batch_at: self.feeding.last_batch_at(),
            },
            persisted: true,
        })
    }
}

/// TEST ONLY (the `testing` feature): `SHMKLINE_TEST_ADD_DELAY_MS` holds
/// the loop this long in each `traders add`, so a test can show the client
/// gets the real answer from a loop slower than its answer timeout.
#[cfg(feature = "testing")]
fn test_delay() {
    if let Some(ms) = std::env::var("SHMKLINE_TEST_ADD_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
