//! An answer: one JSON line per request. Each request has its own answer
//! type; any of them may instead be a [`Refusal`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::metrics::MetricsSnapshot;
use super::status::{FaultEvent, Status};
use super::traders::{Added, Removed, TraderList};

/// A request not answered: why, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What went wrong, in words (a change refused says nothing was changed).
    pub error: String,
    /// What to do about it, when the error does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Refusal {
    /// A refusal saying `error`.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            hint: None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.hint {
            Some(hint) => write!(f, "{} ({hint})", self.error),
            None => f.write_str(&self.error),
        }
    }
}

/// The answer to `ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Always true: the loop answered.
    pub pong: bool,
}

/// The answer to `events`: the supervision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Events {
    /// Every fault kept (the last 1,024), oldest first.
    pub events: Vec<FaultEvent>,
}

/// What the coordinator's loop answers, whichever the request: written as
/// the one JSON line of the answer type it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// Not answered.
    Refused(Refusal),
    /// `ping`.
    Pong(Pong),
    /// `status`.
    Status(Box<Status>),
    /// `metrics`.
    Metrics(Box<MetricsSnapshot>),
    /// `events`.
    Events(Events),
    /// `traders`.
    Traders(TraderList),
    /// `add`.
    Added(Added),
    /// `remove`.
    Removed(Removed),
}

impl Answer {
    /// A refusal saying `error`.
    pub fn refused(error: impl Into<String>) -> Self {
        Answer::Refused(Refusal::new(error))
    }

    /// Its JSON line, without the newline.
    pub fn to_line(&self) -> String {
        // Every answer type serialises (plain data, string keys); should
        // one ever fail, the client still gets a line that says so.
        serde_json::to_string(self).unwrap_or_else(|e| {
            serde_json::to_string(&Refusal::new(format!(
                "the answer could not be written: {e}"
            )))
            .unwrap_or_default()
        })
    }
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Self {
        Answer::Refused(refusal)
    }
}

/// Why an answer line is not the answer expected.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The coordinator refused the request.
    #[error("the coordinator refused: {0}")]
    Refused(Refusal),
    /// Not JSON, or not the answer to that request (its source says how).
    #[error("the answer is not the one expected")]
    Unexpected(#[from] serde_json::Error),
}

/// Reads an answer line as a `T`, or as the refusal it is.
pub fn decode<T: DeserializeOwned>(line: &str) -> Result<T, AnswerError> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    if let Some(refusal) = refused(&value) {
        return Err(AnswerError::Refused(refusal));
    }
    Ok(serde_json::from_value(value)?)
}

/// The refusal an answer is, if it is one: an object with an `error`.
pub fn refused(answer: &serde_json::Value) -> Option<Refusal> {
    answer.get("error")?.as_str()?;
    serde_json::from_value(answer.clone()).ok()
}
