//! Request validation: the checks that need nothing but the request (and a
//! configured size limit; a callback's URL alone, by
//! `crate::callbacks::parse`). Each check collects every field violation, and
//! a request with any is refused as INVALID_ARGUMENT with a
//! `google.rpc.BadRequest` naming each field; a valid `StartRun`/`Run`
//! request comes back as a [`StartRequest`] whose values the handlers can
//! use without looking again. Checks against state (the agent profile, the
//! session, the run) are the handlers' own.

use std::collections::HashMap;
use std::time::Duration;

use agentmesh_kit::status::Violations;
use agentmesh_kit::time::micros_of;
use agentmesh_proto::orchestrator::v1 as pb;
use tonic::Status;

use crate::callbacks::{self, RequestedCallback};
use crate::config::MAX_STEPS_LIMIT;

/// Longest run timeout a request may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Labels per request.
const MAX_LABELS: usize = 32;
/// Longest label key, in characters.
const MAX_LABEL_KEY: usize = 63;
/// The largest priority a run may ask for (and the lowest, negated).
pub(crate) const MAX_PRIORITY: i32 = 100;

/// Longest label value, and longest idempotency key, in characters.
const MAX_VALUE: usize = 256;

/// The fields StartRun and Run share.
#[derive(Debug)]
pub(crate) struct StartFields {
    objective: String,
    agent: String,
    session_id: String,
    idempotency_key: String,
    limits: Option<pb::RunLimits>,
    labels: HashMap<String, String>,
    priority: i32,
    callback: Option<pb::RunCallback>,
}

impl From<pb::StartRunRequest> for StartFields {
    fn from(r: pb::StartRunRequest) -> Self {
        Self {
            objective: r.objective,
            agent: r.agent,
            session_id: r.session_id,
            idempotency_key: r.idempotency_key,
            limits: r.limits,
            labels: r.labels,
            priority: r.priority,
            callback: r.callback,
        }
    }
}

impl From<pb::RunRequest> for StartFields {
    fn from(r: pb::RunRequest) -> Self {
        Self {
            objective: r.objective,
            agent: r.agent,
            session_id: r.session_id,
            idempotency_key: r.idempotency_key,
            limits: r.limits,
            labels: r.labels,
            priority: r.priority,
            callback: r.callback,
        }
    }
}

/// A valid StartRun/Run request.
#[derive(Debug)]
pub(crate) struct StartRequest {
    /// Not blank, within the configured size.
    pub(crate) objective: String,
    /// The profile asked for; empty = the default one.
    pub(crate) agent: String,
    /// The session to continue; empty = a new session.
    pub(crate) session_id: String,
    /// Empty = none.
    pub(crate) idempotency_key: String,
    pub(crate) limits: RequestedLimits,
    pub(crate) labels: HashMap<String, String>,
    /// -[`MAX_PRIORITY`] to [`MAX_PRIORITY`].
    pub(crate) priority: i32,
    /// A well-formed callback (its destination is checked against the
    /// policy by the handler); `None`: none asked for.
    pub(crate) callback: Option<RequestedCallback>,
}

/// The limits a request asks for; 0 or `None` means the profile's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestedLimits {
    /// 0 to [`MAX_STEPS_LIMIT`].
    pub(crate) max_steps: i32,
    /// Not negative.
    pub(crate) max_output_tokens: i32,
    /// 0: the profile's.
    pub(crate) max_tokens: i64,
    /// Micro-dollars; 0: the profile's.
    pub(crate) max_cost_micros: i64,
    /// Above zero, at most 24h.
    pub(crate) timeout: Option<Duration>,
}

/// Checks a StartRun/Run request; `max_objective_bytes` is the configured
/// limit.
pub(crate) fn start_request(
    fields: StartFields,
    max_objective_bytes: usize,
) -> Result<StartRequest, Status> {
    let mut violations = Violations::new();
    if fields.objective.trim().is_empty() {
        violations.push((
            "objective".into(),
            "must not be empty: say what the agent should achieve".into(),
        ));
    } else if fields.objective.len() > max_objective_bytes {
        violations.push((
            "objective".into(),
            format!(
                "is {} bytes; the limit is {} bytes",
                fields.objective.len(),
                max_objective_bytes
            ),
        ));
    }
    if fields.idempotency_key.chars().count() > MAX_VALUE {
        violations.push((
            "idempotency_key".into(),
            "must be at most 256 characters".into(),
        ));
    }
    let limits = run_limits(fields.limits.unwrap_or_default(), &mut violations);
    labels(&fields.labels, "labels", &mut violations);
    if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&fields.priority) {
        violations.push((
            "priority".into(),
            format!(
                "is {}; it must be between -{MAX_PRIORITY} and {MAX_PRIORITY} (higher goes first)",
                fields.priority
            ),
        ));
    }
    let callback = fields
        .callback
        .and_then(|callback| callbacks::parse(callback, &mut violations));
    if !violations.is_empty() {
        return Err(violations.into_status());
    }
    Ok(StartRequest {
        objective: fields.objective,
        agent: fields.agent,
        session_id: fields.session_id,
        idempotency_key: fields.idempotency_key,
        limits,
        labels: fields.labels,
        priority: fields.priority,
        callback,
    })
}

/// The limits a request asks for, adding a violation for each bad one.
fn run_limits(limits: pb::RunLimits, violations: &mut Violations) -> RequestedLimits {
    if !(0..=MAX_STEPS_LIMIT).contains(&limits.max_steps) {
        violations.push((
            "limits.max_steps".into(),
            format!("must be between 0 (the profile's) and {MAX_STEPS_LIMIT}"),
        ));
    }
    if limits.max_output_tokens < 0 {
        violations.push((
            "limits.max_output_tokens".into(),
            "must not be negative".into(),
        ));
    }
    if !limits.max_cost_usd.is_finite()
        || limits.max_cost_usd < 0.0
        || limits.max_cost_usd > crate::config::MAX_COST_USD
    {
        violations.push((
            "limits.max_cost_usd".into(),
            format!(
                "must be 0 to {} (0 takes the agent profile's budget)",
                crate::config::MAX_COST_USD
            ),
        ));
    }
    if limits.max_tokens < 0 {
        violations.push((
            "limits.max_tokens".into(),
            "must not be negative (0 takes the agent profile's budget)".into(),
        ));
    }
    let timeout = match &limits.timeout {
        None => None,
        Some(timeout) => match agentmesh_kit::duration::length_of_time(timeout) {
            Ok(timeout) if timeout <= MAX_TIMEOUT => Some(timeout).filter(|t| !t.is_zero()),
            Ok(_) => {
                violations.add(
                    "limits.timeout",
                    "must be between 0 (the profile's) and 24h",
                );
                None
            }
            Err(problem) => {
                violations.add(
                    "limits.timeout",
                    format!("{problem}; use 0 (the profile's) to 24h"),
                );
                None
            }
        },
    };
    RequestedLimits {
        max_steps: limits.max_steps,
        max_output_tokens: limits.max_output_tokens,
        max_tokens: limits.max_tokens,
        max_cost_micros: crate::config::usd_to_micros(limits.max_cost_usd),
        timeout,
    }
}

/// Checks the filters of a ListRuns request (its page size and token are
/// the handler's).
pub(crate) fn list_runs_request(request: &pb::ListRunsRequest) -> Result<(), Status> {
    let mut violations = Violations::new();
    for (index, state) in request.states.iter().enumerate() {
        if pb::RunState::try_from(*state).map_or(true, |s| s == pb::RunState::Unspecified) {
            violations.push((
                format!("states[{index}]"),
                format!("{state} is not a run state"),
            ));
        }
    }
    labels(&request.labels, "labels", &mut violations);
    if request.parent_run_id.len() > 128 {
        violations.push((
            "parent_run_id".into(),
            "must be a run id (at most 128 bytes)".into(),
        ));
    }
    if let (Some(start), Some(end)) = (&request.create_time_start, &request.create_time_end)
        && micros_of(start) > micros_of(end)
    {
        violations.push((
            "create_time_end".into(),
            "must not be before create_time_start".into(),
        ));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations.into_status())
    }
}

/// Checks labels (at most 32; keys of 1 to 63 characters, values of at
/// most 256), in key order so the violations read the same every time.
fn labels(labels: &HashMap<String, String>, field: &str, violations: &mut Violations) {
    if labels.len() > MAX_LABELS {
        violations.push((
            field.to_owned(),
            format!("has {} labels; at most 32 are allowed", labels.len()),
        ));
    }
    let mut sorted: Vec<_> = labels.iter().collect();
    sorted.sort();
    for (key, value) in sorted {
        if key.is_empty() || key.chars().count() > MAX_LABEL_KEY {
            violations.push((
                format!("{field}[{key:?}]"),
                "label keys are 1 to 63 characters".into(),
            ));
        }
        if value.chars().count() > MAX_VALUE {
            violations.push((
                format!("{field}[{key:?}]"),
                "label values are at most 256 characters".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt as _;

    use super::*;

    fn fields(objective: &str) -> StartFields {
        pb::StartRunRequest {
            objective: objective.to_owned(),
            ..pb::StartRunRequest::default()
        }
        .into()
    }

    /// The fields a refusal's BadRequest names, in order.
    fn violated(status: &Status) -> Vec<String> {
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status
            .get_details_bad_request()
            .map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|violation| violation.field)
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_valid_start_keeps_its_values() {
        let mut request = pb::RunRequest {
            objective: "add 2 and 2".to_owned(),
            agent: "default".to_owned(),
            idempotency_key: "k".to_owned(),
            limits: Some(pb::RunLimits {
                max_steps: 3,
                max_output_tokens: 100,
                max_tokens: 0,
                max_cost_usd: 0.0,
                timeout: Some(prost_types::Duration {
                    seconds: 90,
                    nanos: 0,
                }),
            }),
            ..pb::RunRequest::default()
        };
        request.labels.insert("team".to_owned(), "a".to_owned());
        let valid = start_request(request.into(), 1024).unwrap();
        assert_eq!(valid.objective, "add 2 and 2");
        assert_eq!(valid.agent, "default");
        assert_eq!(valid.idempotency_key, "k");
        assert_eq!(
            valid.limits,
            RequestedLimits {
                max_steps: 3,
                max_output_tokens: 100,
                max_cost_micros: 0,
                max_tokens: 0,
                timeout: Some(Duration::from_secs(90)),
            }
        );
        assert_eq!(valid.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(valid.callback, None);

        // A callback comes back parsed, the same from Run and StartRun.
        let with_callback = pb::StartRunRequest {
            objective: "x".to_owned(),
            callback: Some(pb::RunCallback {
                url: "https://hooks.example.com/runs".to_owned(),
                events: pb::CallbackEvents::EveryStep.into(),
            }),
            ..pb::StartRunRequest::default()
        };
        let callback = start_request(with_callback.into(), 1024)
            .unwrap()
            .callback
            .unwrap();
        assert_eq!(callback.url.as_str(), "https://hooks.example.com/runs");
        assert!(callback.every_step);

        // A zero timeout means the profile's.
        let zero = pb::StartRunRequest {
            objective: "x".to_owned(),
            limits: Some(pb::RunLimits {
                timeout: Some(prost_types::Duration::default()),
                ..pb::RunLimits::default()
            }),
            ..pb::StartRunRequest::default()
        };
        assert_eq!(
            start_request(zero.into(), 1024).unwrap().limits.timeout,
            None
        );
    }

    #[test]
    fn a_priority_is_kept_within_its_range_and_refused_beyond() {
        for priority in [-MAX_PRIORITY, 0, 7, MAX_PRIORITY] {
            let request = pb::StartRunRequest {
                objective: "x".to_owned(),
                priority,
                ..pb::StartRunRequest::default()
            };
            assert_eq!(
                start_request(request.into(), 1024).unwrap().priority,
                priority
            );
        }
        for priority in [-MAX_PRIORITY - 1, MAX_PRIORITY + 1, i32::MIN, i32::MAX] {
            let request = pb::RunRequest {
                objective: "x".to_owned(),
                priority,
                ..pb::RunRequest::default()
            };
            let refused = start_request(request.into(), 1024).unwrap_err();
            assert_eq!(violated(&refused), ["priority"]);
            assert!(
                refused.message().contains("between -100 and 100") || {
                    let bad = refused.get_details_bad_request().unwrap();
                    bad.field_violations[0]
                        .description
                        .contains("between -100 and 100")
                }
            );
        }
    }

    #[test]
    fn every_violation_of_a_start_is_named_in_field_order() {
        let mut request = pb::StartRunRequest {
            objective: "  ".to_owned(),
            idempotency_key: "k".repeat(257),
            limits: Some(pb::RunLimits {
                max_steps: MAX_STEPS_LIMIT + 1,
                max_output_tokens: -1,
                max_tokens: 0,
                max_cost_usd: 0.0,
                timeout: Some(prost_types::Duration {
                    seconds: 24 * 3600 + 1,
                    nanos: 0,
                }),
            }),
            ..pb::StartRunRequest::default()
        };
        request.labels.insert("b".to_owned(), "v".repeat(257));
        request.labels.insert(String::new(), "v".to_owned());
        request.callback = Some(pb::RunCallback {
            url: "gopher://example.com/".to_owned(),
            events: 9,
        });
        let refused = start_request(request.into(), 1024).unwrap_err();
        assert_eq!(
            violated(&refused),
            [
                "objective",
                "idempotency_key",
                "limits.max_steps",
                "limits.max_output_tokens",
                "limits.timeout",
                "labels[\"\"]",
                "labels[\"b\"]",
                "callback.events",
                "callback.url",
            ]
        );
        assert!(
            refused
                .message()
                .starts_with("objective: must not be empty"),
            "{refused:?}"
        );
    }

    #[test]
    fn an_objective_over_the_limit_is_refused_with_its_size() {
        let refused = start_request(fields("abcdef"), 5).unwrap_err();
        assert_eq!(violated(&refused), ["objective"]);
        assert!(
            refused
                .message()
                .contains("is 6 bytes; the limit is 5 bytes"),
            "{refused:?}"
        );
        assert!(start_request(fields("abcde"), 5).is_ok());
    }

    #[test]
    fn too_many_labels_are_refused() {
        let mut request = pb::StartRunRequest {
            objective: "x".to_owned(),
            ..pb::StartRunRequest::default()
        };
        for n in 0..=MAX_LABELS {
            request.labels.insert(format!("k{n}"), String::new());
        }
        let refused = start_request(request.into(), 1024).unwrap_err();
        assert_eq!(violated(&refused), ["labels"]);
    }

    #[test]
    fn list_filters_are_checked() {
        let request = pb::ListRunsRequest {
            states: vec![pb::RunState::Running.into(), 0, 99],
            create_time_start: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            create_time_end: Some(prost_types::Timestamp {
                seconds: 9,
                nanos: 0,
            }),
            ..pb::ListRunsRequest::default()
        };
        let refused = list_runs_request(&request).unwrap_err();
        assert_eq!(
            violated(&refused),
            ["states[1]", "states[2]", "create_time_end"]
        );
        let fine = pb::ListRunsRequest {
            states: vec![pb::RunState::Succeeded.into()],
            ..pb::ListRunsRequest::default()
        };
        assert!(list_runs_request(&fine).is_ok());
    }
}
