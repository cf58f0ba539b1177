//! `shmkline store hold` keeps a store alive (for shell inspection and for
//! tools under test) until SIGTERM or SIGINT; `shmkline store inspect` prints
//! a running instance's header from a read-only mapping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::store::{SegmentInfo, StoreConfig, StoreReader};
use protocol::{InstanceName, SymbolName};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::instance::Instance;

/// How often the heartbeat is refreshed while holding.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);

/// Creates the store, registers `symbols`, prints one JSON line
/// `{"ready":true,...}` on stdout, then heartbeats until a signal or `seconds`.
pub fn hold(
    instance: &InstanceName,
    config: &StoreConfig,
    symbols: &[SymbolName],
    seconds: Option<u64>,
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let inst = Instance::start(instance, config)?;
    for s in symbols {
        inst.store.lock().register_symbol(s)?;
    }
    inst.store.lock().publish();
    println!(
        "{}",
        serde_json::json!({
            "ready": true,
            "instance": instance.as_str(),
            "segment": inst.store.lock().name(),
            "generation": inst.store.lock().generation(),
            "pid": std::process::id(),
        })
    );
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        inst.store.lock().heartbeat();
        std::thread::sleep(HEARTBEAT_EVERY);
    }
    tracing::info!(instance = %instance, "shutting down: unlinking the segment and removing the runtime directory");
    drop(inst);
    Ok(())
}

/// Maps the instance's segment read-only and returns its header.
pub fn inspect(instance: &InstanceName) -> Result<SegmentInfo> {
    let reader = StoreReader::open(instance)?;
    Ok(reader.info())
}

/// Human-readable rendering of [`SegmentInfo`].
pub fn render(info: &SegmentInfo) -> String {
    let intervals: Vec<&str> = info.intervals.iter().map(|i| i.as_str()).collect();
    format!(
        "segment      {}\nsize         {} bytes\nlayout       v{}\ngeneration   {:#018x}\nwriter pid   {} ({})\nheartbeat    {} ms ago\npublished    {} batches\nsymbols      {}/{}: {}\nintervals    {}\ncandles      {} per series\n",
        info.name,
        info.size_bytes,
        info.layout_version,
        info.generation,
        info.writer_pid,
        if info.writer_running {
            "running"
        } else {
            "not running"
        },
        info.heartbeat_age_ms,
        info.publish_counter,
        info.symbols.len(),
        info.symbol_capacity,
        info.symbols.join(","),
        intervals.join(","),
        info.rings
            .iter()
            .map(|(i, n)| format!("{i}={n}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}
