//! Tests of rule configuration and compilation: the TOML form, the shipped
//! rules, merging and disabling, every error naming its rule and setting,
//! and the API form.

use std::time::Duration;

use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use agentmesh_proto::alerting::v1 as pb;
use agentmesh_proto::audit::v1::{EventType, Outcome};
use serde::{Deserialize, Serialize};

use super::config::{AbsenceConfig, CountConfig, FailureRatioConfig, FilterConfig, RuleConfig};
use super::{Rule, compile};

fn texts(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn custom() -> RuleConfig {
    RuleConfig {
        filter: FilterConfig {
            types: texts(&["TOOL_CALL"]),
            outcomes: texts(&["FAILURE"]),
            matchers: texts(&[r#"tool!="calculator""#]),
        },
        group_by: texts(&["tool"]),
        count: Some(CountConfig {
            threshold: 3,
            window: Some(Duration::from_secs(120)),
            sum_of: None,
        }),
        ..RuleConfig::named("Custom")
    }
}

fn ratio() -> FailureRatioConfig {
    FailureRatioConfig {
        threshold: Some(0.5),
        window: Some(Duration::from_secs(60)),
        min_events: 1,
        failure_outcomes: Vec::new(),
    }
}

fn find<'a>(rules: &'a [Rule], name: &str) -> &'a Rule {
    rules.iter().find(|rule| rule.name == name).unwrap()
}

// ---- the shipped rules ------------------------------------------------------

#[test]
fn default_rules_compile_and_list() {
    let rules = compile(&[], &[]).unwrap();
    let names: Vec<&str> = rules.iter().map(|rule| rule.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ToolFailing",
            "LlmProviderFailing",
            "CircuitOpen",
            "TenantRateLimited",
            "AuthenticationFailures",
            "RunsFailing"
        ]
    );
    for rule in &rules {
        let listed = rule.to_proto();
        assert!(listed.builtin && listed.enabled, "{}", rule.name);
        assert!(!listed.description.is_empty(), "{}", rule.name);
        assert!(listed.annotations.contains_key("summary"), "{}", rule.name);
        assert!(
            listed.annotations.contains_key("description"),
            "{}",
            rule.name
        );
        assert!(
            listed.condition.is_some() && listed.filter.is_some() && listed.for_duration.is_some()
        );
        assert_eq!(listed.group_by.len(), 1, "{}", rule.name);
        assert_ne!(listed.severity, pb::Severity::Unspecified as i32);
    }

    let tool = find(&rules, "ToolFailing").to_proto();
    assert_eq!(tool.group_by, ["tool"]);
    assert_eq!(tool.severity, pb::Severity::Warning as i32);
    let filter = tool.filter.unwrap();
    assert_eq!(filter.types, [EventType::ToolCall as i32]);
    assert_eq!(filter.outcomes, [Outcome::Failure as i32]);
    assert_eq!(
        tool.condition,
        Some(pb::rule::Condition::Count(pb::CountCondition {
            threshold: 5,
            window: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0
            }),
            sum_of: String::new(),
        }))
    );

    let llm = find(&rules, "LlmProviderFailing").to_proto();
    assert_eq!(llm.severity, pb::Severity::Critical as i32);
    assert_eq!(
        llm.condition,
        Some(pb::rule::Condition::FailureRatio(
            pb::FailureRatioCondition {
                threshold: 0.5,
                window: Some(prost_types::Duration {
                    seconds: 300,
                    nanos: 0
                }),
                min_events: 10,
                failure_outcomes: vec![Outcome::Failure as i32],
            }
        ))
    );
    assert_eq!(
        find(&rules, "CircuitOpen").to_proto().group_by,
        ["circuit.target"]
    );
    assert_eq!(find(&rules, "CircuitOpen").group_by[0].label, "target");
    assert_eq!(
        find(&rules, "TenantRateLimited").to_proto().group_by,
        ["tenant"]
    );
    let auth = find(&rules, "AuthenticationFailures").to_proto();
    assert_eq!(
        auth.filter.unwrap().outcomes,
        [Outcome::Failure as i32, Outcome::Denied as i32]
    );
    assert_eq!(
        auth.condition,
        Some(pb::rule::Condition::Count(pb::CountCondition {
            threshold: 20,
            window: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0
            }),
            sum_of: "access.count".into(),
        })),
        "20 failed authentications in a minute, however they were aggregated"
    );
    let runs = find(&rules, "RunsFailing").to_proto();
    assert_eq!(
        runs.filter.unwrap().types,
        [EventType::RunFinished as i32, EventType::RunFailed as i32]
    );
    assert_eq!(find(&rules, "RunsFailing").group_by[0].label, "agent");
}

#[test]
fn a_configured_rule_replaces_a_shipped_one_in_place() {
    let replacement = RuleConfig {
        name: "ToolFailing".into(),
        ..custom()
    };
    let rules = compile(&[custom(), replacement], &[]).unwrap();
    assert_eq!(rules.len(), 7);
    assert_eq!(rules[0].name, "ToolFailing");
    assert!(!rules[0].builtin);
    assert_eq!(
        rules[0].to_proto().condition.map(|c| match c {
            pb::rule::Condition::Count(count) => count.threshold,
            _ => 0,
        }),
        Some(3)
    );
    assert_eq!(rules[6].name, "Custom");
    assert!(!rules[6].builtin);
}

#[test]
fn disabled_rules_are_listed_not_enabled() {
    let rules = compile(&[custom()], &texts(&["RunsFailing", "Custom"])).unwrap();
    assert!(!find(&rules, "RunsFailing").enabled);
    assert!(!find(&rules, "Custom").to_proto().enabled);
    assert!(find(&rules, "ToolFailing").enabled);
    let disabled_in_place = RuleConfig {
        enabled: false,
        ..custom()
    };
    assert!(!find(&compile(&[disabled_in_place], &[]).unwrap(), "Custom").enabled);
}

#[test]
fn the_api_form_is_complete() {
    let config = RuleConfig {
        description: "custom".into(),
        severity: "Critical".into(),
        for_duration: Duration::from_millis(1500),
        labels: [("team".to_owned(), "{{tool}}-team".to_owned())].into(),
        annotations: [("summary".to_owned(), "{{count}} in {{window}}".to_owned())].into(),
        ..custom()
    };
    let rules = compile(&[config], &[]).unwrap();
    let listed = find(&rules, "Custom").to_proto();
    assert_eq!(
        listed,
        pb::Rule {
            name: "Custom".into(),
            description: "custom".into(),
            filter: Some(pb::RuleFilter {
                types: vec![EventType::ToolCall as i32],
                outcomes: vec![Outcome::Failure as i32],
                matchers: vec![pb::Matcher {
                    name: "tool".into(),
                    value: "calculator".into(),
                    r#type: pb::MatchType::NotEqual as i32,
                }],
            }),
            condition: Some(pb::rule::Condition::Count(pb::CountCondition {
                threshold: 3,
                window: Some(prost_types::Duration {
                    seconds: 120,
                    nanos: 0
                }),
                sum_of: String::new(),
            })),
            for_duration: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            }),
            severity: pb::Severity::Critical as i32,
            group_by: vec!["tool".into()],
            labels: [("team".to_owned(), "{{tool}}-team".to_owned())].into(),
            annotations: [("summary".to_owned(), "{{count}} in {{window}}".to_owned())].into(),
            builtin: false,
            enabled: true,
        }
    );

    let absence = RuleConfig {
        count: None,
        absence: Some(AbsenceConfig {
            duration: Some(Duration::from_secs(1800)),
        }),
        ..custom()
    };
    let rules = compile(&[absence], &[]).unwrap();
    assert_eq!(
        find(&rules, "Custom").to_proto().condition,
        Some(pb::rule::Condition::Absence(pb::AbsenceCondition {
            duration: Some(prost_types::Duration {
                seconds: 1800,
                nanos: 0
            }),
        }))
    );
}

// ---- errors -------------------------------------------------------------------

fn error_of(configured: &[RuleConfig], disabled: &[&str]) -> ConfigError {
    compile(configured, &texts(disabled)).unwrap_err()
}

fn assert_error(err: &ConfigError, setting: &str, says: &str) {
    assert_eq!(err.setting, setting, "{err}");
    assert!(
        err.message.contains(says),
        "{setting}: {:?} should say {says:?}",
        err.message
    );
}

#[test]
fn names_are_required_valid_and_unique() {
    let unnamed = RuleConfig {
        name: String::new(),
        ..custom()
    };
    assert_error(
        &error_of(&[custom(), unnamed], &[]),
        "rules[1].name",
        "needs a name",
    );
    let spaced = RuleConfig {
        name: "tool failing".into(),
        ..custom()
    };
    assert_error(
        &error_of(&[spaced], &[]),
        "rules[0].name",
        "not a valid rule name",
    );
    let digit = RuleConfig {
        name: "1st".into(),
        ..custom()
    };
    assert_error(
        &error_of(&[digit], &[]),
        "rules[0].name",
        "not a valid rule name",
    );
    assert_error(
        &error_of(&[custom(), custom()], &[]),
        "rules[Custom].name",
        "rules[0] and rules[1] are both named \"Custom\"",
    );
    assert_error(
        &error_of(&[], &["RunsFailing", "Nope"]),
        "disable_rules[1]",
        "no rule is named \"Nope\"",
    );
}

#[test]
fn exactly_one_condition() {
    let none = RuleConfig {
        count: None,
        ..custom()
    };
    assert_error(
        &error_of(&[none], &[]),
        "rules[Custom]",
        "exactly one condition",
    );
    let two = RuleConfig {
        absence: Some(AbsenceConfig {
            duration: Some(Duration::from_secs(60)),
        }),
        ..custom()
    };
    assert_error(
        &error_of(&[two], &[]),
        "rules[Custom]",
        "count and absence are set",
    );
}

#[test]
fn condition_settings_are_checked() {
    let count = |threshold: i64, window: Option<Duration>| RuleConfig {
        count: Some(CountConfig {
            threshold,
            window,
            sum_of: None,
        }),
        ..custom()
    };
    let minute = Some(Duration::from_secs(60));
    assert_error(
        &error_of(&[count(0, minute)], &[]),
        "rules[Custom].count.threshold",
        "at least 1, got 0",
    );
    assert_error(
        &error_of(&[count(-3, minute)], &[]),
        "rules[Custom].count.threshold",
        "at least 1",
    );
    assert_error(
        &error_of(&[count(1, None)], &[]),
        "rules[Custom].count.window",
        "missing",
    );
    assert_error(
        &error_of(&[count(1, Some(Duration::ZERO))], &[]),
        "rules[Custom].count.window",
        "longer than 0s",
    );
    assert_error(
        &error_of(&[count(1, Some(Duration::from_secs(400 * 86_400)))], &[]),
        "rules[Custom].count.window",
        "at most 366 days",
    );

    let failure_ratio = |ratio: FailureRatioConfig| RuleConfig {
        count: None,
        failure_ratio: Some(ratio),
        filter: FilterConfig::default(),
        ..custom()
    };
    for threshold in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
        let err = error_of(
            &[failure_ratio(FailureRatioConfig {
                threshold: Some(threshold),
                ..ratio()
            })],
            &[],
        );
        assert_error(
            &err,
            "rules[Custom].failure_ratio.threshold",
            "greater than 0 and at most 1",
        );
    }
    assert!(
        compile(
            &[failure_ratio(FailureRatioConfig {
                threshold: Some(1.0),
                ..ratio()
            })],
            &[]
        )
        .is_ok()
    );
    assert_error(
        &error_of(
            &[failure_ratio(FailureRatioConfig {
                threshold: None,
                ..ratio()
            })],
            &[],
        ),
        "rules[Custom].failure_ratio.threshold",
        "missing",
    );
    assert_error(
        &error_of(
            &[failure_ratio(FailureRatioConfig {
                window: None,
                ..ratio()
            })],
            &[],
        ),
        "rules[Custom].failure_ratio.window",
        "missing",
    );
    assert_error(
        &error_of(
            &[failure_ratio(FailureRatioConfig {
                min_events: 0,
                ..ratio()
            })],
            &[],
        ),
        "rules[Custom].failure_ratio.min_events",
        "at least 1",
    );
    assert_error(
        &error_of(
            &[failure_ratio(FailureRatioConfig {
                failure_outcomes: texts(&["FAILURE", "BROKEN"]),
                ..ratio()
            })],
            &[],
        ),
        "rules[Custom].failure_ratio.failure_outcomes[1]",
        "unknown outcome \"BROKEN\"",
    );
    // An outcome filter would make the ratio constant.
    let only_failures = RuleConfig {
        filter: FilterConfig {
            outcomes: texts(&["FAILURE"]),
            ..FilterConfig::default()
        },
        ..failure_ratio(ratio())
    };
    assert_error(
        &error_of(&[only_failures], &[]),
        "rules[Custom].filter.outcomes",
        "leave filter.outcomes empty",
    );
    let mixed = RuleConfig {
        filter: FilterConfig {
            outcomes: texts(&["FAILURE", "SUCCESS"]),
            ..FilterConfig::default()
        },
        ..failure_ratio(ratio())
    };
    assert!(compile(&[mixed], &[]).is_ok());

    let absence = |duration: Option<Duration>| RuleConfig {
        count: None,
        absence: Some(AbsenceConfig { duration }),
        ..custom()
    };
    assert_error(
        &error_of(&[absence(None)], &[]),
        "rules[Custom].absence.duration",
        "missing",
    );
    assert_error(
        &error_of(&[absence(Some(Duration::ZERO))], &[]),
        "rules[Custom].absence.duration",
        "longer than 0s",
    );
    let long_for = RuleConfig {
        for_duration: Duration::from_secs(400 * 86_400),
        ..custom()
    };
    assert_error(
        &error_of(&[long_for], &[]),
        "rules[Custom].for",
        "at most 366 days",
    );
}

#[test]
fn severity_types_and_outcomes_are_checked() {
    let severity = RuleConfig {
        severity: "page".into(),
        ..custom()
    };
    assert_error(
        &error_of(&[severity], &[]),
        "rules[Custom].severity",
        "use critical, warning or info",
    );
    let types = RuleConfig {
        filter: FilterConfig {
            types: texts(&["TOOL_CALL", "TOOL"]),
            ..FilterConfig::default()
        },
        ..custom()
    };
    let err = error_of(&[types], &[]);
    assert_error(
        &err,
        "rules[Custom].filter.types[1]",
        "unknown event type \"TOOL\"",
    );
    assert!(
        err.message.contains("TOOL_CALL, AUTHENTICATION") || err.message.contains("RUN_STARTED")
    );
    let outcomes = RuleConfig {
        filter: FilterConfig {
            outcomes: texts(&["FAILED"]),
            ..FilterConfig::default()
        },
        ..custom()
    };
    assert_error(
        &error_of(&[outcomes], &[]),
        "rules[Custom].filter.outcomes[0]",
        "use SUCCESS, FAILURE or DENIED",
    );
}

#[test]
fn matchers_are_checked() {
    let with = |matcher: &str| RuleConfig {
        filter: FilterConfig {
            matchers: texts(&["tool=files", matcher]),
            ..FilterConfig::default()
        },
        ..custom()
    };
    for (matcher, says) in [
        ("tool", "no operator"),
        (r#"tool=~"(""#, "invalid regular expression"),
        (
            r#"tool_call.nope="x""#,
            "\"tool_call.nope\", which is not an event field",
        ),
        (r#"nope="x""#, "not an event field"),
    ] {
        assert_error(
            &error_of(&[with(matcher)], &[]),
            "rules[Custom].filter.matchers[1]",
            says,
        );
    }
}

#[test]
fn group_by_is_checked() {
    let with = |fields: &[&str]| RuleConfig {
        group_by: texts(fields),
        ..custom()
    };
    assert_error(
        &error_of(&[with(&["tenant", "nope"])], &[]),
        "rules[Custom].group_by[1]",
        "not an event field",
    );
    assert_error(
        &error_of(&[with(&["tool", "tool_call.tool"])], &[]),
        "rules[Custom].group_by[1]",
        "both give the label \"tool\"",
    );
    assert_error(
        &error_of(&[with(&["attributes.severity"])], &[]),
        "rules[Custom].group_by[0]",
        "which the rule sets itself",
    );
    assert_error(
        &error_of(&[with(&["attributes.x-y"])], &[]),
        "rules[Custom].group_by[0]",
        "not a valid label name",
    );
    assert!(
        compile(
            &[with(&[
                "tenant",
                "llm_call.provider",
                "attributes.region",
                "run.labels.team"
            ])],
            &[]
        )
        .is_ok()
    );
}

#[test]
fn labels_and_annotations_are_checked() {
    let label = |name: &str, value: &str| RuleConfig {
        labels: [(name.to_owned(), value.to_owned())].into(),
        ..custom()
    };
    assert_error(
        &error_of(&[label("bad-name", "x")], &[]),
        "rules[Custom].labels.bad-name",
        "not a valid label name",
    );
    assert_error(
        &error_of(&[label("__meta", "x")], &[]),
        "rules[Custom].labels.__meta",
        "not a valid label name",
    );
    assert_error(
        &error_of(&[label("alertname", "x")], &[]),
        "rules[Custom].labels.alertname",
        "sets the",
    );
    assert_error(
        &error_of(&[label("severity", "x")], &[]),
        "rules[Custom].labels.severity",
        "sets the",
    );
    assert_error(
        &error_of(&[label("tool", "x")], &[]),
        "rules[Custom].labels.tool",
        "also a group_by label",
    );
    assert_error(
        &error_of(&[label("team", "{{nope}}")], &[]),
        "rules[Custom].labels.team",
        "unknown variable {{nope}}",
    );

    let annotation = |value: &str| RuleConfig {
        annotations: [("summary".to_owned(), value.to_owned())].into(),
        ..custom()
    };
    assert_error(
        &error_of(&[annotation("{{tool}} failed {{count")], &[]),
        "rules[Custom].annotations.summary",
        "not closed",
    );
    let err = error_of(&[annotation("{{tool_call.nope}}")], &[]);
    assert_error(
        &err,
        "rules[Custom].annotations.summary",
        "unknown variable {{tool_call.nope}}",
    );
    assert!(err.message.contains("group_by labels tool"), "{err}");
    assert_error(
        &error_of(&[annotation("{{ $labels.tenant }}")], &[]),
        "rules[Custom].annotations.summary",
        "not a group_by label",
    );
    let bad_name = RuleConfig {
        annotations: [("run-book".to_owned(), "x".to_owned())].into(),
        ..custom()
    };
    assert_error(
        &error_of(&[bad_name], &[]),
        "rules[Custom].annotations.run-book",
        "not a valid annotation name",
    );
    assert!(compile(
        &[annotation("{{tool}} {{tool_call.error_kind}} {{attributes.x}} {{count}} {{ratio}} {{value}} {{window}} {{threshold}} {{alertname}} {{severity}} {{ $value }}")],
        &[]
    )
    .is_ok());
}

// ---- the TOML form, through the service kit's loader -------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TestConfig {
    server: ServerConfig,
    log: LogConfig,
    auth: agentmesh_kit::config::AuthConfig,
    rules: Vec<RuleConfig>,
    disable_rules: Vec<String>,
}

agentmesh_kit::service_config!(TestConfig, service = "alerting", section = "alerting");

fn load(toml: &str) -> Result<TestConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentmesh.toml");
    std::fs::write(&path, toml).unwrap();
    agentmesh_kit::config::load::<TestConfig>(
        Some(&path),
        &agentmesh_kit::config::Overrides::default(),
    )
}

#[test]
fn the_documented_toml_loads_and_compiles() {
    let config = load(
        r#"
[alerting]
disable_rules = ["RunsFailing"]

[[alerting.rules]]
name = "ToolFailing"
description = "A tool fails repeatedly"
severity = "warning"
for = "0s"
group_by = ["tool"]
enabled = true
[alerting.rules.filter]
types = ["TOOL_CALL"]
outcomes = ["FAILURE"]
matchers = ['tool!="calculator"']
[alerting.rules.count]
threshold = 5
window = "1m"
[alerting.rules.labels]
team = "platform"
[alerting.rules.annotations]
summary = "tool {{tool}} failed {{count}} times in {{window}}"

[[alerting.rules]]
name = "SlowProvider"
group_by = ["llm_call.provider"]
[alerting.rules.filter]
types = ["llm_call"]
[alerting.rules.failure_ratio]
threshold = 0.25
window = "5m"
min_events = 10
failure_outcomes = ["FAILURE", "DENIED"]

[[alerting.rules]]
name = "NoRuns"
severity = "info"
for = "2m"
[alerting.rules.filter]
types = ["RUN_FINISHED"]
[alerting.rules.absence]
duration = "30m"
"#,
    )
    .unwrap();
    assert_eq!(config.rules.len(), 3);
    assert_eq!(
        config.rules[0].count.as_ref().unwrap().window,
        Some(Duration::from_secs(60))
    );
    assert_eq!(config.rules[2].for_duration, Duration::from_secs(120));
    assert_eq!(config.rules[1].severity, "warning", "the default severity");
    let rules = compile(&config.rules, &config.disable_rules).unwrap();
    assert_eq!(rules.len(), 8);
    assert!(!find(&rules, "ToolFailing").builtin);
    assert!(!find(&rules, "RunsFailing").enabled);
    let slow = find(&rules, "SlowProvider").to_proto();
    assert_eq!(slow.group_by, ["llm_call.provider"]);
    assert!(matches!(
        slow.condition,
        Some(pb::rule::Condition::FailureRatio(ref ratio)) if ratio.failure_outcomes == [Outcome::Failure as i32, Outcome::Denied as i32]
    ));
    assert_eq!(find(&rules, "NoRuns").severity, pb::Severity::Info);
}

#[test]
fn a_count_may_sum_a_field() {
    let config = load(
        r#"
[[alerting.rules]]
name = "TokenBurst"
group_by = ["tenant"]
[alerting.rules.filter]
types = ["LLM_CALL"]
[alerting.rules.count]
threshold = 100000
window = "5m"
sum_of = "llm_call.input_tokens"
"#,
    )
    .unwrap();
    let rules = compile(&config.rules, &[]).unwrap();
    let burst = find(&rules, "TokenBurst").to_proto();
    assert!(matches!(
        burst.condition,
        Some(pb::rule::Condition::Count(ref count)) if count.sum_of == "llm_call.input_tokens"
    ));
    let unknown = RuleConfig {
        count: Some(CountConfig {
            sum_of: Some("access.counts".into()),
            ..custom().count.unwrap()
        }),
        ..custom()
    };
    assert_error(
        &error_of(&[unknown], &[]),
        "rules[Custom].count.sum_of",
        "unknown event field \"access.counts\"",
    );
}

#[test]
fn unknown_toml_keys_are_rejected() {
    let err = load(
        r#"
[[alerting.rules]]
name = "X"
treshold = 5
"#,
    )
    .unwrap_err();
    assert!(err.message.contains("treshold"), "{err}");
    let err = load(
        r#"
[[alerting.rules]]
name = "X"
[alerting.rules.count]
threshold = 5
windw = "1m"
"#,
    )
    .unwrap_err();
    assert!(err.message.contains("windw"), "{err}");
}

#[test]
fn rule_configs_round_trip_through_serde() {
    // The effective configuration is serialized (dump-config, the kit's
    // defaults layer): what is written reads back the same.
    let rules = super::defaults::rules();
    let json = serde_json::to_string(&rules).unwrap();
    let back: Vec<RuleConfig> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rules);
    let config = TestConfig {
        rules: vec![custom()],
        ..TestConfig::default()
    };
    let toml = agentmesh_kit::config::to_toml(&config);
    assert!(toml.contains("window = \"2m\""), "{toml}");
}
