//! The evaluation graph: every distinct computation of a worker's traders
//! (`ema(close, 21)`, `rsi(close, 14)`, `close - open` under an SMA...) is
//! one *node*, shared by every trader that uses it, and computed once per
//! series and closed candle ([`series`]). A trader's rule is a flat
//! [`program`] over node values and candle fields.
//!
//! A node's value at a candle is exactly what [`crate::point`] computes
//! there (the same kernels on the same inputs, recursive indicators from
//! the same anchors): a pure function of the candles its warm-up covers,
//! so a verdict is the same in every worker, in a replacement and in
//! `backtest`, whenever the node was made.
//!
//! Nodes are reference-counted: a trader added makes only the nodes nobody
//! had, a trader removed drops those nobody else uses. At most
//! [`NODE_BOUND`] live at once (the coordinator checks it where traders
//! enter; a worker refuses past it all the same).

pub mod program;
pub mod series;

use std::collections::HashMap;

use protocol::rule::{Expr, Field, Indicator, NODE_BOUND, fnv1a, node_texts};

use program::Program;

/// A node's index in its graph.
pub type NodeId = u32;

/// What an indicator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// The whole candle (ATR, VWAP).
    Candles,
    /// A candle field.
    Field(Field),
    /// Another node's values.
    Node(NodeId),
}

/// How a node's value is computed.
#[derive(Debug, Clone)]
pub enum Kind {
    /// An indicator over its source (its own source expression inside is
    /// not used: `src` says where the values come from).
    Ind(Indicator, Src),
    /// A computed series (an indicator's source that is neither a field
    /// nor an indicator).
    Calc(Program),
}

/// One distinct computation.
#[derive(Debug, Clone)]
pub struct NodeDef {
    /// Its canonical text (what makes two nodes the same).
    pub text: String,
    /// How it is computed.
    pub kind: Kind,
    /// Its digest: a recursive indicator's anchors are offset by it.
    pub key: u64,
    /// Nodes it reads.
    pub deps: Vec<NodeId>,
    /// 1 + the deepest of its deps: nodes are computed level by level.
    pub level: u32,
    /// Readers: traders whose programs name it, and nodes that read it.
    refs: u32,
    /// Values of it its readers look back at (set by [`Graph::plan`]): the
    /// length of its ring.
    pub keep: usize,
}

impl NodeDef {
    /// Values of its source before the index computed that it reads.
    pub fn reach(&self) -> usize {
        match &self.kind {
            Kind::Ind(ind, _) => ind.reach(),
            Kind::Calc(p) => p.back,
        }
    }
}

/// Why a rule cannot join the graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Past [`NODE_BOUND`].
    #[error(
        "this worker's evaluation graph holds {held} distinct indicators and computed series; the rule adds {adding}, past the limit of {NODE_BOUND}: restart with more --workers, or share indicators between rules"
    )]
    Bound {
        /// Live now.
        held: usize,
        /// New ones the rule needs.
        adding: usize,
    },
}

/// A trader's rule as the graph runs it.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Its condition.
    pub program: Program,
    /// Each indicator of the rule as written, with its node: a signal's
    /// `values`.
    pub values: Vec<(String, NodeId)>,
    /// Nodes its program and values read directly (one reference each).
    pub direct: Vec<NodeId>,
}

/// The nodes of a worker's traders.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: Vec<Option<NodeDef>>,
    by_text: HashMap<String, NodeId>,
    free: Vec<NodeId>,
    live: usize,
    /// Node ids in an order where every node comes after what it reads.
    order: Vec<NodeId>,
    /// Candles the series copies keep (set by [`Graph::plan`]).
    candle_keep: usize,
    /// Bumped by every change: series states rebuilt from an older one
    /// look again at what they hold.
    pub version: u64,
}

impl Graph {
    /// Live nodes.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Node `id`.
    pub fn def(&self, id: NodeId) -> Option<&NodeDef> {
        self.nodes.get(id as usize).and_then(Option::as_ref)
    }

    /// The highest node id + 1 (the length of per-series tables).
    pub fn capacity(&self) -> usize {
        self.nodes.len()
    }

    /// Nodes in the order they are computed.
    pub fn order(&self) -> &[NodeId] {
        &self.order
    }

    /// Candles a series copy keeps.
    pub fn candle_keep(&self) -> usize {
        self.candle_keep
    }

    /// Adds a rule: its nodes (the new ones made), its program. Past the
    /// bound nothing is added.
    pub fn add(&mut self, rule: &Expr) -> Result<Compiled, GraphError> {
        let adding = node_texts(rule)
            .iter()
            .filter(|t| !self.by_text.contains_key(*t))
            .count();
        if self.live + adding > NODE_BOUND {
            return Err(GraphError::Bound {
                held: self.live,
                adding,
            });
        }
        // One reference taken per occurrence (the program's reads, the
        // values), one kept per distinct node below.
        let program = Program::compile(rule, &mut |e| self.intern(e));
        let mut direct: Vec<NodeId> = program.reads().filter_map(|(n, _)| n).collect();
        let mut values = Vec::new();
        for ind in rule.indicators() {
            let id = self.intern(&Expr::Ind(ind.clone()));
            values.push((ind.text.clone(), id));
            direct.push(id);
        }
        // One reference per occurrence was taken: keep one per distinct node.
        let mut distinct = direct.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // (Kept first, so no count passes through zero.)
        for &n in &distinct {
            self.retain(n);
        }
        for &n in &direct {
            self.release(n);
        }
        self.version += 1;
        Ok(Compiled {
            program,
            values,
            direct: distinct,
        })
    }

    /// Drops a rule added with [`Graph::add`]: nodes nobody else reads go.
    pub fn remove(&mut self, compiled: &Compiled) {
        for &n in &compiled.direct {
            self.release(n);
        }
        self.version += 1;
    }

    fn retain(&mut self, n: NodeId) {
        if let Some(d) = self.nodes[n as usize].as_mut() {
            d.refs += 1;
        }
    }

    fn release(&mut self, n: NodeId) {
        let Some(d) = self.nodes[n as usize].as_mut() else {
            return;
        };
        d.refs -= 1;
        if d.refs > 0 {
            return;
        }
        let Some(d) = self.nodes[n as usize].take() else {
            return;
        };
        self.by_text.remove(&d.text);
        self.free.push(n);
        self.live -= 1;
        for dep in d.deps {
            self.release(dep);
        }
    }

    /// The node of `e` (an indicator, or a computed source), made if new,
    /// with one reference taken.
    fn intern(&mut self, e: &Expr) -> NodeId {
        let text = e.to_string();
        if let Some(&id) = self.by_text.get(&text) {
            self.retain(id);
            return id;
        }
        let kind = match e {
            Expr::Ind(ind) => {
                let src = match ind.kind.source() {
                    None => Src::Candles,
                    Some(Expr::Field(f)) => Src::Field(*f),
                    Some(other) => Src::Node(self.intern(other)),
                };
                Kind::Ind(ind.kind.clone(), src)
            }
            other => Kind::Calc(Program::compile(other, &mut |sub| self.intern(sub))),
        };
        let deps: Vec<NodeId> = match &kind {
            Kind::Ind(_, Src::Node(n)) => vec![*n],
            Kind::Ind(..) => Vec::new(),
            Kind::Calc(p) => {
                // A reference was taken per occurrence: one per dep is kept.
                // (Kept first, so no count passes through zero.)
                let distinct = p.nodes();
                for &n in &distinct {
                    self.retain(n);
                }
                for n in p.reads().filter_map(|(n, _)| n) {
                    self.release(n);
                }
                distinct
            }
        };
        let level = deps
            .iter()
            .filter_map(|&d| self.def(d).map(|d| d.level))
            .max()
            .unwrap_or(0)
            + 1;
        let def = NodeDef {
            key: fnv1a(&text),
            text: text.clone(),
            kind,
            deps,
            level,
            refs: 1,
            keep: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = Some(def);
                id
            }
            None => {
                self.nodes.push(Some(def));
                (self.nodes.len() - 1) as NodeId
            }
        };
        self.by_text.insert(text, id);
        self.live += 1;
        id
    }

    /// Works out what the nodes keep and the order they are computed in,
    /// from every reader: `traders` are the programs of the traders held,
    /// with their cooldowns (a fresh start judges the cooldown's candles
    /// before the one it is about, reading that much further back).
    pub fn plan<'a>(&mut self, traders: impl Iterator<Item = (&'a Compiled, usize)>) {
        let mut keep = vec![1usize; self.nodes.len()];
        let mut candles = 1usize;
        for (c, cooldown) in traders {
            for (op_node, back) in c.program.reads() {
                let need = back + cooldown + 1;
                match op_node {
                    Some(n) => keep[n as usize] = keep[n as usize].max(need),
                    None => candles = candles.max(need),
                }
            }
        }
        for def in self.nodes.iter().flatten() {
            match &def.kind {
                Kind::Ind(ind, src) => {
                    let need = ind.reach() + 1;
                    match src {
                        Src::Node(n) => keep[*n as usize] = keep[*n as usize].max(need),
                        Src::Candles | Src::Field(_) => candles = candles.max(need),
                    }
                }
                Kind::Calc(p) => {
                    for (op_node, back) in p.reads() {
                        match op_node {
                            Some(n) => keep[n as usize] = keep[n as usize].max(back + 1),
                            None => candles = candles.max(back + 1),
                        }
                    }
                }
            }
        }
        for (id, slot) in self.nodes.iter_mut().enumerate() {
            if let Some(def) = slot {
                def.keep = keep[id].next_power_of_two();
            }
        }
        self.candle_keep = candles.next_power_of_two();
        let mut order: Vec<NodeId> = (0..self.nodes.len() as NodeId)
            .filter(|&n| self.nodes[n as usize].is_some())
            .collect();
        order.sort_by_key(|&n| self.nodes[n as usize].as_ref().map_or(0, |d| d.level));
        self.order = order;
        self.version += 1;
    }

    /// `nodes` and every node they read, in computing order.
    pub fn closure(&self, nodes: &[NodeId]) -> Vec<NodeId> {
        let mut want = vec![false; self.nodes.len()];
        let mut stack: Vec<NodeId> = nodes.to_vec();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut want[n as usize], true) {
                continue;
            }
            if let Some(d) = self.def(n) {
                stack.extend(d.deps.iter().copied());
            }
        }
        self.order
            .iter()
            .copied()
            .filter(|&n| want[n as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests;
