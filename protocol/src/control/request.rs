//! A control request: what a client asks a running coordinator, one line
//! on its control socket, and the limit both sides hold that line to.
//!
//! The line is a bare word (`ping`, `status`, `metrics`, `events`,
//! `traders`) for what only reads, or a JSON object for what changes the
//! instance: `{"cmd":"add","traders":[...]}`, `{"cmd":"remove","id":...}`.

use serde::{Deserialize, Serialize};

use crate::trader::TraderSpec;

/// Longest request line, its newline not counted (1 MiB): a large trader
/// file's specs fit; the server's memory per client stays bounded.
pub const MAX_REQUEST: usize = 1 << 20;

/// Whether a request line of `len` bytes (its newline not counted) may be
/// sent: the one check the client makes before sending and the server on
/// what arrives, so that they never disagree on a line at the limit.
pub fn within_limit(len: usize) -> bool {
    len <= MAX_REQUEST
}

/// A request line over [`MAX_REQUEST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the request is {}, over the control socket's limit of {MAX_REQUEST} bytes (1 MiB, the line without its newline): split the trader file and add the parts one by one",
    if *.whole { format!("{} bytes", .len) } else { format!("at least {} bytes (its end was not read)", .len) }
)]
pub struct TooLong {
    /// Bytes of the line, its newline not counted (a lower bound when not
    /// `whole`).
    pub len: usize,
    /// Whether the line's end was read: a server that stopped reading
    /// knows only a lower bound.
    pub whole: bool,
}

/// A request the coordinator's loop answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `ping`: the loop is alive; answered with [`super::Pong`].
    Ping,
    /// `status`: answered with [`super::Status`].
    Status,
    /// `metrics`: the snapshot the metrics endpoint encodes, answered with
    /// [`super::MetricsSnapshot`].
    Metrics,
    /// `events`: the supervision log, answered with [`super::Events`].
    Events,
    /// `traders`: the trader list, answered with [`super::TraderList`].
    Traders,
    /// `{"cmd":"add","traders":[...]}` (`shmkline traders add`): answered
    /// with [`super::Added`].
    Add(Vec<TraderSpec>),
    /// `{"cmd":"remove","id":...}` (`shmkline traders remove`): answered
    /// with [`super::Removed`].
    Remove(String),
}

/// The kinds of request, as the coordinator counts its loop time for them
/// (`status`'s `control.loop_us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `ping`.
    Ping,
    /// `status`.
    Status,
    /// `metrics`.
    Metrics,
    /// `events`.
    Events,
    /// `traders`.
    Traders,
    /// The changes: traders added or removed.
    Other,
}

impl RequestKind {
    /// Every kind, in a fixed order.
    pub const ALL: [RequestKind; 6] = [
        Self::Ping,
        Self::Status,
        Self::Metrics,
        Self::Traders,
        Self::Events,
        Self::Other,
    ];
}

/// Why a request line is not a request. Its text is the answer the client
/// gets.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A JSON line that is not one of the changes.
    #[error("a request the coordinator does not understand: {0}")]
    NotUnderstood(serde_json::Error),
    /// Neither a known word nor JSON: the line's first 80 characters, and
    /// `…` when it was cut.
    #[error("unknown request {0:?}: try status, metrics, events or traders")]
    Unknown(String),
}

/// The JSON requests as they travel: tagged by `cmd`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Change<T> {
    Add { traders: T },
    Remove { id: String },
}

impl Request {
    /// Parses one request line (without its newline).
    pub fn parse(line: &str) -> Result<Self, RequestError> {
        Ok(match line {
            "ping" => Self::Ping,
            "status" => Self::Status,
            "metrics" => Self::Metrics,
            "events" => Self::Events,
            "traders" => Self::Traders,
            line if line.starts_with('{') => {
                match serde_json::from_str::<Change<Vec<TraderSpec>>>(line)
                    .map_err(RequestError::NotUnderstood)?
                {
                    Change::Add { traders } => Self::Add(traders),
                    Change::Remove { id } => Self::Remove(id),
                }
            }
            other => {
                // Bounded: the error echoes the first 80 characters of a
                // line of up to 1 MiB, and says when it cut.
                let mut shown: String = other.chars().take(80).collect();
                if shown.len() < other.len() {
                    shown.push('…');
                }
                return Err(RequestError::Unknown(shown));
            }
        })
    }

    /// The request line, without its newline: what [`Request::parse`] reads.
    pub fn to_line(&self) -> String {
        let word = match self {
            Self::Ping => "ping",
            Self::Status => "status",
            Self::Metrics => "metrics",
            Self::Events => "events",
            Self::Traders => "traders",
            Self::Add(traders) => return json_line(&Change::Add { traders }),
            Self::Remove(id) => return json_line(&Change::<()>::Remove { id: id.clone() }),
        };
        word.to_owned()
    }

    /// Whether it changes the instance: its client waits for the loop's
    /// real answer however long the change takes, since a timeout would
    /// hide whether it was applied.
    pub fn changes(&self) -> bool {
        matches!(self, Self::Add(_) | Self::Remove(_))
    }

    /// Its kind, for the loop-time figures.
    pub fn kind(&self) -> RequestKind {
        match self {
            Self::Ping => RequestKind::Ping,
            Self::Status => RequestKind::Status,
            Self::Metrics => RequestKind::Metrics,
            Self::Events => RequestKind::Events,
            Self::Traders => RequestKind::Traders,
            Self::Add(_) | Self::Remove(_) => RequestKind::Other,
        }
    }
}

/// A change as its JSON line. Serialising specs and strings cannot fail;
/// an empty object (refused by the server) would be the answer if it did.
fn json_line<T: Serialize>(change: &Change<T>) -> String {
    serde_json::to_string(change).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_reads_back_from_its_line() {
        let spec: TraderSpec = serde_json::from_str(
            r#"{"id":"t","version":1,"symbols":"All","interval":"1m","rule":"close > 1","cooldown":0,"labels":{}}"#,
        )
        .expect("a spec");
        for request in [
            Request::Ping,
            Request::Status,
            Request::Metrics,
            Request::Events,
            Request::Traders,
            Request::Add(vec![spec]),
            Request::Remove("t".into()),
        ] {
            assert_eq!(Request::parse(&request.to_line()).expect("parses"), request);
        }
        assert_eq!(
            Request::Remove("x".into()).to_line(),
            r#"{"cmd":"remove","id":"x"}"#
        );
        assert!(Request::Traders.to_line() == "traders" && !Request::Traders.changes());
    }

    #[test]
    fn a_line_that_is_no_request_is_answered_with_why() {
        let unknown = Request::parse("bogus").expect_err("unknown");
        assert_eq!(
            unknown.to_string(),
            r#"unknown request "bogus": try status, metrics, events or traders"#
        );
        let long = Request::parse(&"x".repeat(200)).expect_err("unknown");
        assert!(long.to_string().contains(&format!("{}…", "x".repeat(80))));
        let bad = Request::parse(r#"{"cmd":"x"}"#).expect_err("not understood");
        assert!(
            bad.to_string()
                .starts_with("a request the coordinator does not understand: unknown variant `x`")
        );
    }

    #[test]
    fn the_limit_names_the_length() {
        assert!(within_limit(MAX_REQUEST) && !within_limit(MAX_REQUEST + 1));
        let whole = TooLong {
            len: 1_048_577,
            whole: true,
        }
        .to_string();
        assert!(whole.starts_with(
            "the request is 1048577 bytes, over the control socket's limit of 1048576 bytes"
        ));
        let cut = TooLong {
            len: 9,
            whole: false,
        }
        .to_string();
        assert!(cut.starts_with("the request is at least 9 bytes (its end was not read)"));
    }
}
