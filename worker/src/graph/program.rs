//! A rule, or a computed series, as a flat program: operations on a small
//! stack of numbers, reading candle fields and node values by index, no
//! allocation and no hashing per evaluation. Its values are those of
//! [`crate::point::Point::value`] operation for operation: conditions as
//! 1.0 / 0.0, *no value* (NaN) for a number without one, which arithmetic
//! carries and comparisons and crosses turn into false.

use protocol::rule::{Expr, Field};

use super::NodeId;

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// One operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// Pushes a number.
    Const(f64),
    /// Pushes a candle field `back` candles before the one evaluated.
    Field(Field, u32),
    /// Pushes a node's value `back` candles before the one evaluated.
    Node(NodeId, u32),
    /// `-x`.
    Neg,
    /// `a op b`.
    Arith(Arith),
    /// `a op b` as 1.0 / 0.0.
    Cmp(Cmp),
    /// Both conditions hold.
    And,
    /// Either holds.
    Or,
    /// The condition does not hold.
    Not,
    /// Pops `a0 b0 a1 b1` (the candle before, then this one): a crosses `b`
    /// upwards (true) or downwards (false).
    Cross(bool),
}

/// A compiled expression: run with [`Program::eval`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Program {
    ops: Vec<Op>,
    /// How far back it reads at most (for the rings that must hold it).
    pub back: usize,
    /// The deepest its stack gets.
    need: usize,
    /// The depth while compiling.
    depth: usize,
}

/// Stack slots an evaluation holds on the thread's stack; a deeper program
/// (rare: a rule nested past this) takes a heap buffer.
const STACK: usize = 24;

/// Where a program reads: candle fields and node values by absolute index.
pub trait Values {
    /// Field `f` of candle `index`; NaN when not held.
    fn field(&self, f: Field, index: u64) -> f64;
    /// Node `node`'s value at `index`; NaN when it has none.
    fn node(&self, node: NodeId, index: u64) -> f64;
}

fn truth(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

impl Program {
    /// `e` compiled, its indicators and computed sources resolved to nodes
    /// by `node` (called once per occurrence, innermost first).
    pub fn compile(e: &Expr, node: &mut impl FnMut(&Expr) -> NodeId) -> Self {
        let mut p = Program::default();
        p.emit(e, 0, node);
        p
    }

    fn push(&mut self, op: Op, back: u32) {
        self.back = self.back.max(back as usize);
        let (pops, pushes) = match op {
            Op::Const(_) | Op::Field(..) | Op::Node(..) => (0, 1),
            Op::Neg | Op::Not => (1, 1),
            Op::Arith(_) | Op::Cmp(_) | Op::And | Op::Or => (2, 1),
            Op::Cross(_) => (4, 1),
        };
        self.depth = self.depth - pops + pushes;
        self.need = self.need.max(self.depth);
        self.ops.push(op);
    }

    fn emit(&mut self, e: &Expr, back: u32, node: &mut impl FnMut(&Expr) -> NodeId) {
        match e {
            Expr::Num(v) => self.push(Op::Const(*v), 0),
            Expr::Field(f) => self.push(Op::Field(*f, back), back),
            Expr::Back(x, k) => self.emit(x, back.saturating_add(*k as u32), node),
            Expr::Neg(x) => {
                self.emit(x, back, node);
                self.push(Op::Neg, 0);
            }
            Expr::Arith(op, a, b) => {
                self.emit(a, back, node);
                self.emit(b, back, node);
                let op = match *op {
                    "+" => Arith::Add,
                    "-" => Arith::Sub,
                    "*" => Arith::Mul,
                    _ => Arith::Div,
                };
                self.push(Op::Arith(op), 0);
            }
            Expr::Cmp(op, a, b) => {
                self.emit(a, back, node);
                self.emit(b, back, node);
                let op = match *op {
                    "<" => Cmp::Lt,
                    "<=" => Cmp::Le,
                    ">" => Cmp::Gt,
                    ">=" => Cmp::Ge,
                    "==" => Cmp::Eq,
                    _ => Cmp::Ne,
                };
                self.push(Op::Cmp(op), 0);
            }
            Expr::And(a, b) => {
                self.emit(a, back, node);
                self.emit(b, back, node);
                self.push(Op::And, 0);
            }
            Expr::Or(a, b) => {
                self.emit(a, back, node);
                self.emit(b, back, node);
                self.push(Op::Or, 0);
            }
            Expr::Not(x) => {
                self.emit(x, back, node);
                self.push(Op::Not, 0);
            }
            Expr::Cross(above, a, b) => {
                self.emit(a, back + 1, node);
                self.emit(b, back + 1, node);
                self.emit(a, back, node);
                self.emit(b, back, node);
                self.push(Op::Cross(*above), 0);
            }
            Expr::Ind(_) => {
                let id = node(e);
                self.push(Op::Node(id, back), back);
            }
        }
    }

    /// What each of its reads is: a node (`None`: a candle field) and how
    /// far back.
    pub fn reads(&self) -> impl Iterator<Item = (Option<NodeId>, usize)> + '_ {
        self.ops.iter().filter_map(|op| match *op {
            Op::Field(_, k) => Some((None, k as usize)),
            Op::Node(n, k) => Some((Some(n), k as usize)),
            _ => None,
        })
    }

    /// The nodes it reads, each once.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for op in &self.ops {
            if let Op::Node(n, _) = op
                && !out.contains(n)
            {
                out.push(*n);
            }
        }
        out
    }

    /// Its value at candle `index`.
    pub fn eval(&self, at: &impl Values, index: u64) -> f64 {
        if self.need <= STACK {
            self.run(at, index, &mut [0.0; STACK])
        } else {
            self.run(at, index, &mut vec![0.0; self.need])
        }
    }

    fn run(&self, at: &impl Values, index: u64, stack: &mut [f64]) -> f64 {
        let mut top = 0usize;
        let back = |k: u32| index.checked_sub(u64::from(k));
        for op in &self.ops {
            let v = match *op {
                Op::Const(v) => v,
                Op::Field(f, k) => back(k).map_or(f64::NAN, |i| at.field(f, i)),
                Op::Node(n, k) => back(k).map_or(f64::NAN, |i| at.node(n, i)),
                Op::Neg => {
                    top -= 1;
                    -stack[top]
                }
                Op::Arith(op) => {
                    top -= 2;
                    let (x, y) = (stack[top], stack[top + 1]);
                    if x.is_nan() || y.is_nan() {
                        f64::NAN
                    } else {
                        match op {
                            Arith::Add => x + y,
                            Arith::Sub => x - y,
                            Arith::Mul => x * y,
                            // Division by zero has no value (not infinity,
                            // which would compare greater than anything).
                            Arith::Div if y == 0.0 => f64::NAN,
                            Arith::Div => x / y,
                        }
                    }
                }
                Op::Cmp(op) => {
                    top -= 2;
                    let (x, y) = (stack[top], stack[top + 1]);
                    truth(
                        !x.is_nan()
                            && !y.is_nan()
                            && match op {
                                Cmp::Lt => x < y,
                                Cmp::Le => x <= y,
                                Cmp::Gt => x > y,
                                Cmp::Ge => x >= y,
                                Cmp::Eq => x == y,
                                Cmp::Ne => x != y,
                            },
                    )
                }
                Op::And => {
                    top -= 2;
                    truth(stack[top] == 1.0 && stack[top + 1] == 1.0)
                }
                Op::Or => {
                    top -= 2;
                    truth(stack[top] == 1.0 || stack[top + 1] == 1.0)
                }
                Op::Not => {
                    top -= 1;
                    truth(stack[top] != 1.0)
                }
                Op::Cross(above) => {
                    top -= 4;
                    let [a0, b0, a1, b1] =
                        [stack[top], stack[top + 1], stack[top + 2], stack[top + 3]];
                    if [a0, b0, a1, b1].iter().any(|v| v.is_nan()) {
                        0.0
                    } else {
                        truth(if above {
                            a0 <= b0 && a1 > b1
                        } else {
                            a0 >= b0 && a1 < b1
                        })
                    }
                }
            };
            stack[top] = v;
            top += 1;
        }
        if top == 1 { stack[0] } else { f64::NAN }
    }
}
