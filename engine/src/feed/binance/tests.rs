//! Each Binance format parsed, and each way a line can be wrong.

use super::*;

fn btc() -> CsvFile {
    CsvFile::new(SymbolName::new("BTCUSDT").expect("valid"), Interval::M1)
}

const MS: &str = "1613692800000,51552.61,51657.05,51545.00,51613.38,134.989218,1613692859999";
const MS12: &str = "1613692800000,51552.61,51657.05,51545.00,51613.38,134.989218,1613692859999,6963000.1,3000,70.1,3600000.2,0";
const US12: &str = "1613692800000000,51552.61,51657.05,51545.00,51613.38,134.989218,1613692859999999,6963000.1,3000,70.1,3600000.2,0";

#[test]
fn milliseconds_microseconds_seven_and_twelve_columns_give_one_candle() {
    let a = btc().parse_line(MS).expect("ms").expect("a candle");
    let b = btc().parse_line(MS12).expect("ms12").expect("a candle");
    let c = btc().parse_line(US12).expect("us12").expect("a candle");
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.candle.open_time, 1_613_692_800_000);
    assert_eq!(a.at, 1_613_692_860_000);
    assert!(a.closed);
}

#[test]
fn a_header_is_skipped_only_at_the_top() {
    let mut f = btc();
    let header = CSV_COLUMNS.join(",");
    assert_eq!(f.parse_line(&header), Ok(None));
    assert!(f.parse_line(MS12).expect("data").is_some());
    assert!(matches!(
        f.parse_line(&header),
        Err(BadLine::Columns { .. }) | Err(BadLine::Number { .. })
    ));
}

#[test]
fn bad_lines_say_what_is_wrong() {
    let mut f = btc();
    assert!(f.parse_line(MS).is_ok());
    let cases = [
        ("1,2,3", "3 columns"),
        ("1613692860000,abc,1,1,1,1,1613692919999", "open is \"abc\""),
        (
            "1613692860000000,1,1,1,1,1,1613692919999999",
            "microseconds",
        ),
        ("1613692860000,1,1,1,1,1,1613692990000", "spans"),
        ("1613692860000,1,1,1,1,1,1613692850000", "spans"),
        ("1613692860000,2,1,1.5,1,1,1613692919999", "inconsistent"),
        ("1613692860000,1,1,1,1,-1,1613692919999", "negative volume"),
        ("1613692860000,NaN,1,1,1,1,1613692919999", "not finite"),
        ("16,1,1,1,1,1,75", "out of range"),
    ];
    for (line, want) in cases {
        let err = f.parse_line(line).expect_err(line).to_string();
        assert!(err.contains(want), "{line}: {err}");
    }
}

#[test]
fn old_dump_rows_are_read_as_binance_recorded_them() {
    // binance-public-data #14 and #77: 2017-2018 dumps hold candles whose
    // close time is cut short (the exchange stopped mid-minute) and open
    // times off the minute grid. Each is the candle of the minute it falls in.
    let mut f = btc();
    let cut = f
        .parse_line("1613692800000,1,2,0.5,1.5,3,1613692830123")
        .expect("a cut-short close time")
        .expect("a candle");
    assert_eq!(cut.candle.open_time, 1_613_692_800_000);
    assert_eq!(cut.candle.close, 1.5);
    let unaligned = f
        .parse_line("1613692860437,1,2,0.5,1.5,3,1613692919999")
        .expect("an unaligned open time")
        .expect("a candle");
    assert_eq!(unaligned.candle.open_time, 1_613_692_860_000);
    // Strict where it matters: a close before the open, or past the
    // candle's interval, is still refused.
    assert!(
        f.parse_line("1613692920000,1,1,1,1,1,1613692919999")
            .is_err()
    );
    assert!(
        f.parse_line("1613692980000,1,1,1,1,1,1613693100000")
            .is_err()
    );
}

#[test]
fn rest_rows_and_events_with_columns_binance_may_add_still_parse() {
    let sym = SymbolName::new("BTCUSDT").expect("valid");
    let body = r#"[[1613692800000,"1","2","0.5","1.5","3",1613692859999,"1",3000,"1","1","0","a 13th column",{"and":"more"}]]"#;
    let (rows, bad) = parse_rest(body, &sym, Interval::M1, i64::MAX).expect("rows");
    assert_eq!((rows.len(), bad.len()), (1, 0));
    assert_eq!(rows[0].candle.close, 1.5);
    let short = r#"[[1613692800000,"1","2","0.5","1.5","3"]]"#;
    let err = parse_rest(short, &sym, Interval::M1, i64::MAX).expect_err("six columns");
    assert!(err.to_string().contains("at least 7 columns"), "{err}");
    let ws = r#"{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1613692860001,"s":"BTCUSDT","new":[1,2],"k":{"t":1613692800000,"T":1613692859999,"s":"BTCUSDT","i":"1m","o":"1","c":"1.5","h":"2","l":"0.5","v":"3","x":true,"extra":{"x":1}}},"more":true}"#;
    assert!(matches!(parse_ws(ws), Ok(Message::Kline(_))));
}

#[test]
fn server_shutdown_is_recognized_in_each_wrapping() {
    for text in [
        r#"{"e":"serverShutdown","E":1700000000000}"#,
        r#"{"event":{"e":"serverShutdown","E":1700000000000}}"#,
        r#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1700000000000}}"#,
    ] {
        assert_eq!(parse_ws(text), Ok(Message::ServerShutdown), "{text}");
    }
}

#[test]
fn wild_timestamps_and_values_are_bad_lines_not_panics() {
    for line in [
        "1613692800000,1,1,1,1,1,-9223372036854775808",
        "1613692800000,1,1,1,1,1,9223372036854775807",
        "1613692800000,1e300,1e300,1e300,1e300,1,1613692859999",
        "-9223372036854775808,1,1,1,1,1,1613692859999",
    ] {
        assert!(btc().parse_line(line).is_err(), "{line}");
    }
    let k = |t: &str, tt: &str, e: &str| {
        format!(
            r#"{{"e":"kline","E":{e},"s":"BTCUSDT","k":{{"t":{t},"T":{tt},"s":"BTCUSDT","i":"1m","o":"1","c":"1","h":"1","l":"1","v":"1","x":true}}}}"#
        )
    };
    assert!(parse_ws(&k("1613692800000", "-9223372036854775808", "1")).is_err());
    // An implausible event time falls back to the close.
    for e in [
        "-9223372036854775808",
        "0",
        "4102444800000000",
        "4102444800000",
        "1613692799999",
    ] {
        let Ok(Message::Kline(kl)) = parse_ws(&k("1613692800000", "1613692859999", e)) else {
            panic!("a kline with E={e}")
        };
        assert_eq!(kl.at, 1_613_692_860_000, "E={e}");
    }
}

#[test]
fn file_names_name_symbol_and_interval() {
    assert_eq!(
        parse_file_name(Path::new("/d/BTCUSDT-1m-2024-01.csv")),
        Some((SymbolName::new("BTCUSDT"), Interval::M1))
    );
    assert_eq!(
        parse_file_name(Path::new("ethusdt-4h-2024-01-02.csv")),
        Some((SymbolName::new("ETHUSDT"), Interval::H4))
    );
    assert_eq!(parse_file_name(Path::new("candles.csv")), None);
    // The shape of a dump's name, with a symbol no exchange lists.
    let (symbol, interval) =
        parse_file_name(Path::new("BTC_USDT-1m-2024-01.csv")).expect("a dump's name");
    assert_eq!(interval, Interval::M1);
    assert_eq!(
        symbol,
        Err(protocol::names::NameError::Symbol("BTC_USDT".into()))
    );
}

#[test]
fn websocket_single_and_combined_payloads_give_one_kline() {
    let k = r#"{"t":1613692800000,"T":1613692859999,"s":"BTCUSDT","i":"1m","f":1,"L":2,"o":"51552.61","c":"51613.38","h":"51657.05","l":"51545.00","v":"134.989218","n":3000,"x":true,"q":"1","V":"1","Q":"1","B":"0"}"#;
    let single = format!(r#"{{"e":"kline","E":1613692860001,"s":"BTCUSDT","k":{k}}}"#);
    let combined = format!(r#"{{"stream":"btcusdt@kline_1m","data":{single}}}"#);
    let a = parse_ws(&single).expect("single");
    let b = parse_ws(&combined).expect("combined");
    assert_eq!(a, b);
    let Message::Kline(kline) = a else {
        panic!("a kline")
    };
    let csv = btc().parse_line(MS).expect("ms").expect("candle");
    assert_eq!(kline.candle, csv.candle);
    assert!(kline.closed);
    assert_eq!(kline.at, 1_613_692_860_001);
    assert_eq!(parse_ws(r#"{"result":null,"id":1}"#), Ok(Message::Other));
    assert!(matches!(parse_ws("garbage"), Err(BadLine::Json(_))));
    assert!(matches!(
        parse_ws(r#"{"e":"kline"}"#),
        Err(BadLine::Json(_))
    ));
    let bad_price = single.replace("\"51552.61\"", "\"x\"");
    assert!(
        parse_ws(&bad_price)
            .expect_err("bad price")
            .to_string()
            .contains("k.o")
    );
}

#[test]
fn rest_rows_close_when_their_time_has_passed() {
    let body = r#"[[1613692800000,"51552.61","51657.05","51545.00","51613.38","134.989218",1613692859999,"1",3000,"1","1","0"],
                   [1613692860000,"51622.99","51696.42","51606.39","51678.84","106.156963",1613692919999,"1",3000,"1","1","0"]]"#;
    let sym = SymbolName::new("BTCUSDT").expect("valid");
    let (rows, bad) = parse_rest(body, &sym, Interval::M1, 1_613_692_923_000).expect("rows");
    assert_eq!(rows.len(), 2);
    assert!(bad.is_empty());
    // The second closed 3 s ago, within the margin: still an update.
    assert!(rows[0].closed && !rows[1].closed);
    let wild = r#"[[-9223372036854775808,"1","1","1","1","1",1,"0",1,"0","0","0"],
                   [1613692800000,"1","1","1","1","1",-9223372036854775808,"0",1,"0","0","0"],
                   [1613692800000,"x","1","1","1","1",1613692859999,"0",1,"0","0","0"],
                   [1613692860000,"51622.99","51696.42","51606.39","51678.84","106.156963",1613692919999,"1",3000,"1","1","0"]]"#;
    let (rows, bad) = parse_rest(wild, &sym, Interval::M1, i64::MAX).expect("rows");
    assert_eq!(
        (rows.len(), bad.len()),
        (1, 3),
        "bad rows skipped one by one"
    );
    assert!(parse_rest("{}", &sym, Interval::M1, 0).is_err());
}

#[test]
fn buckets_follow_the_exchange() {
    // 2021-02-22 was a Monday.
    let monday = 1_613_952_000_000;
    assert_eq!(bucket_start(monday + 3 * 86_400_000, Interval::W1), monday);
    assert_eq!(bucket_start(monday, Interval::W1), monday);
    assert_eq!(
        bucket_start(1_613_692_860_000, Interval::M5),
        1_613_692_800_000
    );
    assert_eq!(
        bucket_start(1_613_692_800_000 + 3_599_999, Interval::H1),
        1_613_692_800_000
    );
}
