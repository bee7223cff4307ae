//! One audit event as one line of `agentmesh audit query`: time, type,
//! service, outcome, a short run id, and what happened, summarised from the
//! event's details by type (the reason of a failure or denial at the end).

use std::time::Duration;

use agentmesh_proto::audit::v1::{self as pb, audit_event::Details};

use crate::time::proto_utc_text;

/// An event type as shown: lowercase, without the `EVENT_TYPE_` prefix.
fn type_name(value: i32) -> String {
    pb::EventType::try_from(value).map_or_else(
        |_| value.to_string(),
        |t| {
            t.as_str_name()
                .trim_start_matches("EVENT_TYPE_")
                .to_lowercase()
        },
    )
}

fn outcome_name(value: i32) -> String {
    match pb::Outcome::try_from(value) {
        // Unset means success (see the contract).
        Ok(pb::Outcome::Unspecified) => "success".to_owned(),
        Ok(outcome) => outcome
            .as_str_name()
            .trim_start_matches("OUTCOME_")
            .to_lowercase(),
        Err(_) => value.to_string(),
    }
}

/// A run id short enough for a column: its last 8 characters (the front of
/// a UUIDv7 is a timestamp that runs started together share; the end is
/// random).
fn short_run_id(run_id: &str) -> String {
    let count = run_id.chars().count();
    if run_id.is_empty() {
        "-".to_owned()
    } else if count <= 9 {
        run_id.to_owned()
    } else {
        let tail: String = run_id.chars().skip(count - 8).collect();
        format!("…{tail}")
    }
}

/// `850ms`, `1.2s`, `<1ms`; empty when unset.
pub(super) fn duration_text(duration: Option<&prost_types::Duration>) -> String {
    let Some(duration) = duration.and_then(|d| Duration::try_from(*d).ok()) else {
        return String::new();
    };
    if duration < Duration::from_millis(1) {
        "<1ms".to_owned()
    } else if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

pub(super) fn cost_text(cost: Option<f64>) -> String {
    cost.map_or_else(|| "-".to_owned(), |c| format!("${c:.6}"))
}

/// Joins the non-empty parts with spaces.
fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// One event as a line: time, type, service, outcome, run, and what happened.
pub(super) fn event_line(event: &pb::AuditEvent) -> String {
    let service = if event.service.is_empty() {
        "-"
    } else {
        &event.service
    };
    format!(
        "{:<20}  {:<14}  {:<12}  {:<7}  {:<9}  {}",
        proto_utc_text(event.time.as_ref()),
        type_name(event.r#type),
        service,
        outcome_name(event.outcome),
        short_run_id(&event.run_id),
        event_summary(event)
    )
    .trim_end()
    .to_owned()
}

/// What happened, by type; the reason of a failure or denial at the end.
fn event_summary(event: &pb::AuditEvent) -> String {
    let reason = event.reason.as_str();
    let with_reason = |details: String| match (details.is_empty(), reason.is_empty()) {
        (_, true) => details,
        (true, false) => reason.to_owned(),
        (false, false) => format!("{details}: {reason}"),
    };
    match &event.details {
        Some(Details::LlmCall(call)) => with_reason(llm_call_summary(call)),
        // A failed tool call says its own error (the reason, when it has none).
        Some(Details::ToolCall(call)) => tool_call_summary(event, call).unwrap_or_else(|| {
            with_reason(join(&[&call.tool, &duration_text(call.duration.as_ref())]))
        }),
        Some(Details::Run(run)) => with_reason(join(&[
            &run.agent,
            &format!("steps={}", run.steps),
            &format!("tokens={}/{}", run.input_tokens, run.output_tokens),
            &run.error_code,
        ])),
        Some(Details::Access(access)) => with_reason(join(&[
            &access.method,
            &access.permission,
            &access.resource,
        ])),
        Some(Details::RateLimit(limit)) => with_reason(rate_limit_summary(limit)),
        Some(Details::Circuit(circuit)) => with_reason(join(&[
            &circuit.target,
            &format!("{} -> {}", circuit.from_state, circuit.to_state),
            &circuit.last_error,
        ])),
        Some(Details::Config(config)) => with_reason(join(&[&config.source, &config.version])),
        Some(Details::Error(error)) => with_reason(error_summary(error)),
        Some(Details::Retention(retention)) => with_reason(format!(
            "deleted {} events before {}",
            retention.deleted_count,
            proto_utc_text(retention.cutoff_time.as_ref())
        )),
        Some(Details::Notification(notification)) => with_reason(join(&[
            &notification.receiver,
            &notification.status,
            &format!("alerts={}", notification.alert_count),
            &notification.error,
        ])),
        // The reason repeats the callback's error: shown once.
        Some(Details::Callback(callback)) => join(&[
            &callback.event,
            &callback.host,
            &format!("attempts={}", callback.attempts),
            &if callback.http_status == 0 {
                String::new()
            } else {
                format!("status={}", callback.http_status)
            },
            if callback.error.is_empty() {
                reason
            } else {
                &callback.error
            },
        ]),
        None => reason.to_owned(),
    }
}

/// A model call: `provider/model`, tokens, cost, latency, error code.
fn llm_call_summary(call: &pb::LlmCallDetails) -> String {
    let target = match (call.provider.is_empty(), call.model.is_empty()) {
        (false, false) => format!("{}/{}", call.provider, call.model),
        (false, true) => call.provider.clone(),
        (true, _) => call.model.clone(),
    };
    join(&[
        &target,
        &format!("in={}", call.input_tokens),
        &format!("out={}", call.output_tokens),
        &format!("cost={}", cost_text(call.estimated_cost_usd)),
        &duration_text(call.latency.as_ref()),
        &call.error_code,
    ])
}

/// A failed tool call: `tool error: …`; `None` when the call succeeded.
fn tool_call_summary(event: &pb::AuditEvent, call: &pb::ToolCallDetails) -> Option<String> {
    let failed = call.is_error || event.outcome == i32::from(pb::Outcome::Failure);
    failed.then(|| {
        let error = [&call.error, &call.error_kind, &event.reason]
            .into_iter()
            .find(|e| !e.is_empty())
            .map_or("failed", String::as_str);
        format!("{} error: {error}", call.tool)
    })
}

fn rate_limit_summary(limit: &pb::RateLimitDetails) -> String {
    let scope = match (limit.scope.is_empty(), limit.key.is_empty()) {
        (false, false) => format!("{}={}", limit.scope, limit.key),
        _ => format!("{}{}", limit.scope, limit.key),
    };
    join(&[
        &scope,
        &limit.resource,
        &format!("limit={}", limit.limit),
        &limit.method,
    ])
}

fn error_summary(error: &pb::ErrorDetails) -> String {
    let message = match (error.code.is_empty(), error.message.is_empty()) {
        (false, false) => format!("{}: {}", error.code, error.message),
        _ => format!("{}{}", error.code, error.message),
    };
    join(&[&error.component, &message])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::testing::time;

    #[test]
    fn event_lines_by_type() {
        let llm = pb::AuditEvent {
            time: time("2026-11-21T10:00:00.900Z"),
            r#type: pb::EventType::LlmCall.into(),
            service: "llm-gateway".to_owned(),
            run_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_owned(),
            details: Some(Details::LlmCall(pb::LlmCallDetails {
                provider: "openai".to_owned(),
                model: "gpt-4o-mini".to_owned(),
                input_tokens: 120,
                output_tokens: 30,
                estimated_cost_usd: Some(0.000_123),
                latency: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 200_000_000,
                }),
                ..pb::LlmCallDetails::default()
            })),
            ..pb::AuditEvent::default()
        };
        assert_eq!(
            event_line(&llm),
            "2026-11-21T10:00:00Z  llm_call        llm-gateway   success  …2e3f4a5b  \
             openai/gpt-4o-mini in=120 out=30 cost=$0.000123 1.2s"
        );

        let tool = pb::AuditEvent {
            time: time("2026-11-21T10:00:01Z"),
            r#type: pb::EventType::ToolCall.into(),
            service: "tool-runner".to_owned(),
            outcome: pb::Outcome::Success.into(),
            run_id: "run-1".to_owned(),
            details: Some(Details::ToolCall(pb::ToolCallDetails {
                tool: "calculator".to_owned(),
                duration: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 12_400_000,
                }),
                ..pb::ToolCallDetails::default()
            })),
            ..pb::AuditEvent::default()
        };
        assert!(event_line(&tool).ends_with("success  run-1      calculator 12ms"));

        let failed_tool = pb::AuditEvent {
            outcome: pb::Outcome::Failure.into(),
            details: Some(Details::ToolCall(pb::ToolCallDetails {
                tool: "web_fetch".to_owned(),
                is_error: true,
                error: "timed out after 30s".to_owned(),
                ..pb::ToolCallDetails::default()
            })),
            ..tool.clone()
        };
        assert_eq!(
            event_summary(&failed_tool),
            "web_fetch error: timed out after 30s"
        );

        let run = pb::AuditEvent {
            r#type: pb::EventType::RunFailed.into(),
            outcome: pb::Outcome::Failure.into(),
            reason: "the model is unavailable".to_owned(),
            details: Some(Details::Run(pb::RunDetails {
                agent: "default".to_owned(),
                steps: 3,
                input_tokens: 1200,
                output_tokens: 80,
                error_code: "UNAVAILABLE".to_owned(),
                ..pb::RunDetails::default()
            })),
            ..pb::AuditEvent::default()
        };
        assert_eq!(
            event_line(&run),
            "-                     run_failed      -             failure  -          \
             default steps=3 tokens=1200/80 UNAVAILABLE: the model is unavailable"
        );

        let denied = pb::AuditEvent {
            r#type: pb::EventType::Authorization.into(),
            outcome: pb::Outcome::Denied.into(),
            reason: "runs.cancel is not granted".to_owned(),
            details: Some(Details::Access(pb::AccessDetails {
                method: "/agentmesh.orchestrator.v1.OrchestratorService/CancelRun".to_owned(),
                ..pb::AccessDetails::default()
            })),
            ..pb::AuditEvent::default()
        };
        assert_eq!(
            event_summary(&denied),
            "/agentmesh.orchestrator.v1.OrchestratorService/CancelRun: runs.cancel is not granted"
        );
        let bare = pb::AuditEvent {
            r#type: 99,
            reason: "spool full".to_owned(),
            ..pb::AuditEvent::default()
        };
        assert!(
            event_line(&bare)
                .ends_with("99              -             success  -          spool full")
        );
    }

    #[test]
    fn durations_and_short_ids() {
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(duration_text(d(0, 500_000).as_ref()), "<1ms");
        assert_eq!(duration_text(d(0, 999_000_000).as_ref()), "999ms");
        assert_eq!(duration_text(d(61, 0).as_ref()), "61.0s");
        assert_eq!(duration_text(None), "");
        assert_eq!(short_run_id(""), "-");
        assert_eq!(short_run_id("123456789"), "123456789");
        assert_eq!(short_run_id("1234567890"), "…34567890");
    }
}
