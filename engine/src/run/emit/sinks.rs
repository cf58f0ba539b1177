//! The emitter's durable sinks (file, webhook, NATS): what each holds and
//! was handed, falling behind when its queue is full and being caught up,
//! its reach after a live start, and its figures for `status` and the end.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use protocol::control::{DurableSink, NatsSink, Sink, StdoutSink};

use super::super::dedup::Dedup;
use super::super::sink::{Batch, Output, SinkSpec};
use super::Emitter;

/// A sink whose queue is full falls behind (see [`super::sink`]): it is
/// handed nothing until its queue has drained; then the workers judge again
/// from `points` (per slot, the publish confirmed now: every signal it is
/// not handed from here on is of a later candle) and it takes what it lacks.
pub(super) fn fall_behind(f: &mut SinkOut, points: Vec<u64>) {
    tracing::error!(sink = %f.spec, queued = f.output.queued(), bound = f.bound,
        "a sink is not keeping up: its queue is full, so it is handed nothing until it drains; \
         then it is caught up from the candles the store still holds (--sink-queue moves the bound)");
    f.output.error(format!(
        "behind: its queue of {} signals was full (--sink-queue); caught up once it drains",
        f.bound
    ));
    f.behind = Some(points);
}

/// Hands a share of signals to a durable sink without waiting (its queue
/// is bounded by the caller, in signals).
pub(super) fn offer(f: &mut SinkOut, share: Share, published: Option<Instant>) {
    let batch = Batch {
        text: share.text,
        lines: share.lines,
        newest: share.newest,
        published,
    };
    let sent = f.out.as_ref().is_some_and(|out| out.send(batch).is_ok());
    f.emitted += share.lines;
    f.output.handed(share.lines, share.newest);
    if !sent {
        // Closed at teardown, or its thread is gone: not delivered.
        f.output.count(share.lines, false);
    }
}

/// A durable sink (file, webhook) as the emitter sees it: what it holds,
/// where its lines go.
#[derive(Debug)]
pub(super) struct SinkOut {
    pub(super) spec: SinkSpec,
    /// What it was handed (or holds from before): a signal at or below is
    /// not handed again.
    pub(super) dedup: Dedup,
    pub(super) out: Option<Sender<Batch>>,
    pub(super) output: Arc<Output>,
    /// Signals handed to it this run.
    pub(super) emitted: u64,
    /// Signals it may hold queued, at most (`--sink-queue`).
    pub(super) bound: u64,
    /// Its queue was full: it is handed nothing until it has caught up.
    /// Per slot, the publish the slot had confirmed then: every signal not
    /// handed since is of a candle published after it.
    pub(super) behind: Option<Vec<u64>>,
    /// Times it fell behind and was caught up.
    pub(super) catch_ups: u64,
    /// Caught up: the workers judge again what it missed, and it takes it.
    /// Until they have (the coordinator says so), it counts as behind.
    pub(super) catching: bool,
    /// Traders removed (or quarantined) while it was behind or catching up:
    /// what they would have given it since it fell behind cannot be
    /// judged again.
    pub(super) lost_traders: Vec<String>,
    /// Its position at start: per interval, its newest signal's open time.
    pub(super) start_newest: std::collections::BTreeMap<protocol::Interval, i64>,
    /// What a live start could not bring back to it (see
    /// [`super::super::sink::out_of_reach`]); `None` until checked.
    pub(super) out_of_reach: Option<Vec<String>>,
}

/// A durable sink at the end: spec, signals handed, their fate, behind or
/// catching up, traders removed while it was.
pub type SinkDelivery = (String, u64, Arc<Output>, bool, Vec<String>);

/// One sink's share of a frame's signals, built under the lock.
#[derive(Debug, Default, Clone)]
pub(super) struct Share {
    pub(super) text: Vec<u8>,
    pub(super) lines: u64,
    pub(super) newest: i64,
    /// The latest close among them (wall ms).
    pub(super) closes_at: i64,
}

impl Emitter {
    /// Adds a durable sink that holds what `dedup` marks, its lines queued
    /// to `out` (at most `bound` signals at a time), counted in `output`.
    pub fn add_sink(
        &self,
        spec: SinkSpec,
        dedup: Dedup,
        out: Sender<Batch>,
        output: Arc<Output>,
        bound: u64,
    ) {
        let start_newest = super::super::sink::newest_per_interval(&dedup);
        self.lock().sinks.push(SinkOut {
            spec,
            start_newest,
            out_of_reach: None,
            dedup,
            out: Some(out),
            output,
            emitted: 0,
            bound,
            behind: None,
            catch_ups: 0,
            catching: false,
            lost_traders: Vec::new(),
        });
    }

    /// A sink behind whose queue has drained is caught up: from now on no
    /// slot's signals count until its next incarnation (in flight ones of
    /// the present ones would pass the sink's watermark over what it
    /// missed), and the sinks that were behind take signals again. Returns,
    /// per slot, the publish to judge again from (the least of the behind
    /// points); the caller replaces every worker from there.
    pub fn take_catch_up(&self) -> Option<Vec<u64>> {
        let mut inner = self.lock();
        let mut from: Option<Vec<u64>> = None;
        for f in &mut inner.sinks {
            if f.output.queued() > 0 {
                continue;
            }
            let Some(points) = f.behind.take() else {
                continue;
            };
            f.catch_ups += 1;
            f.catching = true;
            tracing::warn!(sink = %f.spec, behind = f.output.behind(),
                "a sink that fell behind has drained its queue: the workers judge again from its behind point");
            from = Some(match from {
                None => points,
                Some(prev) => prev.iter().zip(&points).map(|(a, b)| *a.min(b)).collect(),
            });
        }
        if from.is_some() {
            inner.accept.iter_mut().for_each(|a| *a = None);
        }
        from
    }

    /// A live start's backfill brought candles from `reach` (per interval,
    /// the oldest open time held): each durable sink whose position is
    /// older is told what it cannot get back. Returns how many were told.
    pub fn check_reach(
        &self,
        reach: &std::collections::BTreeMap<protocol::Interval, i64>,
    ) -> usize {
        let mut inner = self.lock();
        let mut told = 0;
        for f in &mut inner.sinks {
            let gaps = super::super::sink::out_of_reach(&f.start_newest, reach);
            for gap in &gaps {
                tracing::warn!(sink = %f.spec, "out of the backfill's reach: {gap}");
                f.output
                    .error(format!("out of the backfill's reach: {gap}"));
            }
            told += usize::from(!gaps.is_empty());
            f.out_of_reach = Some(gaps);
        }
        told
    }

    /// Whether some behind sink delivered something within `d`.
    pub fn sinks_moved_within(&self, d: Duration) -> bool {
        self.lock()
            .sinks
            .iter()
            .filter(|f| f.behind.is_some() || f.catching)
            .any(|f| f.output.last_moved().elapsed() < d)
    }

    /// Whether a sink is behind now, or catching up.
    pub fn any_behind(&self) -> bool {
        self.lock()
            .sinks
            .iter()
            .any(|f| f.behind.is_some() || f.catching)
    }

    /// Whether every durable sink has confirmed everything it was handed
    /// and none is behind: only then may a feed's saved position pass what
    /// the workers judged (their signals are all delivered).
    pub fn sinks_settled(&self) -> bool {
        self.lock()
            .sinks
            .iter()
            .all(|f| f.behind.is_none() && !f.catching && f.output.queued() == 0)
    }

    /// The workers have judged again everything a catch-up was for.
    pub fn caught_up(&self) {
        for f in &mut self.lock().sinks {
            f.catching = false;
        }
    }

    /// Each sink as `status` shows it: what it was handed this run, what
    /// it delivered (written; for a file, fsynced; for a webhook, answered
    /// 2xx), what waits, failed or was refused, how far its confirmed
    /// position trails, and how many series it holds a watermark for.
    pub fn sinks_status(&self) -> Vec<Sink> {
        let inner = self.lock();
        let stdout = inner.stdout.then(|| {
            let mut delivery = self.output.status();
            // Stdout's latency ends where its line is handed to its thread.
            delivery.latency_p50_us = inner.latency.quantile(0.5);
            delivery.latency_p99_us = inner.latency.quantile(0.99);
            Sink::Stdout(StdoutSink {
                spec: SinkSpec::Stdout.to_string(),
                emitted: inner.printed,
                closed: self.output.closed(),
                series: inner.dedup.len() as u64,
                delivery,
            })
        });
        stdout
            .into_iter()
            .chain(inner.sinks.iter().map(|f| {
                let sink = DurableSink {
                    spec: f.spec.to_string(),
                    emitted: f.emitted,
                    series: f.dedup.len() as u64,
                    queue_bound: f.bound,
                    is_behind: f.behind.is_some() || f.catching,
                    catching_up: f.catching,
                    catch_ups: f.catch_ups,
                    lost_traders: f.lost_traders.clone(),
                    out_of_reach: f.out_of_reach.clone(),
                    delivery: f.output.status(),
                };
                match &f.spec {
                    SinkSpec::File(_) => Sink::File(sink),
                    SinkSpec::Webhook { batch: false, .. } => Sink::Webhook(sink),
                    SinkSpec::Webhook { batch: true, .. } => Sink::WebhookBatch(sink),
                    SinkSpec::Nats(_) => Sink::Nats(NatsSink {
                        sink,
                        connection: f.output.connection().unwrap_or_default(),
                    }),
                    // Never a durable sink (the run prints to it itself);
                    // shown as what it is, should it ever be one.
                    SinkSpec::Stdout => Sink::Stdout(StdoutSink {
                        spec: sink.spec,
                        emitted: sink.emitted,
                        closed: f.output.closed(),
                        series: sink.series,
                        delivery: sink.delivery,
                    }),
                }
            }))
            .collect()
    }

    /// Per durable sink: its spec, signals handed to it this run, what
    /// became of them, whether it is behind (or catching up) now, and the
    /// traders removed while it was.
    pub fn sink_delivery(&self) -> Vec<SinkDelivery> {
        self.lock()
            .sinks
            .iter()
            .map(|f| {
                let spec = f.spec.to_string();
                let behind = f.behind.is_some() || f.catching;
                (
                    spec,
                    f.emitted,
                    f.output.clone(),
                    behind,
                    f.lost_traders.clone(),
                )
            })
            .collect()
    }
}
