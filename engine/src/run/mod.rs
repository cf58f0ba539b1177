//! `shmkline run`: the coordinator and its supervisor. This file runs it
//! in named phases (checks, start, wiring, the loop, teardown, outcome);
//! each job has its own file.
//!
//! One loop on the main thread ([`drive`], over the [`coordinator`]'s
//! state) owns the store writer and
//! every piece of state but one; other threads only feed it events through
//! one bounded channel: each worker's reader thread ([`link`], decoded
//! frames), the spawner thread ([`spawn`], finished handshakes), the
//! OS-signal thread ([`threads`]) and the control socket ([`control`]). The
//! exception is signals, the latency path: a reader thread checks and prints
//! them itself through the emitter ([`emit`]), whose state (live
//! incarnations, the slots' traders, the deduplicator) the loop keeps up to
//! date. Nothing the loop does blocks on a worker: it sends directly, but
//! never lets more than a [`link::Budget`] of frames and bytes go unread by
//! a worker (what a worker has read is proven by its answers), so the
//! socket buffer can never fill ([`requests`]).
//!
//! Each worker **slot** ([`slot`]) holds a set of traders and a succession of
//! worker processes (incarnations). A crash is seen at once (the channel
//! closes, or `waitpid` reports it); a hang when a PING misses its deadline
//! ([`supervise`]). The process is killed if needed and reaped, and a
//! replacement is spawned into the slot: at once for a fault from outside (a
//! signal someone else sent), after a capped exponential backoff and within
//! an intensity limit for a failure the worker caused itself. The
//! replacement gets the slot's traders again with the publish counter the
//! dead worker had confirmed, and evaluates every candle written after it
//! from the ring; repeats are dropped by the signal deduplicator, so the
//! output stays exactly-once.

pub mod control;
mod coordinator;
pub mod dedup;
mod dispatch;
mod drive;
mod emit;
mod events;
mod faults;
mod feeding;
pub mod link;
mod manage;
pub mod memory;
pub mod metrics;
mod options;
mod outcome;
pub mod plan;
mod quarantine;
mod requests;
pub mod sink;
mod slot;
pub mod spawn;
mod stage;
mod start;
mod status;
mod stopping;
mod supervise;
mod teardown;
mod threads;
mod wire;

use anyhow::{Result, bail};

use coordinator::Coordinator;
use drive::drive;
use outcome::outcome;
use start::{log_plan, open_sinks, open_source, start_instance};
use teardown::tear_down;
use wire::wire;

pub use memory::MemorySettings;
pub use options::{MAX_RATE, RunOptions};
pub use outcome::RunSummary;

/// Runs the coordinator until an orderly shutdown: checks, start, wiring,
/// the loop, teardown, outcome.
pub fn run(opts: RunOptions) -> Result<RunSummary> {
    options::check(&opts)?;
    // Signals first, so a Ctrl-C during start-up is not lost.
    let caught = threads::catch_signals()?;
    let source = open_source(&opts)?;
    log_plan(&opts);
    // The sinks first: a file that cannot be ours, or a position that does
    // not parse, stops the run before anything starts.
    let durable = open_sinks(&opts)?;
    let inst = start_instance(&opts)?;
    let (wiring, parts) = wire(&opts, &inst, caught, durable)?;
    let mut coord = Coordinator::new(opts, inst, source, parts)?;

    let result = drive(&mut coord, &wiring.spawner, &wiring.events);

    let unpublished = tear_down(&mut coord, wiring);
    result?;
    if let Some(why) = unpublished {
        bail!("{why}: engines reading the stream miss them until an ingest publishes them again");
    }
    outcome(&coord)
}
