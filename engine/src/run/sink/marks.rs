//! A sink's confirmed watermarks kept in the state directory, one file per
//! sink keyed by its spec (`sink-<hash of the spec>.json`, the spec inside
//! too), written atomically. A webhook's position survives a restart this
//! way; what it had confirmed after the last save is sent again, under the
//! same `Idempotency-Key` (at-least-once, exactly-once for a receiver that
//! keys on it).

use protocol::Interval;
use serde::{Deserialize, Serialize};

use super::super::dedup::Dedup;
use crate::state::{StateDir, StateError};

/// The file's content.
#[derive(Serialize, Deserialize)]
struct Saved {
    /// The sink's spec, as given on the command line.
    spec: String,
    /// (trader, symbol, interval, open time of the last confirmed signal).
    marks: Vec<(String, String, Interval, i64)>,
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
            name: format!("sink-{:016x}.json", fnv1a(spec.as_bytes())),
        }
    }

    /// The file's name in the state directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The watermarks saved last, none if never saved.
    pub fn load(&self) -> Result<Dedup, StateError> {
        let Some(bytes) = self.state.read(&self.name)? else {
            return Ok(Dedup::default());
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
                saved.spec, self.spec
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
        Ok(dedup)
    }

    /// Keeps `marks` as the confirmed position, atomically.
    pub fn save(&self, marks: &Dedup) -> Result<(), StateError> {
        let saved = Saved {
            spec: self.spec.clone(),
            marks: marks
                .entries()
                .map(|(t, s, i, o)| (t.to_owned(), s.to_owned(), i, o))
                .collect(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| StateError::Io {
            path: self.name.clone(),
            what: "encoding the watermarks",
            source: std::io::Error::other(e),
        })?;
        self.state.write_atomically(&self.name, &bytes)
    }
}

/// FNV-1a, 64 bits: a stable name for a spec (not a defence against anyone).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
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
