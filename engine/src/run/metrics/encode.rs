//! The coordinator's metrics snapshot (the `metrics` control request) in
//! the OpenMetrics text format, encoded by `prometheus-client`.
//!
//! The snapshot is taken by the loop (one consistent view); everything here
//! runs on the endpoint's thread. The series are read from a snapshot, not
//! kept in long-lived metric objects, so a worker's death, a trader's
//! removal or a sink's end cannot leave a stale series behind, and every
//! counter is the engine's own total (it never goes back while the
//! coordinator lives).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use protocol::control::{Delivery, MetricsSnapshot, WorkerState};
use protocol::histogram::Log2Histogram;

/// The snapshot of one scrape.
#[derive(Debug)]
struct Snapshot(MetricsSnapshot);

type Labels = Vec<(&'static str, String)>;

/// A histogram's OpenMetrics parts: sum (s), count, and each bucket's
/// upper bound with its own count (the encoder makes them cumulative).
fn histogram(h: &Log2Histogram) -> (f64, u64, Vec<(f64, u64)>) {
    let buckets = h
        .counts
        .iter()
        .enumerate()
        .map(|(k, c)| (Log2Histogram::upper_seconds(k).unwrap_or(f64::INFINITY), *c))
        .collect();
    (h.sum_us as f64 / 1e6, h.count(), buckets)
}

/// Writes one family: its descriptor, then each labelled sample.
fn family<F>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Labels, F)>,
) -> Result<(), std::fmt::Error>
where
    F: FnOnce(&mut prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error>,
{
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, write) in samples {
        if labels.is_empty() {
            write(&mut metric)?;
        } else {
            write(&mut metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

type Write =
    Box<dyn FnOnce(&mut prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error>>;

fn counter(v: u64) -> Write {
    Box::new(move |m| m.encode_counter::<NoLabelSet, _, u64>(&v, None))
}

fn gauge_u(v: u64) -> Write {
    Box::new(move |m| m.encode_gauge(&v))
}

fn gauge_f(v: f64) -> Write {
    Box::new(move |m| m.encode_gauge(&v))
}

fn hist(h: Log2Histogram) -> Write {
    Box::new(move |m| {
        let (sum, count, buckets) = histogram(&h);
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    })
}

fn one(w: Write) -> Vec<(Labels, Write)> {
    vec![(Vec::new(), w)]
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = &self.0;
        let status = &snap.status;

        family(
            &mut e,
            "shmkline_signals",
            "Signals handed to at least one sink, per trader held now.",
            MetricType::Counter,
            snap.signals_by_trader
                .iter()
                .map(|(trader, n)| (vec![("trader", trader.clone())], counter(*n)))
                .collect(),
        )?;
        family(
            &mut e,
            "shmkline_signals_duplicate",
            "Repeated signals dropped (a replacement worker judging again).",
            MetricType::Counter,
            one(counter(status.signals.duplicates_dropped)),
        )?;
        family(
            &mut e,
            "shmkline_signal_latency_seconds",
            "Candle published in the store to its signal handed to stdout.",
            MetricType::Histogram,
            one(hist(snap.signal_latency)),
        )?;
        family(
            &mut e,
            "shmkline_eval_pass_seconds",
            "Evaluation passes of each slot's workers (dead ones included).",
            MetricType::Histogram,
            snap.passes
                .iter()
                .map(|p| (vec![("slot", p.slot.to_string())], hist(p.histogram)))
                .collect(),
        )?;
        family(
            &mut e,
            "shmkline_worker_restarts",
            "Worker replacements per slot and cause (outside: a signal from someone else; self_inflicted: its own fault; planned: a sink's catch-up).",
            MetricType::Counter,
            snap.restarts
                .iter()
                .map(|r| {
                    let labels = vec![
                        ("slot", r.slot.to_string()),
                        ("cause", r.cause.name().to_owned()),
                    ];
                    (labels, counter(r.count))
                })
                .collect(),
        )?;
        family(
            &mut e,
            "shmkline_worker_rss_bytes",
            "Resident set of each slot's live worker, bytes (its last PONG).",
            MetricType::Gauge,
            status
                .workers
                .iter()
                .filter_map(|w| Some((vec![("slot", w.id.to_string())], gauge_u(w.rss_bytes?))))
                .collect(),
        )?;
        family(
            &mut e,
            "shmkline_worker_up",
            "1 when the slot's worker is ready, else 0.",
            MetricType::Gauge,
            status
                .workers
                .iter()
                .map(|w| {
                    let up = u64::from(w.state == WorkerState::Ready);
                    (vec![("slot", w.id.to_string())], gauge_u(up))
                })
                .collect(),
        )?;
        let processes = &status.memory.processes;
        family(
            &mut e,
            "shmkline_process_memory_growth_bytes_per_hour",
            "Growth of each process's private memory, fitted over the monitor's window (absent during warm-up).",
            MetricType::Gauge,
            processes
                .iter()
                .filter_map(|p| {
                    let mb = p.growth_mb_per_h?;
                    Some((vec![("process", p.process.clone())], gauge_f(mb * 1e6)))
                })
                .collect(),
        )?;
        family(
            &mut e,
            "shmkline_process_private_memory_bytes",
            "Each process's private memory (RssAnon), bytes.",
            MetricType::Gauge,
            processes
                .iter()
                .filter_map(|p| {
                    let bytes = p.private_bytes?;
                    Some((vec![("process", p.process.clone())], gauge_u(bytes)))
                })
                .collect(),
        )?;
        let (connected, reconnects) = status.feed.connection();
        family(
            &mut e,
            "shmkline_feed_connected",
            "1 while the feed is connected (a local feed always is).",
            MetricType::Gauge,
            one(gauge_u(u64::from(connected))),
        )?;
        family(
            &mut e,
            "shmkline_feed_reconnects",
            "Feed reconnects (live WebSocket connections after the first; NATS reconnects).",
            MetricType::Counter,
            one(counter(reconnects)),
        )?;
        family(
            &mut e,
            "shmkline_feed_gaps",
            "Gaps in the feed: candles that never came.",
            MetricType::Counter,
            one(counter(status.feed.written().map_or(0, |w| w.gaps))),
        )?;
        family(
            &mut e,
            "shmkline_candles_written",
            "Candles appended to the store, per interval.",
            MetricType::Counter,
            snap.candles_written
                .iter()
                .map(|(i, n)| (vec![("interval", i.to_string())], counter(*n)))
                .collect(),
        )?;
        let per_sink = |field: fn(&Delivery) -> u64, gauge: bool| -> Vec<(Labels, Write)> {
            status
                .sinks
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let (spec, delivery) = s.spec_and_delivery();
                    let v = field(delivery);
                    (
                        vec![("sink", redacted(spec)), ("index", k.to_string())],
                        if gauge { gauge_u(v) } else { counter(v) },
                    )
                })
                .collect()
        };
        family(
            &mut e,
            "shmkline_sink_queued",
            "Signals handed to each sink and not yet confirmed.",
            MetricType::Gauge,
            per_sink(|d| d.queued, true),
        )?;
        family(
            &mut e,
            "shmkline_sink_delivered",
            "Signals each sink confirmed.",
            MetricType::Counter,
            per_sink(|d| d.delivered, false),
        )?;
        family(
            &mut e,
            "shmkline_sink_errors",
            "Failed deliveries per sink: attempts retried, and signals refused for good.",
            MetricType::Counter,
            per_sink(|d| d.retries + d.rejected, false),
        )?;
        family(
            &mut e,
            "shmkline_uptime_seconds",
            "Seconds since the coordinator started.",
            MetricType::Gauge,
            one(gauge_f(status.uptime_ms as f64 / 1e3)),
        )?;
        Ok(())
    }
}

/// A sink's spec as a label: a URL keeps its scheme, host and port only
/// (a webhook's path, query or user often carry its secret, and labels end
/// up in Prometheus' storage); `index` keeps two sinks on one host apart.
fn redacted(spec: &str) -> String {
    let Some((scheme, rest)) = spec.split_once("://") else {
        return spec.to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

/// The OpenMetrics text of a `metrics` snapshot.
pub fn exposition(snapshot: MetricsSnapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(snapshot)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text, for
/// scrapers and tools that do not ask for OpenMetrics (`curl`, `promtool
/// check metrics`): a counter's HELP and TYPE name its `_total` samples, and
/// there is no `# EOF`.
pub fn classic(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::control::{
        Cause, Memory, ProcessMemory, Signals, Sink, SlotPasses, SlotRestarts, Status, StdoutSink,
        Worker,
    };

    #[test]
    fn a_snapshot_becomes_openmetrics_text() {
        let mut passes = Log2Histogram::default();
        passes.observe(3);
        passes.observe(900);
        let status = Status {
            signals: Signals {
                duplicates_dropped: 2,
                ..Signals::default()
            },
            workers: vec![Worker {
                id: 0,
                state: WorkerState::Ready,
                rss_bytes: Some(4096),
                ..Worker::default()
            }],
            memory: Memory {
                processes: vec![ProcessMemory {
                    process: "worker 0".into(),
                    growth_mb_per_h: Some(1.5),
                    private_bytes: Some(100),
                    ..ProcessMemory::default()
                }],
                ..Memory::default()
            },
            sinks: vec![Sink::Stdout(StdoutSink {
                spec: "stdout".into(),
                delivery: Delivery {
                    queued: 1,
                    delivered: 9,
                    ..Delivery::default()
                },
                ..StdoutSink::default()
            })],
            uptime_ms: 1500,
            ..Status::default()
        };
        let snap = MetricsSnapshot {
            status,
            signals_by_trader: vec![("sma10-up".into(), 7)],
            signal_latency: Log2Histogram::default(),
            passes: vec![SlotPasses {
                slot: 0,
                histogram: passes,
            }],
            restarts: vec![SlotRestarts {
                slot: 0,
                cause: Cause::Outside,
                count: 3,
            }],
            candles_written: [(protocol::Interval::M1, 120)].into(),
        };
        let text = exposition(snap).expect("encodes");
        for line in [
            "# TYPE shmkline_signals counter",
            "shmkline_signals_total{trader=\"sma10-up\"} 7",
            "shmkline_signals_duplicate_total 2",
            "shmkline_worker_restarts_total{slot=\"0\",cause=\"outside\"} 3",
            "shmkline_worker_rss_bytes{slot=\"0\"} 4096",
            "shmkline_process_memory_growth_bytes_per_hour{process=\"worker 0\"} 1500000.0",
            "shmkline_eval_pass_seconds_count{slot=\"0\"} 2",
            "shmkline_eval_pass_seconds_bucket{le=\"0.000004\",slot=\"0\"} 1",
            "shmkline_eval_pass_seconds_bucket{le=\"+Inf\",slot=\"0\"} 2",
            "shmkline_candles_written_total{interval=\"1m\"} 120",
            "shmkline_sink_queued{sink=\"stdout\",index=\"0\"} 1",
            "shmkline_feed_connected 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert_eq!(
            redacted("webhook:https://user:pw@hooks.example.com:8443/services/T0/B0/secret?x=1"),
            "webhook:https://hooks.example.com:8443"
        );
        assert_eq!(redacted("file:/var/log/s.jsonl"), "file:/var/log/s.jsonl");
        assert_eq!(
            redacted("nats://127.0.0.1:4222/eng"),
            "nats://127.0.0.1:4222"
        );
        let classic = classic(&text);
        assert!(classic.contains("# TYPE shmkline_signals_total counter\n"));
        assert!(classic.contains("# HELP shmkline_signals_total Signals"));
        assert!(classic.contains("# TYPE shmkline_eval_pass_seconds histogram\n"));
        assert!(!classic.contains("# EOF"));
    }
}
