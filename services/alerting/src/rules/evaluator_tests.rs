//! Tests of the evaluator: every condition, `for`, grouping and its cap,
//! filters, templates, late events, persistence and restore-equivalence.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use agentmesh_proto::audit::v1::{
    AccessDetails, AuditEvent, CircuitDetails, EventType, LlmCallDetails, Outcome, RunDetails,
    ToolCallDetails, audit_event::Details,
};

use super::*;
use crate::rules::compile::compile_rule;
use crate::rules::config::{
    AbsenceConfig, CountConfig, FailureRatioConfig, FilterConfig, RuleConfig,
};

/// A fixed origin, so tests never read the real clock.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn at(seconds: u64) -> SystemTime {
    t0() + Duration::from_secs(seconds)
}

fn at_ms(ms: u64) -> SystemTime {
    t0() + Duration::from_millis(ms)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn texts(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn event(kind: EventType, outcome: Outcome, time: SystemTime) -> AuditEvent {
    AuditEvent {
        r#type: kind as i32,
        outcome: outcome as i32,
        time: Some(time.into()),
        service: "tool-runner".into(),
        tenant: "acme".into(),
        ..Default::default()
    }
}

fn tool_call(tool: &str, outcome: Outcome, time: SystemTime) -> AuditEvent {
    AuditEvent {
        reason: if outcome == Outcome::Failure {
            format!("{tool} broke")
        } else {
            String::new()
        },
        details: Some(Details::ToolCall(ToolCallDetails {
            tool: tool.into(),
            error_kind: "TIMEOUT".into(),
            ..Default::default()
        })),
        ..event(EventType::ToolCall, outcome, time)
    }
}

fn llm_call(provider: &str, outcome: Outcome, time: SystemTime) -> AuditEvent {
    AuditEvent {
        service: "llm-gateway".into(),
        details: Some(Details::LlmCall(LlmCallDetails {
            provider: provider.into(),
            model: "gpt-4o".into(),
            error_code: "UNAVAILABLE".into(),
            ..Default::default()
        })),
        ..event(EventType::LlmCall, outcome, time)
    }
}

fn count_rule(threshold: i64, window: Duration) -> RuleConfig {
    RuleConfig {
        filter: FilterConfig {
            types: texts(&["TOOL_CALL"]),
            outcomes: texts(&["FAILURE"]),
            matchers: Vec::new(),
        },
        group_by: texts(&["tool"]),
        count: Some(CountConfig {
            threshold,
            window: Some(window),
            sum_of: None,
        }),
        ..RuleConfig::named("ToolFailing")
    }
}

fn ratio_rule(threshold: f64, min_events: i64, failure_outcomes: &[&str]) -> RuleConfig {
    RuleConfig {
        filter: FilterConfig {
            types: texts(&["LLM_CALL"]),
            ..FilterConfig::default()
        },
        group_by: texts(&["provider"]),
        failure_ratio: Some(FailureRatioConfig {
            threshold: Some(threshold),
            window: Some(secs(300)),
            min_events,
            failure_outcomes: texts(failure_outcomes),
        }),
        ..RuleConfig::named("ProviderFailing")
    }
}

fn absence_rule(duration: Duration, group_by: &[&str]) -> RuleConfig {
    RuleConfig {
        filter: FilterConfig {
            types: texts(&["RUN_FINISHED"]),
            ..FilterConfig::default()
        },
        group_by: texts(group_by),
        absence: Some(AbsenceConfig {
            duration: Some(duration),
        }),
        ..RuleConfig::named("NoRuns")
    }
}

fn evaluator(configs: &[RuleConfig]) -> Evaluator {
    evaluator_at(configs, t0(), 100)
}

fn evaluator_at(configs: &[RuleConfig], started_at: SystemTime, max_groups: usize) -> Evaluator {
    let rules = configs
        .iter()
        .map(|config| compile_rule(config, false).unwrap())
        .collect();
    Evaluator::new(rules, started_at, max_groups)
}

fn label<'a>(alert: &'a RuleAlert, name: &str) -> Option<&'a str> {
    alert.labels.get(name).map(String::as_str)
}

fn by_label<'a>(alerts: &'a [RuleAlert], name: &str, value: &str) -> Option<&'a RuleAlert> {
    alerts
        .iter()
        .find(|alert| label(alert, name) == Some(value))
}

// ---- count -----------------------------------------------------------------

#[test]
fn count_fires_at_exactly_the_threshold() {
    let mut ev = evaluator(&[count_rule(5, secs(60))]);
    for i in 0..4 {
        ev.observe(&tool_call("files", Outcome::Failure, at(i)));
    }
    assert!(ev.evaluate(at(5)).is_empty(), "4 of 5");
    ev.observe(&tool_call("files", Outcome::Failure, at(5)));
    let alerts = ev.evaluate(at(6));
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(alert.rule, "ToolFailing");
    assert_eq!(alert.value, 5.0);
    assert!(alert.firing, "for = 0 fires at once");
    assert_eq!(alert.active_at, at(6));
    assert_eq!(label(alert, "alertname"), Some("ToolFailing"));
    assert_eq!(label(alert, "severity"), Some("warning"));
    assert_eq!(label(alert, "tool"), Some("files"));
}

#[test]
fn successes_and_other_types_do_not_count() {
    let mut ev = evaluator(&[count_rule(2, secs(60))]);
    ev.observe(&tool_call("files", Outcome::Success, at(0)));
    ev.observe(&tool_call("files", Outcome::Unspecified, at(0)));
    ev.observe(&llm_call("files", Outcome::Failure, at(0)));
    ev.observe(&tool_call("files", Outcome::Failure, at(1)));
    assert!(ev.evaluate(at(2)).is_empty());
}

#[test]
fn events_slide_out_of_the_window() {
    let mut ev = evaluator(&[count_rule(3, secs(60))]);
    ev.observe(&tool_call("files", Outcome::Failure, at(0)));
    ev.observe(&tool_call("files", Outcome::Failure, at(30)));
    ev.observe(&tool_call("files", Outcome::Failure, at(40)));
    assert_eq!(ev.evaluate(at(59)).len(), 1);
    // The first event is a minute old: out (to one 100 ms bucket).
    assert!(ev.evaluate(at(60) + Duration::from_millis(100)).is_empty());
    // Still two in the window: the group stays.
    ev.take_dirty();
    assert!(ev.evaluate(at(95)).is_empty());
    assert!(ev.take_dirty().is_empty(), "nothing changed");
    // All gone: the group is dropped and reported deleted.
    assert!(ev.evaluate(at(101)).is_empty());
    let dirty = ev.take_dirty();
    assert_eq!(
        dirty,
        vec![(
            "ToolFailing".to_owned(),
            "{tool=\"files\"}".to_owned(),
            None
        )]
    );
}

#[test]
fn window_edge_is_within_one_bucket() {
    // 600 ms: 1 ms buckets, 600 of them, so the edge is exact.
    let mut ev = evaluator(&[count_rule(1, Duration::from_millis(600))]);
    ev.observe(&tool_call("files", Outcome::Failure, at_ms(0)));
    assert_eq!(ev.evaluate(at_ms(599)).len(), 1);
    assert!(ev.evaluate(at_ms(600)).is_empty());
    // 1 s: buckets of 1.67 ms, 601 of them to cover the whole second, so
    // the event counts up to one bucket longer.
    let mut ev = evaluator(&[count_rule(1, secs(1))]);
    ev.observe(&tool_call("files", Outcome::Failure, at_ms(0)));
    assert_eq!(ev.evaluate(at_ms(999)).len(), 1);
    assert_eq!(ev.evaluate(at_ms(1000)).len(), 1);
    assert!(ev.evaluate(at_ms(1002)).is_empty());
}

#[test]
fn alert_clears_when_the_condition_stops_and_restarts_with_a_new_active_at() {
    let mut ev = evaluator(&[count_rule(1, secs(60))]);
    ev.observe(&tool_call("files", Outcome::Failure, at(0)));
    assert_eq!(ev.evaluate(at(10))[0].active_at, at(10));
    assert_eq!(
        ev.evaluate(at(20))[0].active_at,
        at(10),
        "kept while it holds"
    );
    assert!(ev.evaluate(at(61)).is_empty());
    ev.observe(&tool_call("files", Outcome::Failure, at(70)));
    assert_eq!(ev.evaluate(at(71))[0].active_at, at(71));
}

// ---- failure ratio -----------------------------------------------------------

#[test]
fn ratio_needs_min_events() {
    let mut ev = evaluator(&[ratio_rule(0.5, 10, &[])]);
    for i in 0..9 {
        ev.observe(&llm_call("openai", Outcome::Failure, at(i)));
    }
    assert!(
        ev.evaluate(at(10)).is_empty(),
        "9 calls, all failed, fewer than 10"
    );
    ev.observe(&llm_call("openai", Outcome::Success, at(10)));
    let alerts = ev.evaluate(at(11));
    assert_eq!(alerts.len(), 1);
    assert!((alerts[0].value - 0.9).abs() < 1e-9);
    assert_eq!(label(&alerts[0], "provider"), Some("openai"));
}

#[test]
fn ratio_at_exactly_the_threshold_fires_and_below_does_not() {
    let mut ev = evaluator(&[ratio_rule(0.5, 4, &[])]);
    for (i, outcome) in [
        Outcome::Failure,
        Outcome::Success,
        Outcome::Failure,
        Outcome::Success,
    ]
    .into_iter()
    .enumerate()
    {
        ev.observe(&llm_call("openai", outcome, at(i as u64)));
    }
    assert_eq!(ev.evaluate(at(5)).len(), 1, "2 of 4 = 0.5");
    ev.observe(&llm_call("openai", Outcome::Success, at(6)));
    assert!(ev.evaluate(at(7)).is_empty(), "2 of 5 = 0.4");
}

#[test]
fn failure_outcomes_say_what_failed() {
    // Default: only FAILURE; DENIED counts as not failed.
    let mut ev = evaluator(&[ratio_rule(0.5, 2, &[])]);
    ev.observe(&llm_call("openai", Outcome::Denied, at(0)));
    ev.observe(&llm_call("openai", Outcome::Denied, at(1)));
    assert!(ev.evaluate(at(2)).is_empty());
    let mut ev = evaluator(&[ratio_rule(0.5, 2, &["FAILURE", "DENIED"])]);
    ev.observe(&llm_call("openai", Outcome::Denied, at(0)));
    ev.observe(&llm_call("openai", Outcome::Success, at(1)));
    let alerts = ev.evaluate(at(2));
    assert_eq!(alerts.len(), 1);
    assert!((alerts[0].value - 0.5).abs() < 1e-9);
}

// ---- absence -------------------------------------------------------------------

fn run_finished(agent: &str, time: SystemTime) -> AuditEvent {
    AuditEvent {
        details: Some(Details::Run(RunDetails {
            agent: agent.into(),
            ..Default::default()
        })),
        ..event(EventType::RunFinished, Outcome::Success, time)
    }
}

#[test]
fn absence_without_group_by_is_measured_from_the_start() {
    let mut ev = evaluator(&[absence_rule(secs(1800), &[])]);
    assert!(ev.evaluate(at(1799)).is_empty());
    let alerts = ev.evaluate(at(1800));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].value, 1800.0);
    assert_eq!(alerts[0].labels.len(), 2, "alertname and severity only");
    ev.observe(&run_finished("a", at(1810)));
    assert!(ev.evaluate(at(1811)).is_empty());
    assert!(ev.evaluate(at(3609)).is_empty());
    let alerts = ev.evaluate(at(3610));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].active_at, at(3610));
    // The group is kept (it carries the last event's time).
    ev.take_dirty();
    ev.evaluate(at(4000));
    assert!(ev.take_dirty().iter().all(|(_, _, state)| state.is_some()));
}

#[test]
fn absence_with_group_by_is_per_group_seen() {
    let mut ev = evaluator(&[absence_rule(secs(600), &["run.agent"])]);
    // Nothing seen: nothing to be absent.
    assert!(ev.evaluate(at(10_000)).is_empty());
    ev.observe(&run_finished("alpha", at(10_000)));
    ev.observe(&run_finished("beta", at(10_100)));
    assert!(ev.evaluate(at(10_500)).is_empty());
    let alerts = ev.evaluate(at(10_600));
    assert_eq!(alerts.len(), 1);
    assert_eq!(label(&alerts[0], "agent"), Some("alpha"));
    let alerts = ev.evaluate(at(10_700));
    assert_eq!(alerts.len(), 2);
    assert_eq!(by_label(&alerts, "agent", "alpha").unwrap().value, 700.0);
    ev.observe(&run_finished("alpha", at(10_701)));
    let alerts = ev.evaluate(at(10_702));
    assert_eq!(alerts.len(), 1);
    assert_eq!(label(&alerts[0], "agent"), Some("beta"));
}

#[test]
fn restored_last_seen_wins_over_the_start() {
    let mut first = evaluator(&[absence_rule(secs(1800), &[])]);
    first.observe(&run_finished("a", at(100)));
    first.evaluate(at(200));
    let states = first.take_dirty();
    // Restarted much later: the last run was long ago.
    let mut second = evaluator_at(&[absence_rule(secs(1800), &[])], at(5000), 100);
    for (rule, key, state) in &states {
        second
            .restore(rule, key, state.as_deref().unwrap())
            .unwrap();
    }
    let alerts = second.evaluate(at(5000));
    assert_eq!(
        alerts.len(),
        1,
        "measured from the restored last event, not the restart"
    );
    assert_eq!(alerts[0].value, 4900.0);
}

// ---- for -----------------------------------------------------------------------------

#[test]
fn for_keeps_an_alert_pending_then_fires() {
    let config = RuleConfig {
        for_duration: secs(30),
        ..count_rule(1, secs(600))
    };
    let mut ev = evaluator(&[config]);
    ev.observe(&tool_call("files", Outcome::Failure, at(0)));
    let pending = ev.evaluate(at(1));
    assert_eq!(pending.len(), 1);
    assert!(!pending[0].firing);
    assert!(!ev.evaluate(at(30))[0].firing, "29 s held");
    let firing = ev.evaluate(at(31));
    assert!(firing[0].firing);
    assert_eq!(firing[0].active_at, at(1));
}

// ---- grouping ----------------------------------------------------------------------------

#[test]
fn groups_are_evaluated_separately() {
    let mut ev = evaluator(&[count_rule(2, secs(60))]);
    ev.observe(&tool_call("files", Outcome::Failure, at(0)));
    ev.observe(&tool_call("web", Outcome::Failure, at(0)));
    ev.observe(&tool_call("files", Outcome::Failure, at(1)));
    ev.observe(&tool_call("shell", Outcome::Failure, at(1)));
    ev.observe(&tool_call("shell", Outcome::Failure, at(2)));
    let alerts = ev.evaluate(at(3));
    let tools: Vec<&str> = alerts.iter().filter_map(|a| label(a, "tool")).collect();
    assert_eq!(tools, ["files", "shell"]);
}

#[test]
fn the_group_cap_drops_and_counts_events_of_new_groups() {
    let mut ev = evaluator_at(&[count_rule(1, secs(60))], t0(), 2);
    ev.observe(&tool_call("a", Outcome::Failure, at(0)));
    ev.observe(&tool_call("b", Outcome::Failure, at(0)));
    ev.observe(&tool_call("c", Outcome::Failure, at(0)));
    ev.observe(&tool_call("c", Outcome::Failure, at(0)));
    ev.observe(&tool_call("a", Outcome::Failure, at(1)));
    assert_eq!(ev.dropped_groups(), 2);
    assert_eq!(ev.evaluate(at(2)).len(), 2);
    // Once a group is dropped there is room again.
    ev.observe(&tool_call("a", Outcome::Failure, at(61)));
    ev.evaluate(at(61) + Duration::from_millis(500));
    ev.observe(&tool_call("c", Outcome::Failure, at(62)));
    let alerts = ev.evaluate(at(62));
    assert!(by_label(&alerts, "tool", "c").is_some());
    assert_eq!(ev.dropped_groups(), 2);
}

#[test]
fn a_missing_group_field_is_an_empty_label_left_out() {
    let config = RuleConfig {
        group_by: texts(&["tool", "attributes.region"]),
        ..count_rule(1, secs(60))
    };
    let mut ev = evaluator(&[config]);
    ev.observe(&tool_call("files", Outcome::Failure, at(0)));
    let alerts = ev.evaluate(at(1));
    assert_eq!(alerts.len(), 1);
    assert_eq!(label(&alerts[0], "region"), None);
    let dirty = ev.take_dirty();
    assert_eq!(dirty[0].1, "{region=\"\",tool=\"files\"}");
}

// ---- filters ---------------------------------------------------------------------------------

fn any_event_rule(filter: FilterConfig) -> RuleConfig {
    RuleConfig {
        filter,
        count: Some(CountConfig {
            threshold: 1,
            window: Some(secs(60)),
            sum_of: None,
        }),
        ..RuleConfig::named("Any")
    }
}

fn matches(filter: FilterConfig, event: &AuditEvent) -> bool {
    let mut ev = evaluator(&[any_event_rule(filter)]);
    ev.observe(event);
    !ev.evaluate(at(1)).is_empty()
}

fn matchers(texts: &[&str]) -> FilterConfig {
    FilterConfig {
        matchers: texts.iter().map(|t| (*t).to_owned()).collect(),
        ..FilterConfig::default()
    }
}

#[test]
fn filters_on_types_outcomes_fields_attributes_and_short_forms() {
    let failure = tool_call("files", Outcome::Failure, at(0));
    let types = |names: &[&str]| FilterConfig {
        types: texts(names),
        ..FilterConfig::default()
    };
    let outcomes = |names: &[&str]| FilterConfig {
        outcomes: texts(names),
        ..FilterConfig::default()
    };
    assert!(matches(FilterConfig::default(), &failure));
    assert!(matches(types(&["llm_call", "tool_call"]), &failure));
    assert!(!matches(types(&["LLM_CALL"]), &failure));
    assert!(matches(outcomes(&["DENIED", "FAILURE"]), &failure));
    assert!(!matches(outcomes(&["SUCCESS"]), &failure));
    // An unset outcome is SUCCESS.
    let unset = tool_call("files", Outcome::Unspecified, at(0));
    assert!(matches(outcomes(&["SUCCESS"]), &unset));
    assert!(matches(matchers(&[r#"outcome="SUCCESS""#]), &unset));

    assert!(matches(matchers(&[r#"tool_call.tool="files""#]), &failure));
    assert!(matches(matchers(&[r#"tool="files""#]), &failure));
    assert!(matches(
        matchers(&[r#"tool=~"fi.*""#, r#"tool_call.error_kind="TIMEOUT""#]),
        &failure
    ));
    assert!(!matches(matchers(&[r#"tool!="files""#]), &failure));
    assert!(matches(
        matchers(&[r#"type="TOOL_CALL""#, "tenant=acme"]),
        &failure
    ));
    assert!(!matches(matchers(&[r#"provider="openai""#]), &failure));
    assert!(
        matches(matchers(&[r#"provider="""#]), &failure),
        "absent is empty"
    );

    let mut with_attribute = failure.clone();
    with_attribute
        .attributes
        .insert("region".into(), "eu-west".into());
    assert!(matches(
        matchers(&[r#"attributes.region=~"eu-.*""#]),
        &with_attribute
    ));
    assert!(!matches(
        matchers(&[r#"attributes.region=~"eu-.*""#]),
        &failure
    ));

    let llm = llm_call("openai", Outcome::Success, at(0));
    assert!(matches(
        matchers(&[r#"provider="openai""#, r#"model="gpt-4o""#]),
        &llm
    ));
    let circuit = AuditEvent {
        details: Some(Details::Circuit(CircuitDetails {
            target: "tool:web_fetch".into(),
            ..Default::default()
        })),
        ..event(EventType::CircuitOpened, Outcome::Success, at(0))
    };
    assert!(matches(matchers(&[r#"target=~"tool:.*""#]), &circuit));
    let auth = AuditEvent {
        details: Some(Details::Access(AccessDetails {
            mechanism: "bearer".into(),
            ..Default::default()
        })),
        ..event(EventType::Authentication, Outcome::Denied, at(0))
    };
    assert!(matches(matchers(&["access.mechanism=bearer"]), &auth));
}

/// A refusal as a service's auth layer records it: `count` failures of one
/// credential from one peer (0 means 1).
fn auth_failure(service: &str, count: i32, time: SystemTime) -> AuditEvent {
    AuditEvent {
        service: service.into(),
        tenant: String::new(),
        reason: "unknown_key".into(),
        details: Some(Details::Access(AccessDetails {
            mechanism: "api_key".into(),
            credential_id: "am_test_abcdefgh".into(),
            peer: "10.0.0.9".into(),
            count,
            ..Default::default()
        })),
        ..event(EventType::Authentication, Outcome::Denied, time)
    }
}

/// The shipped rules, as the service runs them.
fn shipped() -> Evaluator {
    let rules = crate::rules::compile::compile(&[], &[]).unwrap();
    Evaluator::new(rules, t0(), 100)
}

#[test]
fn the_shipped_authentication_rule_sums_aggregated_failures() {
    // A burst of 20 bad keys within a minute at one service: the auth
    // layer records the first at once and the other 19 as one event.
    let mut ev = shipped();
    ev.observe(&auth_failure("tool-runner", 1, at(0)));
    ev.observe(&auth_failure("tool-runner", 19, at(10)));
    let alerts = ev.evaluate(at(11));
    let alert = alerts
        .iter()
        .find(|alert| alert.rule == "AuthenticationFailures")
        .expect("20 failures in a minute fire");
    assert!(alert.firing);
    assert_eq!(alert.value, 20.0);
    assert_eq!(label(alert, "service"), Some("tool-runner"));
    assert!(
        alert.annotations["summary"].starts_with("20 failed authentications at tool-runner"),
        "{:?}",
        alert.annotations
    );
    assert!(
        alert.annotations["description"].contains("am_test_abcdefgh from 10.0.0.9"),
        "{:?}",
        alert.annotations
    );
    // A minute later the burst slid out of the window.
    assert!(
        ev.evaluate(at(71))
            .iter()
            .all(|alert| alert.rule != "AuthenticationFailures")
    );
}

#[test]
fn nineteen_failures_or_a_slow_trickle_do_not_fire() {
    let mut ev = shipped();
    // 0 means 1: 18 + 1.
    ev.observe(&auth_failure("audit", 18, at(0)));
    ev.observe(&auth_failure("audit", 0, at(1)));
    // Elsewhere, and long ago, does not add up.
    ev.observe(&auth_failure("llm-gateway", 1, at(2)));
    assert!(
        ev.evaluate(at(3))
            .iter()
            .all(|alert| alert.rule != "AuthenticationFailures")
    );
    ev.observe(&auth_failure("audit", 5, at(61)));
    assert!(
        ev.evaluate(at(62))
            .iter()
            .all(|alert| alert.rule != "AuthenticationFailures"),
        "the first 18 slid out"
    );
    ev.observe(&auth_failure("audit", 15, at(62)));
    assert!(
        ev.evaluate(at(63))
            .iter()
            .any(|alert| alert.rule == "AuthenticationFailures")
    );
}

#[test]
fn summands_are_at_least_one() {
    use crate::rules::condition::summand;
    assert_eq!(summand("19"), 19);
    assert_eq!(summand("0"), 1);
    assert_eq!(summand(""), 1);
    assert_eq!(summand("-4"), 1);
    assert_eq!(summand("2.6"), 3);
    assert_eq!(summand("NaN"), 1);
    assert_eq!(summand("1e30"), u64::MAX);
}

#[test]
fn disabled_rules_are_not_evaluated() {
    let config = RuleConfig {
        enabled: false,
        ..count_rule(1, secs(60))
    };
    let mut ev = evaluator(&[config, absence_rule(secs(1), &[])]);
    ev.observe(&tool_call("files", Outcome::Failure, at(0)));
    let alerts = ev.evaluate(at(10));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].rule, "NoRuns");
    assert_eq!(ev.rules().len(), 2);
}

// ---- templates ----------------------------------------------------------------------------------

#[test]
fn templates_render_labels_fields_and_measures() {
    let config = RuleConfig {
        labels: [
            ("team".to_owned(), "platform".to_owned()),
            ("kind".to_owned(), "{{tool_call.error_kind}}".to_owned()),
            ("empty".to_owned(), "{{attributes.none}}".to_owned()),
        ]
        .into(),
        annotations: [
            (
                "summary".to_owned(),
                "tool {{tool}} failed {{count}} times in {{window}} ({{ratio}}, {{$value}}/{{threshold}})".to_owned(),
            ),
            ("latest".to_owned(), "{{reason}} at {{service}}, {{ $labels.tool }}".to_owned()),
            ("who".to_owned(), "{{alertname}}/{{severity}}".to_owned()),
            ("blank".to_owned(), "{{run_id}}".to_owned()),
        ]
        .into(),
        filter: FilterConfig {
            types: texts(&["TOOL_CALL"]),
            ..FilterConfig::default()
        },
        ..count_rule(2, secs(60))
    };
    let mut ev = evaluator(&[config]);
    ev.observe(&tool_call("files", Outcome::Success, at(0)));
    ev.observe(&tool_call("files", Outcome::Failure, at(1)));
    ev.observe(&tool_call("files", Outcome::Failure, at(2)));
    let alerts = ev.evaluate(at(3));
    let alert = &alerts[0];
    assert_eq!(label(alert, "team"), Some("platform"));
    assert_eq!(label(alert, "kind"), Some("TIMEOUT"));
    assert_eq!(
        label(alert, "empty"),
        None,
        "empty label values are left out"
    );
    assert_eq!(
        alert.annotations.get("summary").unwrap(),
        "tool files failed 3 times in 1m (0.67, 3/2)"
    );
    assert_eq!(
        alert.annotations.get("latest").unwrap(),
        "files broke at tool-runner, files"
    );
    assert_eq!(alert.annotations.get("who").unwrap(), "ToolFailing/warning");
    assert!(!alert.annotations.contains_key("blank"));
}

#[test]
fn ratio_and_absence_values_render() {
    let config = RuleConfig {
        annotations: [(
            "summary".to_owned(),
            "{{value}} ≥ {{threshold}} over {{window}}".to_owned(),
        )]
        .into(),
        ..ratio_rule(0.5, 2, &[])
    };
    let mut ev = evaluator(&[config]);
    ev.observe(&llm_call("openai", Outcome::Failure, at(0)));
    ev.observe(&llm_call("openai", Outcome::Failure, at(0)));
    ev.observe(&llm_call("openai", Outcome::Success, at(0)));
    let alerts = ev.evaluate(at(1));
    assert_eq!(alerts[0].annotations["summary"], "0.67 ≥ 0.5 over 5m");

    let config = RuleConfig {
        annotations: [(
            "summary".to_owned(),
            "quiet for {{value}}s (limit {{threshold}})".to_owned(),
        )]
        .into(),
        ..absence_rule(secs(90), &[])
    };
    let mut ev = evaluator(&[config]);
    let alerts = ev.evaluate(at(100) + Duration::from_millis(700));
    assert_eq!(
        alerts[0].annotations["summary"],
        "quiet for 100s (limit 1m 30s)"
    );
}

// ---- time ------------------------------------------------------------------------------------------

#[test]
fn late_events_are_ignored() {
    let mut ev = evaluator(&[count_rule(1, secs(60))]);
    ev.evaluate(at(1000));
    ev.observe(&tool_call("files", Outcome::Failure, at(900)));
    assert!(ev.evaluate(at(1000)).is_empty());
    assert!(ev.take_dirty().is_empty(), "no group was even opened");
    // Within the window it counts, even behind the clock.
    ev.observe(&tool_call("files", Outcome::Failure, at(950)));
    assert_eq!(ev.evaluate(at(1000)).len(), 1);

    let mut ev = evaluator(&[absence_rule(secs(600), &["run.agent"])]);
    ev.evaluate(at(2000));
    ev.observe(&run_finished("alpha", at(1000)));
    assert!(
        ev.evaluate(at(2000)).is_empty(),
        "a late event opens no absence group"
    );
}

#[test]
fn events_from_far_ahead_count_as_one_window_ahead() {
    let mut ev = evaluator(&[count_rule(1, secs(60))]);
    ev.evaluate(at(0));
    // A producer a year ahead: counted as at 60 s, so gone after 120 s.
    ev.observe(&tool_call("files", Outcome::Failure, at(365 * 86_400)));
    assert_eq!(ev.evaluate(at(1)).len(), 1);
    assert_eq!(ev.evaluate(at(119)).len(), 1);
    assert!(ev.evaluate(at(121)).is_empty());
}

#[test]
fn record_time_then_the_clock_stand_in_for_a_missing_time() {
    let mut ev = evaluator(&[count_rule(1, secs(60))]);
    ev.evaluate(at(1000));
    let mut recorded = tool_call("files", Outcome::Failure, at(0));
    recorded.time = None;
    recorded.record_time = Some(at(990).into());
    ev.observe(&recorded);
    let mut timeless = tool_call("web", Outcome::Failure, at(0));
    timeless.time = None;
    ev.observe(&timeless);
    assert_eq!(ev.evaluate(at(1049)).len(), 2);
    let alerts = ev.evaluate(at(1059));
    assert_eq!(alerts.len(), 1, "the recorded one slid out first");
    assert_eq!(label(&alerts[0], "tool"), Some("web"));
}

#[test]
fn the_clock_does_not_go_back() {
    let mut ev = evaluator(&[count_rule(1, secs(60))]);
    ev.observe(&tool_call("files", Outcome::Failure, at(0)));
    assert!(ev.evaluate(at(100)).is_empty());
    assert!(
        ev.evaluate(at(10)).is_empty(),
        "pruned at 100 s stays pruned"
    );
}

// ---- persistence ----------------------------------------------------------------------------------

fn persisted(ev: &mut Evaluator) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (rule, key, state) in ev.take_dirty() {
        match state {
            Some(json) => out.insert((rule, key), json),
            None => out.remove(&(rule, key)),
        };
    }
    out
}

fn all_rules() -> Vec<RuleConfig> {
    vec![
        RuleConfig {
            annotations: [(
                "summary".to_owned(),
                "{{tool}}: {{reason}} ({{count}})".to_owned(),
            )]
            .into(),
            ..count_rule(3, secs(60))
        },
        RuleConfig {
            for_duration: secs(120),
            ..ratio_rule(0.5, 4, &[])
        },
        absence_rule(secs(300), &[]),
        RuleConfig {
            name: "NoRunsPerAgent".into(),
            ..absence_rule(secs(200), &["run.agent"])
        },
    ]
}

/// A varied stream over 20 minutes: tool failures, provider calls, runs.
fn stream() -> Vec<AuditEvent> {
    let mut events = Vec::new();
    for i in 0..1200u64 {
        let time = at(i);
        if i % 7 == 0 {
            events.push(tool_call(
                ["files", "web"][(i % 2) as usize],
                Outcome::Failure,
                time,
            ));
        }
        if i % 5 == 0 {
            let outcome = if (i / 100) % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            events.push(llm_call(
                ["openai", "anthropic"][(i % 3 % 2) as usize],
                outcome,
                time,
            ));
        }
        if i % 250 == 0 && i < 700 {
            events.push(run_finished(
                ["alpha", "beta"][(i % 500 / 250) as usize],
                time,
            ));
        }
    }
    events
}

fn time_of(event: &AuditEvent) -> SystemTime {
    SystemTime::try_from(event.time.unwrap()).unwrap()
}

/// Feeds `events` observing per second, evaluating every 10 s from `from`
/// to `to`.
fn run(ev: &mut Evaluator, events: &[AuditEvent], from: u64, to: u64) -> Vec<Vec<RuleAlert>> {
    let mut results = Vec::new();
    let mut next = 0;
    for second in (from..to).step_by(10) {
        while next < events.len() && time_of(&events[next]) < at(second + 10) {
            ev.observe(&events[next]);
            next += 1;
        }
        results.push(ev.evaluate(at(second + 10)));
    }
    results
}

#[test]
fn restoring_then_observing_the_rest_equals_never_stopping() {
    let events = stream();
    let split_second = 600;
    let split = events
        .iter()
        .position(|e| time_of(e) >= at(split_second))
        .unwrap();

    // Uninterrupted.
    let mut whole = evaluator(&all_rules());
    run(&mut whole, &events[..split], 0, split_second);
    let states = persisted(&mut whole);
    let expected = run(&mut whole, &events[split..], split_second, 1500);

    // Stopped at the split (its state persisted), restarted then.
    let mut restarted = evaluator_at(&all_rules(), at(split_second), 100);
    for ((rule, key), json) in &states {
        restarted.restore(rule, key, json).unwrap();
    }
    let got = run(&mut restarted, &events[split..], split_second, 1500);

    assert!(
        expected
            .iter()
            .any(|alerts| alerts.iter().any(|a| a.firing)),
        "the stream fires alerts"
    );
    assert!(
        expected
            .iter()
            .any(|alerts| alerts.iter().any(|a| !a.firing)),
        "and has pending ones"
    );
    assert!(
        expected
            .iter()
            .any(|alerts| alerts.iter().any(|a| a.rule == "NoRuns")),
        "and absences"
    );
    assert_eq!(got, expected);
    // And what they would persist next is the same too.
    assert_eq!(persisted(&mut restarted), persisted(&mut whole));
}

#[test]
fn take_dirty_reports_each_change_once() {
    let mut ev = evaluator(&[count_rule(1, secs(60))]);
    assert!(ev.take_dirty().is_empty());
    ev.observe(&tool_call("files", Outcome::Failure, at(0)));
    let dirty = ev.take_dirty();
    assert_eq!(dirty.len(), 1);
    let json: serde_json::Value = serde_json::from_str(dirty[0].2.as_deref().unwrap()).unwrap();
    assert_eq!(json["labels"]["tool"], "files");
    assert_eq!(json["buckets"].as_array().unwrap().len(), 1);
    assert!(json["active_at"].is_null());
    assert!(ev.take_dirty().is_empty());
    // Becoming active is a change (active_at is persisted).
    ev.evaluate(at(1));
    let dirty = ev.take_dirty();
    let json: serde_json::Value = serde_json::from_str(dirty[0].2.as_deref().unwrap()).unwrap();
    assert!(json["active_at"].is_u64());
    // Holding on is not.
    ev.evaluate(at(2));
    assert!(ev.take_dirty().is_empty());
}

#[test]
fn restore_ignores_what_no_longer_applies_and_rejects_what_is_broken() {
    let mut source = evaluator(&[count_rule(1, secs(60))]);
    source.observe(&tool_call("files", Outcome::Failure, at(0)));
    let (_, key, json) = source.take_dirty().pop().unwrap();
    let json = json.unwrap();

    let mut ev = evaluator(&[count_rule(1, secs(60))]);
    // A rule not configured any more: ignored, deleted from the store.
    assert!(ev.restore("Gone", &key, &json).is_ok());
    // Corrupt states.
    assert!(
        ev.restore("ToolFailing", &key, "{")
            .unwrap_err()
            .contains("not a rule group state")
    );
    assert!(
        ev.restore("ToolFailing", "{tool=\"web\"}", &json)
            .unwrap_err()
            .contains("do not match its key")
    );
    let bad = json.replace("\"resolution\":100000000", "\"resolution\":0");
    assert!(ev.restore("ToolFailing", &key, &bad).is_err());
    let dirty = ev.take_dirty();
    assert_eq!(dirty.len(), 4);
    assert!(dirty.iter().all(|(_, _, state)| state.is_none()));
    assert_eq!(dirty[0].0, "Gone");
    // The good one restores.
    ev.restore("ToolFailing", &key, &json).unwrap();
    assert_eq!(ev.evaluate(at(1)).len(), 1);

    // Grouped differently now: ignored.
    let mut regrouped = evaluator(&[RuleConfig {
        group_by: texts(&["tenant"]),
        ..count_rule(1, secs(60))
    }]);
    assert!(regrouped.restore("ToolFailing", &key, &json).is_ok());
    assert!(regrouped.evaluate(at(1)).is_empty());
    assert_eq!(regrouped.take_dirty().len(), 1);

    // Disabled now: ignored.
    let mut disabled = evaluator(&[RuleConfig {
        enabled: false,
        ..count_rule(1, secs(60))
    }]);
    assert!(disabled.restore("ToolFailing", &key, &json).is_ok());
    assert!(disabled.evaluate(at(1)).is_empty());

    // A longer window: the buckets are re-cut, the event still counts.
    let mut longer = evaluator(&[count_rule(1, secs(600))]);
    longer.restore("ToolFailing", &key, &json).unwrap();
    assert_eq!(longer.evaluate(at(500)).len(), 1);
    assert!(longer.evaluate(at(601)).is_empty());
}

#[test]
fn restore_respects_the_group_cap() {
    let mut source = evaluator(&[count_rule(1, secs(60))]);
    for tool in ["a", "b", "c"] {
        source.observe(&tool_call(tool, Outcome::Failure, at(0)));
    }
    let mut ev = evaluator_at(&[count_rule(1, secs(60))], t0(), 2);
    for (rule, key, json) in source.take_dirty() {
        ev.restore(&rule, &key, json.as_deref().unwrap()).unwrap();
    }
    assert_eq!(ev.evaluate(at(1)).len(), 2);
    assert_eq!(ev.dropped_groups(), 1);
}

#[test]
fn default_rules_evaluate() {
    let rules = crate::rules::compile(&[], &[]).unwrap();
    let mut ev = Evaluator::new(rules, t0(), 100);
    for i in 0..5 {
        ev.observe(&tool_call("files", Outcome::Failure, at(i)));
    }
    for i in 0..10 {
        ev.observe(&llm_call(
            "openai",
            if i < 5 {
                Outcome::Failure
            } else {
                Outcome::Success
            },
            at(i),
        ));
    }
    let alerts = ev.evaluate(at(10));
    let names: Vec<&str> = alerts.iter().map(|a| a.rule.as_str()).collect();
    assert_eq!(names, ["ToolFailing", "LlmProviderFailing"]);
    assert_eq!(
        alerts[0].annotations["summary"], "Tool files failed 5 times in 1m",
        "{alerts:#?}"
    );
    assert_eq!(
        alerts[1].annotations["summary"],
        "LLM provider openai fails 0.50 of its calls"
    );
    assert_eq!(label(&alerts[1], "severity"), Some("critical"));
}
