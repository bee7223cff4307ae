//! The types every part of the alerting service shares: label sets and
//! their fingerprints, the alert as the service keeps it, and what a
//! receiver is asked to deliver.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::SystemTime;

use agentmesh_proto::alerting::v1 as pb;
use futures::future::BoxFuture;

pub(crate) use pb::AlertState;

/// Identifying labels of an alert, sorted by name.
pub(crate) type LabelSet = BTreeMap<String, String>;
/// Non-identifying information of an alert ("summary", "description", …).
pub(crate) type Annotations = BTreeMap<String, String>;

/// The label naming an alert (the rule's name for rule alerts).
pub(crate) const ALERTNAME: &str = "alertname";
/// The label carrying the severity.
pub(crate) const SEVERITY: &str = "severity";

/// An alert's identity: Alertmanager's fingerprint of its label set (64-bit
/// FNV-1a over the sorted `name 0xff value 0xff` pairs), shown as 16 hex
/// digits, so the same labels give the same fingerprint here and there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Fingerprint(pub u64);

impl Fingerprint {
    /// The fingerprint of `labels`.
    pub(crate) fn of(labels: &LabelSet) -> Self {
        const OFFSET: u64 = 14_695_981_039_346_656_037;
        const PRIME: u64 = 1_099_511_628_211;
        const SEPARATOR: u8 = 0xff;
        let mut hash = OFFSET;
        let mut add = |bytes: &[u8]| {
            for byte in bytes {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(PRIME);
            }
        };
        for (name, value) in labels {
            add(name.as_bytes());
            add(&[SEPARATOR]);
            add(value.as_bytes());
            add(&[SEPARATOR]);
        }
        Self(hash)
    }

    /// Parses the 16 hex digits of [`Display`](fmt::Display).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        (text.len() == 16)
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
            .map(Self)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Reads the severity from the "severity" label.
pub(crate) fn severity_of(labels: &LabelSet) -> pb::Severity {
    match labels.get(SEVERITY).map(String::as_str) {
        Some("critical") => pb::Severity::Critical,
        Some("warning") => pb::Severity::Warning,
        Some("info") => pb::Severity::Info,
        _ => pb::Severity::Unspecified,
    }
}

/// The label value of a severity ("critical", "warning", "info"; "" when
/// unspecified).
pub(crate) fn severity_label(severity: pb::Severity) -> &'static str {
    match severity {
        pb::Severity::Critical => "critical",
        pb::Severity::Warning => "warning",
        pb::Severity::Info => "info",
        pb::Severity::Unspecified => "",
    }
}

/// An alert as the service keeps it: produced by a rule or pushed with
/// FireAlert, identified by its labels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Alert {
    /// Identity, derived from `labels`.
    pub(crate) fingerprint: Fingerprint,
    /// The identifying labels, including "alertname".
    pub(crate) labels: LabelSet,
    /// Summary, description, runbook …
    pub(crate) annotations: Annotations,
    /// Pending, firing or resolved.
    pub(crate) state: AlertState,
    /// When it started firing (pushed alerts: the given or first-seen
    /// start). `None` while pending.
    pub(crate) starts_at: Option<SystemTime>,
    /// When it resolved; for a pushed alert, the end it was given or its
    /// automatic resolve time. `None` while a rule alert fires.
    pub(crate) ends_at: Option<SystemTime>,
    /// When it last changed or was last re-sent.
    pub(crate) updated_at: SystemTime,
    /// When the rule's condition began to hold.
    pub(crate) active_at: Option<SystemTime>,
    /// The producing rule; empty for pushed alerts.
    pub(crate) rule: String,
    /// A link back to what generated it.
    pub(crate) generator_url: String,
    /// The rule condition's value at the last evaluation.
    pub(crate) value: f64,
    /// Ids of the active silences matching it.
    pub(crate) silenced_by: Vec<String>,
    /// The firing alerts inhibiting it.
    pub(crate) inhibited_by: Vec<Fingerprint>,
}

impl Alert {
    /// A new alert with `labels`, everything else empty.
    pub(crate) fn new(labels: LabelSet, state: AlertState, now: SystemTime) -> Self {
        Self {
            fingerprint: Fingerprint::of(&labels),
            labels,
            annotations: Annotations::new(),
            state,
            starts_at: None,
            ends_at: None,
            updated_at: now,
            active_at: None,
            rule: String::new(),
            generator_url: String::new(),
            value: 0.0,
            silenced_by: Vec::new(),
            inhibited_by: Vec::new(),
        }
    }

    /// Its "alertname" label ("" when it has none).
    pub(crate) fn name(&self) -> &str {
        self.labels.get(ALERTNAME).map_or("", String::as_str)
    }

    /// True when it is resolved (notified as "resolved").
    pub(crate) fn is_resolved(&self) -> bool {
        self.state == AlertState::Resolved
    }

    /// True when silenced or inhibited: listed, not notified.
    pub(crate) fn is_muted(&self) -> bool {
        !self.silenced_by.is_empty() || !self.inhibited_by.is_empty()
    }

    /// Its severity, from the "severity" label.
    pub(crate) fn severity(&self) -> pb::Severity {
        severity_of(&self.labels)
    }

    /// The API form.
    pub(crate) fn to_proto(&self) -> pb::Alert {
        let ts = |t: &Option<SystemTime>| t.map(prost_types::Timestamp::from);
        pb::Alert {
            fingerprint: self.fingerprint.to_string(),
            labels: self.labels.clone().into_iter().collect(),
            annotations: self.annotations.clone().into_iter().collect(),
            state: self.state as i32,
            severity: self.severity() as i32,
            starts_at: ts(&self.starts_at),
            ends_at: ts(&self.ends_at),
            updated_at: Some(self.updated_at.into()),
            active_at: ts(&self.active_at),
            rule: self.rule.clone(),
            generator_url: self.generator_url.clone(),
            silenced: !self.silenced_by.is_empty(),
            silenced_by: self.silenced_by.clone(),
            inhibited: !self.inhibited_by.is_empty(),
            inhibited_by: self.inhibited_by.iter().map(ToString::to_string).collect(),
            value: self.value,
        }
    }
}

/// What a receiver is asked to deliver: the alerts of one aggregation group
/// at one flush, as Alertmanager hands them to its integrations.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notification {
    /// The receiver's name.
    pub(crate) receiver: String,
    /// Identifies the group across flushes and restarts (Alertmanager's
    /// format: the route's matchers path, then the group labels, e.g.
    /// `{}/{severity="critical"}:{alertname="ToolFailing", tool="files"}`).
    pub(crate) group_key: String,
    /// The labels the group is formed by (the route's `group_by`).
    pub(crate) group_labels: LabelSet,
    /// The group's alerts to tell about: firing ones, and resolved ones when
    /// the integration wants resolved notices. Never empty.
    pub(crate) alerts: Vec<Alert>,
    /// The alerting service's external URL (for links), may be empty.
    pub(crate) external_url: String,
}

impl Notification {
    /// "firing" when any alert fires, else "resolved".
    pub(crate) fn status(&self) -> &'static str {
        if self.alerts.iter().any(|alert| !alert.is_resolved()) {
            "firing"
        } else {
            "resolved"
        }
    }

    /// The firing alerts.
    pub(crate) fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter().filter(|alert| !alert.is_resolved())
    }

    /// The resolved alerts.
    pub(crate) fn resolved(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter().filter(|alert| alert.is_resolved())
    }

    /// The labels every alert has with the same value.
    pub(crate) fn common_labels(&self) -> LabelSet {
        common(self.alerts.iter().map(|alert| &alert.labels))
    }

    /// The annotations every alert has with the same value.
    pub(crate) fn common_annotations(&self) -> Annotations {
        common(self.alerts.iter().map(|alert| &alert.annotations))
    }
}

fn common<'a>(
    mut maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let Some(first) = maps.next() else {
        return BTreeMap::new();
    };
    let mut common = first.clone();
    for map in maps {
        common.retain(|name, value| map.get(name) == Some(value));
    }
    common
}

/// The outcome of delivering one notification through one integration of a
/// receiver (after retries): the alerting service turns it into a
/// NOTIFICATION audit event, a log line and metrics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeliveryReport {
    /// The receiver's name.
    pub(crate) receiver: String,
    /// The integration's kind: "webhook", "slack", "email", "pagerduty".
    pub(crate) kind: &'static str,
    /// The integration's index within the receiver's integrations of its kind.
    pub(crate) index: usize,
    /// The group's key.
    pub(crate) group_key: String,
    /// "firing" or "resolved".
    pub(crate) status: &'static str,
    /// Alerts in the notification.
    pub(crate) alert_count: usize,
    /// Attempts made (1 = no retry).
    pub(crate) attempts: u32,
    /// The last error; `None` when delivered.
    pub(crate) error: Option<String>,
}

/// What the notification log remembers of the last successful notification
/// of one group through one integration (Alertmanager's nflog entry), so
/// that a flush after a restart does not notify again what was notified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NotifiedEntry {
    /// The alerts notified as firing.
    pub(crate) firing: BTreeSet<Fingerprint>,
    /// The alerts notified as resolved.
    pub(crate) resolved: BTreeSet<Fingerprint>,
    /// When.
    pub(crate) time: Option<SystemTime>,
}

/// The key of a [`NotifiedEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NotifiedKey {
    /// The receiver's name.
    pub(crate) receiver: String,
    /// The integration, as "<kind>[<index>]", e.g. "webhook[0]".
    pub(crate) integration: String,
    /// The group's key.
    pub(crate) group_key: String,
}

/// A failure to read or write persisted state.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct PersistError(pub String);

/// Durable storage of the notification log (the service's database
/// implements it; tests use a map).
pub(crate) trait NotificationLog: Send + Sync + 'static {
    /// The last entry for `key`, if any.
    fn get(&self, key: &NotifiedKey) -> BoxFuture<'_, Result<Option<NotifiedEntry>, PersistError>>;
    /// Replaces the entry for `key`.
    fn put(
        &self,
        key: NotifiedKey,
        entry: NotifiedEntry,
    ) -> BoxFuture<'_, Result<(), PersistError>>;
}

/// One integration of a receiver, as the dispatcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct IntegrationId {
    /// "webhook", "slack", "email" or "pagerduty".
    pub(crate) kind: &'static str,
    /// Its index among the receiver's integrations of that kind.
    pub(crate) index: usize,
    /// Whether it wants resolved notices.
    pub(crate) send_resolved: bool,
}

impl IntegrationId {
    /// "<kind>[<index>]", the integration part of a [`NotifiedKey`].
    pub(crate) fn name(&self) -> String {
        format!("{}[{}]", self.kind, self.index)
    }
}

/// The result of one delivery, after its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Attempts made (1 = no retry).
    pub(crate) attempts: u32,
    /// The last error, free of URLs and secrets; `None` when delivered.
    pub(crate) error: Option<String>,
}

/// What the dispatcher delivers through: the configured receivers (the
/// `receivers` module implements it; dispatcher tests use a recording one).
pub(crate) trait Notifier: Send + Sync + 'static {
    /// The integrations of the receiver `receiver` (empty for an unknown or
    /// empty receiver: its notifications go nowhere, as Alertmanager's
    /// receivers without configs).
    fn integrations(&self, receiver: &str) -> Vec<IntegrationId>;

    /// Delivers `notification` through one integration of `receiver`,
    /// retrying retryable failures with backoff until `deadline`.
    fn deliver(
        &self,
        receiver: &str,
        integration: IntegrationId,
        notification: Notification,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, Delivery>;
}

/// A label set from pairs, for tests.
#[cfg(test)]
pub(crate) fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_alertmanagers() {
        // Alertmanager (prometheus/common model.LabelSet.Fingerprint):
        // the empty set hashes to the FNV-1a offset basis.
        assert_eq!(
            Fingerprint::of(&LabelSet::new()).0,
            14_695_981_039_346_656_037
        );
        let a = labels(&[("alertname", "ToolFailing"), ("tool", "files")]);
        let b = labels(&[("tool", "files"), ("alertname", "ToolFailing")]);
        assert_eq!(Fingerprint::of(&a), Fingerprint::of(&b));
        assert_ne!(
            Fingerprint::of(&a),
            Fingerprint::of(&labels(&[("alertname", "ToolFailing"), ("tool", "file")]))
        );
        // Separators keep "ab"+"c" apart from "a"+"bc".
        assert_ne!(
            Fingerprint::of(&labels(&[("ab", "c")])),
            Fingerprint::of(&labels(&[("a", "bc")]))
        );
        let fp = Fingerprint::of(&a);
        assert_eq!(fp.to_string().len(), 16);
        assert_eq!(Fingerprint::parse(&fp.to_string()), Some(fp));
        assert_eq!(Fingerprint::parse("xyz"), None);
    }

    #[test]
    fn common_labels_are_shared_with_equal_values() {
        let now = SystemTime::now();
        let one = Alert::new(labels(&[("a", "1"), ("b", "2")]), AlertState::Firing, now);
        let two = Alert::new(labels(&[("a", "1"), ("b", "3")]), AlertState::Resolved, now);
        let n = Notification {
            receiver: "r".into(),
            group_key: "{}:{}".into(),
            group_labels: LabelSet::new(),
            alerts: vec![one, two.clone()],
            external_url: String::new(),
        };
        assert_eq!(n.common_labels(), labels(&[("a", "1")]));
        assert_eq!(n.status(), "firing");
        let resolved = Notification {
            alerts: vec![two],
            ..n
        };
        assert_eq!(resolved.status(), "resolved");
    }
}
