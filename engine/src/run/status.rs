//! `status` and the control socket's requests, answered from the loop's
//! own state (one consistent snapshot).

use serde::Serialize;

use super::control::ControlRequest;
use super::control::Request;
use super::coordinator::Coordinator;
use super::slot::{Slot, State};

#[derive(Serialize)]
pub(super) struct WorkerStatus<'a> {
    pub(super) id: u32,
    pub(super) pid: u32,
    pub(super) state: &'static str,
    pub(super) traders: usize,
    pub(super) trader_ids: Vec<&'a str>,
    pub(super) restarts: u32,
    pub(super) rtt_us: Option<u64>,
    pub(super) last_pong_age_ms: Option<u64>,
    pub(super) retries: u64,
    pub(super) malformed_frames: u64,
    pub(super) undecodable_frames: u64,
    pub(super) signals: u64,
    pub(super) rss_bytes: Option<u64>,
    pub(super) last_publish: Option<u64>,
    pub(super) confirmed_publish: u64,
    pub(super) gaps: Option<u64>,
    /// Closed candles judged, over all traders and series.
    pub(super) judged: Option<u64>,
    /// SIGNALS frames received, and the largest in bytes.
    pub(super) signal_frames: Option<u64>,
    pub(super) largest_signal_frame_bytes: Option<u64>,
    /// Evaluation passes, and their recent median and 99th percentile (us).
    pub(super) passes: Option<u64>,
    pub(super) pass_p50_us: Option<u64>,
    pub(super) pass_p99_us: Option<u64>,
    pub(super) rtt_histogram_log2_us: &'a [u64],
}

impl Coordinator {
    pub(super) fn slot_state(slot: &Slot) -> &'static str {
        match slot.live.as_ref().map(|i| i.state) {
            Some(State::Starting) => "starting",
            Some(State::Syncing) => "syncing",
            // Ready, but the PONG confirming its recovery is still to come.
            Some(State::Ready) if slot.recovering.is_some() => "recovering",
            Some(State::Ready) => "ready",
            Some(State::Cleaning) => "cleaning",
            Some(State::Exited) => "exited",
            Some(State::Dead) => "dead",
            None if slot.spawning => "spawning",
            None if slot.restart_at.is_some() => "backoff",
            None => "down",
        }
    }

    pub(super) fn status(&self) -> serde_json::Value {
        let workers: Vec<WorkerStatus> = self
            .slots
            .iter()
            .map(|slot| {
                let inc = slot.live.as_ref();
                let pong = inc.and_then(|i| i.last_pong.as_ref());
                WorkerStatus {
                    id: slot.id,
                    pid: inc.map_or(0, |i| i.pid),
                    state: Self::slot_state(slot),
                    traders: inc.map_or(0, |i| i.acked.len()),
                    trader_ids: slot.traders.keys().map(String::as_str).collect(),
                    restarts: slot.restarts,
                    rtt_us: inc.and_then(|i| i.rtt).map(|d| d.as_micros() as u64),
                    last_pong_age_ms: pong.map(|(at, _)| at.elapsed().as_millis() as u64),
                    retries: slot.retries,
                    malformed_frames: slot.malformed,
                    undecodable_frames: slot.undecodable,
                    signals: self.emitter.received(slot.id as usize),
                    rss_bytes: pong.map(|(_, p)| p.rss_bytes),
                    last_publish: pong.map(|(_, p)| p.last_publish),
                    confirmed_publish: slot.confirmed,
                    gaps: pong.map(|(_, p)| p.gaps),
                    judged: pong.map(|(_, p)| p.judged),
                    signal_frames: pong.map(|(_, p)| p.signal_frames),
                    largest_signal_frame_bytes: pong.map(|(_, p)| p.largest_signal_frame),
                    passes: pong.map(|(_, p)| p.passes),
                    pass_p50_us: pong.map(|(_, p)| p.pass_p50_us),
                    pass_p99_us: pong.map(|(_, p)| p.pass_p99_us),
                    rtt_histogram_log2_us: &slot.rtt_hist.buckets,
                }
            })
            .collect();
        let stats = self.inst.store.lock().stats();
        let signals = self.emitter.figures();
        let recovered = self
            .events
            .iter()
            .filter(|e| e.recovery_ms.is_some())
            .count();
        serde_json::json!({
            "instance": self.opts.instance.as_str(),
            "pid": std::process::id(),
            "state": match (self.shutting_down, self.draining) {
                (Some(_), _) => "shutting_down",
                (None, Some(_)) => "draining",
                (None, None) => "running",
            },
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "metrics": self.metrics_addr.map(|a| format!("http://{a}/metrics")),
            "control": { "loop_us": self.control_costs.status() },
            "segment": {
                "name": self.inst.store.lock().name(),
                "size_bytes": self.inst.store.lock().size_bytes(),
                "touched_bytes": self.inst.store.lock().touched_bytes(),
                "generation": self.inst.store.lock().generation(),
                "rings": self.opts.plan,
            },
            "feed": match (&self.pump, &self.live) {
                (Some(pump), _) => pump.status(self.opts.feed.kind(), self.final_publish.is_some(), self.feed_done(), &stats),
                (None, Some(live)) => {
                    let mut v = serde_json::to_value(live.health().status()).unwrap_or_default();
                    v["kind"] = "binance".into();
                    v
                }
                (None, None) => serde_json::json!({ "kind": self.opts.feed.kind(), "started": false }),
            },
            "signals": {
                "emitted": signals.emitted,
                "duplicates_dropped": signals.duplicates,
                "latency_samples": signals.latency_samples,
                "latency_p50_us": signals.latency_p50_us,
                "latency_p99_us": signals.latency_p99_us,
            },
            "sinks": self.emitter.sinks_status(),
            "candles_published": self.publisher.as_ref().map(|p| p.status()),
            "shard": {
                "shard": self.opts.shard.to_string(),
                "symbols": self.opts.store.intervals().first().map(|i| {
                    self.inst.store.lock().held(*i).into_iter().map(|(s, _)| s.as_str().to_owned()).collect::<Vec<_>>()
                }),
            },
            "gaps": self.gaps(),
            "quarantined": self.quarantined.iter().map(|(t, slot)| serde_json::json!({
                "trader": t, "slot": slot, "strikes": self.strikes.get(t).copied().unwrap_or(0),
            })).collect::<Vec<_>>(),
            "supervision": {
                "faults": self.events.len(),
                "recovered": recovered,
                "recent": self.events.iter().rev().take(16).collect::<Vec<_>>(),
            },
            "workers": workers,
            "memory": {
                "alert_mb_per_h": self.memory.settings().alert_mb_per_h,
                "sample_interval_ms": self.memory.settings().every.as_millis() as u64,
                "warmup_s": self.memory.settings().warmup.as_secs(),
                "window_s": self.memory.settings().window.as_secs(),
                "processes": self.memory.processes(),
            },
        })
    }

    /// `status` and what only the metrics need: every counter the
    /// exposition reads, from one consistent snapshot.
    pub(super) fn metrics_snapshot(&self) -> serde_json::Value {
        let (latency, by_trader) = self.emitter.metrics();
        let store = self.inst.store.lock();
        let candles: serde_json::Map<String, serde_json::Value> = self
            .opts
            .store
            .intervals()
            .iter()
            .map(|i| (i.to_string(), store.appended(*i).into()))
            .collect();
        drop(store);
        serde_json::json!({
            "status": self.status(),
            "signals_by_trader": by_trader,
            "signal_latency": latency,
            "passes": self.slots.iter().map(|s| serde_json::json!({
                "slot": s.id, "histogram": s.passes(),
            })).collect::<Vec<_>>(),
            "restarts": self.slots.iter().flat_map(|s| s.restarts_by_cause.iter().map(|(cause, n)| {
                serde_json::json!({ "slot": s.id, "cause": cause, "count": n })
            })).collect::<Vec<_>>(),
            "candles_written": candles,
        })
    }

    pub(super) fn control(&mut self, req: ControlRequest) {
        let started = std::time::Instant::now();
        let kind = req.request.kind();
        let answer = match req.request {
            Request::Ping => serde_json::json!({ "pong": true }),
            Request::Status => self.status(),
            Request::Metrics => self.metrics_snapshot(),
            Request::Events => serde_json::json!({ "events": self.events }),
            Request::Traders => self.traders_list(),
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
pub(super) struct ControlCosts(Vec<(&'static str, u64, protocol::samples::Samples)>);

/// Durations (ns) kept per kind for the percentiles.
const COST_SAMPLES: usize = 1024;

impl Default for ControlCosts {
    fn default() -> Self {
        Self(
            ["ping", "status", "metrics", "traders", "events", "other"]
                .into_iter()
                .map(|k| (k, 0, protocol::samples::Samples::new(COST_SAMPLES)))
                .collect(),
        )
    }
}

impl ControlCosts {
    fn record(&mut self, kind: &str, took: std::time::Duration) {
        if let Some((_, count, samples)) = self.0.iter_mut().find(|(k, _, _)| *k == kind) {
            *count += 1;
            samples.push(protocol::samples::saturate(took.as_nanos()));
        }
    }

    /// Per kind asked at least once: count and recent p50, p99, max (µs,
    /// to the tenth).
    pub(super) fn status(&self) -> serde_json::Value {
        let us = |ns: Option<u32>| ns.map(|ns| (f64::from(ns) / 100.0).round() / 10.0);
        self.0
            .iter()
            .filter(|(_, count, _)| *count > 0)
            .map(|(kind, count, samples)| {
                // One sort for the three figures.
                let mut sorted = samples.values().to_vec();
                sorted.sort_unstable();
                let q = |p| protocol::samples::quantile(&sorted, p);
                (
                    (*kind).to_owned(),
                    serde_json::json!({
                        "count": count,
                        "p50_us": us(q(0.5)),
                        "p99_us": us(q(0.99)),
                        "max_us": us(sorted.last().copied()),
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}
