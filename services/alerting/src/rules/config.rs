//! How a rule is written in the configuration (`[[alerting.rules]]`), as
//! serde reads it. Nothing is checked here beyond the shape: names, enums,
//! matchers and templates stay text so that [`compile`](super::compile) can
//! check them all with errors naming the rule and the setting
//! (`rules[ToolFailing].count.window`), which serde could not do.
//!
//! ```toml
//! [[alerting.rules]]
//! name = "ToolFailing"              # unique; the "alertname" label
//! description = "A tool fails repeatedly"
//! severity = "warning"              # critical | warning (default) | info
//! for = "0s"                        # pending time before firing (default 0s)
//! group_by = ["tool"]               # event fields; label = last path segment
//! enabled = true                    # default true
//! [alerting.rules.filter]
//! types = ["TOOL_CALL"]             # EventType names without EVENT_TYPE_
//! outcomes = ["FAILURE"]            # SUCCESS | FAILURE | DENIED
//! matchers = ['tool!="calculator"'] # Alertmanager matchers on event fields
//! [alerting.rules.count]            # exactly one of count, failure_ratio, absence
//! threshold = 5                     # default 1
//! window = "1m"
//! # sum_of = "access.count"         # sum a numeric field instead of counting
//!                                   # events (each adds at least 1)
//! # [alerting.rules.failure_ratio]
//! # threshold = 0.5, window = "5m", min_events = 10 (default 1),
//! # failure_outcomes = ["FAILURE"] (the default)
//! # [alerting.rules.absence]
//! # duration = "30m"
//! [alerting.rules.labels]
//! team = "platform"
//! [alerting.rules.annotations]
//! summary = "tool {{tool}} failed {{count}} times in {{window}}"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One rule as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleConfig {
    /// Unique name; the "alertname" label of its alerts. A configured rule
    /// named as a shipped one replaces it.
    #[serde(default)]
    pub(crate) name: String,
    /// What the rule detects, for people reading ListRules.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) description: String,
    /// "critical", "warning" or "info".
    #[serde(default = "default_severity")]
    pub(crate) severity: String,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub(crate) for_duration: Duration,
    /// Event fields the condition is evaluated separately for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) group_by: Vec<String>,
    /// False: listed, not evaluated.
    #[serde(default = "enabled")]
    pub(crate) enabled: bool,
    /// Which events the rule looks at.
    #[serde(default)]
    pub(crate) filter: FilterConfig,
    /// At least `threshold` events within `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) count: Option<CountConfig>,
    /// A failure ratio within `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failure_ratio: Option<FailureRatioConfig>,
    /// No event for `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) absence: Option<AbsenceConfig>,
    /// Extra labels (values may be templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: BTreeMap<String, String>,
    /// Annotations (templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
}

impl RuleConfig {
    /// A rule called `name`, everything else at its default (no condition
    /// yet: one must be set).
    pub(crate) fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            description: String::new(),
            severity: default_severity(),
            for_duration: Duration::ZERO,
            group_by: Vec::new(),
            enabled: true,
            filter: FilterConfig::default(),
            count: None,
            failure_ratio: None,
            absence: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_severity() -> String {
    "warning".to_owned()
}

fn enabled() -> bool {
    true
}

/// Which audit events a rule looks at; everything matches when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FilterConfig {
    /// Event type names ("TOOL_CALL"; any case; the EVENT_TYPE_ prefix may
    /// be left out).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) types: Vec<String>,
    /// Outcome names ("FAILURE").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) outcomes: Vec<String>,
    /// Matchers on event fields (`tool!="calculator"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) matchers: Vec<String>,
}

/// `[rules.count]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CountConfig {
    /// The minimum count (at least 1; default 1).
    #[serde(default = "one")]
    pub(crate) threshold: i64,
    /// The sliding window. Required.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) window: Option<Duration>,
    /// Sum this numeric event field instead of counting events (e.g.
    /// `access.count`: one AUTHENTICATION event stands for that many
    /// failures). Each event adds its value, at least 1: missing, zero,
    /// negative or non-numeric values add 1, fractions are rounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sum_of: Option<String>,
}

/// `[rules.failure_ratio]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailureRatioConfig {
    /// The minimum failed share, in (0, 1]. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) threshold: Option<f64>,
    /// The sliding window. Required.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) window: Option<Duration>,
    /// The fewest events in the window for the ratio to count (default 1).
    #[serde(default = "one")]
    pub(crate) min_events: i64,
    /// The outcomes that count as failed (default FAILURE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) failure_outcomes: Vec<String>,
}

/// `[rules.absence]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbsenceConfig {
    /// How long without a matching event. Required.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) duration: Option<Duration>,
}

fn one() -> i64 {
    1
}
