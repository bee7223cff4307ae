//! What a tool call ends with: a JSON output, or a [`ToolFailure`] — a tool
//! error that goes back to the model as a normal response (`is_error`), not a
//! gRPC error.

use agentmesh_proto::tools::v1::ToolErrorKind;

/// A failed tool call: its classification, a message precise enough for a
/// model to correct its call, and the error object the tool printed, if any.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolFailure {
    pub(crate) kind: ToolErrorKind,
    pub(crate) message: String,
    /// JSON the tool produced describing the failure; empty when none.
    pub(crate) output_json: String,
}

impl ToolFailure {
    fn new(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            output_json: String::new(),
        }
    }

    /// The arguments break the tool's schema.
    pub(crate) fn invalid_arguments(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::InvalidArguments, message)
    }

    /// The tool ran and failed.
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::ExecutionFailed, message)
    }

    /// The tool did not finish in time and was stopped.
    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Timeout, message)
    }

    /// The tool's output is not JSON or breaks its output schema.
    pub(crate) fn invalid_output(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::InvalidOutput, message)
    }

    /// Refused by policy.
    pub(crate) fn denied(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Denied, message)
    }

    /// Attaches the error object the tool printed.
    pub(crate) fn with_output(mut self, output_json: String) -> Self {
        self.output_json = output_json;
        self
    }
}

/// A tool's result: its output as a JSON value, or why it failed.
pub(crate) type ToolOutcome = Result<serde_json::Value, ToolFailure>;

/// Cuts `text` to at most `max` bytes at a character boundary, marking the
/// cut with `…`, so that messages quoting tool output stay readable and small.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

/// Keeps the last `max` bytes of `text` (at a character boundary), marking
/// the cut with a leading `…`: the end of stderr is where errors are.
pub(crate) fn keep_tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", text.get(start..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello", 3), "hel…");
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(keep_tail("hello", 10), "hello");
        assert_eq!(keep_tail("hello", 2), "…lo");
        assert_eq!(keep_tail("helló", 1), "…");
    }
}
