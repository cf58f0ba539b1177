//! Replay of recorded candles: Binance kline dumps (CSV) and JSON-lines
//! recordings of WebSocket kline payloads, streamed from disk (memory does
//! not grow with the file), merged over files in delivery-time order and
//! handed out in batches of equal delivery time.
//!
//! A bad line is skipped and reported with file, line number and reason; in
//! strict mode the first one is an error instead.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use protocol::{Interval, SymbolName};
use thiserror::Error;

use super::binance::{self, CsvFile, Message};
use crate::kline::{BadLine, Kline};

/// Longest line read: a file without newlines (a binary, a corrupt
/// download) costs this much memory, not its size.
pub const MAX_LINE: usize = 64 * 1024;

/// Bad lines logged one by one; past this they are only counted (and summed
/// up at the end), so a file of garbage cannot flood the log.
pub const LOGGED_BAD_LINES: u64 = 10_000;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Files, in the order given.
    pub paths: Vec<PathBuf>,
    /// The symbol of every CSV file (else from each file's name).
    pub symbol: Option<SymbolName>,
    /// The interval of every CSV file (else from each file's name).
    pub interval: Option<Interval>,
    /// Stop at the first bad line.
    pub strict: bool,
}

/// A replay that cannot go on.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// A file cannot be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a file a replay can read (a FIFO, a device, a directory).
    #[error(transparent)]
    Input(Box<crate::input::InputError>),
    /// A CSV file whose symbol and interval are unknown.
    #[error(
        "{path}: cannot tell the symbol and interval: name the file as Binance does (BTCUSDT-1m-2024-01.csv) or pass --symbol and --interval"
    )]
    Unnamed {
        /// The file.
        path: String,
    },
    /// A CSV file named as a dump, whose symbol no exchange could list.
    #[error("{path}: the file name's symbol: {error}: rename the file or pass --symbol")]
    Symbol {
        /// The file.
        path: String,
        /// What is wrong with the symbol.
        error: protocol::names::NameError,
    },
    /// A compressed dump.
    #[error("{path}: a zip archive: unzip it first (Binance ships each month's CSV in a zip)")]
    Zip {
        /// The file.
        path: String,
    },
    /// Strict mode: the first bad line.
    #[error("{path}:{line}: {reason} (--strict stops at the first bad line)")]
    Strict {
        /// The file.
        path: String,
        /// 1-based line number.
        line: u64,
        /// Why.
        reason: BadLine,
    },
}

/// Where a candle came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Index into the replay's files.
    pub file: usize,
    /// 1-based line number.
    pub line: u64,
}

enum Format {
    Csv(CsvFile),
    JsonLines,
}

struct ReplayFile {
    path: PathBuf,
    display: String,
    reader: BufReader<File>,
    format: Format,
    line_no: u64,
    buf: Vec<u8>,
    next: Option<(Kline, u64)>,
    eof: bool,
    bytes_read: u64,
}

/// The bad lines of a replay: logged, counted per reason, summed up.
#[derive(Debug, Default)]
pub struct BadLines {
    /// Bad lines so far.
    pub total: u64,
    /// Per reason (the reason's kind, as its message starts), bounded by the
    /// number of reasons.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Per file.
    pub by_file: BTreeMap<String, u64>,
}

fn reason_kind(reason: &BadLine) -> &'static str {
    match reason {
        BadLine::Columns { .. } => "wrong column count",
        BadLine::Number { .. } => "not a number",
        BadLine::Unit { .. } => "timestamp unit changed",
        BadLine::TimeRange(_) => "timestamp out of range",
        BadLine::Span { .. } => "close time does not match the interval",
        BadLine::Unaligned { .. } => "open time off the interval boundary",
        BadLine::Inconsistent(_) => "inconsistent prices or volume",
        BadLine::Json(_) => "not a kline payload",
        BadLine::Symbol(_) => "invalid symbol",
        BadLine::Interval(_) => "unknown interval",
        BadLine::Stale { .. } => "out of order",
        BadLine::NotKept(_) => "interval not kept by the store",
        BadLine::Aggregated(_) => "interval built by aggregation",
        BadLine::TooLong { .. } => "line too long",
        BadLine::Encoding => "not UTF-8",
    }
}

impl BadLines {
    fn record(&mut self, path: &str, line: u64, reason: &BadLine) {
        self.total += 1;
        *self.by_reason.entry(reason_kind(reason)).or_default() += 1;
        *self.by_file.entry(path.to_owned()).or_default() += 1;
        if self.total <= LOGGED_BAD_LINES {
            tracing::warn!(file = path, line, %reason, "bad line skipped");
        } else if self.total == LOGGED_BAD_LINES + 1 {
            tracing::warn!(
                "more than {LOGGED_BAD_LINES} bad lines: the rest are counted, not logged"
            );
        }
    }

    /// Logs the summary (nothing when every line was good).
    pub fn log_summary(&self) {
        if self.total > 0 {
            tracing::warn!(bad_lines = self.total, by_reason = ?self.by_reason, by_file = ?self.by_file,
                "replay finished with bad lines skipped");
        }
    }
}

/// A replay in progress.
pub struct Replay {
    files: Vec<ReplayFile>,
    strict: bool,
    bad: BadLines,
    total_bytes: u64,
    /// Only this shard's symbols are handed out (`--shard`).
    shard: crate::nats::Shard,
    /// Candles handed out.
    pub candles: u64,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field(
                "files",
                &self.files.iter().map(|f| &f.display).collect::<Vec<_>>(),
            )
            .field("candles", &self.candles)
            .finish()
    }
}

impl Replay {
    /// Opens every file (all are checked before any candle is read).
    pub fn open(opts: &ReplayOptions) -> Result<Self, ReplayError> {
        let mut files = Vec::with_capacity(opts.paths.len());
        let mut total_bytes = 0;
        for path in &opts.paths {
            let display = path.display().to_string();
            let io = |source| ReplayError::Io {
                path: display.clone(),
                source,
            };
            // Regular files only: the loop reads them a batch at a time and
            // must never wait on a FIFO or read a device without end.
            let file = crate::input::open_regular(
                path,
                "replay file",
                "a replay reads kline dumps from files; write the candles to a file first, or stream them with --feed nats://",
            )
            .map_err(|e| ReplayError::Input(Box::new(e)))?;
            total_bytes += file.metadata().map_err(io)?.len();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .unwrap_or_default();
            let mut reader = BufReader::with_capacity(1 << 16, file);
            let format = match ext.as_str() {
                "zip" => return Err(ReplayError::Zip { path: display }),
                "jsonl" | "ndjson" | "json" => Format::JsonLines,
                "csv" => Format::Csv(csv_file(path, opts, &display)?),
                // Anything else: JSON lines if it looks like JSON.
                _ => {
                    let head = reader.fill_buf().map_err(io)?;
                    if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                        Format::JsonLines
                    } else {
                        Format::Csv(csv_file(path, opts, &display)?)
                    }
                }
            };
            files.push(ReplayFile {
                path: path.clone(),
                display,
                reader,
                format,
                line_no: 0,
                buf: Vec::with_capacity(256),
                next: None,
                eof: false,
                bytes_read: 0,
            });
        }
        Ok(Self {
            files,
            strict: opts.strict,
            bad: BadLines::default(),
            total_bytes,
            shard: crate::nats::Shard::WHOLE,
            candles: 0,
        })
    }

    /// Hands out only `shard`'s symbols from now on (the others are read
    /// and passed over: every shard reads the same files).
    pub fn only(&mut self, shard: crate::nats::Shard) {
        self.shard = shard;
    }

    /// The files' total size, for progress.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.files.iter().map(|f| f.bytes_read).sum()
    }

    /// The bad lines so far.
    pub fn bad_lines(&self) -> &BadLines {
        &self.bad
    }

    /// A file's path.
    pub fn path(&self, file: usize) -> &Path {
        &self.files[file].path
    }

    /// Reports a candle the writer refused, as a bad line of its file.
    pub fn reject(&mut self, origin: Origin, reason: BadLine) -> Result<(), ReplayError> {
        let path = &self.files[origin.file].display;
        if self.strict {
            return Err(ReplayError::Strict {
                path: path.clone(),
                line: origin.line,
                reason,
            });
        }
        self.bad.record(path, origin.line, &reason);
        Ok(())
    }

    /// Reads ahead in `file` to its next good candle (or its end).
    fn fill(&mut self, k: usize) -> Result<(), ReplayError> {
        let file = &mut self.files[k];
        while file.next.is_none() && !file.eof {
            let io = |source| ReplayError::Io {
                path: file.display.clone(),
                source,
            };
            file.buf.clear();
            // At most MAX_LINE bytes per line are held, whatever the file.
            let n = (&mut file.reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut file.buf)
                .map_err(io)?;
            if n == 0 {
                file.eof = true;
                break;
            }
            file.bytes_read += n as u64;
            file.line_no += 1;
            let parsed = if n == MAX_LINE && file.buf.last() != Some(&b'\n') {
                let rest = file.reader.skip_until(b'\n').map_err(io)?;
                file.bytes_read += rest as u64;
                Err(BadLine::TooLong { limit: MAX_LINE })
            } else {
                match (std::str::from_utf8(&file.buf), &mut file.format) {
                    (Err(_), _) => Err(BadLine::Encoding),
                    (Ok(line), Format::Csv(csv)) => csv.parse_line(line),
                    (Ok(line), Format::JsonLines) if line.trim().is_empty() => Ok(None),
                    (Ok(line), Format::JsonLines) => {
                        binance::parse_ws(line.trim_end()).map(|m| match m {
                            Message::Kline(k) => Some(k),
                            Message::ServerShutdown | Message::Other => None,
                        })
                    }
                }
            };
            match parsed {
                Ok(Some(kline)) => file.next = Some((kline, file.line_no)),
                Ok(None) => {}
                Err(reason) => {
                    if self.strict {
                        return Err(ReplayError::Strict {
                            path: file.display.clone(),
                            line: file.line_no,
                            reason,
                        });
                    }
                    self.bad.record(&file.display, file.line_no, &reason);
                }
            }
        }
        Ok(())
    }

    /// The delivery time of the next batch, or `None` at the end.
    pub fn peek(&mut self) -> Result<Option<i64>, ReplayError> {
        let mut min = None;
        for k in 0..self.files.len() {
            self.fill(k)?;
            if let Some((kline, _)) = &self.files[k].next {
                min = Some(min.map_or(kline.at, |m: i64| m.min(kline.at)));
            }
        }
        Ok(min)
    }

    /// Hands every candle of the next batch (all with the earliest delivery
    /// time, in file order) to `each`; returns the batch's time, or `None` at
    /// the end. A candle `each` refuses is reported as a bad line of its file.
    pub fn next_batch(
        &mut self,
        mut each: impl FnMut(&Kline) -> Result<(), BadLine>,
    ) -> Result<Option<i64>, ReplayError> {
        let Some(at) = self.peek()? else {
            return Ok(None);
        };
        for k in 0..self.files.len() {
            loop {
                self.fill(k)?;
                let due = self.files[k]
                    .next
                    .as_ref()
                    .is_some_and(|(kline, _)| kline.at == at);
                if !due {
                    break;
                }
                let Some((kline, line)) = self.files[k].next.take() else {
                    break;
                };
                if !self.shard.owns(kline.symbol.as_str()) {
                    continue;
                }
                self.candles += 1;
                if let Err(reason) = each(&kline) {
                    self.reject(Origin { file: k, line }, reason)?;
                }
            }
        }
        Ok(Some(at))
    }
}

impl Replay {
    /// Every remaining candle, in delivery order (tests and `bench feed`:
    /// a replay's memory is bounded only when it is consumed batch by batch).
    pub fn read_all(&mut self) -> Result<Vec<Kline>, ReplayError> {
        let mut out = Vec::new();
        while self
            .next_batch(|k| {
                out.push(k.clone());
                Ok(())
            })?
            .is_some()
        {}
        Ok(out)
    }
}

fn csv_file(path: &Path, opts: &ReplayOptions, display: &str) -> Result<CsvFile, ReplayError> {
    let named = binance::parse_file_name(path);
    let interval = opts.interval.or_else(|| named.as_ref().map(|n| n.1));
    let symbol = match (&opts.symbol, named) {
        (Some(s), _) => Some(s.clone()),
        (None, Some((Ok(s), _))) => Some(s),
        (None, Some((Err(error), _))) => {
            return Err(ReplayError::Symbol {
                path: display.to_owned(),
                error,
            });
        }
        (None, None) => None,
    };
    match (symbol, interval) {
        (Some(s), Some(i)) => Ok(CsvFile::new(s, i)),
        _ => Err(ReplayError::Unnamed {
            path: display.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        let mut f = File::create(&path).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        path
    }

    fn collect(opts: &ReplayOptions) -> Result<(Vec<Kline>, Replay), ReplayError> {
        let mut replay = Replay::open(opts)?;
        let out = replay.read_all()?;
        Ok((out, replay))
    }

    fn opts(paths: Vec<PathBuf>) -> ReplayOptions {
        ReplayOptions {
            paths,
            symbol: None,
            interval: None,
            strict: false,
        }
    }

    #[test]
    fn bad_lines_are_skipped_and_counted_and_strict_stops_at_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "1613692800000,1,2,0.5,1.5,1,1613692859999\n\
                    oops\n\
                    1613692860000,1,2,0.5,1.5,1,1613692919999\n\
                    1613692920000,1,2,0.5,x,1,1613692979999\n\
                    1613692980000,1,2,0.5,1.5,1,1613693039999\n";
        let path = write(dir.path(), "BTCUSDT-1m-2021-02.csv", text);
        let (good, replay) = collect(&opts(vec![path.clone()])).expect("lenient");
        assert_eq!(good.len(), 3);
        assert_eq!(replay.bad_lines().total, 2);
        let strict = ReplayOptions {
            strict: true,
            ..opts(vec![path])
        };
        let err = collect(&strict).expect_err("strict").to_string();
        assert!(err.contains("BTCUSDT-1m-2021-02.csv:2:"), "{err}");
    }

    #[test]
    fn undecodable_and_endless_lines_are_bad_lines_and_the_rest_arrives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("BTCUSDT-1m-2021-02.csv");
        let mut body = b"1613692800000,1,2,0.5,1.5,1,1613692859999\n".to_vec();
        body.extend_from_slice(b"\xff\xfe,1,2\n");
        body.extend(std::iter::repeat_n(b'7', 3 * MAX_LINE));
        body.extend_from_slice(b"\n1613692860000,1,2,0.5,1.5,1,1613692919999\n");
        std::fs::write(&path, body).expect("write");
        let (good, replay) = collect(&opts(vec![path])).expect("lenient");
        assert_eq!(good.len(), 2, "the lines after the bad ones arrive");
        let bad = replay.bad_lines();
        assert_eq!(bad.total, 2);
        assert_eq!(bad.by_reason.get("not UTF-8"), Some(&1));
        assert_eq!(bad.by_reason.get("line too long"), Some(&1));
    }

    #[test]
    fn files_merge_in_delivery_time_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write(
            dir.path(),
            "AAA-1m-x.csv",
            "1613692800000,1,2,0.5,1.5,1,1613692859999\n1613692860000,1,2,0.5,1.5,1,1613692919999\n",
        );
        let b = write(
            dir.path(),
            "BBB-1m-x.csv",
            "1613692860000,1,2,0.5,1.5,1,1613692919999\n",
        );
        let (out, _) = collect(&opts(vec![b, a])).expect("replay");
        let order: Vec<_> = out
            .iter()
            .map(|k| (k.symbol.to_string(), k.candle.open_time))
            .collect();
        assert_eq!(
            order,
            [
                ("AAA".into(), 1613692800000),
                ("BBB".into(), 1613692860000),
                ("AAA".into(), 1613692860000)
            ]
        );
    }

    #[test]
    fn an_unnamed_csv_needs_flags_and_a_zip_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "candles.csv", "");
        assert!(matches!(
            Replay::open(&opts(vec![p.clone()])),
            Err(ReplayError::Unnamed { .. })
        ));
        let named = ReplayOptions {
            symbol: Some(SymbolName::new("BTCUSDT").expect("valid")),
            interval: Some(Interval::M1),
            ..opts(vec![p])
        };
        assert!(Replay::open(&named).is_ok());
        let z = write(dir.path(), "BTCUSDT-1m-2024-01.zip", "PK");
        assert!(matches!(
            Replay::open(&opts(vec![z])),
            Err(ReplayError::Zip { .. })
        ));
        // Named as a dump, with a symbol no exchange lists: refused naming
        // the file, the symbol and the rule; --symbol overrides the name.
        let odd = write(dir.path(), "BTC_USDT-1m-2024-01.csv", "");
        let err = Replay::open(&opts(vec![odd.clone()]))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("BTC_USDT-1m-2024-01.csv")
                && err.contains("invalid symbol name \"BTC_USDT\"")
                && err.contains("2 to 20 characters from A-Z and 0-9"),
            "{err}"
        );
        let flagged = ReplayOptions {
            symbol: Some(SymbolName::new("BTCUSDT").expect("valid")),
            ..opts(vec![odd])
        };
        assert!(Replay::open(&flagged).is_ok());
        let missing = dir.path().join("nope.csv");
        let err = Replay::open(&opts(vec![missing]))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("nope.csv"), "{err}");
    }
}
