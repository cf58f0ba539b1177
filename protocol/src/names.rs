//! Validated names. An instance name becomes part of a shared-memory object
//! name and of runtime paths, so it is never allowed to be a path itself.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Longest instance name accepted.
pub const MAX_INSTANCE_LEN: usize = 32;
/// Longest symbol name the store's directory can hold (one length byte plus
/// 31 name bytes per 32-byte entry).
pub const MAX_SYMBOL_LEN: usize = 31;

/// A rejected name, saying which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// Instance names are `[A-Za-z0-9_-]{1,32}`.
    #[error(
        "invalid instance name {0:?}: use 1 to {MAX_INSTANCE_LEN} characters from A-Z, a-z, 0-9, '_' and '-'"
    )]
    Instance(String),
    /// Symbol names are `[A-Za-z0-9_.-]{1,31}`.
    #[error(
        "invalid symbol name {0:?}: use 1 to {MAX_SYMBOL_LEN} characters from A-Z, a-z, 0-9, '_', '.' and '-'"
    )]
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

/// A market symbol as stored in the segment's directory: `[A-Za-z0-9_.-]{1,31}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SymbolName(String);

impl SymbolName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let ok = (1..=MAX_SYMBOL_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(NameError::Symbol(name.to_owned()))
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
    fn symbol_names_fit_the_directory() {
        assert!(SymbolName::new("BTCUSDT").is_ok());
        assert!(SymbolName::new(&"A".repeat(31)).is_ok());
        assert!(SymbolName::new(&"A".repeat(32)).is_err());
        assert!(SymbolName::new("BTC/USDT").is_err());
        let err = SymbolName::new("").expect_err("empty rejected").to_string();
        assert!(err.contains("invalid symbol name"), "{err}");
    }
}
