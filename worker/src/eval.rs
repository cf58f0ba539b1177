//! Trader evaluation: a verdict on a closed candle is a pure function of that
//! candle and a fixed window before it, never of when or where it is computed.
//! So a replacement worker, another worker or a single-process replay reach
//! the same verdicts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::point::{FastHash, Memo};
use crate::verdict::{values_with, verdict_at};
use protocol::Candle;
use protocol::message::Signal;
use protocol::store::{ReadError, SeriesId, StoreReader, StoredCandle, SymbolId};
use protocol::trader::{Rule, Symbols, TraderSpec};

/// Candles one trader judges per series in one pass, at most. A replacement
/// catching up half a ring, or a trader added to a busy worker, works
/// through its backlog over several passes: each pass ends within a bounded
/// time, reports its progress, and lets trader changes and CLEANUP in
/// between.
pub const CANDLES_PER_PASS: u64 = 256;
/// Candles judged between two reports of progress, at most (one atomic add
/// per this many, so reporting costs nothing measurable).
pub const PROGRESS_EVERY: u64 = 256;

/// Buffers an evaluation pass reuses, so the loop does not allocate per
/// series once they have grown to the largest window.
#[derive(Debug)]
pub struct Scratch {
    /// Candles read from the ring (resume points).
    buf: Vec<StoredCandle>,
    /// Indicator values and recursive states, shared by every trader judging
    /// the same series and kept from pass to pass.
    memo: Memo,
    /// The candles read from each series in this pass: the traders of a
    /// series read its ring once, not once each.
    reads: HashMap<u32, SeriesRead, FastHash>,
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            memo: Memo::new(MEMO_SLOTS),
            reads: HashMap::default(),
        }
    }
}

/// Candles `start..head` of one series: the worker's copy of its ring.
#[derive(Debug, Default)]
struct SeriesRead {
    /// How far back from the head the series' traders read (grows only).
    reach: u64,
    start: u64,
    /// 0: no valid copy.
    head: u64,
    stored: Vec<StoredCandle>,
    candles: Vec<Candle>,
}

impl SeriesRead {
    /// Brings the copy up to `head`, holding at least the candles from
    /// `from` on: only the candles appended since the last pass (and the
    /// last one copied, which may have been updated or closed since) when
    /// the copy reaches back far enough, else the whole range. Candles
    /// older than `from` are dropped once there are `reach` of them, so the
    /// copy is at most twice as long as the longest window of the series'
    /// traders, plus the new candles. True if a closed candle it held
    /// changed (an exchange correction of the last one).
    fn refresh(
        &mut self,
        reader: &StoreReader,
        series: SeriesId,
        from: u64,
        head: u64,
        buf: &mut Vec<StoredCandle>,
    ) -> Result<bool, ReadError> {
        let valid = self.head;
        let reaches = valid > 0 && self.start <= from;
        // The same head is not the same copy when its last candle was in
        // progress: the feed updates and closes a candle in place. Kept as
        // it was, a close with no successor yet (a live feed's newest
        // candle, or its last before a stop) would never be judged.
        if reaches && valid == head && self.stored.last().is_none_or(|c| c.closed) {
            return Ok(false);
        }
        let mut corrected = false;
        // Invalid until the read succeeds.
        self.head = 0;
        if reaches && valid <= head && valid > from {
            reader.read_range(series, valid - 1, head, buf)?;
            // A closed candle that changed since it was copied (an exchange
            // correction) may already be in computed values.
            corrected = self
                .stored
                .last()
                .zip(buf.first())
                .is_some_and(|(old, new)| old.closed && old.candle != new.candle);
            let keep = self.stored.len() - 1;
            self.stored.truncate(keep);
            self.candles.truncate(keep);
            self.stored.extend_from_slice(buf);
            self.candles.extend(buf.iter().map(|c| c.candle));
        } else {
            reader.read_range(series, from, head, &mut self.stored)?;
            self.candles.clear();
            self.candles.extend(self.stored.iter().map(|c| c.candle));
            self.start = from;
        }
        // Dropped in bulk, once the excess is as long as the reach: shifting
        // the copy by one candle every pass would move all of it each time.
        let excess = from.saturating_sub(self.start) as usize;
        if excess > 0 && excess as u64 >= self.reach {
            self.stored.drain(..excess);
            self.candles.drain(..excess);
            self.start = from;
        }
        self.head = head;
        Ok(corrected)
    }
}

/// (Indicator, series) slots the memo keeps (about 400 bytes each, so at
/// most ~26 MiB): far more than 10,000 traders on a hundred series use in
/// practice. Past it the memo starts over, which costs time, never a value.
pub const MEMO_SLOTS: usize = 1 << 16;

/// What an evaluation got through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Judged {
    /// Candles that were gone from the ring before they could be evaluated
    /// (an explicit gap, never a silent skip).
    pub gaps: u64,
    /// Closed candles judged (the measure of progress within a pass).
    pub candles: u64,
    /// Whether every series was brought up to date: false when a read was
    /// refused for the moment (a stalled or lapped slot) or the per-pass
    /// budget ran out; the next pass goes on.
    pub complete: bool,
}

/// One trader and where it stands on each of its series.
#[derive(Debug)]
pub struct Trader {
    /// As received.
    pub spec: TraderSpec,
    rule: Rule,
    /// Next candle index to evaluate, per symbol.
    cursors: HashMap<u32, u64, FastHash>,
    /// Per symbol: the index up to which (exclusive) raw verdicts are known
    /// in sequence, and the last true one. The cooldown then costs one
    /// comparison per candle instead of re-judging the candles before it.
    /// Same entries as `cursors`, so the same bound.
    verdicts: HashMap<u32, (u64, Option<u64>), FastHash>,
    /// Candles written in batches up to this publish counter were evaluated
    /// (by this worker, or by the one it replaces).
    covered: u64,
    /// Where evaluation resumes on a series not seen yet.
    resume_after: u64,
}

impl Trader {
    /// A trader that resumes after publish counter `resume_after` (0: from
    /// the oldest candle in the ring).
    pub fn new(spec: TraderSpec, rule: Rule, resume_after: u64) -> Self {
        Self {
            spec,
            rule,
            cursors: HashMap::default(),
            verdicts: HashMap::default(),
            covered: resume_after,
            resume_after,
        }
    }

    /// The publish counter up to which this trader has evaluated everything.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// Records that a pass over everything published up to `published` is done.
    pub fn covered_to(&mut self, published: u64) {
        self.covered = self.covered.max(published);
    }

    /// Evaluation cursors held (one per series seen).
    pub fn cursors(&self) -> usize {
        self.cursors.len()
    }

    fn window(&self) -> usize {
        self.rule.lookback() + self.spec.cooldown as usize
    }

    /// Evaluates the closed candles of every watched series not evaluated
    /// yet, at most [`CANDLES_PER_PASS`] per series, pushing signals to
    /// `hits`. `symbols` is the store's directory. See [`Judged`].
    ///
    /// The candles judged are also added to `progress` as they go (every
    /// [`PROGRESS_EVERY`] of them, and at the end), so a trader judging a
    /// long backlog on many series shows it is moving long before it is done.
    pub fn evaluate(
        &mut self,
        reader: &StoreReader,
        symbols: &[(SymbolId, String)],
        scratch: &mut Scratch,
        hits: &mut Vec<Signal>,
        progress: &AtomicU64,
    ) -> Result<Judged, ReadError> {
        let mut judged = Judged {
            complete: true,
            ..Judged::default()
        };
        let mut unreported = 0;
        for (id, symbol) in symbols {
            if let Symbols::List(list) = &self.spec.symbols
                && !list.iter().any(|s| s.as_str() == symbol)
            {
                continue;
            }
            let series = reader.series(*id, self.spec.interval)?;
            match self.evaluate_series(reader, series, (id.index(), symbol), scratch, hits) {
                Ok(one) => {
                    judged.gaps += one.gaps;
                    judged.candles += one.candles;
                    judged.complete &= one.complete;
                    unreported += one.candles;
                    if unreported >= PROGRESS_EVERY {
                        progress.fetch_add(std::mem::take(&mut unreported), Ordering::Relaxed);
                    }
                }
                Err(
                    e @ (ReadError::Stalled { .. }
                    | ReadError::Lapped { .. }
                    | ReadError::Gone { .. }),
                ) => {
                    tracing::warn!(trader = %self.spec.id, symbol, error = %e, "read refused for now: retrying next pass");
                    judged.complete = false;
                }
                Err(e) => return Err(e),
            }
        }
        progress.fetch_add(unreported, Ordering::Relaxed);
        Ok(judged)
    }

    /// The first index to evaluate on a series seen for the first time, and
    /// whether candles written after `resume_after` may already be gone.
    fn resume_point(
        &self,
        reader: &StoreReader,
        series: SeriesId,
        head: u64,
        buf: &mut Vec<StoredCandle>,
    ) -> Result<(u64, bool), ReadError> {
        if self.resume_after == 0 {
            return Ok((0, false));
        }
        let changed = reader.changed_since(series, self.resume_after, buf)?;
        let first = buf.first().map_or(head, |c| c.index);
        Ok((first, changed.possible_gap))
    }

    fn evaluate_series(
        &mut self,
        reader: &StoreReader,
        series: SeriesId,
        (sym, symbol): (u32, &str),
        scratch: &mut Scratch,
        hits: &mut Vec<Signal>,
    ) -> Result<Judged, ReadError> {
        let Scratch { buf, memo, reads } = scratch;
        memo.on_series(series.index());
        let head = reader.appended(series)?;
        let mut gaps = 0;
        let next = match self.cursors.get(&sym) {
            Some(&next) => next,
            None => {
                // First look at this series: resume with the first candle
                // written after `resume_after` (what the worker replaced had
                // not confirmed), or from the start.
                let (first, gap) = self.resume_point(reader, series, head, buf)?;
                if gap {
                    gaps += 1;
                    tracing::warn!(trader = %self.spec.id, symbol, resume_after = self.resume_after,
                        "the ring no longer holds every candle written since the last confirmed point: gap");
                }
                first
            }
        };
        if head == 0 || next >= head {
            self.cursors.insert(sym, next);
            return Ok(Judged {
                gaps,
                candles: 0,
                complete: true,
            });
        }
        let window = self.window() as u64;
        // Every candle from the first unevaluated one's window up to the head.
        let oldest_kept = head.saturating_sub(reader.ring(series) as u64);
        let mut next = next;
        if next < oldest_kept {
            gaps += oldest_kept - next;
            tracing::warn!(trader = %self.spec.id, symbol, missed = gaps, "candles left the ring before they were evaluated");
            next = oldest_kept;
        }
        let start = (next + 1).saturating_sub(window).max(oldest_kept);
        // A lap while reading (`Gone`) is returned like any error: nothing was
        // evaluated and the caller marks the pass incomplete.
        // One copy of each series' ring per worker, kept up to date pass
        // after pass (bounded: a ring's worth per series of the store).
        let read = reads.entry(series.index()).or_default();
        // The longest reach back from the head any trader of this series
        // asked for: the copy keeps that much.
        read.reach = read.reach.max(head - start);
        let from = head.saturating_sub(read.reach).max(oldest_kept);
        if read.refresh(reader, series, from, head, buf)? {
            // Values and states computed from the old candle would differ
            // from a replacement's: this series starts afresh.
            tracing::info!(trader = %self.spec.id, symbol, "a closed candle was corrected: its series' indicators are recomputed");
            memo.forget_series(series.index());
        }
        let skip = (start - read.start) as usize;
        let (stored_all, candles) = (&read.stored[skip..], &read.candles[skip..]);
        let mut evaluated_to = next;
        let mut complete = true;
        // Straight to the first unevaluated candle (indices are consecutive):
        // the ones before it are only its window.
        let first = (next.saturating_sub(start) as usize).min(stored_all.len());
        for (k, stored) in stored_all.iter().enumerate().skip(first) {
            let index = stored.index;
            if evaluated_to - next >= CANDLES_PER_PASS {
                complete = false;
                break;
            }
            // Final only if the feed said so or a newer candle exists.
            if !(stored.closed || index + 1 < head) {
                break;
            }
            #[cfg(feature = "testing")]
            test_rule(&self.rule, &self.spec.id, index);
            evaluated_to = index + 1;
            if (k + 1) < window as usize {
                // Not enough history in hand: at a series' start that is no
                // verdict by definition; past it, the ring no longer holds the
                // window, which is a gap, never a silent skip.
                if index + 1 >= window {
                    gaps += 1;
                }
                continue;
            }
            let w = &candles[k + 1 - window as usize..=k];
            // Indices are consecutive: no need to touch the window's first
            // candle (a cache miss per trader and series).
            let base = start + (k + 1 - window as usize) as u64;
            let last = w.len() - 1;
            let cooldown = u64::from(self.spec.cooldown);
            let state = self.verdicts.get(&sym).copied();
            let mut last_true = match state {
                Some((known_to, last_true)) if known_to == index => last_true,
                // Not judged in sequence up to here (first look, resume,
                // gap): the candles of the cooldown are judged now, oldest
                // first, so recursive indicators step forward from one to
                // the next instead of starting afresh for each.
                _ => (1..=cooldown)
                    .rev()
                    .filter(|&b| verdict_at(&self.rule, w, last - b as usize, base, memo))
                    .map(|b| index - b)
                    .last(),
            };
            let now = verdict_at(&self.rule, w, last, base, memo);
            let signal = now && last_true.is_none_or(|t| t + cooldown < index);
            if now {
                last_true = Some(index);
            }
            self.verdicts.insert(sym, (index + 1, last_true));
            if signal {
                hits.push(Signal {
                    trader: self.spec.id.clone(),
                    symbol: symbol.to_owned(),
                    interval: self.spec.interval,
                    open_time: stored.candle.open_time,
                    close: stored.candle.close,
                    labels: self.spec.labels.clone(),
                    values: values_with(&self.rule, w, base, memo),
                });
            }
        }
        self.cursors.insert(sym, evaluated_to);
        Ok(Judged {
            gaps,
            candles: evaluated_to - next,
            complete,
        })
    }
}

/// TEST ONLY (the `testing` feature): what a test rule does at candle
/// `index`: abort the worker, or hang its evaluation.
#[cfg(feature = "testing")]
fn test_rule(rule: &Rule, trader: &str, index: u64) {
    match *rule {
        Rule::TestAbortAfter { after } if index >= after => {
            tracing::error!(trader, index, "TEST rule: aborting the worker");
            std::process::abort();
        }
        Rule::TestSpinAfter { after } if index >= after => {
            tracing::error!(trader, index, "TEST rule: evaluation hangs");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Rule::TestLeakKib { kib } => {
            // Filled with ones, so every page is really touched.
            std::mem::forget(vec![1u8; (kib as usize).min(1 << 20) * 1024]);
        }
        _ => {}
    }
}
