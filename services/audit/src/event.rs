//! One event on its way in: validation, the columns it is indexed by, its
//! chain, and the hash that seals it.
//!
//! What is stored for an event is its *body*: the producer's event as
//! protobuf bytes, with `record_time` set and the fields the service derives
//! (`cursor`, `chain`, `hash`, `previous_hash`) cleared. The body is the
//! canonical content: its hash is computed over exactly the stored bytes, so
//! verifying needs no re-encoding (protobuf maps have no canonical order).
//! The indexed columns are derived from the body by [`Columns::of`], and
//! verification derives them again and compares, so an edit to a column is
//! caught as surely as an edit to the body.

use std::time::SystemTime;

use agentmesh_kit::time::micros_or_zero;
use agentmesh_proto::audit::v1::{AuditEvent, EventType, Outcome, audit_event::Details};
use prost::Message;
use sha2::{Digest, Sha256};

/// Longest `event_id`.
pub(crate) const MAX_EVENT_ID_CHARS: usize = 128;
/// Most attributes per event.
pub(crate) const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key.
pub(crate) const MAX_ATTRIBUTE_KEY_CHARS: usize = 128;

/// The columns an event is filtered, reported and verified by.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Columns {
    pub time_us: i64,
    pub record_time_us: i64,
    pub event_type: i32,
    pub service: String,
    pub tenant: String,
    pub subject: String,
    pub run_id: String,
    pub trace_id: String,
    pub outcome: i32,
    pub tool: String,
    pub model: String,
    pub route: String,
    pub provider: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: Option<f64>,
    /// The attribute keys, sorted, joined by `\n` (for the CSV export's
    /// header, found without reading every body).
    pub attribute_keys: String,
    pub chain: String,
}

impl Columns {
    /// The columns of a stored body.
    pub(crate) fn of(event: &AuditEvent) -> Self {
        let detail = DetailKeys::of(event);
        let (input_tokens, output_tokens, cost_usd) = match &event.details {
            Some(Details::LlmCall(call)) => (
                call.input_tokens,
                call.output_tokens,
                call.estimated_cost_usd,
            ),
            _ => (0, 0, None),
        };
        let mut keys: Vec<&str> = event.attributes.keys().map(String::as_str).collect();
        keys.sort_unstable();
        Self {
            time_us: micros_or_zero(event.time.as_ref()),
            record_time_us: micros_or_zero(event.record_time.as_ref()),
            event_type: event.r#type,
            service: event.service.clone(),
            tenant: event.tenant.clone(),
            subject: event.subject.clone(),
            run_id: event.run_id.clone(),
            trace_id: event.trace_id.clone(),
            outcome: event.outcome,
            tool: detail.tool.to_owned(),
            model: detail.model.to_owned(),
            route: detail.route.to_owned(),
            provider: detail.provider.to_owned(),
            input_tokens,
            output_tokens,
            cost_usd,
            attribute_keys: keys.join("\n"),
            chain: chain_of(&event.tenant),
        }
    }
}

/// The detail fields an event is filtered by, borrowed: empty for events
/// whose details do not have them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DetailKeys<'a> {
    pub tool: &'a str,
    pub model: &'a str,
    pub route: &'a str,
    pub provider: &'a str,
}

impl<'a> DetailKeys<'a> {
    pub(crate) fn of(event: &'a AuditEvent) -> Self {
        match &event.details {
            Some(Details::LlmCall(call)) => Self {
                model: &call.model,
                route: &call.route,
                provider: &call.provider,
                ..Self::default()
            },
            Some(Details::ToolCall(call)) => Self {
                tool: &call.tool,
                ..Self::default()
            },
            _ => Self::default(),
        }
    }
}

/// The hash chain of a tenant's events: one chain per tenant, so verifying
/// or exporting a tenant's log never needs anyone else's, and `system` for
/// events outside any tenant.
pub(crate) fn chain_of(tenant: &str) -> String {
    if tenant.is_empty() {
        "system".to_owned()
    } else {
        format!("tenant:{tenant}")
    }
}

/// An event ready to be written.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// Its index in the `Record` request.
    pub index: usize,
    /// The event as stored (server fields cleared, `record_time` set).
    pub event: AuditEvent,
    /// `event` encoded: the stored body.
    pub body: Vec<u8>,
    pub columns: Columns,
}

impl Prepared {
    /// Seals a validated event: stamps the record time and encodes the body.
    pub(crate) fn new(index: usize, mut event: AuditEvent, now: SystemTime) -> Self {
        event.cursor.clear();
        event.chain.clear();
        event.hash.clear();
        event.previous_hash.clear();
        event.record_time = Some(prost_types::Timestamp::from(now));
        if event.time.is_none() {
            event.time = event.record_time;
        }
        if event.outcome == Outcome::Unspecified as i32 {
            event.outcome = Outcome::Success as i32;
        }
        let body = event.encode_to_vec();
        let columns = Columns::of(&event);
        Self {
            index,
            event,
            body,
            columns,
        }
    }
}

/// Hex SHA-256 sealing an event: over its chain, the previous event's hash
/// and its body, so neither the content, nor the order, nor the chain of an
/// event can change without the hash changing.
pub(crate) fn content_hash(chain: &str, previous_hash: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"agentmesh.audit.v1\n");
    hasher.update(chain.as_bytes());
    hasher.update(b"\n");
    hasher.update(previous_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// Why an event of a `Record` batch is refused: the field and the problem.
pub(crate) fn validate(
    event: &AuditEvent,
    encoded_len: usize,
    max_event_bytes: usize,
) -> Result<(), (&'static str, String)> {
    if event.event_id.is_empty() {
        return Err((
            "event_id",
            "is required (a unique id set by the producer, e.g. a UUID)".to_owned(),
        ));
    }
    if event.event_id.chars().count() > MAX_EVENT_ID_CHARS {
        return Err((
            "event_id",
            format!("is longer than {MAX_EVENT_ID_CHARS} characters"),
        ));
    }
    if event.r#type == EventType::Unspecified as i32 {
        return Err(("type", "is required".to_owned()));
    }
    if EventType::try_from(event.r#type).is_err() {
        return Err(("type", format!("{} is not an EventType", event.r#type)));
    }
    if Outcome::try_from(event.outcome).is_err() {
        return Err(("outcome", format!("{} is not an Outcome", event.outcome)));
    }
    if let Some(time) = &event.time
        && !(0..1_000_000_000).contains(&time.nanos)
    {
        return Err(("time", "has nanos outside 0..1e9".to_owned()));
    }
    if let Some(time) = &event.time
        && !(0..=253_402_300_799).contains(&time.seconds)
    {
        return Err(("time", "is outside the years 1970 to 9999".to_owned()));
    }
    for (field, value, len) in [
        ("trace_id", &event.trace_id, 32),
        ("span_id", &event.span_id, 16),
    ] {
        let lower_hex = value.len() == len
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !value.is_empty() && !lower_hex {
            return Err((field, format!("must be {len} lowercase hex characters")));
        }
    }
    if event.attributes.len() > MAX_ATTRIBUTES {
        return Err((
            "attributes",
            format!("has more than {MAX_ATTRIBUTES} entries"),
        ));
    }
    if let Some(key) = event.attributes.keys().find(|key| {
        key.is_empty() || key.chars().count() > MAX_ATTRIBUTE_KEY_CHARS || key.contains('\n')
    }) {
        return Err((
            "attributes",
            format!(
                "key {key:?} must be 1 to {MAX_ATTRIBUTE_KEY_CHARS} characters without line breaks"
            ),
        ));
    }
    if encoded_len > max_event_bytes {
        return Err((
            "details",
            format!(
                "the event is {encoded_len} bytes encoded, over the limit of {max_event_bytes}"
            ),
        ));
    }
    Ok(())
}

/// The cursor of a stored event: its sequence number, in decimal. Opaque to
/// clients; decimal keeps it readable in grpcurl output.
pub(crate) fn cursor(seq: i64) -> String {
    seq.to_string()
}

/// The sequence number of a cursor.
pub(crate) fn parse_cursor(cursor: &str) -> Option<i64> {
    cursor.parse::<i64>().ok().filter(|seq| *seq >= 0)
}

/// A stored event with the fields the service sets.
pub(crate) fn stored(
    mut event: AuditEvent,
    seq: i64,
    chain: String,
    hash: String,
    previous_hash: String,
) -> AuditEvent {
    event.cursor = cursor(seq);
    event.chain = chain;
    event.hash = hash;
    event.previous_hash = previous_hash;
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_chain_link_and_body() {
        let base = content_hash("system", "", b"body");
        assert_eq!(base.len(), 64);
        assert_ne!(base, content_hash("tenant:a", "", b"body"));
        assert_ne!(base, content_hash("system", "00", b"body"));
        assert_ne!(base, content_hash("system", "", b"bodz"));
        assert_eq!(base, content_hash("system", "", b"body"));
    }

    #[test]
    fn validation_names_the_field() {
        let mut event = AuditEvent::default();
        assert_eq!(validate(&event, 10, 100).map_err(|e| e.0), Err("event_id"));
        event.event_id = "e1".into();
        assert_eq!(validate(&event, 10, 100).map_err(|e| e.0), Err("type"));
        event.r#type = EventType::ToolCall as i32;
        assert_eq!(validate(&event, 10, 100), Ok(()));
        assert_eq!(validate(&event, 101, 100).map_err(|e| e.0), Err("details"));
        event.trace_id = "XYZ".into();
        assert_eq!(validate(&event, 10, 100).map_err(|e| e.0), Err("trace_id"));
    }
}
