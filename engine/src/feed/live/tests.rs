//! The live feed's options, health and URL building, without a network.

use std::time::Duration;

use protocol::SymbolName;

use super::*;

fn opts() -> LiveOptions {
    LiveOptions {
        symbols: vec![
            SymbolName::new("BTCUSDT").expect("valid"),
            SymbolName::new("ETHUSDT").expect("valid"),
        ],
        intervals: vec![Interval::M1, Interval::M5],
        ws_url: BINANCE_WS.into(),
        rest_url: BINANCE_REST.into(),
        silence_timeout: Duration::from_secs(30),
        max_connection_age: Duration::from_secs(23 * 3600),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(30),
        backfill: [(Interval::M1, 1000), (Interval::M5, 1000)].into(),
        ca_file: None,
        trace: false,
        rest_weight_per_minute: DEFAULT_WEIGHT_PER_MINUTE,
        skip_unknown: false,
        max_queued_bytes: DEFAULT_QUEUED_BYTES,
        opens_per_window: OPENS_PER_WINDOW,
    }
}

#[test]
fn the_stream_url_names_every_symbol_and_interval() {
    let groups = opts().groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        groups[0].url,
        "wss://stream.binance.com:9443/stream?streams=btcusdt@kline_1m/btcusdt@kline_5m/ethusdt@kline_1m/ethusdt@kline_5m"
    );
}

#[test]
fn bad_options_name_the_flag() {
    let mut o = opts();
    o.symbols.clear();
    assert!(
        o.check()
            .expect_err("no symbols")
            .to_string()
            .contains("--symbols")
    );
    let mut o = opts();
    o.ws_url = "http://x".into();
    assert!(
        o.check()
            .expect_err("scheme")
            .to_string()
            .contains("--endpoint")
    );
    let mut o = opts();
    o.symbols = (0..2_000)
        .map(|k| SymbolName::new(&format!("S{k}USDT")).expect("valid"))
        .collect();
    assert!(o.check().is_ok(), "4,000 streams fit in a few connections");
    o.symbols = (0..12_000)
        .map(|k| SymbolName::new(&format!("S{k}USDT")).expect("valid"))
        .collect();
    let err = o.check().expect_err("too many").to_string();
    assert!(err.contains("--symbols") && err.contains("64"), "{err}");
    let mut o = opts();
    o.rest_weight_per_minute = 6_001;
    let err = o.check().expect_err("over the exchange's").to_string();
    assert!(err.contains("--rest-weight-per-minute"), "{err}");
    assert!(opts().check().is_ok());
}
