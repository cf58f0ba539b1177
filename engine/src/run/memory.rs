//! The memory-growth monitor: every process's private memory sampled on a
//! period, its growth in MB/h fitted over a sliding window after a warm-up,
//! and a WARN when it passes `--memory-growth-alert`.
//!
//! Private memory is `RssAnon` (resident anonymous pages: the heap, stacks):
//! what a leak makes grow. Not the whole RSS, which counts the shared
//! segment's pages as a worker first reads them and so rises for reasons
//! that are not leaks; the whole RSS is reported too. A worker's series
//! starts again with each new process in its slot (its warm-up too).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::control::{Memory, ProcessMemory};

/// Samples kept per process, at most: the window is cut to this many
/// periods, so memory stays fixed whatever the flags say.
pub const MAX_SAMPLES: usize = 4096;

/// How the monitor samples and when it warns (`--memory-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct MemorySettings {
    /// Growth that warns, MB/h; 0: never.
    pub alert_mb_per_h: f64,
    /// Sampling period.
    pub every: Duration,
    /// A process's first samples ignored (start-up allocations).
    pub warmup: Duration,
    /// The growth is fitted over the samples of this last stretch.
    pub window: Duration,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            alert_mb_per_h: 10.0,
            every: Duration::from_secs(10),
            warmup: Duration::from_secs(120),
            window: Duration::from_secs(600),
        }
    }
}

/// One process's samples.
#[derive(Debug)]
struct Series {
    pid: u32,
    started: Instant,
    /// (seconds since `started`, private bytes), after the warm-up.
    samples: VecDeque<(f64, u64)>,
    private: Option<u64>,
    rss: Option<u64>,
    growth: Option<f64>,
    alarms: u64,
    /// When the last WARN was logged (repeated at most every window).
    warned: Option<Instant>,
}

impl Series {
    fn new(pid: u32, now: Instant) -> Self {
        Self {
            pid,
            started: now,
            samples: VecDeque::new(),
            private: None,
            rss: None,
            growth: None,
            alarms: 0,
            warned: None,
        }
    }
}

/// The monitor: the coordinator's series and one per worker slot.
#[derive(Debug)]
pub struct MemoryWatch {
    settings: MemorySettings,
    next: Instant,
    coordinator: Series,
    workers: Vec<Option<Series>>,
}

impl MemoryWatch {
    /// A monitor sampling from now.
    pub fn new(settings: MemorySettings, slots: usize) -> Self {
        let now = Instant::now();
        Self {
            settings,
            next: now,
            coordinator: Series::new(std::process::id(), now),
            workers: (0..slots).map(|_| None).collect(),
        }
    }

    /// Samples when a period is due: the coordinator, and each slot's live
    /// worker as `(slot, pid)`.
    pub fn tick(&mut self, workers: impl Iterator<Item = (usize, Option<u32>)>) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.settings.every;
        let settings = self.settings;
        sample(&mut self.coordinator, "coordinator", &settings, now);
        for (slot, pid) in workers {
            let Some(entry) = self.workers.get_mut(slot) else {
                continue;
            };
            match pid {
                Some(pid) => {
                    if entry.as_ref().is_none_or(|s| s.pid != pid) {
                        *entry = Some(Series::new(pid, now));
                    }
                    if let Some(series) = entry.as_mut() {
                        sample(series, &format!("worker {slot}"), &settings, now);
                    }
                }
                None => *entry = None,
            }
        }
    }

    /// What `status` shows: the settings, and every process's figures.
    pub fn status(&self) -> Memory {
        Memory {
            alert_mb_per_h: self.settings.alert_mb_per_h,
            sample_interval_ms: self.settings.every.as_millis() as u64,
            warmup_s: self.settings.warmup.as_secs(),
            window_s: self.settings.window.as_secs(),
            processes: self.processes(),
        }
    }

    /// Every process's figures: the coordinator first, then the workers.
    fn processes(&self) -> Vec<ProcessMemory> {
        let show = |name: String, s: &Series| ProcessMemory {
            process: name,
            pid: s.pid,
            private_bytes: s.private,
            rss_bytes: s.rss,
            growth_mb_per_h: s.growth.map(|g| (g * 1000.0).round() / 1000.0),
            samples: s.samples.len() as u64,
            alarms: s.alarms,
        };
        let mut all = vec![show("coordinator".to_owned(), &self.coordinator)];
        for (slot, s) in self.workers.iter().enumerate() {
            if let Some(s) = s {
                all.push(show(format!("worker {slot}"), s));
            }
        }
        all
    }
}

/// Takes one sample of `series` and warns if it grows too fast.
fn sample(series: &mut Series, name: &str, settings: &MemorySettings, now: Instant) {
    if let Some((private, rss)) = read_memory(series.pid) {
        record(series, name, settings, now, private, rss);
    }
}

/// Adds one reading to `series`, fits its growth and warns if it is over.
fn record(
    series: &mut Series,
    name: &str,
    settings: &MemorySettings,
    now: Instant,
    private: u64,
    rss: u64,
) {
    series.private = Some(private);
    series.rss = Some(rss);
    let age = now.duration_since(series.started);
    if age < settings.warmup {
        return;
    }
    series.samples.push_back((age.as_secs_f64(), private));
    let window = settings.window.as_secs_f64();
    while series.samples.len() > MAX_SAMPLES
        || series
            .samples
            .front()
            .is_some_and(|&(t, _)| age.as_secs_f64() - t > window)
    {
        series.samples.pop_front();
    }
    let span = series
        .samples
        .back()
        .zip(series.samples.front())
        .map_or(0.0, |(b, f)| b.0 - f.0);
    series.growth = if series.samples.len() >= 3 && span >= window / 2.0 {
        slope(&series.samples).map(|bytes_per_s| bytes_per_s * 3600.0 / 1e6)
    } else {
        None
    };
    // A figure is shown from half a window on, but only a whole window's
    // fit raises the alarm: over half a window a single step (a replaced
    // worker's buffers, a new allocator arena) reads as fast growth, and an
    // alarm that cries wolf gets switched off.
    let whole = span + settings.every.as_secs_f64() >= window;
    let over = whole
        && settings.alert_mb_per_h > 0.0
        && series.growth.is_some_and(|g| g > settings.alert_mb_per_h);
    if !over {
        series.warned = None;
        return;
    }
    if series.warned.is_none() {
        series.alarms += 1;
    }
    if series
        .warned
        .is_none_or(|at| now.duration_since(at) >= settings.window)
    {
        series.warned = Some(now);
        tracing::warn!(
            process = name,
            pid = series.pid,
            growth_mb_per_h = format_args!("{:.1}", series.growth.unwrap_or_default()),
            limit_mb_per_h = settings.alert_mb_per_h,
            private_mb = format_args!("{:.1}", private as f64 / 1e6),
            "memory grows faster than --memory-growth-alert: see `shmkline status` (memory) or the metric shmkline_process_memory_growth_bytes_per_hour"
        );
    }
}

/// The least-squares slope of `samples` (bytes per second).
fn slope(samples: &VecDeque<(f64, u64)>) -> Option<f64> {
    let n = samples.len() as f64;
    let (sx, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y as f64));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in samples {
        sxy += (x - mx) * (y as f64 - my);
        sxx += (x - mx) * (x - mx);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// `RssAnon` and `VmRSS` of `pid`, in bytes (from `/proc/<pid>/status`).
pub fn read_memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("RssAnon:")?, field("VmRSS:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_rate() {
        let samples: VecDeque<(f64, u64)> = (0..10)
            .map(|i| (i as f64 * 10.0, 1_000_000 + i * 5_000))
            .collect();
        let s = slope(&samples).expect("a slope");
        assert!((s - 500.0).abs() < 1e-6, "{s}");
        let flat: VecDeque<(f64, u64)> = (0..10).map(|i| (i as f64, 7)).collect();
        assert_eq!(slope(&flat), Some(0.0));
        let one: VecDeque<(f64, u64)> = [(1.0, 5)].into_iter().collect();
        assert_eq!(slope(&one), None);
    }

    #[test]
    fn a_step_shows_in_the_figure_but_only_a_whole_window_alarms() {
        let settings = MemorySettings {
            alert_mb_per_h: 10.0,
            every: Duration::from_secs(1),
            warmup: Duration::ZERO,
            window: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Flat, then one 1 MB step half a window in: the half-window fit
        // says far over 10 MB/h, and no alarm.
        let mut step = Series::new(1, t0);
        for s in 0..=40 {
            let bytes = if s < 30 { 5_000_000 } else { 6_000_000 };
            record(&mut step, "p", &settings, at(s), bytes, bytes);
        }
        assert!(step.growth.is_some_and(|g| g > 10.0), "{:?}", step.growth);
        assert_eq!(step.alarms, 0);
        // A steady 36 MB/h over a whole window: the alarm.
        let mut leak = Series::new(2, t0);
        for s in 0..=70 {
            let bytes = 5_000_000 + s * 10_000;
            record(&mut leak, "p", &settings, at(s), bytes, bytes);
            if s < 59 {
                assert_eq!(leak.alarms, 0, "at {s} s: not yet a whole window");
            }
        }
        assert!(leak.growth.is_some_and(|g| (g - 36.0).abs() < 0.1));
        assert_eq!(leak.alarms, 1, "one alarm while it lasts");
    }

    #[test]
    fn this_process_can_be_read() {
        let (private, rss) = read_memory(std::process::id()).expect("readable");
        assert!(private > 0 && rss >= private, "{private} {rss}");
        assert!(read_memory(u32::MAX).is_none());
    }
}
