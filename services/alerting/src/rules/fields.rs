//! Event fields by name: what rule filters (`matchers`), `group_by` and
//! templates read from an audit event.
//!
//! A rule names fields as text in its configuration; [`Field::resolve`]
//! turns each name into a [`Field`] once, when the rule is compiled (so an
//! unknown name is a configuration error, not a silent ""), and the evaluator
//! then calls [`Field::get`] on every event, which is a plain function call
//! through a table — no reflection, no allocation for text fields.
//!
//! Names:
//! - top-level: `service`, `tenant`, `subject`, `run_id`, `trace_id`,
//!   `request_id`, `type`, `outcome`, `reason`; enums by value name without
//!   their prefix (`TOOL_CALL`, `FAILURE`; an unset outcome reads `SUCCESS`,
//!   as the audit service records it);
//! - every field of the details oneof as `<oneof field>.<field>`, e.g.
//!   `tool_call.tool`, `llm_call.provider`, `circuit.target`; the
//!   size/hash/truncation of captured content one level further
//!   (`llm_call.prompt.size_bytes`); `run.labels.<key>` for the run's labels;
//! - `attributes.<key>`;
//! - short forms: `tool` (`tool_call.tool`), `model` (`llm_call.model`, or
//!   `run.model` on run events), `provider` (`llm_call.provider`), `target`
//!   (`circuit.target`).
//!
//! Values are text: numbers and booleans as Rust prints them ("3", "0.25",
//! "true"), durations as seconds ("1.5"), timestamps as RFC 3339, lists
//! (`config.changed_settings`) joined with ",". A field of another details
//! kind than the event's, or an unset optional one, is "". Two things are
//! deliberately not fields: captured content text (`*.text`: prompts and
//! outputs must not travel into alert labels and notifications) and
//! `retention.anchors` (a list of messages, nothing to alert on). The table
//! is hand-written for speed; a test checks it against the proto descriptors
//! so a field added to the contract cannot be forgotten.

use std::borrow::Cow;
use std::fmt;

use agentmesh_proto::audit::v1::{
    AuditEvent, CapturedContent, EventType, Outcome, audit_event::Details,
};

/// Reads one field of an event.
type Getter = for<'a> fn(&'a AuditEvent) -> Cow<'a, str>;

/// A named event field, resolved once.
#[derive(Clone)]
pub(crate) struct Field {
    /// The name as configured, e.g. "tool" or "tool_call.tool".
    name: String,
    access: Access,
}

#[derive(Clone)]
enum Access {
    Get(Getter),
    Attribute(String),
    RunLabel(String),
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Field").field(&self.name).finish()
    }
}

impl PartialEq for Field {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Field {
    /// The field called `name`, or `None` when there is no such field.
    pub(crate) fn resolve(name: &str) -> Option<Self> {
        let access = if let Some(key) = name.strip_prefix("attributes.") {
            (!key.is_empty()).then(|| Access::Attribute(key.to_owned()))?
        } else if let Some(key) = name.strip_prefix("run.labels.") {
            (!key.is_empty()).then(|| Access::RunLabel(key.to_owned()))?
        } else {
            Access::Get(
                TOP_FIELDS
                    .iter()
                    .chain(SHORT_FIELDS)
                    .chain(DETAIL_FIELDS)
                    .find(|(known, _)| *known == name)
                    .map(|(_, getter)| *getter)?,
            )
        };
        Some(Self {
            name: name.to_owned(),
            access,
        })
    }

    /// The name as configured.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The label name a `group_by` of this field produces: the last path
    /// segment ("tool_call.tool" → "tool", "attributes.region" → "region").
    pub(crate) fn label_name(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    /// The field's value in `event` ("" when absent).
    pub(crate) fn get<'a>(&self, event: &'a AuditEvent) -> Cow<'a, str> {
        match &self.access {
            Access::Get(getter) => getter(event),
            Access::Attribute(key) => text_or_empty(event.attributes.get(key)),
            Access::RunLabel(key) => match &event.details {
                Some(Details::Run(run)) => text_or_empty(run.labels.get(key)),
                _ => Cow::Borrowed(""),
            },
        }
    }
}

/// A few names a person might try, for error messages.
pub(crate) const FIELD_HELP: &str = "event fields are service, tenant, subject, run_id, trace_id, request_id, type, \
     outcome, reason, <details>.<field> (e.g. tool_call.tool, llm_call.provider, circuit.target), \
     attributes.<key>, run.labels.<key>, and the short forms tool, model, provider, target";

/// The name of an event type without its prefix ("TOOL_CALL").
pub(crate) fn type_name(value: i32) -> Cow<'static, str> {
    match EventType::try_from(value) {
        Ok(kind) => Cow::Borrowed(strip(kind.as_str_name(), "EVENT_TYPE_")),
        Err(_) => Cow::Owned(value.to_string()),
    }
}

/// The outcome as the audit service records it: unset means success.
pub(crate) fn effective_outcome(value: i32) -> i32 {
    if value == Outcome::Unspecified as i32 {
        Outcome::Success as i32
    } else {
        value
    }
}

/// The name of an outcome without its prefix ("FAILURE"); unset reads
/// "SUCCESS".
pub(crate) fn outcome_name(value: i32) -> Cow<'static, str> {
    match Outcome::try_from(effective_outcome(value)) {
        Ok(outcome) => Cow::Borrowed(strip(outcome.as_str_name(), "OUTCOME_")),
        Err(_) => Cow::Owned(value.to_string()),
    }
}

/// Parses an event type name as configured: "TOOL_CALL", "tool_call" or
/// "EVENT_TYPE_TOOL_CALL". UNSPECIFIED is not a type one can select.
pub(crate) fn parse_type(name: &str) -> Option<EventType> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("EVENT_TYPE_") {
        upper
    } else {
        format!("EVENT_TYPE_{upper}")
    };
    EventType::from_str_name(&full).filter(|kind| *kind != EventType::Unspecified)
}

/// Parses an outcome name as configured: "FAILURE", "failure" or
/// "OUTCOME_FAILURE". UNSPECIFIED is not an outcome one can select.
pub(crate) fn parse_outcome(name: &str) -> Option<Outcome> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("OUTCOME_") {
        upper
    } else {
        format!("OUTCOME_{upper}")
    };
    Outcome::from_str_name(&full).filter(|outcome| *outcome != Outcome::Unspecified)
}

/// The selectable event type names, for error messages.
pub(crate) fn type_names() -> String {
    (1..)
        .map_while(|n| EventType::try_from(n).ok())
        .map(|kind| strip(kind.as_str_name(), "EVENT_TYPE_"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn strip<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

fn text_or_empty(value: Option<&String>) -> Cow<'_, str> {
    value.map_or(Cow::Borrowed(""), |text| Cow::Borrowed(text.as_str()))
}

fn text(value: &str) -> Cow<'_, str> {
    Cow::Borrowed(value)
}

fn num<'a>(value: impl ToString) -> Cow<'a, str> {
    Cow::Owned(value.to_string())
}

fn optional_num<'a>(value: Option<f64>) -> Cow<'a, str> {
    value.map_or(Cow::Borrowed(""), num)
}

/// A duration as seconds ("1.5"); "" when unset.
fn seconds<'a>(value: Option<&prost_types::Duration>) -> Cow<'a, str> {
    value.map_or(Cow::Borrowed(""), |d| {
        let seconds = d.seconds as f64 + f64::from(d.nanos) / 1e9;
        num(seconds)
    })
}

/// A timestamp as RFC 3339 ("" when unset or out of range).
fn rfc3339<'a>(value: Option<&prost_types::Timestamp>) -> Cow<'a, str> {
    value
        .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .map_or(Cow::Borrowed(""), |t| Cow::Owned(t.to_string()))
}

/// A field of captured content ("" when there is none).
fn captured<'a>(
    value: Option<&'a CapturedContent>,
    read: impl FnOnce(&'a CapturedContent) -> Cow<'a, str>,
) -> Cow<'a, str> {
    value.map_or(Cow::Borrowed(""), read)
}

/// The top-level fields.
static TOP_FIELDS: &[(&str, Getter)] = &[
    ("service", |e| text(&e.service)),
    ("tenant", |e| text(&e.tenant)),
    ("subject", |e| text(&e.subject)),
    ("run_id", |e| text(&e.run_id)),
    ("trace_id", |e| text(&e.trace_id)),
    ("request_id", |e| text(&e.request_id)),
    ("type", |e| type_name(e.r#type)),
    ("outcome", |e| outcome_name(e.outcome)),
    ("reason", |e| text(&e.reason)),
];

/// The short forms of the detail fields rules use most.
static SHORT_FIELDS: &[(&str, Getter)] = &[
    ("tool", |e| match &e.details {
        Some(Details::ToolCall(d)) => text(&d.tool),
        _ => text(""),
    }),
    ("model", |e| match &e.details {
        Some(Details::LlmCall(d)) => text(&d.model),
        Some(Details::Run(d)) => text(&d.model),
        _ => text(""),
    }),
    ("provider", |e| match &e.details {
        Some(Details::LlmCall(d)) => text(&d.provider),
        _ => text(""),
    }),
    ("target", |e| match &e.details {
        Some(Details::Circuit(d)) => text(&d.target),
        _ => text(""),
    }),
];

/// One entry of [`DETAIL_FIELDS`]: `name`, read from the `$variant` details
/// (bound to `$d`) by `$read`; "" for events with other details.
macro_rules! detail {
    ($name:expr, $variant:ident, |$d:ident| $read:expr) => {
        ($name, |e| match &e.details {
            Some(Details::$variant($d)) => $read,
            _ => text(""),
        })
    };
}

/// The size, hash and truncation flag of a captured content field.
macro_rules! captured {
    ($prefix:literal, $variant:ident, $field:ident) => {{
        let entries: [(&str, Getter); 3] = [
            detail!(concat!($prefix, ".size_bytes"), $variant, |d| captured(
                d.$field.as_ref(),
                |c| num(c.size_bytes)
            )),
            detail!(concat!($prefix, ".sha256"), $variant, |d| captured(
                d.$field.as_ref(),
                |c| text(&c.sha256)
            )),
            detail!(concat!($prefix, ".truncated"), $variant, |d| captured(
                d.$field.as_ref(),
                |c| num(c.truncated)
            )),
        ];
        entries
    }};
}

/// Every field of every details message (see the module doc for the two
/// left out). Kept in the order of event.proto.
static DETAIL_FIELDS: &[(&str, Getter)] = &{
    let [objective_size, objective_sha, objective_truncated] =
        captured!("run.objective", Run, objective);
    let [prompt_size, prompt_sha, prompt_truncated] = captured!("llm_call.prompt", LlmCall, prompt);
    let [completion_size, completion_sha, completion_truncated] =
        captured!("llm_call.completion", LlmCall, completion);
    let [arguments_size, arguments_sha, arguments_truncated] =
        captured!("tool_call.arguments", ToolCall, arguments);
    let [output_size, output_sha, output_truncated] =
        captured!("tool_call.output", ToolCall, output);
    [
        // RunDetails (labels: `run.labels.<key>`).
        detail!("run.agent", Run, |d| text(&d.agent)),
        detail!("run.session_id", Run, |d| text(&d.session_id)),
        detail!("run.model", Run, |d| text(&d.model)),
        objective_size,
        objective_sha,
        objective_truncated,
        detail!("run.steps", Run, |d| num(d.steps)),
        detail!("run.input_tokens", Run, |d| num(d.input_tokens)),
        detail!("run.output_tokens", Run, |d| num(d.output_tokens)),
        detail!("run.estimated_cost_usd", Run, |d| optional_num(
            d.estimated_cost_usd
        )),
        detail!("run.duration", Run, |d| seconds(d.duration.as_ref())),
        detail!("run.error_code", Run, |d| text(&d.error_code)),
        // LlmCallDetails.
        detail!("llm_call.provider", LlmCall, |d| text(&d.provider)),
        detail!("llm_call.model", LlmCall, |d| text(&d.model)),
        detail!("llm_call.route", LlmCall, |d| text(&d.route)),
        detail!("llm_call.input_tokens", LlmCall, |d| num(d.input_tokens)),
        detail!("llm_call.output_tokens", LlmCall, |d| num(d.output_tokens)),
        detail!("llm_call.latency", LlmCall, |d| seconds(d.latency.as_ref())),
        detail!("llm_call.time_to_first_token", LlmCall, |d| seconds(
            d.time_to_first_token.as_ref()
        )),
        detail!("llm_call.estimated_cost_usd", LlmCall, |d| optional_num(
            d.estimated_cost_usd
        )),
        detail!("llm_call.tokens_estimated", LlmCall, |d| num(
            d.tokens_estimated
        )),
        detail!("llm_call.finish_reason", LlmCall, |d| text(
            &d.finish_reason
        )),
        detail!("llm_call.streaming", LlmCall, |d| num(d.streaming)),
        detail!("llm_call.attempts", LlmCall, |d| num(d.attempts)),
        detail!("llm_call.error_code", LlmCall, |d| text(&d.error_code)),
        prompt_size,
        prompt_sha,
        prompt_truncated,
        completion_size,
        completion_sha,
        completion_truncated,
        // ToolCallDetails.
        detail!("tool_call.tool", ToolCall, |d| text(&d.tool)),
        detail!("tool_call.call_id", ToolCall, |d| text(&d.call_id)),
        arguments_size,
        arguments_sha,
        arguments_truncated,
        output_size,
        output_sha,
        output_truncated,
        detail!("tool_call.duration", ToolCall, |d| seconds(
            d.duration.as_ref()
        )),
        detail!("tool_call.is_error", ToolCall, |d| num(d.is_error)),
        detail!("tool_call.error", ToolCall, |d| text(&d.error)),
        detail!("tool_call.error_kind", ToolCall, |d| text(&d.error_kind)),
        detail!("tool_call.attempts", ToolCall, |d| num(d.attempts)),
        // AccessDetails.
        detail!("access.method", Access, |d| text(&d.method)),
        detail!("access.mechanism", Access, |d| text(&d.mechanism)),
        detail!("access.permission", Access, |d| text(&d.permission)),
        detail!("access.resource", Access, |d| text(&d.resource)),
        detail!("access.peer", Access, |d| text(&d.peer)),
        detail!("access.credential_id", Access, |d| text(&d.credential_id)),
        detail!("access.count", Access, |d| num(d.count)),
        detail!("access.actor", Access, |d| text(&d.actor)),
        // RateLimitDetails.
        detail!("rate_limit.scope", RateLimit, |d| text(&d.scope)),
        detail!("rate_limit.key", RateLimit, |d| text(&d.key)),
        detail!("rate_limit.resource", RateLimit, |d| text(&d.resource)),
        detail!("rate_limit.limit", RateLimit, |d| num(d.limit)),
        detail!("rate_limit.period", RateLimit, |d| seconds(
            d.period.as_ref()
        )),
        detail!("rate_limit.retry_after", RateLimit, |d| seconds(
            d.retry_after.as_ref()
        )),
        detail!("rate_limit.method", RateLimit, |d| text(&d.method)),
        // CircuitDetails.
        detail!("circuit.target", Circuit, |d| text(&d.target)),
        detail!("circuit.from_state", Circuit, |d| text(&d.from_state)),
        detail!("circuit.to_state", Circuit, |d| text(&d.to_state)),
        detail!("circuit.consecutive_failures", Circuit, |d| num(
            d.consecutive_failures
        )),
        detail!("circuit.failure_ratio", Circuit, |d| num(d.failure_ratio)),
        detail!("circuit.open_duration", Circuit, |d| seconds(
            d.open_duration.as_ref()
        )),
        detail!("circuit.last_error", Circuit, |d| text(&d.last_error)),
        // ConfigDetails.
        detail!("config.source", Config, |d| text(&d.source)),
        detail!("config.sha256", Config, |d| text(&d.sha256)),
        detail!("config.version", Config, |d| text(&d.version)),
        detail!("config.changed_settings", Config, |d| Cow::Owned(
            d.changed_settings.join(",")
        )),
        // ErrorDetails.
        detail!("error.code", Error, |d| text(&d.code)),
        detail!("error.message", Error, |d| text(&d.message)),
        detail!("error.component", Error, |d| text(&d.component)),
        // RetentionDetails (anchors left out).
        detail!("retention.cutoff_time", Retention, |d| rfc3339(
            d.cutoff_time.as_ref()
        )),
        detail!("retention.deleted_count", Retention, |d| num(
            d.deleted_count
        )),
        // NotificationDetails.
        detail!("notification.receiver", Notification, |d| text(&d.receiver)),
        detail!("notification.receiver_kind", Notification, |d| text(
            &d.receiver_kind
        )),
        detail!("notification.group_key", Notification, |d| text(
            &d.group_key
        )),
        detail!("notification.status", Notification, |d| text(&d.status)),
        detail!("notification.alert_count", Notification, |d| num(
            d.alert_count
        )),
        detail!("notification.attempts", Notification, |d| num(d.attempts)),
        detail!("notification.error", Notification, |d| text(&d.error)),
        // CallbackDetails.
        detail!("callback.delivery_id", Callback, |d| text(&d.delivery_id)),
        detail!("callback.event", Callback, |d| text(&d.event)),
        detail!("callback.host", Callback, |d| text(&d.host)),
        detail!("callback.attempts", Callback, |d| num(d.attempts)),
        detail!("callback.http_status", Callback, |d| num(d.http_status)),
        detail!("callback.error", Callback, |d| text(&d.error)),
        detail!("callback.delay", Callback, |d| seconds(d.delay.as_ref())),
    ]
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use agentmesh_proto::audit::v1::{
        CircuitDetails, ConfigDetails, LlmCallDetails, RetentionDetails, RunDetails,
        ToolCallDetails,
    };
    use prost_reflect::{DescriptorPool, Kind};

    use super::*;

    fn value(name: &str, event: &AuditEvent) -> String {
        Field::resolve(name)
            .unwrap_or_else(|| panic!("{name} resolves"))
            .get(event)
            .into_owned()
    }

    fn tool_call() -> AuditEvent {
        AuditEvent {
            r#type: EventType::ToolCall as i32,
            service: "tool-runner".into(),
            tenant: "acme".into(),
            outcome: Outcome::Failure as i32,
            reason: "boom".into(),
            attributes: [("region".to_owned(), "eu".to_owned())].into(),
            details: Some(Details::ToolCall(ToolCallDetails {
                tool: "files".into(),
                error_kind: "TIMEOUT".into(),
                duration: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 500_000_000,
                }),
                attempts: 2,
                is_error: true,
                arguments: Some(CapturedContent {
                    size_bytes: 42,
                    sha256: "ab".into(),
                    text: Some("secret-ish".into()),
                    truncated: false,
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn top_level_fields_and_enums_without_prefix() {
        let event = tool_call();
        assert_eq!(value("service", &event), "tool-runner");
        assert_eq!(value("tenant", &event), "acme");
        assert_eq!(value("type", &event), "TOOL_CALL");
        assert_eq!(value("outcome", &event), "FAILURE");
        assert_eq!(value("reason", &event), "boom");
        assert_eq!(value("run_id", &event), "");
        let unset = AuditEvent::default();
        assert_eq!(
            value("outcome", &unset),
            "SUCCESS",
            "unset outcome is success"
        );
        assert_eq!(value("type", &unset), "UNSPECIFIED");
        let odd = AuditEvent {
            r#type: 999,
            outcome: 77,
            ..Default::default()
        };
        assert_eq!(value("type", &odd), "999");
        assert_eq!(value("outcome", &odd), "77");
    }

    #[test]
    fn detail_fields_render_as_text() {
        let event = tool_call();
        assert_eq!(value("tool_call.tool", &event), "files");
        assert_eq!(value("tool", &event), "files");
        assert_eq!(value("tool_call.error_kind", &event), "TIMEOUT");
        assert_eq!(value("tool_call.duration", &event), "1.5");
        assert_eq!(value("tool_call.attempts", &event), "2");
        assert_eq!(value("tool_call.is_error", &event), "true");
        assert_eq!(value("tool_call.arguments.size_bytes", &event), "42");
        assert_eq!(
            value("tool_call.output.size_bytes", &event),
            "",
            "unset content"
        );
        // Another details kind reads "".
        assert_eq!(value("llm_call.provider", &event), "");
        assert_eq!(value("provider", &event), "");
        assert_eq!(value("attributes.region", &event), "eu");
        assert_eq!(value("attributes.missing", &event), "");

        let llm = AuditEvent {
            details: Some(Details::LlmCall(LlmCallDetails {
                provider: "openai".into(),
                model: "gpt-4o".into(),
                estimated_cost_usd: Some(0.25),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(value("provider", &llm), "openai");
        assert_eq!(value("model", &llm), "gpt-4o");
        assert_eq!(value("llm_call.estimated_cost_usd", &llm), "0.25");
        assert_eq!(value("llm_call.latency", &llm), "");

        let run = AuditEvent {
            details: Some(Details::Run(RunDetails {
                model: "default".into(),
                labels: [("team".to_owned(), "search".to_owned())].into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(value("model", &run), "default");
        assert_eq!(value("run.labels.team", &run), "search");
        assert_eq!(value("run.estimated_cost_usd", &run), "", "absent optional");

        let circuit = AuditEvent {
            details: Some(Details::Circuit(CircuitDetails {
                target: "openai/gpt-4o".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(value("target", &circuit), "openai/gpt-4o");
        assert_eq!(value("circuit.target", &circuit), "openai/gpt-4o");

        let config = AuditEvent {
            details: Some(Details::Config(ConfigDetails {
                changed_settings: vec!["a".into(), "b".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(value("config.changed_settings", &config), "a,b");

        let retention = AuditEvent {
            details: Some(Details::Retention(RetentionDetails {
                cutoff_time: Some(prost_types::Timestamp {
                    seconds: 86_400,
                    nanos: 0,
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            value("retention.cutoff_time", &retention),
            "1970-01-02T00:00:00Z"
        );
    }

    #[test]
    fn unknown_names_do_not_resolve() {
        for name in [
            "",
            "nope",
            "tool_call",
            "tool_call.nope",
            "attributes.",
            "run.labels.",
            "tool_call.arguments.text",
            "retention.anchors",
            "time",
        ] {
            assert!(Field::resolve(name).is_none(), "{name}");
        }
    }

    #[test]
    fn label_names_are_the_last_segment() {
        for (name, label) in [
            ("tool", "tool"),
            ("tool_call.tool", "tool"),
            ("llm_call.provider", "provider"),
            ("attributes.region", "region"),
            ("run.labels.team", "team"),
            ("tenant", "tenant"),
        ] {
            assert_eq!(Field::resolve(name).unwrap().label_name(), label);
        }
    }

    #[test]
    fn enum_names_parse_in_any_case_and_with_prefix() {
        assert_eq!(parse_type("TOOL_CALL"), Some(EventType::ToolCall));
        assert_eq!(parse_type("tool_call"), Some(EventType::ToolCall));
        assert_eq!(
            parse_type("EVENT_TYPE_TOOL_CALL"),
            Some(EventType::ToolCall)
        );
        assert_eq!(parse_type("UNSPECIFIED"), None);
        assert_eq!(parse_type("TOOLCALL"), None);
        assert_eq!(parse_outcome("failure"), Some(Outcome::Failure));
        assert_eq!(parse_outcome("OUTCOME_DENIED"), Some(Outcome::Denied));
        assert_eq!(parse_outcome("unspecified"), None);
        assert!(type_names().contains("CIRCUIT_OPENED"));
        assert!(!type_names().contains("UNSPECIFIED"));
    }

    /// Every field of the contract's details messages is in the table,
    /// except the two left out on purpose; nothing in the table is made up.
    #[test]
    fn the_table_covers_every_detail_field_of_the_contract() {
        let pool = DescriptorPool::decode(agentmesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        let event = pool
            .get_message_by_name("agentmesh.audit.v1.AuditEvent")
            .unwrap();
        let mut expected = BTreeSet::new();
        let mut skipped = BTreeSet::new();
        for details in event.fields().filter(|f| f.containing_oneof().is_some()) {
            let Kind::Message(message) = details.kind() else {
                panic!("details are messages")
            };
            for field in message.fields() {
                let name = format!("{}.{}", details.name(), field.name());
                match field.kind() {
                    _ if field.is_map() => {
                        skipped.insert(name);
                    }
                    Kind::Message(inner)
                        if inner.full_name() == "agentmesh.audit.v1.CapturedContent" =>
                    {
                        for sub in inner.fields() {
                            let sub_name = format!("{name}.{}", sub.name());
                            if sub.name() == "text" {
                                skipped.insert(sub_name);
                            } else {
                                expected.insert(sub_name);
                            }
                        }
                    }
                    Kind::Message(inner)
                        if field.is_list()
                            || !inner.full_name().starts_with("google.protobuf.") =>
                    {
                        skipped.insert(name);
                    }
                    _ => {
                        expected.insert(name);
                    }
                }
            }
        }
        let table: BTreeSet<String> = DETAIL_FIELDS
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        assert_eq!(table, expected);
        let skipped_expected: BTreeSet<String> = [
            "run.labels",
            "run.objective.text",
            "llm_call.prompt.text",
            "llm_call.completion.text",
            "tool_call.arguments.text",
            "tool_call.output.text",
            "retention.anchors",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(skipped, skipped_expected);
        // And the top-level names exist in the message.
        for (name, _) in TOP_FIELDS {
            assert!(event.get_field_by_name(name).is_some(), "{name}");
        }
    }
}
