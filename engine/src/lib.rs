//! The shmkline coordinator as a library; `src/main.rs` is the thin CLI over it.
//!
//! * [`cli`]: the command line: arguments, commands, clients, renderers.
//! * [`runtime`]: the instance lock (one coordinator per instance) and the
//!   private runtime directory.
//! * [`instance`]: a running instance's owned resources, released in order.
//! * [`process`]: killing and reaping children.
//! * [`hold`]: `shmkline store hold|inspect`, the store from a shell.
//! * [`kline`]: one candle as every feed delivers it, the checks it passes,
//!   why one is not taken, where an interval's candles start.
//! * [`feed`]: where candles come from: synthetic, replayed files, live Binance.
//! * [`nats`]: NATS JetStream between hosts: addresses, streams, the connection, shards.
//! * [`run`]: `shmkline run`, the coordinator, and its control socket.
//! * [`backtest`]: the same traders over the same feed in one process: the oracle.
//! * [`traders`]: trader files (JSON, TOML) and the built-in set.
//! * [`redact`]: secrets (URL credentials, query strings) kept out of what is shown.
//! * [`input`]: files a user names, read through a bound (no FIFO or device hangs).
//! * [`http_date`]: HTTP dates, an exchange's clock and a webhook's `Retry-After`.
//! * [`signal_line`]: the JSON line of a signal, as stdout and files get it.

pub mod backtest;
pub mod cli;
pub mod feed;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod hold;
pub mod http_date;
pub mod input;
pub mod instance;
pub mod kline;
pub mod locked;
pub mod nats;
pub mod process;
pub mod redact;
pub mod run;
pub mod runtime;
pub mod signal_line;
pub mod state;
pub mod traders;
