//! `shmkline bench wake`: one-way latency from a coordinator write to a
//! separate reader process observing it, against raw baselines measured in
//! the same run.
//!
//! Each sample is a ping-pong: the parent timestamps (CLOCK_MONOTONIC), writes,
//! and the child timestamps on arrival and acknowledges through a scratch word,
//! so there is exactly one change in flight. In blocking modes the parent waits
//! [`PARK_GAP`] before each write so the child is asleep in `FUTEX_WAIT`: what is
//! measured is a real wake-up, not a lucky check.

use std::hint::spin_loop;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use engine::instance::Instance;
use protocol::shm::scratch::SharedWords;
use protocol::store::StoreConfig;
use protocol::{Candle, InstanceName, Interval, SymbolName};
use serde::Serialize;

use super::child::{
    ACK, PING, STAMP, WAKE_SYMBOL, WARMUP, WakeMode, spin_until_changed, wait_scratch,
};
use super::{BenchChild, Percentiles, Target, mono_ns, ratio};

/// Pause before each blocking-mode write, so the reader is parked in the kernel.
pub const PARK_GAP: Duration = Duration::from_micros(100);
/// Pause before each spinning-mode write, so the reader is back in its poll loop.
const SPIN_GAP: Duration = Duration::from_micros(5);

/// The `bench wake` report.
#[derive(Debug, Serialize)]
pub struct WakeReport {
    /// Always "wake".
    pub bench: &'static str,
    /// Samples per mode after warm-up.
    pub samples: usize,
    /// Store write + publish, reader blocked on the publish futex.
    pub store_futex: Percentiles,
    /// Baseline: raw shared word + FUTEX_WAKE, reader blocked in FUTEX_WAIT.
    pub raw_futex: Percentiles,
    /// Store write + publish, reader busy-polling the publish counter.
    pub store_spin: Percentiles,
    /// Baseline: raw shared word, reader busy-polling it.
    pub raw_spin: Percentiles,
    /// store_futex p50 / raw_futex p50 (target <= 1.3).
    pub futex_p50_vs_raw: f64,
    /// store_spin p50 / raw_spin p50 (target <= 3).
    pub spin_p50_vs_raw: f64,
    /// The targets for these figures.
    pub targets: Vec<Target>,
}

fn pause(gap: Duration) {
    let until = Instant::now() + gap;
    if gap >= Duration::from_micros(50) {
        std::thread::sleep(gap);
    } else {
        while Instant::now() < until {
            spin_loop();
        }
    }
}

fn run_mode(
    inst: &mut Instance,
    scratch: &SharedWords,
    scratch_name: &str,
    mode: WakeMode,
    samples: usize,
    open_time: &mut i64,
) -> Result<Vec<u64>> {
    let total = samples + WARMUP;
    let ack = scratch.word(ACK).context("scratch too small")?;
    let ping = scratch.word(PING).context("scratch too small")?;
    let stamp = scratch.word(STAMP).context("scratch too small")?;
    ack.store(0, Ordering::Release);
    ping.store(0, Ordering::Release);
    // Held for the whole measurement: the figure is the store's, not the lock's.
    let mut store = inst.store.lock();
    let id = store.register_symbol(&SymbolName::new(WAKE_SYMBOL)?)?;
    let series = store.series(id, Interval::M1)?;
    let base_ns = mono_ns();
    let child = BenchChild::spawn(&[
        "wake".into(),
        "--instance".into(),
        inst.runtime.instance().to_string(),
        "--scratch".into(),
        scratch_name.to_owned(),
        "--mode".into(),
        mode.as_str().into(),
        "--samples".into(),
        total.to_string(),
        "--base-ns".into(),
        base_ns.to_string(),
    ])?;
    // The first write goes out only once the child is mapped and waiting; the
    // warm-up samples absorb that start-up.
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..total as u64 {
        if i > 0 {
            if mode.blocking() {
                wait_scratch(scratch, ACK, i - 1)?;
            } else {
                spin_until_changed(|| ack.load(Ordering::Acquire), i - 1)?;
            }
        }
        pause(if mode.blocking() { PARK_GAP } else { SPIN_GAP });
        let t = mono_ns() - base_ns;
        match mode {
            WakeMode::StoreFutex | WakeMode::StoreSpin => {
                *open_time += 60_000;
                let candle = Candle {
                    open_time: *open_time,
                    open: 1.0,
                    high: 1.0,
                    low: 1.0,
                    close: 1.0,
                    volume: t as f64,
                };
                store.upsert(series, &candle)?;
                store.publish();
            }
            WakeMode::RawFutex | WakeMode::RawSpin => {
                stamp.store(t, Ordering::Relaxed);
                ping.store(i + 1, Ordering::Release);
                if mode.blocking() {
                    scratch.wake(PING)?;
                }
            }
        }
    }
    child.finish()
}

/// `shmkline bench wake`.
pub fn run(instance: &InstanceName, samples: usize) -> Result<WakeReport> {
    let config = StoreConfig::uniform(4, &[Interval::M1], 1024);
    let mut inst = Instance::start(instance, &config)?;
    let scratch_name = instance.companion_segment_name("bench");
    // A scratch region left by a killed benchmark of the same instance: we hold
    // the instance lock, so it is stale.
    let _ = nix::sys::mman::shm_unlink(scratch_name.as_str());
    let scratch = SharedWords::create(&scratch_name, 8)?;
    let mut open_time = 0i64;
    // The four modes in rounds, the order rotating each round, so drift on a
    // shared machine hits them alike; measured one after another, the later
    // modes came out slower.
    const ROUNDS: usize = 5;
    let modes = [
        WakeMode::RawFutex,
        WakeMode::StoreFutex,
        WakeMode::RawSpin,
        WakeMode::StoreSpin,
    ];
    let mut latencies: [Vec<u64>; 4] = Default::default();
    let per_round = samples.div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        for k in 0..modes.len() {
            let m = (round + k) % modes.len();
            let got = run_mode(
                &mut inst,
                &scratch,
                &scratch_name,
                modes[m],
                per_round,
                &mut open_time,
            )?;
            latencies[m].extend(got);
        }
    }
    let [raw_futex, store_futex, raw_spin, store_spin] =
        latencies.map(|mut v| Percentiles::of(&mut v).context("no samples"));
    let (raw_futex, store_futex, raw_spin, store_spin) =
        (raw_futex?, store_futex?, raw_spin?, store_spin?);
    let futex_p50_vs_raw = ratio(store_futex.p50_ns as f64, raw_futex.p50_ns as f64);
    let spin_p50_vs_raw = ratio(store_spin.p50_ns as f64, raw_spin.p50_ns as f64);
    Ok(WakeReport {
        bench: "wake",
        samples,
        futex_p50_vs_raw,
        spin_p50_vs_raw,
        targets: vec![
            Target::at_most("futex_p50_vs_raw <= 1.3", futex_p50_vs_raw, 1.3),
            Target::at_most("spin_p50_vs_raw <= 3", spin_p50_vs_raw, 3.0),
        ],
        store_futex,
        raw_futex,
        store_spin,
        raw_spin,
    })
}
