//! The control answers for a human: `status` and `traders list`.

use protocol::control::{Feed, LiveFeed, LiveFigures, Sink, Status, TraderList};

/// `status` for a human: a few lines about the instance, its segment,
/// feed and sinks, then a row per worker.
pub fn print_status(status: &Status) {
    println!(
        "instance {} (pid {}), {}, up {} ms",
        status.instance, status.pid, status.state, status.uptime_ms
    );
    let segment = &status.segment;
    println!(
        "segment  {} ({} bytes, generation {})",
        segment.name, segment.size_bytes, segment.generation
    );
    let rings: Vec<String> = segment
        .rings
        .iter()
        .map(|r| format!("{} {} (needs {})", r.interval, r.candles, r.needed))
        .collect();
    println!(
        "rings    {}; {} bytes touched",
        rings.join(", "),
        segment.touched_bytes
    );
    match &status.feed {
        Feed::Binance(live) => print_live(live),
        finite => print_finite(finite),
    }
    println!(
        "signals  {} emitted, {} duplicates dropped",
        status.signals.emitted, status.signals.duplicates_dropped
    );
    for sink in &status.sinks {
        let (spec, d) = sink.spec_and_delivery();
        let emitted = match sink {
            Sink::Stdout(s) => s.emitted,
            _ => sink.durable().map_or(0, |d| d.emitted),
        };
        let mut line = format!(
            "sink     {spec}: {emitted} handed, {} delivered, {} queued, {} lost, {} rejected, {} retries",
            d.delivered, d.queued, d.lost, d.rejected, d.retries,
        );
        if sink.durable().is_some_and(|d| d.is_behind) {
            line.push_str(", behind");
        }
        if let Some(e) = &d.last_error {
            line.push_str(&format!(", last error: {e}"));
        }
        println!("{line}");
    }
    println!(
        "{:>3} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7}",
        "id", "pid", "state", "traders", "rtt_us", "pong_ms", "retries"
    );
    let or_dash = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for w in &status.workers {
        println!(
            "{:>3} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7}",
            w.id,
            w.pid,
            w.state.name(),
            w.traders,
            or_dash(w.rtt_us),
            or_dash(w.last_pong_age_ms),
            w.retries
        );
    }
}

/// The live feed's lines: connections, series, REST, what is named.
fn print_live(live: &LiveFeed) {
    let not_started = LiveFigures::default();
    let f = match live {
        LiveFeed::Started(f) => f.as_ref(),
        LiveFeed::NotStarted { .. } => &not_started,
    };
    println!(
        "feed     binance: {}/{} connections up, {} reconnects, {} connect errors, {}, {} candles written ({} backfilled), {} bad messages, {} gaps",
        f.connected,
        f.connections_planned,
        f.reconnects,
        f.connect_errors,
        f.last_message_age_ms.map_or_else(
            || "no message yet".to_owned(),
            |ms| format!("last message {ms} ms ago")
        ),
        f.counters.candles_written,
        f.backfilled,
        f.bad_messages,
        f.counters.gaps,
    );
    if f.never_connected {
        // Plainly, under the feed line: nothing below means much yet.
        println!(
            "         never connected: {} connection attempts failed; the last: {}",
            f.connect_errors,
            f.connect_error.as_deref().unwrap_or("none failed yet")
        );
    }
    let series = &f.series;
    println!(
        "series   {} live, {} behind ({} failing), {} closes repairing; closes: {} missing, {} from REST, {} late, {} provisional",
        series.live,
        series.behind,
        series.failing,
        series.repairing,
        f.missing_closes,
        f.repaired_closes,
        f.late_closes,
        f.provisional_closes,
    );
    println!(
        "rest     {} requests, weight used {} (peak {}), {} rate limited, {} bans, {} server errors{}",
        f.rest_requests,
        f.used_weight,
        f.peak_used_weight,
        f.rate_limited,
        f.bans,
        f.server_errors,
        match (&f.rest_pause, f.rest_paused_ms) {
            (Some(why), Some(ms)) => format!("; PAUSED {ms} ms more: {why}"),
            _ => String::new(),
        }
    );
    for (title, notes) in [("failing", &series.failing_series), ("gap", &series.gaps)] {
        for note in notes {
            println!(
                "         {title}: {} ({}): {}",
                note.series, note.count, note.detail
            );
        }
    }
    for skipped in &series.skipped_symbols {
        println!("         skipped: {skipped}");
    }
    if let Some(e) = &f.last_error {
        println!("         last error: {e}");
    }
}

/// A finite feed's line: what it wrote, and how far it read.
fn print_finite(feed: &Feed) {
    let (finite, bad_lines, read) = match feed {
        Feed::Synthetic(f) => (f, 0, String::new()),
        Feed::Replay(r) => {
            let read = if r.bytes_total > 0 {
                format!(
                    ", {:.0}% read",
                    100.0 * r.bytes_read as f64 / r.bytes_total as f64
                )
            } else {
                String::new()
            };
            (&r.feed, r.bad_lines, read)
        }
        Feed::Nats(n) => (&n.feed, 0, String::new()),
        Feed::Binance(_) => return,
    };
    let w = &finite.written;
    println!(
        "feed     {}: {} candles written (+{} aggregated), {bad_lines} bad lines, {} gaps ({} candles missing){read}, finished: {}",
        feed.kind(),
        w.candles_written,
        w.aggregated_written,
        w.gaps,
        w.missing_candles,
        finite.finished
    );
}

/// `traders list` for a human: one row per trader.
pub fn print_traders(list: &TraderList) {
    println!(
        "{:<24} {:>4} {:<11} {:>8}  rule",
        "id", "slot", "state", "interval"
    );
    for t in &list.traders {
        // A quarantined trader shows no interval or rule.
        let (interval, rule) = t.held().map_or_else(
            || ("-".to_owned(), "-"),
            |h| (h.interval.to_string(), h.rule.as_str()),
        );
        println!(
            "{:<24} {:>4} {:<11} {:>8}  {}",
            t.id(),
            t.slot(),
            t.state(),
            interval,
            rule
        );
    }
}
