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
use agentmesh_proto::audit::v1::AuditEvent;

pub(crate) use super::condition::Condition;
use super::condition::{check_span, compile_condition, parse_outcome};
use super::config::RuleConfig;
use super::defaults;
use super::fields::{self, FIELD_HELP, Field};
use super::template::{Name, SPECIALS, Template, Var};
use crate::matcher::{Matcher, is_prometheus_label_name};
use crate::model::{ALERTNAME, SEVERITY};

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
            Condition::Count {
                threshold,
                window,
                sum_of,
            } => pb::rule::Condition::Count(pb::CountCondition {
                threshold: i64::try_from(*threshold).unwrap_or(i64::MAX),
                window: duration(*window),
                sum_of: sum_of
                    .as_ref()
                    .map(|field| field.name().to_owned())
                    .unwrap_or_default(),
            }),
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
    let mut positions: HashMap<&str, (usize, &RuleConfig)> = HashMap::new();
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
        if let Some((first, _)) = positions.insert(&rule.name, (index, rule)) {
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
            Some((_, rule)) => compile_rule(rule, false)?,
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

    let severity = compile_severity(config, &error)?;
    check_span(config.for_duration, true).map_err(|message| error(".for", message))?;
    let filter = compile_filter(config, &error)?;
    let condition = compile_condition(config, &filter, &error)?;
    let group_by = compile_group_by(config, &error)?;
    let group_labels: Vec<&str> = group_by.iter().map(|group| group.label.as_str()).collect();
    let resolve = |name: Name<'_>| resolve_var(name, &group_labels);
    let labels = compile_labels(config, &group_labels, &resolve, &error)?;
    let annotations = compile_annotations(config, &resolve, &error)?;
    let template_fields = template_fields(&labels, &annotations);

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

/// The rule's `severity` setting.
fn compile_severity(
    config: &RuleConfig,
    error: &impl Fn(&str, String) -> ConfigError,
) -> Result<pb::Severity, ConfigError> {
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
    Ok(severity)
}

/// The rule's `filter`: event types, outcomes and field matchers.
fn compile_filter(
    config: &RuleConfig,
    error: &impl Fn(&str, String) -> ConfigError,
) -> Result<Filter, ConfigError> {
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
    Ok(filter)
}

/// The rule's `group_by` fields and the labels they give, each a valid
/// label name not set by the rule itself and given once.
fn compile_group_by(
    config: &RuleConfig,
    error: &impl Fn(&str, String) -> ConfigError,
) -> Result<Vec<GroupBy>, ConfigError> {
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
        // `group_by` holds one entry per name checked so far, in order.
        if let Some((other, (_, other_name))) = group_by
            .iter()
            .zip(&config.group_by)
            .enumerate()
            .find(|(_, (group, _))| group.label == label)
        {
            return Err(error(
                &setting,
                format!(
                    "{name:?} and group_by[{other}] ({other_name:?}) both give the label {label:?}: group by one of them",
                ),
            ));
        }
        group_by.push(GroupBy { field, label });
    }
    Ok(group_by)
}

/// The rule's extra `labels`, as templates over `resolve`.
fn compile_labels(
    config: &RuleConfig,
    group_labels: &[&str],
    resolve: &impl Fn(Name<'_>) -> Result<Var, String>,
    error: &impl Fn(&str, String) -> ConfigError,
) -> Result<Vec<(String, Template)>, ConfigError> {
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
    Ok(labels)
}

/// The rule's `annotations`, as templates over `resolve`.
fn compile_annotations(
    config: &RuleConfig,
    resolve: &impl Fn(Name<'_>) -> Result<Var, String>,
    error: &impl Fn(&str, String) -> ConfigError,
) -> Result<Vec<(String, Template)>, ConfigError> {
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
    Ok(annotations)
}

/// The event fields the rule's templates read, each once.
fn template_fields(
    labels: &[(String, Template)],
    annotations: &[(String, Template)],
) -> Vec<Field> {
    let mut template_fields: Vec<Field> = Vec::new();
    for (_, template) in labels.iter().chain(annotations) {
        for var in template.vars() {
            if let Var::Field(name) = var
                && !template_fields.iter().any(|field| field.name() == name)
                && let Some(field) = Field::resolve(name)
            {
                template_fields.push(field);
            }
        }
    }
    template_fields
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
