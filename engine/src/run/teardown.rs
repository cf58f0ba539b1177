//! Teardown, whatever the loop ended with, in this order: the live feed
//! stopped (the store no longer changes), every worker killed and reaped,
//! then the threads (whose channels close with the workers), then the
//! outputs drained (stdout, the durable sinks, the candle publisher). The
//! signal thread lives to the end: a signal now still bounds every wait
//! for the outputs, a second ends them (`stopping`).

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::coordinator::Coordinator;
use super::events::Event;
use super::sink::Output;
use super::stopping::Stopping;
use super::wire::Wiring;

/// How long teardown waits for stdout to take more of what is queued
/// before it gives up (a reader that keeps reading is waited for).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Takes the run apart; what was not published to the candle stream, if
/// anything.
pub(super) fn tear_down(coord: &mut Coordinator, wiring: Wiring) -> Option<String> {
    let Wiring {
        spawner,
        metrics,
        control,
        sink_threads,
        output_thread,
        output,
        signal_thread,
        events,
    } = wiring;
    let mut stopping = Stopping::new(signal_thread.counts(), coord.opts.drain_timeout);
    stop_workers(coord, &mut stopping, events);
    // A spawn may have been in flight: the spawner finishes it, and its
    // delivery (to a closed channel) drops the process, which is then reaped below.
    drop(spawner);
    drop(control);
    drop(metrics);
    drain_stdout(coord, &mut stopping, output_thread, &output);
    drain_sinks(&mut stopping, sink_threads);
    // The candles written reach the candle stream: the writers' taps go
    // (the live feed's went with it), then the publisher finishes its queue.
    let unpublished = coord
        .feeding
        .finish_publishing(coord.opts.drain_timeout, || {
            stopping.look().is_some_and(|d| Instant::now() >= d)
        });
    drop(signal_thread);
    unpublished
}

/// The live feed stopped, every worker killed and reaped, the loop's event
/// channel closed, every reader thread joined.
fn stop_workers(coord: &mut Coordinator, stopping: &mut Stopping, events: Receiver<Event>) {
    coord.feeding.stop_live();
    // Reader threads waiting on a stdout nobody reads must not keep the
    // process alive (their threads are joined below).
    coord
        .emitter
        .give_up_after(stopping.left(Instant::now(), OUTPUT_DRAIN));
    coord.kill_stragglers();
    drop(events);
    for slot in &mut coord.slots {
        if let Some(link) = slot.retire_live() {
            link.join();
        }
    }
    for link in coord.graveyard.drain(..) {
        link.join();
    }
}

/// Lets the output thread write what is queued, as long as stdout keeps
/// taking it: a slow reader is waited for (within --drain-timeout of a
/// signal), one that stopped reading is given up on after the drain time
/// (the thread dies with the process).
fn drain_stdout(
    coord: &Coordinator,
    stopping: &mut Stopping,
    output_thread: JoinHandle<()>,
    output: &Output,
) {
    coord.emitter.close_output();
    stopping.phase();
    while !output_thread.is_finished()
        && !stopping.left(output.last_moved(), OUTPUT_DRAIN).is_zero()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    if output_thread.is_finished() {
        let _ = output_thread.join();
    }
}

/// Durable sinks deliver what is queued: a file writes and fsyncs it (a
/// full disk fails fast); a webhook or NATS sink retries while it makes
/// progress, and is given up after --drain-timeout without any (or at the
/// signal's deadline; what it did not confirm is re-sent at the next
/// start).
fn drain_sinks(stopping: &mut Stopping, sink_threads: Vec<(Arc<Output>, JoinHandle<()>)>) {
    stopping.phase();
    while sink_threads.iter().any(|(_, t)| !t.is_finished()) {
        for (counted, t) in &sink_threads {
            if !t.is_finished() && counted.deadline().is_none() && stopping.give_up(counted) {
                counted.stop_by(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (_, t) in sink_threads {
        let _ = t.join();
    }
}
