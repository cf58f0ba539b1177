//! What the client commands print for a human: `status` and `traders list`.

/// Prints a running instance's `status` answer for a human.
pub fn print_status(status: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!(
        "instance {} (pid {}), {}, up {} ms",
        s(&status["instance"]),
        status["pid"],
        s(&status["state"]),
        status["uptime_ms"]
    );
    println!(
        "segment  {} ({} bytes, generation {})",
        s(&status["segment"]["name"]),
        status["segment"]["size_bytes"],
        status["segment"]["generation"]
    );
    let rings: Vec<String> = status["segment"]["rings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {} (needs {})",
                s(&r["interval"]),
                r["candles"],
                r["needed"]
            )
        })
        .collect();
    println!(
        "rings    {}; {} bytes touched",
        rings.join(", "),
        status["segment"]["touched_bytes"]
    );
    let feed = &status["feed"];
    let n = |k: &str| feed[k].as_u64().unwrap_or(0);
    if feed["kind"] == "binance" {
        println!(
            "feed     binance: {}/{} connections up, {} reconnects, {} connect errors, {}, {} candles written ({} backfilled), {} bad messages, {} gaps",
            n("connected"),
            n("connections_planned"),
            n("reconnects"),
            n("connect_errors"),
            feed["last_message_age_ms"].as_u64().map_or_else(
                || "no message yet".to_owned(),
                |ms| format!("last message {ms} ms ago")
            ),
            n("candles_written"),
            n("backfilled"),
            n("bad_messages"),
            n("gaps"),
        );
        if feed["never_connected"] == true {
            // Plainly, under the feed line: nothing below means much yet.
            println!(
                "         never connected: {} connection attempts failed; the last: {}",
                n("connect_errors"),
                feed["connect_error"].as_str().unwrap_or("none failed yet")
            );
        }
        let series = &feed["series"];
        let s = |k: &str| series[k].as_u64().unwrap_or(0);
        println!(
            "series   {} live, {} behind ({} failing), {} closes repairing; closes: {} missing, {} from REST, {} late, {} provisional",
            s("live"),
            s("behind"),
            s("failing"),
            s("repairing"),
            n("missing_closes"),
            n("repaired_closes"),
            n("late_closes"),
            n("provisional_closes"),
        );
        println!(
            "rest     {} requests, weight used {} (peak {}), {} rate limited, {} bans, {} server errors{}",
            n("rest_requests"),
            n("used_weight"),
            n("peak_used_weight"),
            n("rate_limited"),
            n("bans"),
            n("server_errors"),
            match (feed["rest_pause"].as_str(), feed["rest_paused_ms"].as_u64()) {
                (Some(why), Some(ms)) => format!("; PAUSED {ms} ms more: {why}"),
                _ => String::new(),
            }
        );
        for (title, key) in [("failing", "failing_series"), ("gap", "gaps")] {
            for note in series[key].as_array().into_iter().flatten() {
                println!(
                    "         {title}: {} ({}): {}",
                    note["series"].as_str().unwrap_or("?"),
                    note["count"],
                    note["detail"].as_str().unwrap_or("")
                );
            }
        }
        for skipped in series["skipped_symbols"].as_array().into_iter().flatten() {
            println!("         skipped: {}", skipped.as_str().unwrap_or("?"));
        }
        if let Some(e) = feed["last_error"].as_str() {
            println!("         last error: {e}");
        }
    } else {
        let read = match (feed["bytes_read"].as_u64(), feed["bytes_total"].as_u64()) {
            (Some(r), Some(t)) if t > 0 => format!(", {:.0}% read", 100.0 * r as f64 / t as f64),
            _ => String::new(),
        };
        println!(
            "feed     {}: {} candles written (+{} aggregated), {} bad lines, {} gaps ({} candles missing){read}, finished: {}",
            s(&feed["kind"]),
            n("candles_written"),
            n("aggregated_written"),
            n("bad_lines"),
            n("gaps"),
            n("missing_candles"),
            feed["finished"]
        );
    }
    println!(
        "signals  {} emitted, {} duplicates dropped",
        status["signals"]["emitted"], status["signals"]["duplicates_dropped"]
    );
    for sink in status["sinks"].as_array().into_iter().flatten() {
        let n = |k: &str| sink[k].as_u64().unwrap_or(0);
        let mut line = format!(
            "sink     {}: {} handed, {} delivered, {} queued, {} lost, {} rejected, {} retries",
            s(&sink["spec"]),
            n("emitted"),
            n("delivered"),
            n("queued"),
            n("lost"),
            n("rejected"),
            n("retries"),
        );
        if sink["is_behind"] == true {
            line.push_str(", behind");
        }
        if let Some(e) = sink["last_error"].as_str() {
            line.push_str(&format!(", last error: {e}"));
        }
        println!("{line}");
    }
    println!(
        "{:>3} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7}",
        "id", "pid", "state", "traders", "rtt_us", "pong_ms", "retries"
    );
    for w in status["workers"].as_array().into_iter().flatten() {
        println!(
            "{:>3} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7}",
            s(&w["id"]),
            s(&w["pid"]),
            s(&w["state"]),
            s(&w["traders"]),
            s(&w["rtt_us"]),
            s(&w["last_pong_age_ms"]),
            s(&w["retries"])
        );
    }
}

/// `traders list` for a human: one row per trader.
pub fn print_traders(answer: &serde_json::Value) {
    println!(
        "{:<24} {:>4} {:<11} {:>8}  rule",
        "id", "slot", "state", "interval"
    );
    for t in answer["traders"].as_array().into_iter().flatten() {
        let s = |k: &str| {
            t[k].as_str()
                .map_or_else(|| t[k].to_string(), str::to_owned)
        };
        println!(
            "{:<24} {:>4} {:<11} {:>8}  {}",
            s("id"),
            t["slot"],
            s("state"),
            s("interval"),
            s("rule")
        );
    }
}
