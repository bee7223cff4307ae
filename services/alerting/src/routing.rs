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
//! alerts mute an alert ([`Inhibitor::index`], then
//! [`Inhibitions::inhibited_by`](inhibit::Inhibitions::inhibited_by) per
//! alert).
//!
//! Layout: this module holds the tree and its settings; `inhibit` the
//! inhibition rules; `text` the label-set and matcher text forms that keys
//! are made of (kept byte-for-byte as Alertmanager writes them).

mod inhibit;
mod text;

use std::collections::BTreeSet;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

pub(crate) use self::inhibit::{InhibitRuleConfig, Inhibitor};
pub(crate) use self::text::label_set_string;
use self::text::{matchers_string, op_rank};
use crate::matcher::{Matcher, all_match, is_prometheus_label_name};
use crate::model::LabelSet;

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
        apply_timings(config, setting, &mut opts)?;
        let mut matchers = compile_matchers(&config.matchers, setting, "matchers")?;
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

/// Sets the timings `config` sets on `opts`, checking each is positive
/// (`group_wait` may be 0) and at most [`MAX_DURATION`].
fn apply_timings(
    config: &RouteConfig,
    setting: &str,
    opts: &mut RouteOpts,
) -> Result<(), ConfigError> {
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
    Ok(())
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

/// Parses the matchers of `setting.field`, naming the one that does not
/// parse.
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

#[cfg(test)]
mod tests;
