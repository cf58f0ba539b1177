//! `status` and the control socket's requests, answered from the loop's
//! own state (one consistent snapshot).

use protocol::control::{
    Answer, ControlLoad, Events, Feed, LiveFeed, LoopCost, MetricsSnapshot, Pong, Quarantined,
    RequestKind, RunState, Segment, Shard, Signals, SlotPasses, SlotRestarts, Status, Supervision,
};

use super::control::ControlRequest;
use super::control::Request;
use super::coordinator::Coordinator;

impl Coordinator {
    pub(super) fn status(&self) -> Status {
        let workers = self
            .slots
            .iter()
            .map(|slot| {
                let recovering = slot
                    .recovering
                    .is_some_and(|id| self.events.get(id).is_some());
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
            state: match (self.shutting_down, self.draining) {
                (Some(_), _) => RunState::ShuttingDown,
                (None, Some(_)) => RunState::Draining,
                (None, None) => RunState::Running,
            },
            uptime_ms: self.started.elapsed().as_millis() as u64,
            metrics: self.metrics_addr.map(|a| format!("http://{a}/metrics")),
            control: self.control_costs.status(),
            segment,
            feed: match (&self.pump, &self.live_health) {
                (Some(pump), _) => {
                    pump.status(self.final_publish.is_some(), self.feed_done(), &stats)
                }
                // Its figures stay once it is stopped (a drain).
                (None, Some(health)) => Feed::Binance(LiveFeed::Started(Box::new(health.status()))),
                (None, None) => Feed::Binance(LiveFeed::NotStarted { started: false }),
            },
            signals: Signals {
                emitted: figures.emitted,
                duplicates_dropped: figures.duplicates,
                latency_samples: figures.latency_samples as u64,
                latency_p50_us: figures.latency_p50_us,
                latency_p99_us: figures.latency_p99_us,
            },
            sinks: self.emitter.sinks_status(),
            candles_published: self.publisher.as_ref().map(|p| p.status()),
            shard: Shard {
                shard: self.opts.shard.to_string(),
                symbols,
            },
            gaps: self.gaps(),
            quarantined: self
                .quarantined
                .iter()
                .map(|(t, slot)| Quarantined {
                    trader: t.clone(),
                    slot: *slot,
                    strikes: self.strikes.get(t).copied().unwrap_or(0),
                })
                .collect(),
            supervision: Supervision {
                faults: self.events.len() as u64,
                recovered: self.events.recovered_count() as u64,
                recent: self.events.recent(),
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

    pub(super) fn control(&mut self, req: ControlRequest) {
        let started = std::time::Instant::now();
        let kind = req.request.kind();
        let answer = match req.request {
            Request::Ping => Answer::Pong(Pong { pong: true }),
            Request::Status => Answer::Status(Box::new(self.status())),
            Request::Metrics => Answer::Metrics(Box::new(self.metrics_snapshot())),
            Request::Events => Answer::Events(Events {
                events: self.events.all(),
            }),
            Request::Traders => Answer::Traders(self.traders_list()),
            Request::Add(traders) => self.traders_add(traders),
            Request::Remove(id) => self.traders_remove(&id),
        };
        self.control_costs.record(kind, started.elapsed());
        let _ = req.reply.send(answer);
    }
}

/// Loop time spent answering control requests, per kind: what `top` (a
/// `status` a refresh) and a Prometheus scrape (`metrics`) cost the
/// coordinator. `bench observe` reads it from `status`.
#[derive(Debug)]
pub(super) struct ControlCosts(Vec<(RequestKind, u64, protocol::samples::Samples)>);

/// Durations (ns) kept per kind for the percentiles.
const COST_SAMPLES: usize = 1024;

impl Default for ControlCosts {
    fn default() -> Self {
        Self(
            RequestKind::ALL
                .into_iter()
                .map(|k| (k, 0, protocol::samples::Samples::new(COST_SAMPLES)))
                .collect(),
        )
    }
}

impl ControlCosts {
    fn record(&mut self, kind: RequestKind, took: std::time::Duration) {
        if let Some((_, count, samples)) = self.0.iter_mut().find(|(k, _, _)| *k == kind) {
            *count += 1;
            samples.push(protocol::samples::saturate(took.as_nanos()));
        }
    }

    /// Per kind asked at least once: count and recent p50, p99, max (µs,
    /// to the tenth).
    pub(super) fn status(&self) -> ControlLoad {
        let us = |ns: Option<u32>| ns.map(|ns| (f64::from(ns) / 100.0).round() / 10.0);
        let loop_us = self
            .0
            .iter()
            .filter(|(_, count, _)| *count > 0)
            .map(|(kind, count, samples)| {
                // One sort for the three figures.
                let mut sorted = samples.values().to_vec();
                sorted.sort_unstable();
                let q = |p| protocol::samples::quantile(&sorted, p);
                let cost = LoopCost {
                    count: *count,
                    p50_us: us(q(0.5)),
                    p99_us: us(q(0.99)),
                    max_us: us(sorted.last().copied()),
                };
                (*kind, cost)
            })
            .collect();
        ControlLoad { loop_us }
    }
}
