//! What a callback says: the JSON body of a stored step (`run.step`) or of
//! the run's end (`run.finished`, `run.failed`, `run.cancelled`), built
//! from the run row as it is being stored and kept in the outbox; each
//! attempt adds its `delivery_id` and `attempt` ([`envelope`]). The fields
//! are documented with `RunCallback` in the proto and in
//! docs/callbacks.md.

use std::collections::BTreeMap;

use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use serde::Serialize;

use crate::store::{NewCallback, RunRow};

/// Token usage as the body spells it.
#[derive(Debug, Serialize)]
struct Usage {
    input_tokens: i64,
    output_tokens: i64,
    total_tokens: i64,
}

/// A failed run's error.
#[derive(Debug, Serialize)]
struct Error<'a> {
    /// A gRPC code name, e.g. "DEADLINE_EXCEEDED".
    code: &'static str,
    message: &'a str,
}

/// The stored body (without `delivery_id` and `attempt`).
#[derive(Debug, Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    run_id: &'a str,
    tenant: &'a str,
    agent: &'a str,
    session_id: &'a str,
    labels: &'a BTreeMap<String, String>,
    state: &'static str,
    sequence: i32,
    time: String,
    steps: i32,
    usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Error<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_by: Option<&'a str>,
}

impl<'a> Body<'a> {
    /// The fields every callback of `run` has, stored at `now` (micros).
    fn of(kind: &'static str, run: &'a RunRow, now: i64) -> Self {
        Self {
            kind,
            run_id: &run.run_id,
            tenant: &run.tenant,
            agent: &run.agent,
            session_id: &run.session_id,
            labels: &run.labels,
            state: run.state.as_str_name(),
            sequence: run.last_sequence,
            time: rfc3339(now),
            steps: run.steps,
            usage: Usage {
                input_tokens: run.input_tokens,
                output_tokens: run.output_tokens,
                total_tokens: run.input_tokens.saturating_add(run.output_tokens),
            },
            step: None,
            tool_calls: None,
            output: None,
            error: None,
            reason: None,
            cancelled_by: None,
        }
    }

    fn stored(&self, event: String, url: &str) -> NewCallback {
        NewCallback {
            delivery_id: uuid::Uuid::now_v7().to_string(),
            event,
            url: url.to_owned(),
            // Plain data: serialising it cannot fail; an empty object
            // would still be delivered and signed.
            payload: serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned()),
        }
    }
}

/// The callback of step `step` of `run`, if its callback asks for every
/// step (`now`: when it is stored).
pub(crate) fn step_callback(run: &RunRow, step: i32, now: i64) -> Option<NewCallback> {
    let callback = run.callback.as_ref().filter(|c| c.every_step)?;
    let mut body = Body::of("run.step", run, now);
    body.step = Some(step);
    body.tool_calls = Some(run.tool_calls);
    Some(body.stored(format!("step:{step}"), &callback.url))
}

/// The callback of `run`'s end, told by its `terminal` event, if it has a
/// callback.
pub(crate) fn end_callback(run: &RunRow, terminal: &pb::RunEvent, now: i64) -> Option<NewCallback> {
    let callback = run.callback.as_ref()?;
    let mut body = Body::of("run.finished", run, now);
    match &terminal.event {
        Some(run_event::Event::RunFinished(finished)) => {
            body.output = Some(&finished.output);
        }
        Some(run_event::Event::RunFailed(failed)) => {
            body.kind = "run.failed";
            body.error = failed.error.as_ref().map(|error| Error {
                code: agentmesh_audit_client::code_name(tonic::Code::from_i32(error.code)),
                message: &error.message,
            });
        }
        Some(run_event::Event::RunCancelled(cancelled)) => {
            body.kind = "run.cancelled";
            body.reason = Some(&cancelled.reason);
            body.cancelled_by = Some(&cancelled.cancelled_by);
        }
        // Not a terminal event: nothing to report.
        _ => return None,
    }
    Some(body.stored("end".to_owned(), &callback.url))
}

/// The body of one attempt — the stored one with `delivery_id` and
/// `attempt` added — and its `type`.
pub(crate) fn envelope(payload: &str, delivery_id: &str, attempt: i32) -> (Vec<u8>, String) {
    let mut body = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(payload)
        .unwrap_or_default();
    let kind = body
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    body.insert("delivery_id".into(), delivery_id.into());
    body.insert("attempt".into(), attempt.into());
    (serde_json::to_vec(&body).unwrap_or_default(), kind)
}

/// A time in microseconds as RFC 3339 (UTC).
fn rfc3339(micros: i64) -> String {
    jiff::Timestamp::from_microsecond(micros)
        .map(|time| time.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing;
    use crate::store::RunCallback;

    fn with_callback(every_step: bool) -> RunRow {
        let mut run = testing::run("acme");
        run.callback = Some(RunCallback {
            url: "https://hooks.example.com/x".into(),
            every_step,
        });
        run.labels.insert("team".into(), "a".into());
        run.input_tokens = 10;
        run.output_tokens = 5;
        run.steps = 2;
        run.tool_calls = 3;
        run.last_sequence = 42;
        run
    }

    fn json(callback: &NewCallback) -> serde_json::Value {
        serde_json::from_str(&callback.payload).unwrap()
    }

    #[test]
    fn steps_are_sent_only_when_asked_for() {
        let now = 1_700_000_000_123_456;
        assert!(step_callback(&with_callback(false), 2, now).is_none());
        assert!(step_callback(&testing::run("acme"), 2, now).is_none());
        let mut run = with_callback(true);
        run.state = pb::RunState::Running;
        let step = step_callback(&run, 2, now).unwrap();
        assert_eq!(step.event, "step:2");
        assert_eq!(step.url, "https://hooks.example.com/x");
        let body = json(&step);
        assert_eq!(body["type"], "run.step");
        assert_eq!(body["state"], "RUN_STATE_RUNNING");
        assert_eq!(body["step"], 2);
        assert_eq!(body["tool_calls"], 3);
        assert_eq!(body["sequence"], 42);
        assert_eq!(body["tenant"], "acme");
        assert_eq!(body["labels"]["team"], "a");
        assert_eq!(body["usage"]["total_tokens"], 15);
        assert_eq!(body["time"], "2023-11-14T22:13:20.123456Z");
        assert!(body.get("output").is_none());
    }

    #[test]
    fn each_end_says_what_it_is() {
        let run = with_callback(false);
        let event = |event| pb::RunEvent {
            event: Some(event),
            ..pb::RunEvent::default()
        };
        let finished = end_callback(
            &run,
            &event(run_event::Event::RunFinished(pb::RunFinished {
                output: "42".into(),
                ..pb::RunFinished::default()
            })),
            0,
        )
        .unwrap();
        assert_eq!(finished.event, "end");
        assert_eq!(json(&finished)["type"], "run.finished");
        assert_eq!(json(&finished)["output"], "42");

        let failed = end_callback(
            &run,
            &event(run_event::Event::RunFailed(pb::RunFailed {
                error: Some(tonic_types::pb::Status {
                    code: tonic::Code::DeadlineExceeded.into(),
                    message: "too slow".into(),
                    details: Vec::new(),
                }),
                ..pb::RunFailed::default()
            })),
            0,
        )
        .unwrap();
        assert_eq!(json(&failed)["type"], "run.failed");
        assert_eq!(json(&failed)["error"]["code"], "DEADLINE_EXCEEDED");
        assert_eq!(json(&failed)["error"]["message"], "too slow");

        let cancelled = end_callback(
            &run,
            &event(run_event::Event::RunCancelled(pb::RunCancelled {
                reason: "wrong objective".into(),
                cancelled_by: "ana".into(),
                ..pb::RunCancelled::default()
            })),
            0,
        )
        .unwrap();
        assert_eq!(json(&cancelled)["type"], "run.cancelled");
        assert_eq!(json(&cancelled)["cancelled_by"], "ana");
        // Each stored callback has an id of its own.
        assert_ne!(finished.delivery_id, failed.delivery_id);
        // No callback, nothing to store.
        let plain = testing::run("acme");
        assert!(
            end_callback(
                &plain,
                &event(run_event::Event::RunFinished(pb::RunFinished::default())),
                0
            )
            .is_none()
        );
    }

    #[test]
    fn an_attempt_adds_its_delivery_id_and_number() {
        let (body, kind) = envelope(r#"{"type":"run.finished","run_id":"r"}"#, "d-1", 3);
        assert_eq!(kind, "run.finished");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["delivery_id"], "d-1");
        assert_eq!(body["attempt"], 3);
        assert_eq!(body["run_id"], "r");
    }
}
