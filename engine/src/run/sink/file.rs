//! The `file:PATH` sink: an append-only file
//! of JSON lines (the same line as stdout) that is its own journal. A batch
//! counts as delivered once it is written and fsynced; on start a torn last
//! line (a coordinator killed mid-write) is cut off and the lines give this
//! sink's watermarks, so a restarted run appends only what the file lacks:
//! exactly once into the file across any crash.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use super::super::dedup::Dedup;
use super::{Batch, Key, Output};

/// Why a file sink cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The file cannot be opened, read, cut or written.
    #[error("--sink file:{path}: {what}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A complete line that is not a signal line: not a file this sink wrote.
    #[error(
        "--sink file:{path}: line {line} is not a signal line ({why}): not a file of this sink; give another path"
    )]
    Foreign {
        /// The file.
        path: String,
        /// Its 1-based line number.
        line: u64,
        /// The parse error.
        why: String,
    },
}

/// A file sink opened for appending, its watermarks read from it.
#[derive(Debug)]
pub struct FileSink {
    /// The file's path, as given.
    pub path: PathBuf,
    file: File,
    /// Watermarks of what the file holds.
    pub dedup: Dedup,
    /// Signal lines the file held when opened.
    pub held: u64,
    /// Bytes of a torn last line cut off when opened.
    pub cut: u64,
}

impl FileSink {
    /// Opens (or creates) `path`: a torn last line is cut off, every line
    /// must be a signal line, and each gives its series' watermark.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let name = path.display().to_string();
        let io = |what: &'static str| {
            let name = name.clone();
            move |source| SinkError::Io {
                path: name,
                what,
                source,
            }
        };
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            return Err(SinkError::Io {
                path: name,
                what: "opening it",
                source: std::io::Error::other("not a regular file"),
            });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io("opening it"))?;
        let mut dedup = Dedup::default();
        let mut held = 0;
        let mut complete = 0u64;
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(io("reading it"))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let key: Key = serde_json::from_slice(&line).map_err(|e| SinkError::Foreign {
                path: name.clone(),
                line: held + 1,
                why: e.to_string(),
            })?;
            dedup.first(&key.as_signal());
            held += 1;
            complete += n as u64;
        }
        drop(reader);
        let len = file.metadata().map_err(io("reading its size"))?.len();
        let cut = len - complete;
        if cut > 0 {
            tracing::warn!(path = %name, bytes = cut, "a torn last line (a run killed mid-write) is cut off");
            file.set_len(complete)
                .map_err(io("cutting a torn last line"))?;
            file.sync_all().map_err(io("syncing it"))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io("seeking its end"))?;
        dedup.duplicates = 0;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            dedup,
            held,
            cut,
        })
    }

    /// The file's identity (device, inode): the same for every path to it.
    pub fn identity(&self) -> Result<(u64, u64), SinkError> {
        use std::os::unix::fs::MetadataExt;
        let meta = self.file.metadata().map_err(|source| SinkError::Io {
            path: self.path.display().to_string(),
            what: "reading what it is",
            source,
        })?;
        Ok((meta.dev(), meta.ino()))
    }

    /// The writer thread: each batch written and fsynced, then counted as
    /// delivered. A failed write is counted as lost (the run ends in error).
    pub fn spawn(
        mut self,
        batches: Receiver<Batch>,
        output: Arc<Output>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("file-sink".into())
            .spawn(move || {
                let mut failed = false;
                for batch in batches {
                    // After a failed write the file may end in a torn line:
                    // nothing more is appended to it this run (the next start
                    // cuts it and appends what the file lacks).
                    let ok = !failed
                        && self
                            .file
                            .write_all(&batch.text)
                            .and_then(|()| self.file.sync_data())
                            .map_err(|e| {
                                tracing::error!(path = %self.path.display(), error = %e,
                                    "the file sink cannot write: signals from here on are not delivered to it this run");
                                output.error(format!("writing {}: {e}", self.path.display()));
                            })
                            .is_ok();
                    failed |= !ok;
                    if ok {
                        output.confirmed(batch.newest);
                        output.delivered_since(batch.published);
                    }
                    output.count(batch.lines, ok);
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Interval;
    use protocol::message::Signal;

    #[test]
    fn a_torn_line_is_cut_and_the_lines_give_the_watermarks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.jsonl");
        let line = |t: i64| {
            format!(
                r#"{{"trader":"a","symbol":"X","interval":"1m","open_time":{t},"close":1.0,"labels":{{}},"values":{{}},"emitted_at":0,"worker":0}}"#
            )
        };
        std::fs::write(
            &path,
            format!("{}\n{}\n{{\"trad", line(60_000), line(120_000)),
        )
        .expect("write");
        let sink = FileSink::open(&path).expect("open");
        assert_eq!((sink.held, sink.cut), (2, 6));
        let mut dedup = sink.dedup;
        let sig = |t| Signal {
            trader: "a".into(),
            symbol: "X".into(),
            interval: Interval::M1,
            open_time: t,
            close: 1.0,
            labels: Default::default(),
            values: Default::default(),
        };
        assert!(!dedup.first(&sig(120_000)), "in the file");
        assert!(dedup.first(&sig(180_000)), "new");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with("}\n") && text.lines().count() == 2, "{text}");

        std::fs::write(&path, "not json\n").expect("write");
        let e = FileSink::open(&path).expect_err("foreign");
        assert!(e.to_string().contains("line 1 is not a signal line"), "{e}");
    }
}
