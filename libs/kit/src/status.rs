//! Building gRPC statuses that a person can act on.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` listing every field
/// violation, and a message that repeats them for clients that do not read
/// details.
pub fn invalid_argument<F, D>(violations: impl IntoIterator<Item = (F, D)>) -> Status
where
    F: Into<String>,
    D: Into<String>,
{
    let violations: Vec<(String, String)> = violations
        .into_iter()
        .map(|(field, description)| (field.into(), description.into()))
        .collect();
    let message = violations
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for (field, description) in violations {
        details.add_bad_request_violation(field, description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// A tonic status as a `google.rpc.Status` message (keeping its details), for
/// responses that carry a per-item error.
pub fn to_rpc_status(status: &Status) -> tonic_types::pb::Status {
    use prost::Message as _;
    let details = tonic_types::pb::Status::decode(status.details())
        .map(|decoded| decoded.details)
        .unwrap_or_default();
    tonic_types::pb::Status {
        code: status.code().into(),
        message: status.message().to_owned(),
        details,
    }
}

/// An error followed by its causes (`error sending request: client error
/// (Connect): tcp connect error: Connection refused (os error 111)`), each
/// said once: what a person needs to see why a connection failed.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status = invalid_argument([
            ("objective", "must not be empty"),
            ("limits.max_steps", "must be at most 100"),
        ]);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("objective: must not be empty"));
        let details = status.get_error_details();
        let bad_request = details.bad_request().unwrap();
        assert_eq!(bad_request.field_violations.len(), 2);
        assert_eq!(bad_request.field_violations[1].field, "limits.max_steps");
    }
}
