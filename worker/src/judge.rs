//! Traders judged over their series, pass after pass, on the evaluation
//! graph ([`crate::graph`]): per series, each new closed candle goes through
//! every node once, then every trader watching the series reads its verdict
//! from node values. A verdict on a closed candle is a pure function of that
//! candle and a fixed window before it, never of when or where it is
//! computed: a replacement worker, another worker or `backtest` reach the
//! same verdicts.
//!
//! Per series and trader, a cursor (the next candle to judge) and the
//! cooldown's state; traders of a series move in step with its nodes. A
//! trader that must judge candles the series' nodes are past (one resuming
//! from an older publish) has the series computed again from the ring, as
//! has an exchange correction of its last closed candle; a node made for a
//! new trader is seeded from the ring on its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::message::Signal;
use protocol::store::{ReadError, SeriesId, StoreReader, StoredCandle, SymbolId};
use protocol::trader::{Rule, Symbols, TraderSpec};
use protocol::{Candle, Interval};

use crate::graph::program::Values;
use crate::graph::series::SeriesState;
use crate::graph::{Compiled, Graph, GraphError, NodeId};

/// Candles one series' traders judge in one pass, at most. A replacement
/// catching up half a ring, or a trader added to a busy worker, works
/// through its backlog over several passes: each pass ends within a bounded
/// time, reports its progress, and lets trader changes and CLEANUP in
/// between.
pub const CANDLES_PER_PASS: u64 = 256;
/// Judged candles counted between two reports of progress, at most.
pub const PROGRESS_EVERY: u64 = 4096;

/// One trader and where it resumes.
#[derive(Debug)]
pub struct Trader {
    /// As received.
    pub spec: TraderSpec,
    rule: Rule,
    compiled: Option<Compiled>,
    /// Candles a verdict reads: its rule's warm-up and its cooldown.
    window: u64,
    /// Candles written in batches up to this publish counter were judged
    /// (by this worker, or by the one it replaces).
    covered: u64,
    /// Where judging resumes on a series not seen yet.
    resume_after: u64,
    /// Whether every series was brought up to date in this pass.
    complete: bool,
}

impl Trader {
    /// A trader that resumes after publish counter `resume_after` (0: from
    /// the oldest candle in the ring).
    pub fn new(spec: TraderSpec, rule: Rule, resume_after: u64) -> Self {
        let window = (rule.lookback() + spec.cooldown as usize) as u64;
        Self {
            spec,
            rule,
            compiled: None,
            window,
            covered: resume_after,
            resume_after,
            complete: true,
        }
    }

    /// The publish counter up to which this trader has judged everything.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    fn watches(&self, symbol: &str, interval: Interval) -> bool {
        interval == self.spec.interval
            && match &self.spec.symbols {
                Symbols::All => true,
                Symbols::List(list) => list.iter().any(|s| s.as_str() == symbol),
            }
    }
}

/// A trader on one series.
#[derive(Debug, Clone, Copy)]
struct Watch {
    trader: usize,
    /// Next candle to judge (`None`: the series not looked at yet).
    cursor: Option<u64>,
    /// Up to which index (exclusive) raw verdicts are known in sequence,
    /// and the last true one: the cooldown then costs one comparison per
    /// candle instead of judging the candles before it again.
    known: Option<(u64, Option<u64>)>,
}

/// One series the traders watch.
#[derive(Debug)]
struct Series {
    id: SymbolId,
    symbol: String,
    interval: Interval,
    watch: Vec<Watch>,
    /// The nodes its traders read (with what they read), in computing order.
    nodes: Vec<NodeId>,
    /// Its nodes' state; rebuilt when its traders or their nodes change.
    state: Option<SeriesState>,
    /// The trader set changed since `nodes` was worked out.
    dirty: bool,
}

/// What a pass got through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Judged {
    /// Candles that were gone from the ring before they could be judged
    /// (an explicit gap, never a silent skip).
    pub gaps: u64,
    /// Trader-candles judged.
    pub candles: u64,
    /// Whether every trader was brought up to date: false when a read was
    /// refused for the moment (a stalled or lapped slot), the per-pass
    /// budget ran out, or the pass was cut short for trader changes.
    pub complete: bool,
}

/// Where a pass reads candles and puts what it finds.
pub struct Pass<'a> {
    /// Signals found.
    pub hits: &'a mut Vec<Signal>,
    /// Trader-candles judged, raised as they go (a long catch-up shows it
    /// is moving).
    pub progress: &'a AtomicU64,
    /// Called with the digest of the trader about to be judged (a black box
    /// names it if the worker dies there).
    pub mark: &'a dyn Fn(&str),
    /// True when the pass should end early (trader changes wait).
    pub interrupt: &'a dyn Fn() -> bool,
}

/// The traders of a worker (or a backtest) and their graph.
#[derive(Debug, Default)]
pub struct Judge {
    graph: Graph,
    /// The graph version the node plan follows.
    planned: u64,
    traders: Vec<Option<Trader>>,
    free: Vec<usize>,
    by_id: HashMap<String, usize>,
    series: Vec<Series>,
    /// Symbols of the store's directory looked at.
    symbols_seen: usize,
    /// Where the next pass starts, so no series always waits for the others.
    rotate: usize,
    buf: Vec<StoredCandle>,
}

impl Judge {
    /// Traders held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Nodes of the graph.
    pub fn nodes(&self) -> usize {
        self.graph.len()
    }

    /// Series with computed state, and per-trader cursors held.
    pub fn held(&self) -> (usize, usize) {
        (
            self.series.iter().filter(|s| s.state.is_some()).count(),
            self.series.iter().map(|s| s.watch.len()).sum(),
        )
    }

    /// The publish counter every trader held has judged through (`None`:
    /// none held).
    pub fn covered(&self) -> Option<u64> {
        self.traders.iter().flatten().map(Trader::covered).min()
    }

    /// Holds `trader`, replacing one of the same id. Past the node bound
    /// it is refused, and nothing changes.
    pub fn add(&mut self, mut trader: Trader) -> Result<(), GraphError> {
        if let Some(c) = trader.rule.compiled() {
            // The old one's nodes are still held while the new one's are
            // made: a replacement of the same rule makes none.
            trader.compiled = Some(self.graph.add(&c.expr)?);
        }
        self.remove(&trader.spec.id.clone());
        let k = match self.free.pop() {
            Some(k) => k,
            None => {
                self.traders.push(None);
                self.traders.len() - 1
            }
        };
        for s in &mut self.series {
            if trader.watches(&s.symbol, s.interval) {
                s.watch.push(Watch {
                    trader: k,
                    cursor: None,
                    known: None,
                });
                s.dirty = true;
            }
        }
        self.by_id.insert(trader.spec.id.clone(), k);
        self.traders[k] = Some(trader);
        Ok(())
    }

    /// Drops trader `id`; true if it was held.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(k) = self.by_id.remove(id) else {
            return false;
        };
        if let Some(t) = self.traders[k].take()
            && let Some(c) = &t.compiled
        {
            self.graph.remove(c);
        }
        self.free.push(k);
        for s in &mut self.series {
            let before = s.watch.len();
            s.watch.retain(|w| w.trader != k);
            s.dirty |= s.watch.len() != before;
        }
        true
    }

    /// The trader `id`.
    pub fn trader(&self, id: &str) -> Option<&Trader> {
        self.by_id.get(id).and_then(|&k| self.traders[k].as_ref())
    }

    /// A series of the store, known from now on; its watchers found.
    fn register(&mut self, id: SymbolId, symbol: &str, interval: Interval) {
        let watch = self
            .traders
            .iter()
            .enumerate()
            .filter(|(_, t)| t.as_ref().is_some_and(|t| t.watches(symbol, interval)))
            .map(|(k, _)| Watch {
                trader: k,
                cursor: None,
                known: None,
            })
            .collect();
        self.series.push(Series {
            id,
            symbol: symbol.to_owned(),
            interval,
            watch,
            nodes: Vec::new(),
            state: None,
            dirty: true,
        });
    }

    /// After trader changes: what the nodes keep, and each series' nodes.
    fn replan(&mut self) {
        if self.planned != self.graph.version || self.series.iter().any(|s| s.dirty) {
            let traders = &self.traders;
            self.graph.plan(
                traders
                    .iter()
                    .flatten()
                    .filter_map(|t| t.compiled.as_ref().map(|c| (c, t.spec.cooldown as usize))),
            );
            self.planned = self.graph.version;
            for s in &mut self.series {
                let direct: Vec<NodeId> = s
                    .watch
                    .iter()
                    .filter_map(|w| traders[w.trader].as_ref())
                    .filter_map(|t| t.compiled.as_ref())
                    .flat_map(|c| c.direct.iter().copied())
                    .collect();
                s.nodes = self.graph.closure(&direct);
                s.dirty = false;
                if s.watch.is_empty() {
                    s.state = None;
                }
            }
        }
    }

    /// One pass over the store: every watched series brought up to its
    /// newest closed candle (at most [`CANDLES_PER_PASS`] judged per
    /// series), traders that got everything covered to `published`.
    pub fn pass(
        &mut self,
        reader: &StoreReader,
        published: u64,
        out: &mut Pass<'_>,
    ) -> Result<Judged, ReadError> {
        let count = reader.symbol_count();
        if count != self.symbols_seen {
            let intervals = reader.intervals().to_vec();
            for (id, name) in reader
                .symbols_with_ids()
                .into_iter()
                .skip(self.symbols_seen)
            {
                for &interval in &intervals {
                    self.register(id, &name, interval);
                }
            }
            self.symbols_seen = count;
        }
        self.replan();
        for t in self.traders.iter_mut().flatten() {
            t.complete = true;
        }
        let mut judged = Judged {
            complete: true,
            ..Judged::default()
        };
        let n = self.series.len();
        let start = self.rotate % n.max(1);
        self.rotate = self.rotate.wrapping_add(1);
        for step in 0..n {
            let k = (start + step) % n;
            if self.series[k].watch.is_empty() {
                continue;
            }
            if (out.interrupt)() {
                judged.complete = false;
                for t in self.traders.iter_mut().flatten() {
                    t.complete = false;
                }
                break;
            }
            let series = reader.series(self.series[k].id, self.series[k].interval)?;
            match self.series_pass(reader, series, k, out) {
                Ok(one) => {
                    judged.gaps += one.gaps;
                    judged.candles += one.candles;
                    judged.complete &= one.complete;
                }
                Err(
                    e @ (ReadError::Stalled { .. }
                    | ReadError::Lapped { .. }
                    | ReadError::Gone { .. }),
                ) => {
                    tracing::warn!(symbol = %self.series[k].symbol, error = %e, "read refused for now: retrying next pass");
                    judged.complete = false;
                    self.incomplete(k);
                }
                Err(e) => return Err(e),
            }
        }
        for t in self.traders.iter_mut().flatten() {
            if t.complete {
                t.covered = t.covered.max(published);
            }
        }
        Ok(judged)
    }

    fn incomplete(&mut self, k: usize) {
        for w in &self.series[k].watch {
            if let Some(t) = self.traders[w.trader].as_mut() {
                t.complete = false;
            }
        }
    }

    /// One series: its nodes brought up to date (computed afresh from the
    /// ring when needed) and its traders judged on the new candles.
    fn series_pass(
        &mut self,
        reader: &StoreReader,
        series: SeriesId,
        k: usize,
        out: &mut Pass<'_>,
    ) -> Result<Judged, ReadError> {
        let head = reader.appended(series)?;
        let oldest = head.saturating_sub(reader.ring(series) as u64);
        let mut gaps = 0;
        // First looks: each resumes with the first candle written after
        // its `resume_after` (what the worker replaced had not confirmed).
        for w in 0..self.series[k].watch.len() {
            let watch = self.series[k].watch[w];
            if watch.cursor.is_some() {
                continue;
            }
            let Some(t) = self.traders[watch.trader].as_ref() else {
                continue;
            };
            let first = if t.resume_after == 0 {
                0
            } else {
                let changed = reader.changed_since(series, t.resume_after, &mut self.buf)?;
                if changed.possible_gap {
                    gaps += 1;
                    tracing::warn!(trader = %t.spec.id, symbol = %self.series[k].symbol, resume_after = t.resume_after,
                        "the ring no longer holds every candle written since the last confirmed point: gap");
                }
                self.buf.first().map_or(head, |c| c.index)
            };
            self.series[k].watch[w].cursor = Some(first);
        }
        // Cursors the ring has left behind: a gap, never a silent skip.
        for w in 0..self.series[k].watch.len() {
            let cursor = self.series[k].watch[w].cursor.unwrap_or(0);
            if cursor < oldest {
                gaps += oldest - cursor;
                if let Some(t) = self.traders[self.series[k].watch[w].trader].as_ref() {
                    tracing::warn!(trader = %t.spec.id, symbol = %self.series[k].symbol, missed = oldest - cursor,
                        "candles left the ring before they were evaluated");
                }
                self.series[k].watch[w].cursor = Some(oldest);
            }
        }
        let s = &self.series[k];
        let lowest = s
            .watch
            .iter()
            .filter_map(|w| w.cursor)
            .min()
            .unwrap_or(head);
        // Where the nodes must start for every watcher to have its window.
        let from = s
            .watch
            .iter()
            .map(|w| {
                let window = self.traders[w.trader].as_ref().map_or(1, |t| t.window);
                (w.cursor.unwrap_or(0) + 1).saturating_sub(window)
            })
            .min()
            .unwrap_or(lowest)
            .max(oldest);
        // Read everything new, and the last candle computed again: an
        // exchange correction of a closed candle shows there. Computed
        // afresh from `from` when a watcher needs candles the nodes are past
        // or a window reaching before them, or the candle copy must grow.
        let computed = s.state.as_ref().map(SeriesState::next);
        let restart = match (&s.state, computed) {
            (Some(state), Some(next)) => {
                lowest < next
                    || from < state.first()
                    || state.candle_ring() < self.graph.candle_keep()
            }
            _ => true,
        };
        if !restart && computed == Some(head) {
            // Nothing new (the newest candle was final when computed).
            return Ok(Judged {
                gaps,
                candles: 0,
                complete: true,
            });
        }
        let read_from = if restart {
            from
        } else {
            computed.unwrap_or(from).saturating_sub(1).max(oldest)
        };
        let end = head.min(lowest.max(read_from).saturating_add(CANDLES_PER_PASS));
        if read_from >= end {
            return Ok(Judged {
                gaps,
                candles: 0,
                complete: true,
            });
        }
        let mut buf = std::mem::take(&mut self.buf);
        reader.read_range(series, read_from, end, &mut buf)?;
        let mut restart = restart;
        if !restart
            && let (Some(state), Some(first)) = (&self.series[k].state, buf.first())
            && let Some(last) = state.last()
            && first.index + 1 == state.next()
            && last != first.candle
        {
            tracing::info!(symbol = %self.series[k].symbol, "a closed candle was corrected: its series' indicators are computed again");
            restart = true;
        }
        if restart {
            // Computed afresh from `from`: read again from there.
            if read_from != from {
                reader.read_range(series, from, end, &mut buf)?;
            }
            self.series[k].state = Some(SeriesState::new(&self.graph, &self.series[k].nodes, from));
        } else {
            self.seed_new_nodes(reader, series, k)?;
        }
        let judged = self.advance(k, &buf, head, out);
        self.buf = buf;
        let mut judged = judged;
        judged.gaps += gaps;
        Ok(judged)
    }

    /// Nodes series `k` now needs that its state lacks (a trader added):
    /// each computed in a state of its own over the ring, far enough back
    /// that its kept values are what they would have been, then taken over.
    fn seed_new_nodes(
        &mut self,
        reader: &StoreReader,
        series: SeriesId,
        k: usize,
    ) -> Result<(), ReadError> {
        let graph = &self.graph;
        let s = &mut self.series[k];
        let Some(state) = s.state.as_mut() else {
            return Ok(());
        };
        if state.version() == graph.version {
            return Ok(());
        }
        state.relayout(graph);
        state.keep_only(&s.nodes);
        let missing: Vec<NodeId> = s
            .nodes
            .iter()
            .copied()
            .filter(|&n| graph.def(n).is_some_and(|d| !state.holds(n, d.keep)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let closure = graph.closure(&missing);
        // Far enough back: the longest chain of reaches, plus the values kept.
        let back: u64 = closure
            .iter()
            .filter_map(|&n| graph.def(n))
            .map(|d| (d.reach() + d.keep) as u64)
            .sum::<u64>()
            + 1;
        let next = state.next();
        let head = reader.appended(series)?;
        let oldest = head.saturating_sub(reader.ring(series) as u64);
        let from = next.saturating_sub(back).max(oldest).max(state.first());
        let mut seed = SeriesState::new(graph, &closure, from);
        let mut buf = Vec::new();
        reader.read_range(series, from, next, &mut buf)?;
        for c in &buf {
            seed.push(graph, c.index, c.candle);
        }
        for n in missing {
            state.adopt(n, &mut seed);
        }
        Ok(())
    }

    /// Feeds series `k` the candles in `buf` (in order; those before its
    /// state's next are already computed) and judges its watchers on each
    /// final one. A candle is final when closed or when a newer one exists.
    fn advance(&mut self, k: usize, buf: &[StoredCandle], head: u64, out: &mut Pass<'_>) -> Judged {
        let graph = &self.graph;
        let traders = &mut self.traders;
        let s = &mut self.series[k];
        let Some(state) = s.state.as_mut() else {
            return Judged::default();
        };
        let mut candles = 0u64;
        let mut unreported = 0u64;
        let mut gaps = 0u64;
        let lowest = s
            .watch
            .iter()
            .filter_map(|w| w.cursor)
            .min()
            .unwrap_or(head);
        for c in buf {
            if c.index < state.next() {
                continue;
            }
            if c.index >= lowest + CANDLES_PER_PASS {
                break;
            }
            if !(c.closed || c.index + 1 < head) {
                break;
            }
            state.push(graph, c.index, c.candle);
            for w in &mut s.watch {
                if w.cursor.is_none_or(|cur| cur > c.index) {
                    continue;
                }
                let Some(t) = traders[w.trader].as_mut() else {
                    continue;
                };
                (out.mark)(&t.spec.id);
                #[cfg(feature = "testing")]
                test_rule(&t.rule, &t.spec.id, c.index);
                judge(t, w, state, &s.symbol, c, &mut gaps, out.hits);
                w.cursor = Some(c.index + 1);
                candles += 1;
                unreported += 1;
            }
            if unreported >= PROGRESS_EVERY {
                out.progress
                    .fetch_add(std::mem::take(&mut unreported), Ordering::Relaxed);
            }
        }
        out.progress.fetch_add(unreported, Ordering::Relaxed);
        // Final up to here: a trader short of it is not done.
        let final_end = match buf.last() {
            Some(last) if last.index + 1 == head && !last.closed => head - 1,
            _ => head,
        };
        let mut complete = true;
        for w in &s.watch {
            if w.cursor.is_some_and(|c| c < final_end) {
                complete = false;
                if let Some(t) = traders[w.trader].as_mut() {
                    t.complete = false;
                }
            }
        }
        Judged {
            gaps,
            candles,
            complete,
        }
    }

    /// Every signal of `traders` on one series' closed candles, judged as a
    /// worker judges them: what `backtest` prints.
    pub fn backtest_series(
        &mut self,
        symbol: &str,
        interval: Interval,
        candles: &[Candle],
        hits: &mut Vec<Signal>,
    ) {
        self.series.clear();
        self.register(SymbolId::default(), symbol, interval);
        self.replan();
        let s = &mut self.series[0];
        if s.watch.is_empty() {
            return;
        }
        for w in &mut s.watch {
            w.cursor = Some(0);
            w.known = None;
        }
        let mut state = SeriesState::new(&self.graph, &s.nodes, 0);
        let mut gaps = 0;
        for (i, c) in candles.iter().enumerate() {
            state.push(&self.graph, i as u64, *c);
            let stored = StoredCandle {
                index: i as u64,
                candle: *c,
                closed: true,
            };
            for w in &mut s.watch {
                if let Some(t) = self.traders[w.trader].as_mut() {
                    judge(t, w, &state, &s.symbol, &stored, &mut gaps, hits);
                }
            }
        }
    }
}

/// Trader `t` on candle `c` of the series `state` computes: its verdict
/// with the cooldown on top, a signal into `hits`. No verdict before its
/// window is held: at a series' start that is none by definition; past it,
/// a window the state does not reach is a gap.
fn judge(
    t: &mut Trader,
    w: &mut Watch,
    state: &SeriesState,
    symbol: &str,
    c: &StoredCandle,
    gaps: &mut u64,
    hits: &mut Vec<Signal>,
) {
    let index = c.index;
    // A test rule has no verdict (its effect is in the worker, not here).
    let Some(compiled) = &t.compiled else {
        return;
    };
    if index + 1 < t.window {
        return;
    }
    if index + 1 - t.window < state.first() {
        *gaps += 1;
        return;
    }
    let cooldown = u64::from(t.spec.cooldown);
    let verdict = |i: u64| compiled.program.eval(state, i) == 1.0;
    let mut last_true = match w.known {
        Some((known_to, last_true)) if known_to == index => last_true,
        // Not judged in sequence up to here (first look, resume, gap): the
        // candles of the cooldown are judged now.
        // The latest raw verdict within the cooldown, if any.
        _ => (1..=cooldown)
            .find(|&b| verdict(index - b))
            .map(|b| index - b),
    };
    let now = verdict(index);
    let signal = now && last_true.is_none_or(|l| l + cooldown < index);
    if now {
        last_true = Some(index);
    }
    w.known = Some((index + 1, last_true));
    if signal {
        hits.push(Signal {
            trader: t.spec.id.clone(),
            symbol: symbol.to_owned(),
            interval: t.spec.interval,
            open_time: c.candle.open_time,
            close: c.candle.close,
            labels: t.spec.labels.clone(),
            values: compiled
                .values
                .iter()
                .map(|(text, n)| (text.clone(), state.node(*n, index)))
                .collect(),
        });
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
