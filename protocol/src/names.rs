//! Validated names. An instance name becomes part of a shared-memory object
//! name and of runtime paths, so it is never allowed to be a path itself; a
//! symbol name is what an exchange symbol can be, whatever it came from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest instance name accepted.
pub const MAX_INSTANCE_LEN: usize = 32;
/// Shortest symbol name: no exchange lists a one-character pair.
pub const MIN_SYMBOL_LEN: usize = 2;
/// Longest symbol name: room for long pairs (`1000SATSUSDT` is 12) and
/// within the store's directory entry (31 bytes).
pub const MAX_SYMBOL_LEN: usize = 20;
/// The rule a symbol name keeps, as the errors say it.
pub const SYMBOL_RULE: &str =
    "2 to 20 characters from A-Z and 0-9, upper-cased first (btcusdt is BTCUSDT)";

/// A rejected name, saying which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// Instance names are `[A-Za-z0-9_-]{1,32}`.
    #[error(
        "invalid instance name {0:?}: use 1 to {MAX_INSTANCE_LEN} characters from A-Z, a-z, 0-9, '_' and '-'"
    )]
    Instance(String),
    /// Symbol names are `[A-Z0-9]{2,20}` once upper-cased; the name as given.
    #[error("invalid symbol name {0:?}: an exchange symbol is {SYMBOL_RULE}")]
    Symbol(String),
}

/// The variable that names the instance when `--instance` does not.
pub const INSTANCE_ENV: &str = "SHMKLINE_INSTANCE";

/// `$SHMKLINE_INSTANCE` holds an invalid name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{INSTANCE_ENV}: {0}")]
pub struct FromEnvError(pub NameError);

/// The name of one engine instance: `[A-Za-z0-9_-]{1,32}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceName(String);

impl InstanceName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let ok = (1..=MAX_INSTANCE_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(NameError::Instance(name.to_owned()))
        }
    }

    /// `$SHMKLINE_INSTANCE` if it is set and not empty, else `default`:
    /// the one place both binaries look the instance up.
    pub fn from_env_or(default: &str) -> Result<Self, FromEnvError> {
        match std::env::var(INSTANCE_ENV) {
            Ok(name) if !name.is_empty() => Self::new(&name).map_err(FromEnvError),
            _ => Self::new(default).map_err(FromEnvError),
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The POSIX shared-memory object holding this instance's candle store.
    pub fn segment_name(&self) -> String {
        format!("/shmkline-{}", self.0)
    }

    /// A companion shared-memory object (benchmarks, tests), `/shmkline-<instance>-<suffix>`.
    /// `suffix` is a fixed identifier chosen by the caller, not user input.
    pub fn companion_segment_name(&self, suffix: &'static str) -> String {
        format!("/shmkline-{}-{}", self.0, suffix)
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for InstanceName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A market symbol: `[A-Z0-9]{2,20}`, upper-cased from what was given, as
/// exchanges name pairs (`BTCUSDT`, `1000SATSUSDT`). The only way to make
/// one is [`SymbolName::new`] (deserialising goes through it too), so every
/// symbol that enters (a trader file, `--symbols`, a file name, a feed's
/// message) is one an exchange could list, and fits the store's directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SymbolName(String);

impl SymbolName {
    /// Upper-cases `name` (ASCII only) and checks it against [`SYMBOL_RULE`];
    /// the error names `name` as given.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let upper = name.to_ascii_uppercase();
        let ok = (MIN_SYMBOL_LEN..=MAX_SYMBOL_LEN).contains(&upper.len())
            && upper
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if ok {
            Ok(Self(upper))
        } else {
            Err(NameError::Symbol(name.to_owned()))
        }
    }

    /// The name, upper-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SymbolName {
    type Error = NameError;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::new(&name)
    }
}

impl From<SymbolName> for String {
    fn from(name: SymbolName) -> Self {
        name.0
    }
}

impl fmt::Display for SymbolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SymbolName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_never_paths() {
        for bad in ["", "a/b", "..", "x y", "é", &"a".repeat(33), "a\0"] {
            assert!(InstanceName::new(bad).is_err(), "{bad:?} accepted");
        }
        let ok = InstanceName::new("chaos_01-a").expect("valid name");
        assert_eq!(ok.segment_name(), "/shmkline-chaos_01-a");
    }

    #[test]
    fn a_symbol_name_is_what_an_exchange_symbol_can_be() {
        for good in ["BTCUSDT", "1000SATSUSDT", "ETHBTC", "SYN000", "AB"] {
            let name = SymbolName::new(good).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(name.as_str(), good);
        }
        // Upper-cased first, as the exchange names them.
        assert_eq!(
            SymbolName::new("btcusdt").map(|s| s.as_str().to_owned()),
            Ok("BTCUSDT".to_owned())
        );
        assert!(SymbolName::new(&"A".repeat(MAX_SYMBOL_LEN)).is_ok());
        let long = "A".repeat(MAX_SYMBOL_LEN + 1);
        for bad in [
            "BAD/SYM",
            "..",
            "BTC.X",
            "BTC_USDT",
            "BTC-USDT",
            "\u{1F680}",
            "\u{1F680}USDT",
            "B",
            &long,
            "",
            " ",
            "BTC USDT",
            " BTCUSDT",
            "BTCUSDT\n",
            "ÉTHUSDT",
        ] {
            let err = SymbolName::new(bad).expect_err(bad).to_string();
            // The error names the symbol and says the rule.
            assert_eq!(
                err,
                format!(
                    "invalid symbol name {bad:?}: an exchange symbol is 2 to 20 characters from A-Z and 0-9, upper-cased first (btcusdt is BTCUSDT)"
                ),
                "{bad:?}"
            );
        }
        assert_eq!(MAX_SYMBOL_LEN, 20);
    }

    #[test]
    fn a_symbol_name_is_checked_when_it_is_read_too() {
        // As a frame carries it: a string, checked on the way in.
        let config = bincode::config::standard();
        let read = |text: &str| {
            let bytes = bincode::serde::encode_to_vec(text, config).expect("encoded");
            bincode::serde::decode_from_slice::<SymbolName, _>(&bytes, config).map(|(s, _)| s)
        };
        let name = read("ethbtc").expect("valid");
        assert_eq!(name.as_str(), "ETHBTC");
        assert_eq!(
            bincode::serde::encode_to_vec(&name, config).ok(),
            bincode::serde::encode_to_vec("ETHBTC", config).ok()
        );
        let err = read("BAD/SYM").expect_err("refused").to_string();
        assert!(
            err.contains("invalid symbol name") && err.contains("BAD/SYM"),
            "{err}"
        );
    }
}
