//! Replay progress: a bar on a terminal (position, rate, ETA), plain log
//! lines otherwise (every [`LOG_EVERY`]), so a log file gets no control codes.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often progress is logged when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Progress of a replay through its files' bytes.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    total_bytes: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// Progress through `total_bytes`.
    pub fn new(total_bytes: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "replay [{bar:32}] {percent:>3}% {binary_bytes}/{binary_total_bytes} {msg} ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total_bytes,
            started: now,
            last_log: now,
        }
    }

    /// Reports `bytes` consumed and `candles` written.
    pub fn update(&mut self, bytes: u64, candles: u64) {
        let rate = candles as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            bar.set_message(format!("{candles} candles, {rate:.0}/s"));
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let fraction = bytes as f64 / self.total_bytes.max(1) as f64;
            let elapsed = self.started.elapsed().as_secs_f64();
            let eta_s = if fraction > 0.0 {
                elapsed * (1.0 - fraction) / fraction
            } else {
                f64::NAN
            };
            tracing::info!(
                percent = format_args!("{:.1}", 100.0 * fraction),
                candles,
                rate = format_args!("{rate:.0}/s"),
                eta_s = format_args!("{eta_s:.0}"),
                "replay progress"
            );
        }
    }

    /// Ends the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
