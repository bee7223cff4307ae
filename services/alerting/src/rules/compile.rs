//! From configuration to runnable rules: [`compile`] merges the shipped
//! rules with the operator's, checks every setting, and resolves names once
//! (event types, outcomes, matchers' fields, `group_by` fields, template
//! variables) so that the evaluator does no lookups by name per event.
//!
//! Errors name the setting relative to the `[alerting]` section, the rule by
//! its name (`rules[ToolFailing].count.window`) or, when it has no usable
//! name, by its position in the configured list (`rules[3].name`), with a
//! message saying what to write instead.

use std::collections::HashMap;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use agentmesh_proto::alerting::v1 as pb;
use agentmesh_proto::audit::v1::{AuditEvent, Outcome};

use super::config::RuleConfig;
use super::defaults;
use super::fields::{self, FIELD_HELP, Field};
use super::template::{Name, SPECIALS, Template, Var};
use crate::matcher::{Matcher, is_prometheus_label_name};
use crate::model::{ALERTNAME, SEVERITY};

/// The longest window, absence duration or `for` accepted: long enough for
/// any alerting purpose, short enough that time arithmetic cannot overflow.
const MAX_SPAN: Duration = Duration::from_secs(366 * 24 * 3600);

/// A checked rule, ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// Unique name; the "alertname" label.
    pub(crate) name: String,
    /// What it detects.
    pub(crate) description: String,
    /// The "severity" label.
    pub(crate) severity: pb::Severity,
    /// How long the condition holds before the alert fires.
    pub(crate) for_duration: Duration,
    /// Which events it looks at.
    pub(crate) filter: Filter,
    /// When its alert is active.
    pub(crate) condition: Condition,
    /// The fields it groups by, with their label names.
    pub(crate) group_by: Vec<GroupBy>,
    /// Extra labels, by name.
    pub(crate) labels: Vec<(String, Template)>,
    /// Annotations, by name.
    pub(crate) annotations: Vec<(String, Template)>,
    /// Shipped with agentmesh (not from the configuration).
    pub(crate) builtin: bool,
    /// Evaluated (false: listed only).
    pub(crate) enabled: bool,
    /// The event fields its templates read from the latest matching event,
    /// which the evaluator keeps per group.
    pub(crate) template_fields: Vec<Field>,
}

/// Which events a rule looks at.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Event types (empty: all).
    pub(crate) types: Vec<i32>,
    /// Outcomes (empty: all); an unset outcome is SUCCESS.
    pub(crate) outcomes: Vec<i32>,
    /// Matchers with the fields they read.
    pub(crate) matchers: Vec<(Matcher, Field)>,
}

impl Filter {
    /// True when `event`, whose effective outcome is `outcome`, passes.
    pub(crate) fn matches(&self, event: &AuditEvent, outcome: i32) -> bool {
        (self.types.is_empty() || self.types.contains(&event.r#type))
            && (self.outcomes.is_empty() || self.outcomes.contains(&outcome))
            && self
                .matchers
                .iter()
                .all(|(matcher, field)| matcher.matches_value(&field.get(event)))
    }
}

/// When a rule's alert is active.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    /// At least `threshold` events within `window`.
    Count {
        /// At least 1.
        threshold: u64,
        /// More than zero.
        window: Duration,
    },
    /// At least `min_events` events within `window`, and the share with a
    /// failure outcome at least `threshold`.
    FailureRatio {
        /// In (0, 1].
        threshold: f64,
        /// More than zero.
        window: Duration,
        /// At least 1.
        min_events: u64,
        /// Outcomes counted as failed (never empty).
        failure_outcomes: Vec<i32>,
    },
    /// No event for `duration`.
    Absence {
        /// More than zero.
        duration: Duration,
    },
}

impl Condition {
    /// The time the condition looks back over: the window, or the absence
    /// duration. Events older than this (at the evaluator's clock) are
    /// ignored.
    pub(crate) fn span(&self) -> Duration {
        match self {
            Self::Count { window, .. } | Self::FailureRatio { window, .. } => *window,
            Self::Absence { duration } => *duration,
        }
    }

    /// True for an outcome counted as failed (for `{{ratio}}` of a count
    /// condition: FAILURE).
    pub(crate) fn is_failure(&self, outcome: i32) -> bool {
        match self {
            Self::FailureRatio {
                failure_outcomes, ..
            } => failure_outcomes.contains(&outcome),
            Self::Count { .. } | Self::Absence { .. } => outcome == Outcome::Failure as i32,
        }
    }
}

/// One `group_by` field.
#[derive(Debug, Clone)]
pub(crate) struct GroupBy {
    /// The field.
    pub(crate) field: Field,
    /// Its label name (the field's last path segment).
    pub(crate) label: String,
}

impl Rule {
    /// The API form (ListRules).
    pub(crate) fn to_proto(&self) -> pb::Rule {
        let duration = |d: Duration| Some(prost_types::Duration::try_from(d).unwrap_or_default());
        let condition = match &self.condition {
            Condition::Count { threshold, window } => {
                pb::rule::Condition::Count(pb::CountCondition {
                    threshold: i64::try_from(*threshold).unwrap_or(i64::MAX),
                    window: duration(*window),
                })
            }
            Condition::FailureRatio {
                threshold,
                window,
                min_events,
                failure_outcomes,
            } => pb::rule::Condition::FailureRatio(pb::FailureRatioCondition {
                threshold: *threshold,
                window: duration(*window),
                min_events: i64::try_from(*min_events).unwrap_or(i64::MAX),
                failure_outcomes: failure_outcomes.clone(),
            }),
            Condition::Absence { duration: d } => {
                pb::rule::Condition::Absence(pb::AbsenceCondition {
                    duration: duration(*d),
                })
            }
        };
        pb::Rule {
            name: self.name.clone(),
            description: self.description.clone(),
            filter: Some(pb::RuleFilter {
                types: self.filter.types.clone(),
                outcomes: self.filter.outcomes.clone(),
                matchers: self
                    .filter
                    .matchers
                    .iter()
                    .map(|(matcher, _)| matcher.to_proto())
                    .collect(),
            }),
            condition: Some(condition),
            for_duration: duration(self.for_duration),
            severity: self.severity as i32,
            group_by: self
                .group_by
                .iter()
                .map(|group| group.field.name().to_owned())
                .collect(),
            labels: self
                .labels
                .iter()
                .map(|(name, template)| (name.clone(), template.source().to_owned()))
                .collect(),
            annotations: self
                .annotations
                .iter()
                .map(|(name, template)| (name.clone(), template.source().to_owned()))
                .collect(),
            builtin: self.builtin,
            enabled: self.enabled,
        }
    }
}

/// The shipped rules plus `configured` (a configured rule named as a shipped
/// one replaces it in place; the others follow in order), with the rules
/// named in `disabled` kept but not enabled.
pub(crate) fn compile(
    configured: &[RuleConfig],
    disabled: &[String],
) -> Result<Vec<Rule>, ConfigError> {
    let mut positions: HashMap<&str, usize> = HashMap::new();
    for (index, rule) in configured.iter().enumerate() {
        if rule.name.is_empty() {
            return Err(ConfigError::new(
                format!("rules[{index}].name"),
                "every rule needs a name (it becomes the alertname label), e.g. name = \"ToolFailing\"",
            ));
        }
        if !is_prometheus_label_name(&rule.name) {
            return Err(ConfigError::new(
                format!("rules[{index}].name"),
                format!(
                    "{:?} is not a valid rule name: use letters, digits and underscores, not starting with a digit \
                     (e.g. \"ToolFailing\")",
                    rule.name
                ),
            ));
        }
        if let Some(first) = positions.insert(&rule.name, index) {
            return Err(ConfigError::new(
                format!("rules[{}].name", rule.name),
                format!(
                    "rules[{first}] and rules[{index}] are both named {:?}: rule names must be unique",
                    rule.name
                ),
            ));
        }
    }
    let mut rules = Vec::with_capacity(configured.len() + 6);
    for shipped in defaults::rules() {
        let rule = match positions.remove(shipped.name.as_str()) {
            Some(index) => compile_rule(&configured[index], false)?,
            None => compile_rule(&shipped, true)?,
        };
        rules.push(rule);
    }
    for rule in configured {
        if positions.contains_key(rule.name.as_str()) {
            rules.push(compile_rule(rule, false)?);
        }
    }
    for (index, name) in disabled.iter().enumerate() {
        match rules.iter_mut().find(|rule| rule.name == *name) {
            Some(rule) => rule.enabled = false,
            None => {
                let names: Vec<&str> = rules.iter().map(|rule| rule.name.as_str()).collect();
                return Err(ConfigError::new(
                    format!("disable_rules[{index}]"),
                    format!(
                        "no rule is named {name:?}; the rules are {}",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(rules)
}

/// Checks and resolves one rule (its name is already checked).
pub(super) fn compile_rule(config: &RuleConfig, builtin: bool) -> Result<Rule, ConfigError> {
    let at = |setting: &str| format!("rules[{}]{setting}", config.name);
    let error = |setting: &str, message: String| ConfigError::new(at(setting), message);

    let severity = match config.severity.trim().to_ascii_lowercase().as_str() {
        "critical" => pb::Severity::Critical,
        "warning" => pb::Severity::Warning,
        "info" => pb::Severity::Info,
        _ => {
            return Err(error(
                ".severity",
                format!(
                    "unknown severity {:?}: use critical, warning or info",
                    config.severity
                ),
            ));
        }
    };
    check_span(config.for_duration, true).map_err(|message| error(".for", message))?;

    let mut filter = Filter::default();
    for (index, name) in config.filter.types.iter().enumerate() {
        let kind = fields::parse_type(name).ok_or_else(|| {
            error(
                &format!(".filter.types[{index}]"),
                format!(
                    "unknown event type {name:?}; the types are {}",
                    fields::type_names()
                ),
            )
        })?;
        filter.types.push(kind as i32);
    }
    for (index, name) in config.filter.outcomes.iter().enumerate() {
        filter.outcomes.push(
            parse_outcome(name)
                .map_err(|message| error(&format!(".filter.outcomes[{index}]"), message))?,
        );
    }
    for (index, text) in config.filter.matchers.iter().enumerate() {
        let setting = format!(".filter.matchers[{index}]");
        let matcher = Matcher::parse(text).map_err(|err| error(&setting, err.0))?;
        let field = Field::resolve(&matcher.name).ok_or_else(|| {
            error(
                &setting,
                format!(
                    "{text:?} names {:?}, which is not an event field; {FIELD_HELP}",
                    matcher.name
                ),
            )
        })?;
        filter.matchers.push((matcher, field));
    }

    let condition = compile_condition(config, &filter, &error)?;

    let mut group_by: Vec<GroupBy> = Vec::with_capacity(config.group_by.len());
    for (index, name) in config.group_by.iter().enumerate() {
        let setting = format!(".group_by[{index}]");
        let field = Field::resolve(name).ok_or_else(|| {
            error(
                &setting,
                format!("{name:?} is not an event field; {FIELD_HELP}"),
            )
        })?;
        let label = field.label_name().to_owned();
        if !is_prometheus_label_name(&label) || label.starts_with("__") {
            return Err(error(
                &setting,
                format!(
                    "{name:?} would give the label {label:?}, which is not a valid label name \
                     (letters, digits, underscores, not starting with a digit or \"__\")"
                ),
            ));
        }
        if label == ALERTNAME || label == SEVERITY {
            return Err(error(
                &setting,
                format!("{name:?} would give the label {label:?}, which the rule sets itself"),
            ));
        }
        if let Some(other) = group_by.iter().position(|group| group.label == label) {
            return Err(error(
                &setting,
                format!(
                    "{name:?} and group_by[{other}] ({:?}) both give the label {label:?}: group by one of them",
                    config.group_by[other]
                ),
            ));
        }
        group_by.push(GroupBy { field, label });
    }

    let group_labels: Vec<&str> = group_by.iter().map(|group| group.label.as_str()).collect();
    let resolve = |name: Name<'_>| resolve_var(name, &group_labels);

    let mut labels = Vec::with_capacity(config.labels.len());
    for (name, value) in &config.labels {
        let setting = format!(".labels.{name}");
        if !is_prometheus_label_name(name) || name.starts_with("__") {
            return Err(error(
                &setting,
                format!(
                    "{name:?} is not a valid label name (letters, digits, underscores, not starting with a digit \
                     or \"__\")"
                ),
            ));
        }
        if name == ALERTNAME || name == SEVERITY {
            return Err(error(
                &setting,
                format!(
                    "the rule sets the {name:?} label itself (use the rule's name or severity setting)"
                ),
            ));
        }
        if group_labels.contains(&name.as_str()) {
            return Err(error(
                &setting,
                format!(
                    "{name:?} is also a group_by label of this rule; give the extra label another name"
                ),
            ));
        }
        labels.push((
            name.clone(),
            Template::parse(value, resolve).map_err(|m| error(&setting, m))?,
        ));
    }
    let mut annotations = Vec::with_capacity(config.annotations.len());
    for (name, value) in &config.annotations {
        let setting = format!(".annotations.{name}");
        if !is_prometheus_label_name(name) {
            return Err(error(
                &setting,
                format!("{name:?} is not a valid annotation name (letters, digits, underscores)"),
            ));
        }
        annotations.push((
            name.clone(),
            Template::parse(value, resolve).map_err(|m| error(&setting, m))?,
        ));
    }

    let mut template_fields: Vec<Field> = Vec::new();
    for (_, template) in labels.iter().chain(&annotations) {
        for var in template.vars() {
            if let Var::Field(name) = var
                && !template_fields.iter().any(|field| field.name() == name)
                && let Some(field) = Field::resolve(name)
            {
                template_fields.push(field);
            }
        }
    }

    Ok(Rule {
        name: config.name.clone(),
        description: config.description.clone(),
        severity,
        for_duration: config.for_duration,
        filter,
        condition,
        group_by,
        labels,
        annotations,
        builtin,
        enabled: config.enabled,
        template_fields,
    })
}

fn compile_condition(
    config: &RuleConfig,
    filter: &Filter,
    error: &impl Fn(&str, String) -> ConfigError,
) -> Result<Condition, ConfigError> {
    let set: Vec<&str> = [
        config.count.as_ref().map(|_| "count"),
        config.failure_ratio.as_ref().map(|_| "failure_ratio"),
        config.absence.as_ref().map(|_| "absence"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if set.len() != 1 {
        let found = if set.is_empty() {
            "none is set".to_owned()
        } else {
            format!("{} are set", set.join(" and "))
        };
        return Err(error(
            "",
            format!(
                "a rule needs exactly one condition, [rules.count], [rules.failure_ratio] or [rules.absence]; {found}"
            ),
        ));
    }
    if let Some(count) = &config.count {
        if count.threshold < 1 {
            return Err(error(
                ".count.threshold",
                format!("must be at least 1, got {}", count.threshold),
            ));
        }
        let window =
            required_span(count.window, "window").map_err(|m| error(".count.window", m))?;
        return Ok(Condition::Count {
            threshold: u64::try_from(count.threshold).unwrap_or(1),
            window,
        });
    }
    if let Some(ratio) = &config.failure_ratio {
        let threshold = ratio.threshold.ok_or_else(|| {
            error(
                ".failure_ratio.threshold",
                "missing: set the failed share that fires, e.g. threshold = 0.5".to_owned(),
            )
        })?;
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(error(
                ".failure_ratio.threshold",
                format!(
                    "must be greater than 0 and at most 1 (e.g. 0.5 for half), got {threshold}"
                ),
            ));
        }
        let window =
            required_span(ratio.window, "window").map_err(|m| error(".failure_ratio.window", m))?;
        if ratio.min_events < 1 {
            return Err(error(
                ".failure_ratio.min_events",
                format!("must be at least 1, got {}", ratio.min_events),
            ));
        }
        let mut failure_outcomes = Vec::with_capacity(ratio.failure_outcomes.len().max(1));
        for (index, name) in ratio.failure_outcomes.iter().enumerate() {
            failure_outcomes.push(
                parse_outcome(name)
                    .map_err(|m| error(&format!(".failure_ratio.failure_outcomes[{index}]"), m))?,
            );
        }
        if failure_outcomes.is_empty() {
            failure_outcomes.push(Outcome::Failure as i32);
        }
        // An outcome filter leaving only failures (or only successes) makes
        // the ratio constant: the rule would fire always or never.
        if !filter.outcomes.is_empty() {
            let failing = filter
                .outcomes
                .iter()
                .filter(|outcome| failure_outcomes.contains(outcome))
                .count();
            if failing == 0 || failing == filter.outcomes.len() {
                return Err(error(
                    ".filter.outcomes",
                    "a failure ratio needs both the failed and the other events: leave filter.outcomes empty \
                     (failure_ratio.failure_outcomes says which outcomes count as failed)"
                        .to_owned(),
                ));
            }
        }
        return Ok(Condition::FailureRatio {
            threshold,
            window,
            min_events: u64::try_from(ratio.min_events).unwrap_or(1),
            failure_outcomes,
        });
    }
    let duration = config.absence.as_ref().and_then(|absence| absence.duration);
    let duration =
        required_span(duration, "duration").map_err(|m| error(".absence.duration", m))?;
    Ok(Condition::Absence { duration })
}

fn parse_outcome(name: &str) -> Result<i32, String> {
    fields::parse_outcome(name)
        .map(|outcome| outcome as i32)
        .ok_or_else(|| format!("unknown outcome {name:?}: use SUCCESS, FAILURE or DENIED"))
}

fn required_span(value: Option<Duration>, what: &str) -> Result<Duration, String> {
    let value = value.ok_or_else(|| format!("missing: set the {what}, e.g. {what} = \"5m\""))?;
    check_span(value, false)?;
    Ok(value)
}

fn check_span(value: Duration, zero_ok: bool) -> Result<(), String> {
    if value.is_zero() && !zero_ok {
        return Err("must be longer than 0s, e.g. \"5m\"".to_owned());
    }
    if value > MAX_SPAN {
        return Err("must be at most 366 days".to_owned());
    }
    Ok(())
}

/// What a template name stands for in a rule grouping by `group_labels`:
/// the special variables first, then a group label, then an event field.
fn resolve_var(name: Name<'_>, group_labels: &[&str]) -> Result<Var, String> {
    match name {
        Name::Plain(plain) => {
            if let Some((_, var)) = SPECIALS.iter().find(|(special, _)| *special == plain) {
                Ok(var.clone())
            } else if group_labels.contains(&plain) {
                Ok(Var::Label(plain.to_owned()))
            } else if Field::resolve(plain).is_some() {
                Ok(Var::Field(plain.to_owned()))
            } else {
                let specials: Vec<&str> = SPECIALS.iter().map(|(special, _)| *special).collect();
                let labels = if group_labels.is_empty() {
                    String::new()
                } else {
                    format!("the group_by labels {}, ", group_labels.join(", "))
                };
                Err(format!(
                    "unknown variable {name}: a template may use {labels}{} and event fields ({FIELD_HELP})",
                    specials.join(", ")
                ))
            }
        }
        Name::Label(label) if group_labels.contains(&label) => Ok(Var::Label(label.to_owned())),
        Name::Label(label) => Err(format!(
            "{name}: {label:?} is not a group_by label of this rule (it has {})",
            if group_labels.is_empty() {
                "none".to_owned()
            } else {
                group_labels.join(", ")
            }
        )),
    }
}
