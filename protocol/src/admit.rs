//! Admitting a trader where it enters (a trader file, `traders add`, a
//! worker's ADD_TRADER): its spec checked and its rule compiled, then the
//! frames it will need measured against the frame limit, so that a trader
//! too large for the protocol is refused with its size and what to shorten,
//! not found out as a crash deep in a worker.

use std::collections::BTreeMap;

use crate::frame::{FrameError, MAX_FRAME, MAX_SIGNAL, encode, signal_len};
use crate::message::{Message, RequestId, Signal};
use crate::trader::{Rule, SpecError, TraderSpec};

/// Checks `spec`, compiles its rule and measures its frames.
pub fn admit(spec: &TraderSpec) -> Result<Rule, SpecError> {
    let rule = spec.compile()?;
    check_frames(spec, &rule)?;
    Ok(rule)
}

/// The encoded size of the largest signal this trader can send: its id,
/// the longest symbol name, the widest open time, its labels, and one
/// value per indicator of its rule (keyed by the indicator's text).
pub fn largest_signal(spec: &TraderSpec, rule: &Rule) -> usize {
    let values = rule.compiled().map_or_else(BTreeMap::new, |c| {
        c.expr
            .indicators()
            .into_iter()
            .map(|i| (i.text.clone(), 0.0))
            .collect()
    });
    signal_len(&Signal {
        trader: spec.id.clone(),
        symbol: "W".repeat(crate::names::MAX_SYMBOL_LEN),
        interval: spec.interval,
        open_time: i64::MIN,
        close: 0.0,
        labels: spec.labels.clone(),
        values,
    })
}

/// Refuses a trader whose ADD_TRADER frame, or whose largest signal,
/// would not fit one frame: found here, where the trader enters, not as a
/// crash deep in a worker.
fn check_frames(spec: &TraderSpec, rule: &Rule) -> Result<(), SpecError> {
    let add = Message::AddTrader {
        spec: spec.clone(),
        resume_after: u64::MAX,
    };
    let add_bytes = encode(RequestId(u64::MAX), &add).map_or_else(
        |e| match e {
            FrameError::TooLarge { len } => len,
            _ => usize::MAX,
        },
        |f| f.len(),
    );
    if add_bytes > MAX_FRAME {
        return Err(SpecError::TooLarge {
            id: spec.id.clone(),
            what: "its spec (the ADD_TRADER frame)",
            bytes: add_bytes,
            limit: MAX_FRAME,
            fix: "shorten its labels or its symbol list (\"*\" watches every symbol), or split it into several traders",
        });
    }
    let signal = largest_signal(spec, rule);
    if signal > MAX_SIGNAL {
        return Err(SpecError::TooLarge {
            id: spec.id.clone(),
            what: "its largest signal",
            bytes: signal,
            limit: MAX_SIGNAL,
            fix: "shorten its labels or its rule (every indicator's text is a key of the signal's `values`)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Interval;
    use crate::trader::Symbols;

    fn spec(rule: &str) -> TraderSpec {
        TraderSpec {
            id: "t1".into(),
            version: 1,
            symbols: Symbols::All,
            interval: Interval::M1,
            rule: rule.into(),
            cooldown: 0,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn specs_too_large_for_a_frame_are_refused_where_they_enter() {
        // A 70 KB label: the ADD_TRADER frame itself would not fit.
        let mut s = spec("close > 1");
        s.labels.insert("note".into(), "x".repeat(70_000));
        let err = admit(&s).expect_err("too large").to_string();
        assert!(
            err.contains("trader t1") && err.contains("ADD_TRADER") && err.contains("65536"),
            "{err}"
        );
        // A rule whose indicators' texts (the keys of `values`) nest: each
        // enclosing indicator's text repeats the padded inner one, so the
        // signal outgrows a frame while the spec is 4 KB.
        let pad = " ".repeat(3000);
        let mut rule = format!("sma(close{pad}, 2)");
        for _ in 0..40 {
            rule = format!("sma({rule}, 2)");
        }
        let s = spec(&format!("{rule} > 1"));
        assert!(s.rule.len() < crate::rule::MAX_RULE_LEN);
        let err = admit(&s).expect_err("signal too large").to_string();
        assert!(
            err.contains("its largest signal") && err.contains("`values`"),
            "{err}"
        );
        // Just under the limits: accepted, and the largest signal fits.
        let mut s = spec("rsi(14) < 30");
        s.labels.insert("note".into(), "x".repeat(60_000));
        let rule = admit(&s).expect("fits");
        assert!(largest_signal(&s, &rule) <= MAX_SIGNAL);
    }
}
