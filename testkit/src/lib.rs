//! Stand-ins for what shmkline talks to, for the tests, the benchmarks and
//! the soak: never part of a release `shmkline` (the engine does not depend
//! on this crate; only its own unit tests do, as a dev-dependency). Each
//! binds loopback only and stops, its threads joined, on drop.
//!
//! * [`exchange`]: a fake Binance, WebSocket and REST, as unkind as Binance.
//! * [`webhook`]: a webhook receiver answering from a script.
//! * [`nats_server`]: a real `nats-server` with JetStream on a free port.
//! * [`rows`]: candles written in Binance's row formats (REST rows, dumps).
//! * [`tls`]: a TLS server identity for the stand-ins that serve HTTPS.

pub mod exchange;
pub mod nats_server;
pub mod rows;
pub mod tls;
pub mod webhook;
