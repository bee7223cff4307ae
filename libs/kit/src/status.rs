//! Building gRPC statuses that a person can act on, and that stay small
//! whatever the caller sent.
//!
//! A status travels in HTTP/2 headers (`grpc-message`, percent-encoded, and
//! `grpc-status-details-bin`, base64): many clients refuse more than 8 or
//! 16 KiB of metadata, and a server that echoes every bad item of a
//! 4 MB request builds hundreds of megabytes of trailers. So every status
//! built from caller input is bounded here:
//!
//! * [`Violations`] keeps at most [`MAX_VIOLATIONS`] field violations and
//!   counts the rest, which become one `… and K more` entry;
//! * each field name, description and quoted value is cut to a short
//!   UTF-8-safe prefix ([`MAX_FIELD_BYTES`], [`MAX_DESCRIPTION_BYTES`],
//!   [`MAX_QUOTED_BYTES`]; [`quote`] is how a handler echoes a caller's
//!   value);
//! * the message is cut to [`MAX_MESSAGE_WIRE_BYTES`] as sent
//!   (percent-encoded) and the details to [`MAX_DETAILS_BYTES`] encoded
//!   (under 4 KiB as base64), so a status's metadata stays under 8 KiB.
//!
//! [`bounded`] applies the last rule to any status; the server layer in
//! [`crate::bounded_status`] applies it to every status a service answers,
//! whoever built it.

use std::borrow::Cow;

use prost::Message as _;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::text::{ELLIPSIS, prefix_within, truncate_bytes};

/// Field violations kept in one status; the rest are counted.
pub const MAX_VIOLATIONS: usize = 10;
/// The longest field path kept in a violation, in bytes.
pub const MAX_FIELD_BYTES: usize = 128;
/// The longest violation description kept, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 256;
/// The longest part of a caller's value quoted into an error, in bytes.
pub const MAX_QUOTED_BYTES: usize = 64;
/// The longest `grpc-message` sent, in bytes after percent-encoding.
pub const MAX_MESSAGE_WIRE_BYTES: usize = 2048;
/// The longest `grpc-status-details-bin` sent, in bytes before base64
/// (4 KiB after).
pub const MAX_DETAILS_BYTES: usize = 3072;

/// A caller's value to quote in an error: at most [`MAX_QUOTED_BYTES`] of
/// it, in quotes, with control characters escaped, `…` marking a cut.
pub fn quote(value: &str) -> String {
    let kept = prefix_within(value, MAX_QUOTED_BYTES);
    if kept.len() == value.len() {
        format!("{kept:?}")
    } else {
        format!("{kept:?}{ELLIPSIS}")
    }
}

/// Field violations of one request, bounded: the first
/// [`MAX_VIOLATIONS`] are kept (each cut to size), the others only counted,
/// so a request with a million bad items costs as much as one with ten.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations {
    kept: Vec<(String, String)>,
    more: usize,
}

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one violation (a field path and what is wrong with it), as a
    /// `Vec<(String, String)>` of violations would.
    pub fn push(&mut self, (field, description): (String, String)) {
        self.add(field, description);
    }

    /// Adds one violation (a field path and what is wrong with it).
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.kept.len() < MAX_VIOLATIONS {
            let field = cut(field.into(), MAX_FIELD_BYTES);
            let description = cut(description.into(), MAX_DESCRIPTION_BYTES);
            self.kept.push((field, description));
        } else {
            self.more = self.more.saturating_add(1);
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// How many were pushed, kept or not.
    pub fn len(&self) -> usize {
        self.kept.len().saturating_add(self.more)
    }

    /// The kept violations, in the order pushed.
    pub fn kept(&self) -> &[(String, String)] {
        &self.kept
    }

    /// `Ok` when there are none, else the INVALID_ARGUMENT status.
    pub fn into_result(self) -> Result<(), Status> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_status())
        }
    }

    /// INVALID_ARGUMENT with a `google.rpc.BadRequest` of the kept
    /// violations (plus `…` / `and K more` when some were only counted),
    /// and a message that repeats them for clients that do not read
    /// details.
    pub fn into_status(self) -> Status {
        let mut parts: Vec<String> = self
            .kept
            .iter()
            .map(|(field, description)| format!("{field}: {description}"))
            .collect();
        let mut details = ErrorDetails::new();
        for (field, description) in self.kept {
            details.add_bad_request_violation(field, description);
        }
        if self.more > 0 {
            let more = format!("and {} more field violations", self.more);
            parts.push(format!("{ELLIPSIS} {more}"));
            details.add_bad_request_violation(ELLIPSIS, more);
        }
        bounded(Status::with_error_details(
            Code::InvalidArgument,
            parts.join("; "),
            details,
        ))
    }
}

impl<F: Into<String>, D: Into<String>> Extend<(F, D)> for Violations {
    fn extend<I: IntoIterator<Item = (F, D)>>(&mut self, iter: I) {
        for (field, description) in iter {
            self.add(field, description);
        }
    }
}

impl<F: Into<String>, D: Into<String>> FromIterator<(F, D)> for Violations {
    fn from_iter<I: IntoIterator<Item = (F, D)>>(iter: I) -> Self {
        let mut violations = Self::new();
        violations.extend(iter);
        violations
    }
}

/// INVALID_ARGUMENT with at most [`MAX_VIOLATIONS`] field violations (see
/// [`Violations::into_status`]); the iterator is consumed lazily, so the
/// violations past the bound are never stored.
pub fn invalid_argument<F, D>(violations: impl IntoIterator<Item = (F, D)>) -> Status
where
    F: Into<String>,
    D: Into<String>,
{
    violations.into_iter().collect::<Violations>().into_status()
}

/// `status` with its message and details cut to the sizes above (the same
/// status when already within them). Details that are too large keep their
/// first entries that fit, a `BadRequest` among them bounded first.
pub fn bounded(status: Status) -> Status {
    let message_fits = wire_len(status.message()) <= MAX_MESSAGE_WIRE_BYTES;
    let details_fit = status.details().len() <= MAX_DETAILS_BYTES;
    if message_fits && details_fit {
        return status;
    }
    let message = if message_fits {
        Cow::Borrowed(status.message())
    } else {
        Cow::Owned(message_within(status.message()))
    };
    let details = if details_fit {
        status.details().to_vec()
    } else {
        details_within(status.details())
    };
    Status::with_details_and_metadata(
        status.code(),
        message.into_owned(),
        details.into(),
        status.metadata().clone(),
    )
}

/// The length of `message` as tonic sends it in `grpc-message`: control
/// characters, a few punctuation marks and every non-ASCII byte become
/// `%XX`.
fn wire_len(message: &str) -> usize {
    message.bytes().map(wire_len_of).sum()
}

fn wire_len_of(byte: u8) -> usize {
    let escaped = !(0x20..0x7f).contains(&byte)
        || matches!(
            byte,
            b' ' | b'"' | b'#' | b'%' | b'<' | b'>' | b'`' | b'?' | b'{' | b'}'
        );
    if escaped { 3 } else { 1 }
}

/// The longest prefix of `message` that, with a trailing `…`, fits in
/// [`MAX_MESSAGE_WIRE_BYTES`] once percent-encoded.
fn message_within(message: &str) -> String {
    let budget = MAX_MESSAGE_WIRE_BYTES.saturating_sub(wire_len(ELLIPSIS));
    let mut used = 0;
    let mut end = 0;
    for (at, character) in message.char_indices() {
        let mut buf = [0; 4];
        let cost = wire_len(character.encode_utf8(&mut buf));
        if used + cost > budget {
            break;
        }
        used += cost;
        end = at + character.len_utf8();
    }
    format!("{}{ELLIPSIS}", message.get(..end).unwrap_or_default())
}

/// The details of a status (an encoded `google.rpc.Status`) within
/// [`MAX_DETAILS_BYTES`]: its entries in order while they fit, a
/// `BadRequest` re-bounded; nothing when they cannot be read.
fn details_within(encoded: &[u8]) -> Vec<u8> {
    let Ok(mut decoded) = tonic_types::pb::Status::decode(encoded) else {
        return Vec::new();
    };
    let entries = std::mem::take(&mut decoded.details);
    let mut size = decoded.encoded_len();
    for entry in entries {
        let entry = bound_bad_request(entry);
        // An entry costs its length plus a tag and a length prefix.
        let cost = entry.encoded_len().saturating_add(8);
        if size.saturating_add(cost) > MAX_DETAILS_BYTES {
            break;
        }
        size = size.saturating_add(cost);
        decoded.details.push(entry);
    }
    decoded.encode_to_vec()
}

/// A detail entry, its field violations bounded when it is a `BadRequest`.
fn bound_bad_request(entry: prost_types::Any) -> prost_types::Any {
    const BAD_REQUEST: &str = "type.googleapis.com/google.rpc.BadRequest";
    if entry.type_url != BAD_REQUEST {
        return entry;
    }
    let Ok(request) = tonic_types::pb::BadRequest::decode(entry.value.as_slice()) else {
        return entry;
    };
    let violations: Violations = request
        .field_violations
        .into_iter()
        .map(|violation| (violation.field, violation.description))
        .collect();
    let mut bounded = tonic_types::pb::BadRequest::default();
    for (field, description) in violations.kept {
        bounded
            .field_violations
            .push(tonic_types::pb::bad_request::FieldViolation {
                field,
                description,
                ..Default::default()
            });
    }
    if violations.more > 0 {
        bounded
            .field_violations
            .push(tonic_types::pb::bad_request::FieldViolation {
                field: ELLIPSIS.to_owned(),
                description: format!("and {} more field violations", violations.more),
                ..Default::default()
            });
    }
    prost_types::Any {
        type_url: entry.type_url,
        value: bounded.encode_to_vec(),
    }
}

/// `text` cut to `max` bytes with `…` marking the cut.
fn cut(text: String, max: usize) -> String {
    match truncate_bytes(&text, max) {
        Cow::Borrowed(_) => text,
        Cow::Owned(cut) => cut,
    }
}

/// A tonic status as a `google.rpc.Status` message (keeping its details), for
/// responses that carry a per-item error.
pub fn to_rpc_status(status: &Status) -> tonic_types::pb::Status {
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

    #[test]
    fn a_million_violations_make_ten_and_a_count() {
        let status = invalid_argument(
            (0..1_000_000).map(|i| (format!("states[{i}]"), "must be a state".to_owned())),
        );
        let violations = status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .clone();
        assert_eq!(violations.len(), MAX_VIOLATIONS + 1);
        assert_eq!(violations[9].field, "states[9]");
        assert_eq!(
            violations[10].description,
            "and 999990 more field violations"
        );
        assert!(
            status
                .message()
                .ends_with("… and 999990 more field violations")
        );
        assert!(wire_len(status.message()) <= MAX_MESSAGE_WIRE_BYTES);
        assert!(status.details().len() <= MAX_DETAILS_BYTES);
    }

    #[test]
    fn long_fields_and_descriptions_are_cut_on_character_boundaries() {
        let huge = "é".repeat(1 << 20);
        let status = invalid_argument([(huge.clone(), huge.clone())]);
        let details = status.get_error_details();
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert!(violation.field.len() <= MAX_FIELD_BYTES + ELLIPSIS.len());
        assert!(violation.description.len() <= MAX_DESCRIPTION_BYTES + ELLIPSIS.len());
        assert!(violation.field.ends_with(ELLIPSIS));
        assert!(wire_len(status.message()) <= MAX_MESSAGE_WIRE_BYTES);
    }

    #[test]
    fn bounded_cuts_any_status() {
        let id = "x".repeat(1 << 20);
        let status = bounded(Status::not_found(format!("run {id} not found")));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().starts_with("run xxx"));
        assert!(status.message().ends_with(ELLIPSIS));
        assert!(wire_len(status.message()) <= MAX_MESSAGE_WIRE_BYTES);

        // Non-ASCII costs three bytes each on the wire.
        let status = bounded(Status::internal("ü".repeat(4096)));
        assert!(wire_len(status.message()) <= MAX_MESSAGE_WIRE_BYTES);
        assert!(wire_len(status.message()) > MAX_MESSAGE_WIRE_BYTES - 12);

        let small = Status::not_found("run \"r1\" not found");
        assert_eq!(bounded(small).message(), "run \"r1\" not found");
    }

    #[test]
    fn bounded_details_keep_a_bounded_bad_request() {
        // Built without the bound, as a status from elsewhere might be.
        let mut details = ErrorDetails::new();
        for i in 0..100_000 {
            details.add_bad_request_violation(format!("f{i}"), "x".repeat(100));
        }
        details.set_error_info("REASON", "agentmesh", []);
        let status = Status::with_error_details(Code::InvalidArgument, "bad", details);
        assert!(status.details().len() > MAX_DETAILS_BYTES);
        let status = bounded(status);
        assert!(status.details().len() <= MAX_DETAILS_BYTES);
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), MAX_VIOLATIONS + 1);
        assert_eq!(
            violations[10].description,
            "and 99990 more field violations"
        );
    }

    #[test]
    fn quote_cuts_and_escapes() {
        assert_eq!(quote("r1"), "\"r1\"");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let quoted = quote(&"y".repeat(1 << 20));
        assert!(quoted.len() <= MAX_QUOTED_BYTES + 2 + ELLIPSIS.len());
        assert!(quoted.ends_with(ELLIPSIS));
    }
}
