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
    /// The tool could not be reached at all (an MCP server's connection
    /// is gone): a sign of its health, unlike an error it answered.
    pub(crate) unreachable: bool,
}

impl ToolFailure {
    fn new(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            output_json: String::new(),
            unreachable: false,
        }
    }

    /// The tool could not be reached (EXECUTION_FAILED, counted against
    /// its circuit).
    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        Self {
            unreachable: true,
            ..Self::new(ToolErrorKind::ExecutionFailed, message)
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
