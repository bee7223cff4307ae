//! The rule evaluator: audit events in, active alerts out. Pure — no I/O,
//! no clock of its own; the caller passes `now`.
//!
//! ```text
//! AuditEvent ─▶ observe ─▶ per enabled rule: filter ─▶ group (group_by values)
//!                               ─▶ window buckets / last-seen / latest fields
//! now ─▶ evaluate ─▶ per group: prune window, test condition, keep active_at
//!                               ─▶ RuleAlert (pending or firing) for each holding group
//! take_dirty ─▶ changed group states as JSON (or deletions) for the caller to persist
//! restore ◀─ persisted states at start
//! ```
//!
//! Time: each event counts at its `time` (its `record_time` when unset; the
//! evaluator's clock when both are). The clock is the start time, then the
//! latest `now` given to [`Evaluator::evaluate`]; an event more than a rule's
//! window (or absence duration) behind the clock is ignored by that rule, and
//! one stamped more than a window ahead of it counts as if it were a window
//! ahead — a producer's clock far in the future can neither keep a count up
//! for long nor make the windows grow.
//!
//! Groups: a rule keeps one group per distinct combination of its `group_by`
//! values (one group, key `{}`, without `group_by`), at most
//! `max_groups_per_rule`; events that would open one more are dropped and
//! counted. A group with nothing in its window and no active alert is dropped
//! (reported as a deletion by `take_dirty`). Absence rules keep their groups:
//! without `group_by` the single group is measured from the start time until
//! a first event (so a persisted group carries that start across restarts);
//! with `group_by`, each group seen so far is measured from its last event.
//!
//! Persistence: the state of a group — its buckets, `active_at`, the time of
//! its last event and the latest event's fields its templates use — is what
//! `take_dirty` serializes and `restore` reads, so that after a restart,
//! restoring the states and observing the events after the persisted
//! position gives what an uninterrupted evaluator gives. States of rules no
//! longer configured (or disabled, or grouped differently) are reported as
//! deletions so the store does not keep them.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use agentmesh_proto::audit::v1::AuditEvent;
use serde::{Deserialize, Serialize};

use super::compile::{Condition, Rule};
use super::fields::effective_outcome;
use super::template::Var;
use super::window::{Bucket, Window};
use crate::model::{ALERTNAME, Annotations, LabelSet, SEVERITY, severity_label};

/// An alert of a rule whose condition holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RuleAlert {
    /// The rule's name.
    pub(crate) rule: String,
    /// alertname, severity, the group labels, the rendered rule labels
    /// (empty values left out, as Alertmanager treats them as absent).
    pub(crate) labels: LabelSet,
    /// The rendered annotations.
    pub(crate) annotations: Annotations,
    /// When the condition began to hold (the evaluation that first saw it).
    pub(crate) active_at: SystemTime,
    /// True once the condition has held for the rule's `for`.
    pub(crate) firing: bool,
    /// The count, the failure ratio (0..1), or the seconds since the last
    /// event (absence).
    pub(crate) value: f64,
}

/// Evaluates rules over the audit stream.
#[derive(Debug)]
pub(crate) struct Evaluator {
    rules: Vec<Rule>,
    /// Per rule, same order.
    states: Vec<RuleState>,
    started_at: SystemTime,
    /// The start time, then the latest `now` evaluated.
    clock: SystemTime,
    max_groups: usize,
    dropped: u64,
    /// Groups dropped since the last `take_dirty`: (rule, key).
    deleted: Vec<(String, String)>,
}

#[derive(Debug)]
struct RuleState {
    groups: BTreeMap<String, Group>,
    /// An empty window of the rule's span, for bucket arithmetic before a
    /// group exists (`None` for absence rules).
    shape: Option<Window>,
}

#[derive(Debug)]
struct Group {
    /// By label name, missing fields as "".
    labels: BTreeMap<String, String>,
    /// `None` for absence rules.
    window: Option<Window>,
    active_at: Option<SystemTime>,
    /// The latest event's time (absence: measured from it).
    last_seen: Option<SystemTime>,
    /// The fields of the latest event the templates use.
    fields: BTreeMap<String, String>,
    /// Changed since the last `take_dirty`.
    dirty: bool,
}

/// A group's state as persisted (times as Unix nanoseconds).
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    labels: BTreeMap<String, String>,
    #[serde(default)]
    resolution: u64,
    #[serde(default)]
    buckets: Vec<Bucket>,
    #[serde(default)]
    active_at: Option<u64>,
    #[serde(default)]
    last_seen: Option<u64>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

/// What a group's condition measured at one evaluation.
#[derive(Debug, Clone, Copy)]
struct Measure {
    holds: bool,
    count: u64,
    ratio: f64,
    value: f64,
}

impl Evaluator {
    /// An evaluator of `rules` (disabled ones are listed, not evaluated)
    /// started at `started_at`, keeping at most `max_groups_per_rule` groups
    /// per rule.
    pub(crate) fn new(
        rules: Vec<Rule>,
        started_at: SystemTime,
        max_groups_per_rule: usize,
    ) -> Self {
        let states = rules
            .iter()
            .map(|rule| RuleState {
                groups: BTreeMap::new(),
                shape: window_of(&rule.condition),
            })
            .collect();
        Self {
            rules,
            states,
            started_at,
            clock: started_at,
            max_groups: max_groups_per_rule,
            dropped: 0,
            deleted: Vec::new(),
        }
    }

    /// The rules, enabled or not.
    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Events dropped because their rule had `max_groups_per_rule` groups.
    pub(crate) fn dropped_groups(&self) -> u64 {
        self.dropped
    }

    /// Applies one audit event (in stream order) to every enabled rule whose
    /// filter it passes.
    pub(crate) fn observe(&mut self, event: &AuditEvent) {
        let time = event_time(event).unwrap_or(self.clock);
        let outcome = effective_outcome(event.outcome);
        for (rule, state) in self.rules.iter().zip(&mut self.states) {
            if !rule.enabled || !rule.filter.matches(event, outcome) {
                continue;
            }
            let span = rule.condition.span();
            // Where the event counts, or nothing when it is late.
            let bucket = match &state.shape {
                Some(shape) => {
                    let now = shape.index(self.clock);
                    let at = shape.index(time).min(shape.latest(now));
                    if shape.is_out(at, now) {
                        continue;
                    }
                    Some(at)
                }
                None => {
                    if self
                        .clock
                        .duration_since(time)
                        .is_ok_and(|behind| behind > span)
                    {
                        continue;
                    }
                    None
                }
            };
            let time = time.min(self.clock.checked_add(span).unwrap_or(time));

            let values: BTreeMap<&str, _> = rule
                .group_by
                .iter()
                .map(|group| (group.label.as_str(), group.field.get(event)))
                .collect();
            let key = group_key(values.iter().map(|(name, value)| (*name, value.as_ref())));
            let full = state.groups_len_at_cap(self.max_groups);
            let group = match state.groups.entry(key) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    if full {
                        self.dropped += 1;
                        continue;
                    }
                    let labels = values
                        .into_iter()
                        .map(|(name, value)| (name.to_owned(), value.into_owned()))
                        .collect();
                    entry.insert(Group::new(labels, state.shape.clone()))
                }
            };
            if let (Some(window), Some(at)) = (&mut group.window, bucket) {
                let n = rule.condition.summand(event);
                window.add_many(at, n, rule.condition.is_failure(outcome));
            }
            if group.last_seen.is_none_or(|seen| seen < time) {
                group.last_seen = Some(time);
            }
            for field in &rule.template_fields {
                let value = field.get(event);
                match group.fields.get_mut(field.name()) {
                    Some(kept) if *kept == value => {}
                    Some(kept) => value.as_ref().clone_into(kept),
                    None => {
                        group
                            .fields
                            .insert(field.name().to_owned(), value.into_owned());
                    }
                }
            }
            group.dirty = true;
        }
    }

    /// The alerts whose condition holds at `now`: pending (held less than
    /// the rule's `for`) or firing. Groups whose condition stopped holding
    /// are absent (the caller resolves them).
    pub(crate) fn evaluate(&mut self, now: SystemTime) -> Vec<RuleAlert> {
        // The clock never goes back: windows were pruned up to it.
        if now > self.clock {
            self.clock = now;
        }
        let now = self.clock;
        let started_at = self.started_at;
        let mut alerts = Vec::new();
        for (rule, state) in self.rules.iter().zip(&mut self.states) {
            if !rule.enabled {
                continue;
            }
            if matches!(rule.condition, Condition::Absence { .. }) && rule.group_by.is_empty() {
                // Measured from the start until a first event; persisted so
                // that a restart does not restart the measure.
                state
                    .groups
                    .entry(group_key(std::iter::empty()))
                    .or_insert_with(|| Group {
                        last_seen: Some(started_at),
                        dirty: true,
                        ..Group::new(BTreeMap::new(), None)
                    });
            }
            let deleted = &mut self.deleted;
            state.groups.retain(|key, group| {
                let measure = group.measure(&rule.condition, now, started_at);
                if measure.holds {
                    let active_at = match group.active_at {
                        Some(active_at) => active_at,
                        None => {
                            group.active_at = Some(now);
                            group.dirty = true;
                            now
                        }
                    };
                    alerts.push(alert(rule, group, measure, active_at, now));
                } else if group.active_at.take().is_some() {
                    group.dirty = true;
                }
                let keep = measure.holds
                    || group
                        .window
                        .as_ref()
                        .is_none_or(|window| !window.is_empty());
                if !keep {
                    deleted.push((rule.name.clone(), key.clone()));
                }
                keep
            });
        }
        alerts
    }

    /// The group states changed since the last call, to persist: (rule,
    /// group key, `Some(json)`) to write, (rule, group key, `None`) to
    /// delete. Deletions come first: a group deleted and opened again since
    /// the last call is deleted, then written.
    pub(crate) fn take_dirty(&mut self) -> Vec<(String, String, Option<String>)> {
        let mut out: Vec<(String, String, Option<String>)> = self
            .deleted
            .drain(..)
            .map(|(rule, key)| (rule, key, None))
            .collect();
        for (rule, state) in self.rules.iter().zip(&mut self.states) {
            for (key, group) in &mut state.groups {
                if !group.dirty {
                    continue;
                }
                // Serializing these plain types cannot fail; were it to, the
                // group stays dirty and is tried again next time.
                if let Ok(json) = serde_json::to_string(&group.persisted()) {
                    group.dirty = false;
                    out.push((rule.name.clone(), key.clone(), Some(json)));
                }
            }
        }
        out
    }

    /// Restores one persisted group state (at start, before any observe).
    /// States of unknown or disabled rules, or of a rule now grouped by
    /// other fields, are ignored and reported as deletions by `take_dirty`
    /// (as are states beyond `max_groups_per_rule`, counted in
    /// [`dropped_groups`](Self::dropped_groups)); a state that cannot be read
    /// is an error (and deleted too). A changed window re-cuts the buckets.
    pub(crate) fn restore(
        &mut self,
        rule: &str,
        group_key: &str,
        json: &str,
    ) -> Result<(), String> {
        let Some(index) = self
            .rules
            .iter()
            .position(|known| known.name == rule && known.enabled)
        else {
            self.deleted.push((rule.to_owned(), group_key.to_owned()));
            return Ok(());
        };
        match self.restore_group(index, group_key, json) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.deleted.push((rule.to_owned(), group_key.to_owned()));
                Ok(())
            }
            Err(err) => {
                self.deleted.push((rule.to_owned(), group_key.to_owned()));
                Err(err)
            }
        }
    }

    /// Restores a group of rule `index`; false when the state belongs to
    /// another shape of the rule (or the rule is full).
    fn restore_group(
        &mut self,
        index: usize,
        group_key_text: &str,
        json: &str,
    ) -> Result<bool, String> {
        let (Some(rule), Some(state)) = (self.rules.get(index), self.states.get_mut(index)) else {
            return Ok(false);
        };
        let persisted: Persisted =
            serde_json::from_str(json).map_err(|err| format!("not a rule group state: {err}"))?;
        let same_labels = persisted.labels.len() == rule.group_by.len()
            && rule
                .group_by
                .iter()
                .all(|group| persisted.labels.contains_key(&group.label));
        if !same_labels {
            return Ok(false);
        }
        let expected = group_key(
            persisted
                .labels
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        if expected != group_key_text {
            return Err(format!(
                "the state's labels {expected} do not match its key {group_key_text}"
            ));
        }
        let window = match &state.shape {
            Some(_) if persisted.buckets.is_empty() => state.shape.clone(),
            Some(_) => Some(Window::restore(
                rule.condition.span(),
                persisted.resolution,
                &persisted.buckets,
            )?),
            None => None,
        };
        if !state.groups.contains_key(group_key_text) && state.groups_len_at_cap(self.max_groups) {
            self.dropped += 1;
            return Ok(false);
        }
        state.groups.insert(
            group_key_text.to_owned(),
            Group {
                labels: persisted.labels,
                window,
                active_at: persisted.active_at.map(from_nanos),
                last_seen: persisted.last_seen.map(from_nanos),
                fields: persisted.fields,
                dirty: false,
            },
        );
        Ok(true)
    }
}

impl RuleState {
    fn groups_len_at_cap(&self, max: usize) -> bool {
        self.groups.len() >= max
    }
}

impl Group {
    fn new(labels: BTreeMap<String, String>, window: Option<Window>) -> Self {
        Self {
            labels,
            window,
            active_at: None,
            last_seen: None,
            fields: BTreeMap::new(),
            dirty: true,
        }
    }

    /// Prunes the window to `now` and tests the condition.
    fn measure(
        &mut self,
        condition: &Condition,
        now: SystemTime,
        started_at: SystemTime,
    ) -> Measure {
        let (total, failed) = match &mut self.window {
            Some(window) => {
                window.prune(window.index(now));
                (window.total(), window.failed())
            }
            None => (0, 0),
        };
        let ratio = if total == 0 {
            0.0
        } else {
            failed as f64 / total as f64
        };
        match condition {
            Condition::Count { threshold, .. } => Measure {
                holds: total >= *threshold,
                count: total,
                ratio,
                value: total as f64,
            },
            Condition::FailureRatio {
                threshold,
                min_events,
                ..
            } => Measure {
                holds: total >= *min_events && ratio >= *threshold,
                count: total,
                ratio,
                value: ratio,
            },
            Condition::Absence { duration } => {
                let since = self.last_seen.unwrap_or(started_at);
                let quiet = now.duration_since(since).unwrap_or(Duration::ZERO);
                Measure {
                    holds: quiet >= *duration,
                    count: total,
                    ratio,
                    value: quiet.as_secs_f64(),
                }
            }
        }
    }

    fn persisted(&self) -> Persisted {
        Persisted {
            labels: self.labels.clone(),
            resolution: self.window.as_ref().map_or(0, Window::resolution),
            buckets: self
                .window
                .as_ref()
                .map(Window::buckets)
                .unwrap_or_default(),
            active_at: self.active_at.map(to_nanos),
            last_seen: self.last_seen.map(to_nanos),
            fields: self.fields.clone(),
        }
    }
}

/// The alert of a holding group.
fn alert(
    rule: &Rule,
    group: &Group,
    measure: Measure,
    active_at: SystemTime,
    now: SystemTime,
) -> RuleAlert {
    let mut labels = LabelSet::new();
    labels.insert(ALERTNAME.to_owned(), rule.name.clone());
    let severity = severity_label(rule.severity);
    if !severity.is_empty() {
        labels.insert(SEVERITY.to_owned(), severity.to_owned());
    }
    for (name, value) in &group.labels {
        if !value.is_empty() {
            labels.insert(name.clone(), value.clone());
        }
    }
    let render = |var: &Var, out: &mut String| render_var(rule, group, measure, var, out);
    for (name, template) in &rule.labels {
        let value = template.render(render);
        if !value.is_empty() {
            labels.insert(name.clone(), value);
        }
    }
    let annotations = rule
        .annotations
        .iter()
        .map(|(name, template)| (name.clone(), template.render(render)))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let firing = now
        .duration_since(active_at)
        .map_or(rule.for_duration.is_zero(), |held| {
            held >= rule.for_duration
        });
    RuleAlert {
        rule: rule.name.clone(),
        labels,
        annotations,
        active_at,
        firing,
        value: measure.value,
    }
}

/// Writes one template variable's text.
fn render_var(rule: &Rule, group: &Group, measure: Measure, var: &Var, out: &mut String) {
    // Writing to a String cannot fail.
    let _ = match var {
        Var::Count => write!(out, "{}", measure.count),
        Var::Ratio => write!(out, "{:.2}", measure.ratio),
        Var::Window => write!(out, "{}", humantime(rule.condition.span())),
        Var::Value => match rule.condition {
            Condition::Count { .. } => write!(out, "{}", measure.count),
            Condition::FailureRatio { .. } => write!(out, "{:.2}", measure.ratio),
            Condition::Absence { .. } => write!(out, "{:.0}", measure.value.floor()),
        },
        Var::Threshold => match &rule.condition {
            Condition::Count { threshold, .. } => write!(out, "{threshold}"),
            Condition::FailureRatio { threshold, .. } => write!(out, "{threshold}"),
            Condition::Absence { duration } => write!(out, "{}", humantime(*duration)),
        },
        Var::AlertName => write!(out, "{}", rule.name),
        Var::Severity => write!(out, "{}", severity_label(rule.severity)),
        Var::Label(name) => write!(out, "{}", group.labels.get(name).map_or("", String::as_str)),
        Var::Field(name) => write!(out, "{}", group.fields.get(name).map_or("", String::as_str)),
    };
}

fn humantime(duration: Duration) -> String {
    humantime_serde::re::humantime::format_duration(duration).to_string()
}

/// The window of a condition, empty (`None` for absence).
fn window_of(condition: &Condition) -> Option<Window> {
    match condition {
        Condition::Count { window, .. } | Condition::FailureRatio { window, .. } => {
            Some(Window::new(*window))
        }
        Condition::Absence { .. } => None,
    }
}

/// A group's key: its labels as a Prometheus label set, sorted by name,
/// e.g. `{provider="openai",tenant=""}`; `{}` without `group_by`.
fn group_key<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut key = String::from("{");
    for (i, (name, value)) in labels.enumerate() {
        if i > 0 {
            key.push(',');
        }
        let _ = write!(key, "{name}={value:?}");
    }
    key.push('}');
    key
}

/// When an event happened: `time`, else `record_time`.
fn event_time(event: &AuditEvent) -> Option<SystemTime> {
    event
        .time
        .or(event.record_time)
        .and_then(|time| SystemTime::try_from(time).ok())
}

fn to_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn from_nanos(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[cfg(test)]
#[path = "evaluator_tests.rs"]
mod tests;
