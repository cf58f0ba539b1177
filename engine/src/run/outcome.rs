//! What a run that ended in order amounts to: its summary, or an error
//! naming everything it was asked to do and did not.

use std::sync::atomic::Ordering;

use anyhow::{Result, bail};

use super::coordinator::Coordinator;

/// What a run ended with.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Signals printed.
    pub signals: u64,
    /// Worker faults detected (and recovered from, unless the run stopped first).
    pub faults: usize,
}

/// What a run that ended in order amounts to: an error if anything it was
/// asked to do was not done, else its summary.
pub(super) fn outcome(coord: &Coordinator) -> Result<RunSummary> {
    // A live run stopped before its feed delivered anything did nothing it
    // was started for: most likely a wrong --endpoint, or no route to the
    // exchange. Exit 0 would pass that off as an orderly day.
    if let Some(why) = coord.feeding.never_delivered() {
        bail!("{why}; check --endpoint and the network");
    }
    let mut failed = Vec::new();
    for (spec, emitted, out, behind, lost_traders) in coord.emitter.sink_delivery() {
        if !lost_traders.is_empty() {
            failed.push(format!(
                "{spec}: traders removed while it was behind, whose signals since then it cannot get: {}",
                lost_traders.join(", ")
            ));
        }
        let rejected = out.rejected.load(Ordering::Acquire);
        let undelivered = emitted.saturating_sub(out.written() + rejected);
        if undelivered > 0 {
            // What the next start does: it resumes from the sink's saved
            // position, so what an earlier run had confirmed is not sent
            // again (a run with --signals-from all handed those anyway).
            let covered = out.covered().min(undelivered);
            let next = match (undelivered - covered, covered) {
                (_, 0) => "the next start delivers them".to_owned(),
                (0, _) => "the next start does not send them again: an earlier run had them confirmed (start with --signals-from all to send them anyway)".to_owned(),
                (again, covered) => format!(
                    "the next start delivers {again} of them; the other {covered} an earlier run had confirmed, and are not sent again (--signals-from all sends them anyway)"
                ),
            };
            failed.push(format!(
                "{spec}: {undelivered} of {emitted} signals not confirmed (a write failed or --drain-timeout ran out; see the log); {next}"
            ));
        }
        if behind {
            failed.push(format!(
                "{spec}: fell behind (its queue of {} signals was full: --sink-queue) and had not caught up at the end; the next start delivers what it lacks while the feed still has the candles",
                coord.opts.sink_queue,
            ));
        }
        if rejected > 0 {
            failed.push(format!(
                "{spec}: {rejected} signals refused by the receiver (HTTP 4xx, not retried: see the log)"
            ));
        }
    }
    if !failed.is_empty() {
        bail!("not every signal reached its sink: {}", failed.join("; "));
    }
    let (emitted, output) = coord.emitter.delivery();
    let written = output.written();
    if output.closed() {
        bail!(
            "stdout was closed (its reader went away): the run stopped; {} of {emitted} signals were not written to stdout",
            emitted - written.min(emitted)
        );
    }
    if written < emitted {
        bail!(
            "{} of {emitted} signals were not written to stdout ({}): its reader closed it or stopped reading",
            emitted - written,
            if output.lost() > 0 {
                "stdout closed or given up on"
            } else {
                "still queued when the drain time ran out"
            }
        );
    }
    if let Some(first) = coord.failures.first_undecodable() {
        let n: u64 = coord.slots.iter().map(|s| s.undecodable).sum();
        bail!(
            "{n} frame(s) from workers could not be decoded (first: {first}): this is a bug in shmkline, please report it; signals they carried are missing"
        );
    }
    let refused = coord.failures.refusals();
    if !refused.is_empty() {
        bail!("traders refused by their worker: {}", refused.join("; "));
    }
    if !coord.quarantine.is_empty() {
        bail!(
            "traders quarantined after crashing their workers {} times: {}; the other traders ran to the end",
            coord.opts.quarantine_after,
            coord.quarantine.named().join(", ")
        );
    }
    if coord.gaps() > 0 {
        bail!(
            "{} gap(s): candles left the ring before a worker could evaluate them (see the log); their signals are missing",
            coord.gaps()
        );
    }
    let figures = coord.emitter.figures();
    let summary = RunSummary {
        signals: figures.emitted,
        faults: coord.faults.len(),
    };
    tracing::info!(
        signals = summary.signals,
        duplicates = figures.duplicates,
        faults = summary.faults,
        "coordinator stopped"
    );
    Ok(summary)
}
