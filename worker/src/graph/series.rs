//! One series' part of the graph: its closed candles (the last few the
//! nodes read back) and, for each node its traders need, the node's recent
//! values and a recursive indicator's running state. Candles go in one at a
//! time, oldest first; each is computed through every node, in order, at
//! once: a new candle costs one step per node.
//!
//! A value is exactly [`crate::point`]'s (see its documentation): a window
//! indicator is its kernel over its source's values at `j - span ..= j`; a
//! recursive one is its state machine fed from the anchor of `j`, stepped
//! on from the state kept at `j - 1` while the anchor stays, fed afresh when
//! it moves. A value whose inputs reach before the first candle this state
//! was given has none (NaN), as a window too short has none there.

use protocol::Candle;
use protocol::rule::{ANCHOR_EVERY, Field, Indicator, MacdPart};

use super::program::Values;
use super::{Graph, Kind, NodeId, Src};
use crate::point::{Running, State, field, window_kernel};

/// A ring of the last values of something, by absolute candle index.
#[derive(Debug, Clone)]
struct Ring<T> {
    items: Box<[T]>,
}

impl<T: Copy> Ring<T> {
    fn new(len: usize, fill: T) -> Self {
        Self {
            items: vec![fill; len.next_power_of_two()].into_boxed_slice(),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: u64) -> T {
        self.items[(index as usize) & (self.items.len() - 1)]
    }

    fn set(&mut self, index: u64, v: T) {
        let mask = self.items.len() - 1;
        self.items[(index as usize) & mask] = v;
    }
}

/// A node's values on one series.
#[derive(Debug, Clone)]
struct Inst {
    values: Ring<f64>,
    /// First index computed (values before it are not held).
    since: u64,
    /// Next index to compute.
    to: u64,
    run: Option<Running>,
}

impl Inst {
    fn get(&self, index: u64) -> f64 {
        let lo = self
            .since
            .max(self.to.saturating_sub(self.values.len() as u64));
        if index >= lo && index < self.to {
            self.values.get(index)
        } else {
            f64::NAN
        }
    }
}

/// The graph on one series.
#[derive(Debug, Clone)]
pub struct SeriesState {
    /// First candle given: nothing before it is known.
    first: u64,
    /// Next candle index expected.
    next: u64,
    candles: Ring<Candle>,
    /// By node id: the nodes this series computes.
    insts: Vec<Option<Box<Inst>>>,
    /// The graph's version this state was laid out for.
    version: u64,
    /// Recursive indicators fed afresh from their anchor, and steps fed.
    pub fresh: u64,
    /// Inputs fed to recursive states.
    pub steps: u64,
}

/// An empty candle, for rings not yet filled.
const NO_CANDLE: Candle = Candle {
    open_time: 0,
    open: f64::NAN,
    high: f64::NAN,
    low: f64::NAN,
    close: f64::NAN,
    volume: f64::NAN,
};

impl SeriesState {
    /// A state that computes `nodes` (each with what it reads: see
    /// [`Graph::closure`]), starting with candle `first`.
    pub fn new(graph: &Graph, nodes: &[NodeId], first: u64) -> Self {
        let mut s = Self {
            first,
            next: first,
            candles: Ring::new(graph.candle_keep().max(1), NO_CANDLE),
            insts: Vec::new(),
            version: graph.version,
            fresh: 0,
            steps: 0,
        };
        s.insts.resize_with(graph.capacity(), || None);
        for &n in nodes {
            s.insts[n as usize] = graph.def(n).map(|d| {
                Box::new(Inst {
                    values: Ring::new(d.keep, f64::NAN),
                    since: first,
                    to: first,
                    run: None,
                })
            });
        }
        s
    }

    /// First candle given.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Next candle index expected: every one before it is computed.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The graph's version its layout follows.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The last candle given, if held.
    pub fn last(&self) -> Option<Candle> {
        (self.next > self.first).then(|| self.candles.get(self.next - 1))
    }

    /// Whether it computes node `n` with a ring of at least `keep` values
    /// and candles of at least `candles`.
    pub fn holds(&self, n: NodeId, keep: usize) -> bool {
        self.insts
            .get(n as usize)
            .and_then(Option::as_ref)
            .is_some_and(|i| i.values.len() >= keep)
    }

    /// Candles kept.
    pub fn candle_ring(&self) -> usize {
        self.candles.len()
    }

    /// Takes over node `n`'s values from `other`, a state computed up to the
    /// same candle (a node made after this state began, seeded from the
    /// ring in a state of its own).
    pub fn adopt(&mut self, n: NodeId, other: &mut SeriesState) {
        if self.insts.len() <= n as usize {
            self.insts.resize_with(n as usize + 1, || None);
        }
        self.insts[n as usize] = other.insts.get_mut(n as usize).and_then(Option::take);
    }

    /// Stops computing every node but `nodes` (nobody reads them here any
    /// more).
    pub fn keep_only(&mut self, nodes: &[NodeId]) {
        for (n, slot) in self.insts.iter_mut().enumerate() {
            if slot.is_some() && !nodes.contains(&(n as NodeId)) {
                *slot = None;
            }
        }
    }

    /// Follows a graph with more nodes: its tables grow; the nodes it
    /// computes stay as they are.
    pub fn relayout(&mut self, graph: &Graph) {
        if self.insts.len() < graph.capacity() {
            self.insts.resize_with(graph.capacity(), || None);
        }
        if self.candles.len() < graph.candle_keep() {
            let mut bigger = Ring::new(graph.candle_keep(), NO_CANDLE);
            let lo = self
                .first
                .max(self.next.saturating_sub(self.candles.len() as u64));
            for i in lo..self.next {
                bigger.set(i, self.candles.get(i));
            }
            self.candles = bigger;
        }
        self.version = graph.version;
    }

    /// Candle `index` (the next expected) goes in and every node computed
    /// here is computed at it.
    pub fn push(&mut self, graph: &Graph, index: u64, candle: Candle) {
        debug_assert_eq!(index, self.next, "candles go in in order");
        self.candles.set(index, candle);
        self.next = index + 1;
        for &n in graph.order() {
            if self.insts.get(n as usize).is_some_and(Option::is_some) {
                let v = self.compute(graph, n, index);
                if let Some(inst) = self.insts[n as usize].as_mut() {
                    inst.values.set(index, v);
                    inst.to = index + 1;
                }
            }
        }
    }

    fn candle(&self, index: u64) -> Option<&Candle> {
        let lo = self
            .first
            .max(self.next.saturating_sub(self.candles.len() as u64));
        (index >= lo && index < self.next)
            .then(|| &self.candles.items[(index as usize) & (self.candles.len() - 1)])
    }

    /// Node `n`'s value at `j`, its readers already computed there.
    fn compute(&mut self, graph: &Graph, n: NodeId, j: u64) -> f64 {
        let Some(def) = graph.def(n) else {
            return f64::NAN;
        };
        match &def.kind {
            Kind::Calc(p) => p.eval(&*self, j),
            Kind::Ind(ind, src) if ind.is_recursive() => {
                let (v, run) = self.recursive(ind, *src, def.key, j, n);
                if let Some(inst) = self.insts[n as usize].as_mut() {
                    inst.run = run;
                }
                v
            }
            Kind::Ind(ind, src) => self.windowed(ind, *src, j),
        }
    }

    /// A window indicator at `j`: its kernel over its source at
    /// `j - span ..= j` (point's `windowed`).
    fn windowed(&self, ind: &Indicator, src: Src, j: u64) -> f64 {
        let span = ind.span() as u64;
        let Some(from) = j.checked_sub(span).filter(|&f| f >= self.first) else {
            return f64::NAN;
        };
        let at = |q: usize| from + q as u64;
        if let Indicator::Vwap(_) = ind {
            let (mut pv, mut v) = (0.0, 0.0);
            for q in 0..=span as usize {
                let Some(c) = self.candle(at(q)) else {
                    return f64::NAN;
                };
                pv += (c.high + c.low + c.close) / 3.0 * c.volume;
                v += c.volume;
            }
            return if v > 0.0 { pv / v } else { f64::NAN };
        }
        match src {
            Src::Field(f) => {
                if self.candle(from).is_none() {
                    return f64::NAN;
                }
                window_kernel(ind, |q| self.field(f, at(q)))
            }
            Src::Node(m) => {
                let Some(inst) = self.insts.get(m as usize).and_then(Option::as_ref) else {
                    return f64::NAN;
                };
                if (0..=span).any(|q| inst.get(from + q).is_nan()) {
                    return f64::NAN;
                }
                window_kernel(ind, |q| inst.get(at(q)))
            }
            Src::Candles => f64::NAN,
        }
    }

    /// A recursive indicator at `j`: the state kept at `j - 1` stepped once
    /// while its anchor stays, else a fresh state fed from the anchor
    /// (point's `recursive`).
    fn recursive(
        &mut self,
        ind: &Indicator,
        src: Src,
        key: u64,
        j: u64,
        n: NodeId,
    ) -> (f64, Option<Running>) {
        const NONE: (f64, Option<Running>) = (f64::NAN, None);
        let every = ANCHOR_EVERY as u64;
        let offset = key % every;
        let Some(latest) = j
            .checked_sub(ind.span() as u64)
            .and_then(|l| l.checked_sub(offset))
        else {
            return NONE;
        };
        let anchor = latest - latest % every + offset;
        if anchor < self.first {
            return NONE;
        }
        let kept = self.insts[n as usize].as_ref().and_then(|i| i.run);
        let mut run = match kept {
            Some(r) if r.anchor == anchor && r.next <= j + 1 => r,
            _ => {
                let Some(state) = State::new(ind) else {
                    return NONE;
                };
                self.fresh += 1;
                Running::fresh(anchor, state)
            }
        };
        while run.next <= j {
            let pos = run.next;
            let x = match (&run.state, src) {
                (State::Atr(_), _) | (_, Src::Candles) => f64::NAN,
                (_, Src::Field(f)) => self.field(f, pos),
                (_, Src::Node(m)) => self.node(m, pos),
            };
            run.last = match &mut run.state {
                State::Atr(a) => match self.candle(pos) {
                    Some(c) => a.push(c.high, c.low, c.close),
                    None => return NONE,
                },
                state => {
                    if x.is_nan() {
                        return NONE;
                    }
                    match state {
                        State::Ema(e) => e.push(x),
                        State::Rsi(r) => r.push(x),
                        State::Macd(m, part) => {
                            let [line, signal, hist] = m.push(x);
                            match part {
                                MacdPart::Line => line,
                                MacdPart::Signal => signal,
                                MacdPart::Hist => hist,
                            }
                        }
                        State::Atr(_) => f64::NAN,
                    }
                }
            };
            run.next += 1;
            self.steps += 1;
        }
        (run.last, Some(run))
    }
}

impl Values for SeriesState {
    fn field(&self, f: Field, index: u64) -> f64 {
        self.candle(index).map_or(f64::NAN, |c| field(c, f))
    }

    fn node(&self, node: NodeId, index: u64) -> f64 {
        self.insts
            .get(node as usize)
            .and_then(Option::as_ref)
            .map_or(f64::NAN, |i| i.get(index))
    }
}
