//! How one call went: its result, and when its first event and its tokens
//! arrived.

use std::time::Duration;

/// How one call went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Ok`, or the class of the failure (a gRPC code name, `HTTP 503`,
    /// `run_failed` …): the summary counts errors by it.
    pub result: Result<(), String>,
    /// For streams: when the first message arrived, since the call was sent.
    pub first_event: Option<Duration>,
    /// For calls that stream a model's answer: when its tokens arrived.
    pub tokens: Tokens,
}

/// When the tokens of a streamed answer arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    /// The first token, since the call was sent.
    pub first: Option<Duration>,
    /// Between each token and the one before it in the same answer (a run's
    /// tool calls between two model steps are not a gap).
    pub gaps: Vec<Duration>,
    /// Runs: from the start of each model step, as the orchestrator stamped
    /// it on the step's progress event, to the step's first token at the
    /// client. Wall clocks: true only where the client's clock agrees with
    /// the orchestrator's (the same host, or clocks kept in sync).
    pub step_to_first: Vec<Duration>,
}

impl Outcome {
    /// A call that succeeded.
    pub fn ok(first_event: Option<Duration>) -> Self {
        Self {
            result: Ok(()),
            first_event,
            tokens: Tokens::default(),
        }
    }

    /// A call that failed with `class`.
    pub fn failed(class: impl Into<String>, first_event: Option<Duration>) -> Self {
        Self {
            result: Err(class.into()),
            first_event,
            tokens: Tokens::default(),
        }
    }

    /// The same, with the arrival of its tokens.
    #[must_use]
    pub fn with_tokens(self, tokens: Tokens) -> Self {
        Self { tokens, ..self }
    }
}
