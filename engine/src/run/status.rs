//! `status` and the `metrics` snapshot, assembled from the coordinator's
//! parts by the loop (one consistent snapshot).

use protocol::control::{
    MetricsSnapshot, Segment, Shard, Signals, SlotPasses, SlotRestarts, Status, Supervision,
};

use super::coordinator::Coordinator;

impl Coordinator {
    pub(super) fn status(&self) -> Status {
        let workers = self
            .slots
            .iter()
            .map(|slot| {
                let recovering = slot
                    .recovering
                    .is_some_and(|id| self.faults.get(id).is_some());
                slot.status(
                    slot.state(recovering),
                    self.emitter.received(slot.id as usize),
                )
            })
            .collect();
        let store = self.inst.store.lock();
        let stats = store.stats();
        let segment = Segment {
            name: store.name().to_owned(),
            size_bytes: store.size_bytes() as u64,
            touched_bytes: store.touched_bytes(),
            generation: store.generation(),
            rings: self.opts.plan.iter().map(|p| p.status()).collect(),
        };
        let symbols = self.opts.store.intervals().first().map(|i| {
            store
                .held(*i)
                .into_iter()
                .map(|(s, _)| s.as_str().to_owned())
                .collect()
        });
        drop(store);
        let figures = self.emitter.figures();
        Status {
            instance: self.opts.instance.to_string(),
            pid: std::process::id(),
            state: self.stage.run_state(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            metrics: self.metrics_addr.map(|a| format!("http://{a}/metrics")),
            control: self.control_costs.status(),
            segment,
            feed: self.feeding.status(self.feed_done(), &stats),
            signals: Signals {
                emitted: figures.emitted,
                duplicates_dropped: figures.duplicates,
                latency_samples: figures.latency_samples as u64,
                latency_p50_us: figures.latency_p50_us,
                latency_p99_us: figures.latency_p99_us,
            },
            sinks: self.emitter.sinks_status(),
            candles_published: self.feeding.publisher_status(),
            shard: Shard {
                shard: self.opts.shard.to_string(),
                symbols,
            },
            gaps: self.gaps(),
            quarantined: self.quarantine.status(),
            supervision: Supervision {
                faults: self.faults.len() as u64,
                recovered: self.faults.recovered_count() as u64,
                recent: self.faults.recent(),
            },
            workers,
            memory: self.memory.status(),
        }
    }

    /// `status` and what only the metrics need: every counter the
    /// exposition reads, from one consistent snapshot.
    pub(super) fn metrics_snapshot(&self) -> MetricsSnapshot {
        let (signal_latency, signals_by_trader) = self.emitter.metrics();
        let store = self.inst.store.lock();
        let candles_written = self
            .opts
            .store
            .intervals()
            .iter()
            .map(|i| (*i, store.appended(*i)))
            .collect();
        drop(store);
        MetricsSnapshot {
            status: self.status(),
            signals_by_trader,
            signal_latency,
            passes: self
                .slots
                .iter()
                .map(|s| SlotPasses {
                    slot: s.id,
                    histogram: s.passes(),
                })
                .collect(),
            restarts: self
                .slots
                .iter()
                .flat_map(|s| {
                    s.restarts_by_cause.iter().map(|(cause, n)| SlotRestarts {
                        slot: s.id,
                        cause: *cause,
                        count: *n,
                    })
                })
                .collect(),
            candles_written,
        }
    }
}
