//! The routing tree and the inhibition rules, as in Alertmanager.
//!
//! Configuration comes in as [`RouteConfig`] (`[alerting.route]`, nested
//! `[[…routes]]`) and [`InhibitRuleConfig`] (`[[alerting.inhibit_rules]]`);
//! both keep their matchers as text so that [`Route::compile`] and
//! [`Inhibitor::compile`] can name the exact setting of a bad one
//! (`route.routes[1].matchers[0]`).
//!
//! Data flow: the dispatcher asks the compiled [`Route`] tree which routes an
//! alert belongs to ([`Route::match_alert`]), then forms the aggregation group
//! from the route's `group_by` labels ([`Route::group_labels`]) and names it
//! with [`Route::group_key`] — Alertmanager's `"<route key>:<group labels>"`,
//! which keys the notification log and so must stay the same across
//! restarts. The alert state keeper asks the [`Inhibitor`] which firing
//! alerts mute an alert ([`Inhibitor::inhibited_by`], or [`Inhibitor::index`]
//! when it checks many alerts against the same set).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

use crate::matcher::{MatchOp, Matcher, all_match, is_prometheus_label_name};
use crate::model::{Alert, AlertState, Fingerprint, LabelSet};

/// `group_wait` of the root route when not set (Alertmanager's default).
pub(crate) const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
/// `group_interval` of the root route when not set (Alertmanager's default).
pub(crate) const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// `repeat_interval` of the root route when not set (Alertmanager's default).
pub(crate) const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 60 * 60);
/// The `group_by` entry meaning "every label" (as in Alertmanager).
pub(crate) const GROUP_BY_ALL: &str = "...";

/// The longest accepted timing: ten years. Alertmanager users set
/// `repeat_interval` to a year to mean "never repeat", so that must work;
/// beyond this, adding the duration to a clock reading could overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Deeper trees are surely a mistake, and the recursive walks stay shallow.
const MAX_DEPTH: usize = 32;

/// One node of the routing tree as configured (`[alerting.route]` and its
/// `[[…routes]]`). Unset settings of a child are inherited from its parent;
/// the root's fall back to Alertmanager's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RouteConfig {
    /// The receiver notified of the route's groups; required at the root,
    /// inherited when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) receiver: Option<String>,
    /// Conditions an alert must meet to take this route, in matcher syntax
    /// (`severity="critical"`, `tool=~"files|shell"`); none at the root.
    pub(crate) matchers: Vec<String>,
    /// Whether an alert matching this route also tries the next siblings.
    #[serde(rename = "continue")]
    pub(crate) continue_matching: bool,
    /// The labels alerts are grouped by; `["..."]` groups by every label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) group_by: Option<Vec<String>>,
    /// How long a new group waits for more alerts before its first
    /// notification.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub(crate) group_wait: Option<Duration>,
    /// How long a group waits between notifications about changes.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub(crate) group_interval: Option<Duration>,
    /// How long before an unchanged group is notified again.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub(crate) repeat_interval: Option<Duration>,
    /// Child routes, tried in order.
    pub(crate) routes: Vec<RouteConfig>,
}

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

/// How a route forms its aggregation groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupBy {
    /// By the values of these labels (sorted; may be empty: one group).
    Labels(BTreeSet<String>),
    /// By every label (`group_by = ["..."]`): one group per alert.
    All,
}

/// The settings of a route after inheritance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteOpts {
    /// The receiver notified of the route's groups.
    pub(crate) receiver: String,
    /// How alerts are grouped.
    pub(crate) group_by: GroupBy,
    /// Wait before the first notification of a new group.
    pub(crate) group_wait: Duration,
    /// Wait between notifications of a group.
    pub(crate) group_interval: Duration,
    /// Wait before notifying an unchanged group again.
    pub(crate) repeat_interval: Duration,
}

/// A node of the compiled routing tree.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// Alertmanager's `Key()`.
    key: String,
    /// Unique among the tree's routes.
    id: String,
    /// Sorted as Alertmanager sorts them, so the key does not depend on the
    /// order they were written in.
    matchers: Vec<Matcher>,
    continue_matching: bool,
    opts: RouteOpts,
    routes: Vec<Route>,
}

impl Route {
    /// Builds the tree from `config` (the `route` setting), checking it:
    /// the root has a receiver and no matchers, every receiver named is one
    /// of `receivers`, matchers parse, timings are positive, `group_by`
    /// names labels. Children inherit what they leave unset.
    pub(crate) fn compile(
        config: &RouteConfig,
        receivers: &[String],
    ) -> Result<Route, ConfigError> {
        if non_empty(config.receiver.as_deref()).is_none() {
            return Err(ConfigError::new(
                "route.receiver",
                format!(
                    "the root route needs a receiver: the one notified of alerts no child route takes \
                     ({})",
                    known_receivers(receivers)
                ),
            ));
        }
        if !config.matchers.is_empty() {
            return Err(ConfigError::new(
                "route.matchers",
                "the root route receives every alert and cannot have matchers; put them on a child \
                 route under route.routes",
            ));
        }
        if config.continue_matching {
            return Err(ConfigError::new(
                "route.continue",
                "the root route has no siblings to continue to; remove `continue` from it",
            ));
        }
        let defaults = RouteOpts {
            receiver: String::new(),
            group_by: GroupBy::Labels(BTreeSet::new()),
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
        };
        let route = Self::build(config, &defaults, None, "route", receivers, 0)?;
        if route.opts.repeat_interval < route.opts.group_interval {
            // As Alertmanager: allowed, but notifications only repeat at
            // the next flush, so say so once.
            tracing::warn!(
                "alerting.route.repeat_interval is shorter than group_interval: notifications repeat \
                 at most every group_interval"
            );
        }
        Ok(route)
    }

    /// Builds one node; `parent` is the parent's (key, id) and this node's
    /// index among its siblings.
    fn build(
        config: &RouteConfig,
        inherited: &RouteOpts,
        parent: Option<(&str, &str, usize)>,
        setting: &str,
        receivers: &[String],
        depth: usize,
    ) -> Result<Route, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::new(
                format!("{setting}.routes"),
                format!("routes are nested more than {MAX_DEPTH} levels deep; flatten the tree"),
            ));
        }
        let mut opts = inherited.clone();
        if let Some(receiver) = non_empty(config.receiver.as_deref()) {
            if !receivers.iter().any(|known| known == receiver) {
                return Err(ConfigError::new(
                    format!("{setting}.receiver"),
                    format!(
                        "receiver {receiver:?} is not defined ({}); define it or name another",
                        known_receivers(receivers)
                    ),
                ));
            }
            receiver.clone_into(&mut opts.receiver);
        }
        if let Some(group_by) = &config.group_by {
            opts.group_by = compile_group_by(group_by, setting)?;
        }
        for (name, value, target) in [
            ("group_wait", config.group_wait, &mut opts.group_wait),
            (
                "group_interval",
                config.group_interval,
                &mut opts.group_interval,
            ),
            (
                "repeat_interval",
                config.repeat_interval,
                &mut opts.repeat_interval,
            ),
        ] {
            let Some(value) = value else { continue };
            // Alertmanager accepts a zero group_wait (notify at once); a zero
            // interval would make the group flush in a busy loop.
            if value.is_zero() && name != "group_wait" {
                return Err(ConfigError::new(
                    format!("{setting}.{name}"),
                    format!("{name} must be greater than 0, e.g. \"5m\""),
                ));
            }
            if value > MAX_DURATION {
                return Err(ConfigError::new(
                    format!("{setting}.{name}"),
                    format!(
                        "{name} is {}, longer than the longest accepted ({})",
                        humantime_serde::re::humantime::format_duration(value),
                        humantime_serde::re::humantime::format_duration(MAX_DURATION)
                    ),
                ));
            }
            *target = value;
        }
        let mut matchers = Vec::with_capacity(config.matchers.len());
        for (index, text) in config.matchers.iter().enumerate() {
            let matcher = Matcher::parse(text).map_err(|err| {
                ConfigError::new(
                    format!("{setting}.matchers[{index}]"),
                    format!("{err}; write matchers as name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\""),
                )
            })?;
            matchers.push(matcher);
        }
        matchers.sort_by(|a, b| {
            (a.name.as_str(), a.value.as_str(), op_rank(a.op)).cmp(&(
                b.name.as_str(),
                b.value.as_str(),
                op_rank(b.op),
            ))
        });
        let own = matchers_string(&matchers);
        let (key, id) = match parent {
            None => (own.clone(), own),
            Some((parent_key, parent_id, index)) => (
                format!("{parent_key}/{own}"),
                format!("{parent_id}/{own}/{index}"),
            ),
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        for (index, child) in config.routes.iter().enumerate() {
            routes.push(Self::build(
                child,
                &opts,
                Some((&key, &id, index)),
                &format!("{setting}.routes[{index}]"),
                receivers,
                depth + 1,
            )?);
        }
        Ok(Route {
            key,
            id,
            matchers,
            continue_matching: config.continue_matching,
            opts,
            routes,
        })
    }

    /// The routes `labels` goes to, as Alertmanager's `Route.Match`: a
    /// depth-first, left-to-right search in which the first matching child
    /// ends the search among its siblings unless it has `continue`; a
    /// matching node none of whose children match is itself the match.
    /// Empty when this node's own matchers do not match (never for the
    /// root).
    pub(crate) fn match_alert(&self, labels: &LabelSet) -> Vec<&Route> {
        if !all_match(&self.matchers, labels) {
            return Vec::new();
        }
        let mut all = Vec::new();
        for child in &self.routes {
            let matches = child.match_alert(labels);
            let matched = !matches.is_empty();
            all.extend(matches);
            if matched && !child.continue_matching {
                break;
            }
        }
        if all.is_empty() {
            all.push(self);
        }
        all
    }

    /// Alertmanager's route key: the parent's key, "/", then this route's
    /// matchers, e.g. `{}/{severity="critical",tool=~"files|shell"}`; `{}`
    /// for the root. Siblings with the same matchers share it.
    #[cfg(test)]
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// A key unique within the tree: each level's matchers followed by the
    /// route's index among its siblings. For the root's children it is
    /// Alertmanager's `ID()` (`{}/{severity="critical"}/0`); deeper down it
    /// carries every ancestor's index, so it stays unique when siblings
    /// anywhere above share their matchers.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The settings after inheritance.
    pub(crate) fn opts(&self) -> &RouteOpts {
        &self.opts
    }

    /// The receiver notified of this route's groups.
    #[cfg(test)]
    pub(crate) fn receiver(&self) -> &str {
        &self.opts.receiver
    }

    /// The child routes, in order.
    #[cfg(test)]
    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Calls `visit` on this route and every descendant, depth first.
    #[cfg(test)]
    pub(crate) fn walk<'a>(&'a self, visit: &mut dyn FnMut(&'a Route)) {
        visit(self);
        for child in &self.routes {
            child.walk(visit);
        }
    }

    /// The labels of `labels` this route groups by (Alertmanager's
    /// `getGroupLabels`): the `group_by` labels the alert has — a missing
    /// one is left out — or all of them for `["..."]`.
    pub(crate) fn group_labels(&self, labels: &LabelSet) -> LabelSet {
        match &self.opts.group_by {
            GroupBy::All => labels.clone(),
            GroupBy::Labels(names) => labels
                .iter()
                .filter(|(name, _)| names.contains(*name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        }
    }

    /// The key of this route's aggregation group with `group_labels`, as
    /// Alertmanager forms it: `{}/{severity="critical"}:{alertname="ToolFailing", tool="files"}`.
    pub(crate) fn group_key(&self, group_labels: &LabelSet) -> String {
        format!("{}:{}", self.key, label_set_string(group_labels))
    }
}

/// A label set in Alertmanager's text form (Prometheus `LabelSet.String`):
/// `{alertname="ToolFailing", tool="files"}`, sorted by name, values quoted
/// as Go's `%q` does. The output depends only on the labels, so group keys
/// stay the same across restarts and versions.
pub(crate) fn label_set_string(labels: &LabelSet) -> String {
    let mut out = String::from("{");
    for (index, (name, value)) in labels.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push('=');
        go_quote(value, &mut out);
    }
    out.push('}');
    out
}

/// Go's `strconv.Quote` for what label values hold: the usual backslash
/// escapes, `\xHH` for other ASCII controls, `\uHHHH`/`\UHHHHHHHH` for other
/// control and non-space whitespace characters; everything else as is.
/// Written out rather than using Rust's `{:?}`, whose escaping is not
/// promised to stay the same between Rust versions.
fn go_quote(value: &str, out: &mut String) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                let code = u32::from(c);
                if code < 0x10000 {
                    let _ = write!(out, "\\u{code:04x}");
                } else {
                    let _ = write!(out, "\\U{code:08x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Alertmanager's `Matchers.String`: `{a="b",c=~"d"}`, values escaped as
/// OpenMetrics does (backslash, newline, double quote).
fn matchers_string(matchers: &[Matcher]) -> String {
    let mut out = String::from("{");
    for (index, matcher) in matchers.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&matcher.name);
        out.push_str(match matcher.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        });
        out.push('"');
        for c in matcher.value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '"' => out.push_str("\\\""),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// The order of Alertmanager's match types, used to sort matchers.
fn op_rank(op: MatchOp) -> u8 {
    match op {
        MatchOp::Equal => 0,
        MatchOp::NotEqual => 1,
        MatchOp::Regex => 2,
        MatchOp::NotRegex => 3,
    }
}

fn compile_group_by(group_by: &[String], setting: &str) -> Result<GroupBy, ConfigError> {
    if group_by.iter().any(|name| name == GROUP_BY_ALL) {
        if group_by.len() > 1 {
            return Err(ConfigError::new(
                format!("{setting}.group_by"),
                "\"...\" groups by every label and must be the only entry; remove the other labels or \
                 the \"...\"",
            ));
        }
        return Ok(GroupBy::All);
    }
    let mut names = BTreeSet::new();
    for (index, name) in group_by.iter().enumerate() {
        if !is_prometheus_label_name(name) {
            return Err(ConfigError::new(
                format!("{setting}.group_by[{index}]"),
                format!(
                    "{name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*), nor \"...\" for every label"
                ),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(ConfigError::new(
                format!("{setting}.group_by[{index}]"),
                format!("label {name:?} is listed twice; list it once"),
            ));
        }
    }
    Ok(GroupBy::Labels(names))
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|value| !value.is_empty())
}

fn known_receivers(receivers: &[String]) -> String {
    if receivers.is_empty() {
        "no receivers are configured: add one under [[alerting.receivers]]".to_owned()
    } else {
        format!("the receivers are: {}", receivers.join(", "))
    }
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

fn compile_matchers(
    texts: &[String],
    setting: &str,
    field: &str,
) -> Result<Vec<Matcher>, ConfigError> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            Matcher::parse(text).map_err(|err| {
                ConfigError::new(
                    format!("{setting}.{field}[{index}]"),
                    format!("{err}; write matchers as name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\""),
                )
            })
        })
        .collect()
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

#[cfg(test)]
mod tests;
