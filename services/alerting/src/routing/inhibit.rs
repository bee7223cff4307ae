//! Alertmanager's inhibition rules: while an alert matching a rule's source
//! matchers fires, alerts matching its target matchers (with the same values
//! of the `equal` labels) are muted.
//!
//! Data flow: [`Inhibitor::compile`] checks the `inhibit_rules` setting at
//! start; the alert state keeper then indexes the firing alerts once
//! ([`Inhibitor::index`]) and asks the resulting [`Inhibitions`] which of
//! them mute each alert.

use std::collections::{BTreeSet, HashMap};

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

use super::compile_matchers;
use crate::matcher::{Matcher, all_match, is_prometheus_label_name};
use crate::model::{Alert, AlertState, Fingerprint, LabelSet};

/// One inhibition rule as configured (`[[alerting.inhibit_rules]]`): while
/// an alert matching `source_matchers` fires, alerts matching
/// `target_matchers` with the same values of the `equal` labels are muted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct InhibitRuleConfig {
    /// What the inhibiting (source) alerts match, in matcher syntax.
    pub(crate) source_matchers: Vec<String>,
    /// What the inhibited (target) alerts match, in matcher syntax.
    pub(crate) target_matchers: Vec<String>,
    /// Labels whose values must be equal on source and target (a label
    /// missing on both sides counts as equal).
    pub(crate) equal: Vec<String>,
}

/// The compiled inhibition rules.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inhibitor {
    rules: Vec<InhibitRule>,
}

#[derive(Debug, Clone)]
struct InhibitRule {
    source: Vec<Matcher>,
    target: Vec<Matcher>,
    equal: Vec<String>,
}

impl InhibitRule {
    /// The values of the `equal` labels ("" when missing, so that a label
    /// missing on both sides counts as equal, as in Alertmanager).
    fn equal_values(&self, labels: &LabelSet) -> Vec<String> {
        self.equal
            .iter()
            .map(|name| labels.get(name).cloned().unwrap_or_default())
            .collect()
    }
}

impl Inhibitor {
    /// Compiles the `inhibit_rules` setting.
    pub(crate) fn compile(rules: &[InhibitRuleConfig]) -> Result<Inhibitor, ConfigError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let setting = format!("inhibit_rules[{index}]");
            let source = compile_matchers(&rule.source_matchers, &setting, "source_matchers")?;
            let target = compile_matchers(&rule.target_matchers, &setting, "target_matchers")?;
            // Alertmanager accepts empty sides, but an empty side matches
            // every alert: any firing alert would mute the targets, or the
            // source would mute everything. That is never what was meant.
            if source.is_empty() {
                return Err(ConfigError::new(
                    format!("{setting}.source_matchers"),
                    "an inhibition rule needs source matchers: without, every firing alert would mute \
                     the targets",
                ));
            }
            if target.is_empty() {
                return Err(ConfigError::new(
                    format!("{setting}.target_matchers"),
                    "an inhibition rule needs target matchers: without, the source alerts would mute \
                     every other alert",
                ));
            }
            for (at, name) in rule.equal.iter().enumerate() {
                if !is_prometheus_label_name(name) {
                    return Err(ConfigError::new(
                        format!("{setting}.equal[{at}]"),
                        format!("{name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
                    ));
                }
            }
            compiled.push(InhibitRule {
                source,
                target,
                equal: rule.equal.clone(),
            });
        }
        Ok(Inhibitor { rules: compiled })
    }

    /// True when there are no rules (nothing is ever inhibited).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The firing alerts among `alerts` that inhibit `target`, sorted and
    /// without repeats (empty: not inhibited). See [`Inhibitions::inhibited_by`].
    #[cfg(test)]
    pub(crate) fn inhibited_by(&self, target: &Alert, alerts: &[Alert]) -> Vec<Fingerprint> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        self.index(alerts).inhibited_by(target)
    }

    /// Indexes the firing source alerts among `alerts` by the values of
    /// each rule's `equal` labels, so that checking many targets against
    /// the same alerts costs one lookup per rule each.
    pub(crate) fn index<'b>(&self, alerts: impl IntoIterator<Item = &'b Alert>) -> Inhibitions<'_> {
        let mut sources: Vec<HashMap<Vec<String>, Vec<Source>>> =
            vec![HashMap::new(); self.rules.len()];
        for alert in alerts {
            // Only firing alerts inhibit: resolved ones (Alertmanager's
            // source cache may hold them) and pending ones never do.
            if alert.state != AlertState::Firing {
                continue;
            }
            for (rule, by_equal) in self.rules.iter().zip(sources.iter_mut()) {
                if all_match(&rule.source, &alert.labels) {
                    by_equal
                        .entry(rule.equal_values(&alert.labels))
                        .or_default()
                        .push(Source {
                            fingerprint: alert.fingerprint,
                            matches_target: all_match(&rule.target, &alert.labels),
                        });
                }
            }
        }
        Inhibitions {
            inhibitor: self,
            sources,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    fingerprint: Fingerprint,
    /// Whether the source also matches the rule's target side.
    matches_target: bool,
}

/// The firing source alerts of every rule, indexed (see
/// [`Inhibitor::index`]).
#[derive(Debug)]
pub(crate) struct Inhibitions<'a> {
    inhibitor: &'a Inhibitor,
    /// Per rule: the sources by their `equal` label values.
    sources: Vec<HashMap<Vec<String>, Vec<Source>>>,
}

impl Inhibitions<'_> {
    /// The firing alerts that inhibit `target`, as Alertmanager's
    /// `Inhibitor.Mutes`: for every rule whose target matchers `target`
    /// matches, the firing alerts matching its source matchers whose
    /// `equal` labels have the same values. When `target` matches the
    /// rule's source matchers too, sources that also match its target
    /// matchers are left out, so an alert never inhibits itself and alerts
    /// matching both sides do not mute each other. Sorted, no repeats.
    pub(crate) fn inhibited_by(&self, target: &Alert) -> Vec<Fingerprint> {
        let mut by = BTreeSet::new();
        for (rule, by_equal) in self.inhibitor.rules.iter().zip(&self.sources) {
            if !all_match(&rule.target, &target.labels) {
                continue;
            }
            let Some(sources) = by_equal.get(&rule.equal_values(&target.labels)) else {
                continue;
            };
            let two_sided = all_match(&rule.source, &target.labels);
            by.extend(
                sources
                    .iter()
                    .filter(|source| !(two_sided && source.matches_target))
                    .filter(|source| source.fingerprint != target.fingerprint)
                    .map(|source| source.fingerprint),
            );
        }
        by.into_iter().collect()
    }
}
