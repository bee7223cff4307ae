//! The rules shipped with agentmesh, all in this one place. They compile
//! through the same path as the operator's rules (so they are checked the
//! same way), are listed by ListRules with `builtin = true`, can be replaced
//! by configuring a rule of the same name, and can be turned off with
//! `disable_rules = ["RunsFailing"]`.
//!
//! Choices worth knowing:
//! - `RunsFailing` looks at RUN_FINISHED and RUN_FAILED only. RUN_CANCELLED
//!   is left out: the orchestrator records it with outcome FAILURE, but a
//!   cancellation is someone's decision, not a malfunction, and counting it
//!   would page on a user cancelling their own runs. It groups by agent
//!   profile (`run.agent`), not by tenant: the profile is what an operator
//!   can fix (its model route, tools, limits, prompt), the set of profiles
//!   is small and configured (so groups stay few and each sees enough runs
//!   to reach `min_events`), while tenants are many and a tenant hitting its
//!   own budget is policy working, not an outage. The latest run's tenant
//!   and error code are in the description.
//! - `ToolFailing` and `LlmProviderFailing` overlap with `RunsFailing` on
//!   purpose: they name the cause when there is one (a tool, a provider).
//! - `AuthenticationFailures` sums `access.count` instead of counting
//!   events: a service's auth layer records a burst of failures of one
//!   credential from one peer as one event at once plus one carrying the
//!   rest of the interval's count, so counting events would see two where
//!   a thousand guesses were made. It fires at 20 failures within a
//!   minute at one service (grouped by service, not by peer or credential:
//!   a guesser rotating keys or addresses still adds up), which a person
//!   mistyping a key does not reach but a script does, within the auth
//!   layer's `audit_interval` (10 s by default) of the burst.

use std::collections::BTreeMap;
use std::time::Duration;

use super::config::{CountConfig, FailureRatioConfig, FilterConfig, RuleConfig};

/// The shipped rules, in the order ListRules shows them.
pub(crate) fn rules() -> Vec<RuleConfig> {
    vec![
        tool_failing(),
        llm_provider_failing(),
        circuit_open(),
        tenant_rate_limited(),
        authentication_failures(),
        runs_failing(),
    ]
}

/// `ToolFailing`: failed calls of one tool (count).
fn tool_failing() -> RuleConfig {
    RuleConfig {
        description:
            "A tool keeps failing: at least 5 failed calls to the same tool within a minute.".into(),
        severity: "warning".into(),
        group_by: texts(&["tool"]),
        filter: filter(&["TOOL_CALL"], &["FAILURE"]),
        count: Some(CountConfig {
            threshold: 5,
            window: Some(minutes(1)),
            sum_of: None,
        }),
        annotations: annotations(
            "Tool {{tool}} failed {{count}} times in {{window}}",
            "Calls to the tool {{tool}} through the tool runner failed {{count}} times in the last {{window}} \
             (alerting at {{threshold}}). Latest error ({{tool_call.error_kind}}): {{reason}}",
        ),
        ..RuleConfig::named("ToolFailing")
    }
}

/// `LlmProviderFailing`: the failure ratio of one LLM provider.
fn llm_provider_failing() -> RuleConfig {
    RuleConfig {
        description:
            "An LLM provider fails at least half of its calls over 5 minutes (at least 10 calls)."
                .into(),
        severity: "critical".into(),
        group_by: texts(&["provider"]),
        filter: filter(&["LLM_CALL"], &[]),
        failure_ratio: Some(FailureRatioConfig {
            threshold: Some(0.5),
            window: Some(minutes(5)),
            min_events: 10,
            failure_outcomes: texts(&["FAILURE"]),
        }),
        annotations: annotations(
            "LLM provider {{provider}} fails {{ratio}} of its calls",
            "{{ratio}} of the {{count}} model calls served by {{provider}} in the last {{window}} failed \
             (alerting at {{threshold}}). Latest: {{llm_call.error_code}} on model {{llm_call.model}}: {{reason}}",
        ),
        ..RuleConfig::named("LlmProviderFailing")
    }
}

/// `CircuitOpen`: a circuit breaker opened.
fn circuit_open() -> RuleConfig {
    RuleConfig {
        description: "A circuit breaker opened: calls to its target fail fast.".into(),
        severity: "critical".into(),
        group_by: texts(&["circuit.target"]),
        filter: filter(&["CIRCUIT_OPENED"], &[]),
        count: Some(CountConfig {
            threshold: 1,
            window: Some(minutes(5)),
            sum_of: None,
        }),
        annotations: annotations(
            "Circuit breaker for {{target}} opened",
            "The circuit breaker guarding {{target}} in {{service}} opened ({{count}} times in the last \
             {{window}}): calls to it fail fast until it recovers. Last error: {{circuit.last_error}}",
        ),
        ..RuleConfig::named("CircuitOpen")
    }
}

/// `TenantRateLimited`: refused requests of one tenant (count).
fn tenant_rate_limited() -> RuleConfig {
    RuleConfig {
        description:
            "A tenant is rate limited often: at least 20 refused requests within 5 minutes.".into(),
        severity: "warning".into(),
        group_by: texts(&["tenant"]),
        filter: filter(&["RATE_LIMITED"], &[]),
        count: Some(CountConfig {
            threshold: 20,
            window: Some(minutes(5)),
            sum_of: None,
        }),
        annotations: annotations(
            "Tenant {{tenant}} was rate limited {{count}} times in {{window}}",
            "Requests of tenant {{tenant}} were refused by a rate or concurrency limit {{count}} times in the \
             last {{window}}. Latest: the {{rate_limit.scope}} limit on {{rate_limit.resource}} \
             ({{rate_limit.limit}}) refused {{rate_limit.method}}.",
        ),
        ..RuleConfig::named("TenantRateLimited")
    }
}

/// `AuthenticationFailures`: failed authentications at one service (the
/// sum of their `access.count`).
fn authentication_failures() -> RuleConfig {
    RuleConfig {
        description:
            "Callers fail to authenticate to a service: at least 20 failed authentications within a minute \
             (a brute-force burst or a misconfigured client)."
                .into(),
        severity: "warning".into(),
        group_by: texts(&["service"]),
        filter: filter(&["AUTHENTICATION"], &["FAILURE", "DENIED"]),
        count: Some(CountConfig {
            threshold: 20,
            window: Some(minutes(1)),
            sum_of: Some("access.count".into()),
        }),
        annotations: annotations(
            "{{count}} failed authentications at {{service}} in {{window}}",
            "Callers failed to authenticate to {{service}} {{count}} times in the last {{window}} \
             (alerting at {{threshold}}): a misconfigured client or someone guessing credentials. Latest: \
             {{access.mechanism}} credential {{access.credential_id}} from {{access.peer}} calling \
             {{access.method}}: {{reason}}",
        ),
        ..RuleConfig::named("AuthenticationFailures")
    }
}

/// `RunsFailing`: the failure ratio of one agent profile's runs.
fn runs_failing() -> RuleConfig {
    RuleConfig {
        description:
            "Runs of an agent fail: at least half of the runs that ended within 10 minutes failed \
                      (at least 5 runs; cancelled runs are not counted)."
                .into(),
        severity: "warning".into(),
        group_by: texts(&["run.agent"]),
        filter: filter(&["RUN_FINISHED", "RUN_FAILED"], &[]),
        failure_ratio: Some(FailureRatioConfig {
            threshold: Some(0.5),
            window: Some(minutes(10)),
            min_events: 5,
            failure_outcomes: texts(&["FAILURE"]),
        }),
        annotations: annotations(
            "Runs of agent {{agent}} fail ({{ratio}} of {{count}} in {{window}})",
            "{{ratio}} of the {{count}} runs of agent {{agent}} that ended in the last {{window}} failed \
             (alerting at {{threshold}}). Latest: run {{run_id}} of tenant {{tenant}} ended with \
             {{run.error_code}}: {{reason}}",
        ),
        ..RuleConfig::named("RunsFailing")
    }
}

fn texts(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

fn filter(types: &[&str], outcomes: &[&str]) -> FilterConfig {
    FilterConfig {
        types: texts(types),
        outcomes: texts(outcomes),
        matchers: Vec::new(),
    }
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn annotations(summary: &str, description: &str) -> BTreeMap<String, String> {
    [
        ("summary".to_owned(), summary.to_owned()),
        ("description".to_owned(), description.to_owned()),
    ]
    .into()
}
