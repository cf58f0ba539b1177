//! The control protocol: what a client asks a running coordinator over its
//! control socket, and the typed answers it gets back.
//!
//! A request is one line ([`Request`], at most [`MAX_REQUEST`] bytes); its
//! answer is one JSON line, the request's own answer type or a
//! [`Refusal`] (`{"error": ..., "hint": ...}`). The coordinator builds these
//! types and the command line, `shmkline top` and the metrics endpoint read
//! them, so a field renamed here is a compile error there, not a blank.
//!
//! * [`request`]: the requests, their line, the line limit.
//! * [`answer`]: the answer envelope, refusals, `ping` and `events`, and
//!   reading an answer line.
//! * [`status`]: the `status` snapshot; [`feed`] and [`sinks`] its feed and
//!   outputs.
//! * [`traders`]: the trader list and the answers to `add` and `remove`.
//! * [`metrics`]: the `metrics` snapshot.
//!
//! Durations carry their unit in their name (`_ms`, `_us`, `_ns`, `_s`).

pub mod answer;
pub mod feed;
pub mod metrics;
pub mod request;
pub mod sinks;
pub mod status;
pub mod traders;

pub use answer::{Answer, AnswerError, Events, Pong, Refusal, decode};
pub use feed::{
    Feed, FiniteFeed, LiveFeed, LiveFigures, NatsConnection, NatsFeed, NatsSource, Pace,
    ReplayFeed, SeriesNote, SeriesSummary, WriterCounters,
};
pub use metrics::{MetricsSnapshot, SlotPasses, SlotRestarts};
pub use request::{MAX_REQUEST, Request, RequestError, RequestKind, TooLong, within_limit};
pub use sinks::{CandlePublishing, Delivery, DurableSink, NatsSink, Sink, StdoutSink};
pub use status::{
    Cause, ControlLoad, FaultEvent, FaultKind, LoopCost, Memory, ProcessMemory, Quarantined, Ring,
    RunState, Segment, Shard, Signals, SizedBy, Status, Supervision, Worker, WorkerState,
};
pub use traders::{
    Added, AddedTrader, HeldTrader, QuarantinedTrader, Removed, RemovedFrom, SeriesWarmth,
    TraderList, TraderRow, WasQuarantined,
};

#[cfg(test)]
mod tests;
