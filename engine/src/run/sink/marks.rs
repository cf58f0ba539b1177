//! A sink's confirmed watermarks kept in the state directory, one file per
//! sink keyed by its spec (`sink-<hash of the spec>.json`, the spec inside
//! too), written atomically. A webhook's position survives a restart this
//! way; what it had confirmed after the last save is sent again, under the
//! same `Idempotency-Key` (at-least-once, exactly-once for a receiver that
//! keys on it). Also what such a sink's thread shares: its [`Position`],
//! the loop that delivers and saves ([`spawn_delivering`]), retry jitter.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use protocol::Interval;
use serde::{Deserialize, Serialize};

use super::super::dedup::Dedup;
use super::Batch;
use crate::state::{StateDir, StateError};

/// The file's content.
#[derive(Serialize, Deserialize)]
struct Saved {
    /// The sink's spec, as given on the command line.
    spec: String,
    /// (trader, symbol, interval, open time of the last confirmed signal).
    marks: Vec<(String, String, Interval, i64)>,
    /// When they were saved (ms since the epoch; older files lack it).
    #[serde(default)]
    saved_ms: Option<i64>,
    /// A stream sink's highest acknowledged stream sequence (NATS).
    #[serde(default)]
    stream_seq: Option<u64>,
}

/// What a marks file held.
pub struct Loaded {
    /// The watermarks.
    pub marks: Dedup,
    /// When they were saved (ms since the epoch).
    pub saved_ms: Option<i64>,
    /// A stream sink's highest acknowledged stream sequence then.
    pub stream_seq: Option<u64>,
}

/// Where one sink's watermarks are kept.
#[derive(Debug, Clone)]
pub struct MarksFile {
    state: StateDir,
    spec: String,
    name: String,
}

impl MarksFile {
    /// The file of the sink `spec` in `state`.
    pub fn new(state: StateDir, spec: &str) -> Self {
        Self {
            state,
            spec: spec.to_owned(),
            name: format!("sink-{:016x}.json", protocol::rule::fnv1a(spec)),
        }
    }

    /// The file's name in the state directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The watermarks saved last, none if never saved.
    pub fn load(&self) -> Result<Dedup, StateError> {
        Ok(self.load_saved()?.marks)
    }

    /// What was saved last, none if never saved.
    pub fn load_saved(&self) -> Result<Loaded, StateError> {
        let Some(bytes) = self.state.read(&self.name)? else {
            return Ok(Loaded {
                marks: Dedup::default(),
                saved_ms: None,
                stream_seq: None,
            });
        };
        let corrupt = |why: String| StateError::Corrupt {
            path: self.state.path().display().to_string(),
            file: self.name.clone(),
            why,
            fix: "remove it to send this sink every signal again, or pass --signals-from all",
        };
        let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if saved.spec != self.spec {
            return Err(corrupt(format!(
                "it belongs to sink {:?}, not {:?}",
                crate::redact::text(&saved.spec),
                crate::redact::text(&self.spec)
            )));
        }
        let mut dedup = Dedup::default();
        for (trader, symbol, interval, open_time) in saved.marks {
            let key = super::Key {
                trader,
                symbol,
                interval,
                open_time,
            };
            dedup.first(&key.as_signal());
        }
        dedup.duplicates = 0;
        Ok(Loaded {
            marks: dedup,
            saved_ms: saved.saved_ms,
            stream_seq: saved.stream_seq,
        })
    }

    /// Keeps `marks` as the confirmed position, atomically.
    pub fn save(&self, marks: &Dedup) -> Result<(), StateError> {
        self.save_with(marks, None)
    }

    /// The same, with a stream sink's highest acknowledged sequence.
    pub fn save_with(&self, marks: &Dedup, stream_seq: Option<u64>) -> Result<(), StateError> {
        let saved = Saved {
            spec: self.spec.clone(),
            marks: marks
                .entries()
                .map(|(t, s, i, o)| (t.to_owned(), s.to_owned(), i, o))
                .collect(),
            saved_ms: Some(protocol::clock::now_ms()),
            stream_seq,
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| StateError::Io {
            path: self.name.clone(),
            what: "encoding the watermarks",
            source: std::io::Error::other(e),
        })?;
        self.state.write_atomically(&self.name, &bytes)
    }
}

/// What a sink that keeps its position in the state directory (webhook,
/// NATS) has confirmed, and when it last saved it.
pub struct Position {
    /// What the receiver has confirmed (or finally refused).
    pub confirmed: Dedup,
    marks: MarksFile,
    /// When the confirmed watermarks were last saved, and whether they moved since.
    saved: (Instant, bool),
    /// The sink, as the log names it.
    what: &'static str,
    /// A stream sink's highest acknowledged sequence (0: none; NATS).
    pub stream_seq: u64,
}

impl Position {
    /// `confirmed`, saved in `marks`, of a sink the log calls `what`.
    pub fn new(confirmed: Dedup, marks: MarksFile, what: &'static str) -> Self {
        Self {
            confirmed,
            marks,
            saved: (Instant::now(), false),
            what,
            stream_seq: 0,
        }
    }

    /// Whether the position already covers `key` (an earlier run had it
    /// confirmed): a start that resumes from it does not send it again.
    pub fn covers(&self, key: &super::Key) -> bool {
        !self.confirmed.is_new(&key.as_signal())
    }

    /// The receiver confirmed `key`.
    pub fn confirm(&mut self, key: &super::Key) {
        self.confirmed.first(&key.as_signal());
        self.saved.1 = true;
    }

    /// Saves the watermarks if they moved and `SAVE_EVERY` has passed.
    pub fn save_due(&mut self, output: &super::Output) {
        if self.saved.1 && self.saved.0.elapsed() >= SAVE_EVERY {
            self.save(output);
        }
    }

    /// Saves the watermarks if they moved at all (the thread's end).
    pub fn save_last(&mut self, output: &super::Output) {
        if self.saved.1 {
            self.save(output);
        }
    }

    fn save(&mut self, output: &super::Output) {
        self.saved = (Instant::now(), false);
        let seq = (self.stream_seq > 0).then_some(self.stream_seq);
        if let Err(e) = self.marks.save_with(&self.confirmed, seq) {
            tracing::error!(sink = self.what, error = %e,
                "a sink's position cannot be saved: a restart sends again from the last save");
            output.error(e.to_string());
        }
    }
}

/// Signals a sink's thread takes in one delivery, at most (batches queued
/// are merged up to this).
pub const MERGE_LINES: u64 = 4096;

/// How often a position is saved while signals flow.
pub const SAVE_EVERY: Duration = Duration::from_millis(200);

/// A sink that keeps a [`Position`] and delivers batch by batch.
pub trait Delivers: Send + 'static {
    /// Delivers one batch (retrying as the sink does), confirming as it goes.
    fn deliver(&mut self, batch: &Batch, output: &super::Output);
    /// Its position.
    fn position(&mut self) -> &mut Position;
}

/// The thread of a sink that keeps a [`Position`]: each batch delivered
/// before the next is taken; the position saved while idle and at the end.
pub fn spawn_delivering<D: Delivers>(
    name: &str,
    mut sink: D,
    batches: Receiver<Batch>,
    output: Arc<super::Output>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                match batches.recv_timeout(SAVE_EVERY) {
                    Ok(mut batch) => {
                        // What else is queued goes with it, up to a bound:
                        // a request (or a window of publishes) per frame
                        // would leave the receiver idle between them.
                        while batch.lines < MERGE_LINES
                            && let Ok(more) = batches.try_recv()
                        {
                            batch.merge(more);
                        }
                        sink.deliver(&batch, &output)
                    }
                    Err(RecvTimeoutError::Timeout) => sink.position().save_due(&output),
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            sink.position().save_last(&output);
        })
}

/// xorshift draws in [0, 1), for retry jitter (so many engines do not retry in step).
pub struct Jitter(u64);

impl Default for Jitter {
    fn default() -> Self {
        Self(u64::from(std::process::id()) << 32 | protocol::clock::now_ms() as u64 | 1)
    }
}

impl Jitter {
    /// A draw in [0, 1).
    pub fn draw(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_round_trip_per_spec_and_a_foreign_file_is_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(&tmp.path().join("s")).expect("state");
        let a = MarksFile::new(state.clone(), "webhook:http://a/x");
        let b = MarksFile::new(state.clone(), "webhook:http://b/x");
        assert_ne!(a.name(), b.name());
        assert!(a.load().expect("none yet").is_empty());
        let mut marks = Dedup::default();
        let key = super::super::Key {
            trader: "t".into(),
            symbol: "X".into(),
            interval: Interval::M1,
            open_time: 120_000,
        };
        marks.first(&key.as_signal());
        a.save(&marks).expect("saved");
        let mut back = a.load().expect("loaded");
        assert_eq!(back.len(), 1);
        assert!(!back.first(&key.as_signal()), "confirmed before");
        assert!(b.load().expect("the other sink's").is_empty());

        std::fs::copy(
            tmp.path().join("s").join(a.name()),
            tmp.path().join("s").join(b.name()),
        )
        .expect("copy");
        let e = b.load().expect_err("another sink's file").to_string();
        assert!(
            e.contains("belongs to sink") && e.contains("remove it"),
            "{e}"
        );
        std::fs::write(tmp.path().join("s").join(a.name()), "{").expect("write");
        let e = a.load().expect_err("corrupt").to_string();
        assert!(e.contains("does not parse"), "{e}");
    }
}
