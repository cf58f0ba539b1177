//! The commands that do the work, each from its parsed arguments: `run`,
//! `backtest` and `store` (the tools' are `shmkline-tools`').

use std::time::Duration;

use anyhow::Result;
use protocol::InstanceName;

use super::args::{BacktestArgs, RunArgs, StoreCommand};
use super::{parent_at_start, worker_bin_or_default};
use crate::hold;

/// `shmkline run`.
pub fn run(instance: InstanceName, args: RunArgs) -> Result<()> {
    let state_dir = crate::state::StateDir::locate(args.state_dir.as_deref(), &instance)?;
    let state = crate::state::StateDir::open(&state_dir)?;
    let kept = state.traders()?;
    let traders = match (&args.feed.traders, kept) {
        (None, Some(kept)) => {
            tracing::info!(traders = kept.len(), state_dir = %state.path().display(),
                "traders restored from the state directory (with the last run's adds and removes)");
            kept
        }
        (Some(file), Some(kept)) => {
            tracing::info!(file = %file.display(), replaced = kept.len(),
                "the --traders file wins over the trader set in the state directory");
            args.feed.traders()?
        }
        (_, None) => args.feed.traders()?,
    };
    let plan = args.capacity.plan(&traders)?;
    let store = crate::run::plan::store_config(args.capacity.max_symbols, &plan);
    let mut feed = args.feed.config(args.candles, &store)?;
    let shard = args.shard.unwrap_or(crate::nats::Shard::WHOLE);
    if let crate::feed::FeedConfig::Binance(live) = &mut feed {
        let given = live.symbols.len();
        live.symbols.retain(|s| shard.owns(s.as_str()));
        if live.symbols.is_empty() {
            anyhow::bail!(
                "--shard {shard}: none of the {given} symbols given is in this shard: give more symbols or fewer shards"
            );
        }
    }
    let opts = crate::run::RunOptions {
        instance,
        feed,
        shard,
        publish_candles: args.publish_candles,
        store,
        plan,
        workers: args.workers,
        worker_bin: worker_bin_or_default(args.worker_bin)?,
        traders,
        pace: args.pace.pace(&args.feed.feed),
        aggregate: args.feed.aggregate(&args.capacity.intervals)?,
        ping_interval: Duration::from_millis(args.ping_interval),
        ping_deadline: Duration::from_millis(args.ping_deadline.unwrap_or(2 * args.ping_interval)),
        shutdown_timeout: Duration::from_millis(args.shutdown_timeout),
        restart_limit: args.restart_limit,
        restart_period: Duration::from_millis(args.restart_period),
        quarantine_after: args.quarantine_after,
        stall_timeout: Duration::from_millis(args.stall_timeout),
        backpressure: !args.no_backpressure,
        stay: args.stay,
        parent: args.exit_with_parent.then(parent_at_start),
        signals_from: args.signals_from,
        sink_queue: args.sink_queue,
        drain_timeout: Duration::from_millis(args.drain_timeout),
        webhook_timeout: Duration::from_millis(args.webhook_timeout),
        webhook_ca_file: args.webhook_ca_file,
        nats: args.nats.settings(),
        memory: args.observe.memory()?,
        metrics: args.observe.metrics,
        state,
        sinks: if let Some(twice) = args
            .sinks
            .iter()
            .enumerate()
            .find(|(k, spec)| args.sinks[..*k].contains(spec))
        {
            anyhow::bail!(
                "--sink {} is given twice: each sink once (two would share one position)",
                twice.1
            );
        } else if args.sinks.is_empty() {
            vec![crate::run::sink::SinkSpec::Stdout]
        } else {
            args.sinks
        },
    };
    let summary = crate::run::run(opts)?;
    tracing::info!(
        signals = summary.signals,
        faults = summary.faults,
        "run finished"
    );
    Ok(())
}

/// `shmkline backtest`.
pub fn backtest(args: BacktestArgs) -> Result<()> {
    let traders = args.feed.traders()?;
    let store = args.capacity.config_for(&traders)?;
    let opts = crate::backtest::BacktestOptions {
        feed: args.feed.config(args.candles, &store)?,
        traders,
        intervals: args.capacity.intervals.clone(),
        aggregate: args.feed.aggregate(&args.capacity.intervals)?,
        max_symbols: args.capacity.max_symbols,
    };
    let n = crate::backtest::backtest(&opts, &mut std::io::stdout().lock())?;
    tracing::info!(signals = n, "backtest done");
    Ok(())
}

/// `shmkline store hold|inspect`.
pub fn store(instance: &InstanceName, cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Hold {
            capacity,
            symbols,
            seconds,
        } => hold::hold(instance, &capacity.config_for(&[])?, &symbols, seconds),
        StoreCommand::Inspect { json } => {
            let info = hold::inspect(instance)?;
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                print!("{}", hold::render(&info));
            }
            Ok(())
        }
    }
}
