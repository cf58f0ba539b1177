//! The one wall clock of shmkline: milliseconds since the Unix epoch, as the
//! segment's heartbeat, Binance's timestamps and the signal lines count them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the epoch (0 if the clock reads before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
