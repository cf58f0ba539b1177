//! Candles written in Binance's row formats, the inverse of the engine's
//! parsers (`engine::feed::binance`): the REST rows and dumps the fake
//! exchange serves, and the replay files tests and benchmarks write.

use protocol::{Candle, Interval};

/// One of Binance's row formats, to write a candle in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// The first 7 columns of a dump, millisecond times.
    Dump7,
    /// All 12 columns of a spot dump, microsecond times (2025 on).
    Dump12Micros,
    /// A `/api/v3/klines` row: a JSON array, prices and volumes as strings.
    Rest,
}

/// `c`, an `interval` candle, as one row in `format` (no line end). The
/// columns Binance has and shmkline does not keep are made up consistently:
/// quote volume = volume x close, 1,234 trades, half of it taker-bought.
pub fn format_row(c: &Candle, interval: Interval, format: RowFormat) -> String {
    let close_time = c.open_time + interval.millis() as i64 - 1;
    match format {
        RowFormat::Dump7 => format!(
            "{},{},{},{},{},{},{close_time}",
            c.open_time, c.open, c.high, c.low, c.close, c.volume
        ),
        RowFormat::Dump12Micros => format!(
            "{}000,{},{},{},{},{},{close_time}999,{},1234,{},{},0",
            c.open_time,
            c.open,
            c.high,
            c.low,
            c.close,
            c.volume,
            c.volume * c.close,
            c.volume / 2.0,
            c.volume * c.close / 2.0
        ),
        RowFormat::Rest => format!(
            r#"[{},"{}","{}","{}","{}","{}",{close_time},"{}",1234,"{}","{}","0"]"#,
            c.open_time,
            c.open,
            c.high,
            c.low,
            c.close,
            c.volume,
            c.volume * c.close,
            c.volume / 2.0,
            c.volume * c.close / 2.0
        ),
    }
}

/// `candles` as the 7-column CSV of a Binance dump (what a backtest of the
/// server's candle set replays).
pub fn dump_csv(candles: &[Candle]) -> String {
    candles
        .iter()
        .map(|c| format_row(c, Interval::M1, RowFormat::Dump7) + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use engine::feed::binance::{CsvFile, parse_rest};
    use protocol::SymbolName;

    use super::*;

    #[test]
    fn every_row_format_parses_back_to_the_candle_written() {
        let symbol = SymbolName::new("BTCUSDT").expect("valid");
        let c = Candle {
            open_time: 1_736_000_040_000,
            open: 97_000.5,
            high: 97_100.25,
            low: 96_900.125,
            close: 97_050.0,
            volume: 12.5,
        };
        for format in [RowFormat::Dump7, RowFormat::Dump12Micros] {
            let mut file = CsvFile::new(symbol.clone(), Interval::M1);
            let k = file
                .parse_line(&format_row(&c, Interval::M1, format))
                .expect("parses")
                .expect("a candle");
            assert_eq!(k.candle, c, "{format:?}");
        }
        let body = format!("[{}]", format_row(&c, Interval::M1, RowFormat::Rest));
        let (rows, bad) =
            parse_rest(&body, &symbol, Interval::M1, c.open_time + 3_600_000).expect("parses");
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(rows[0].candle, c);
    }
}
