//! The texts the integrations share, written as Alertmanager's default
//! templates (`default.tmpl`) write them, so messages look the same:
//! the subject `[FIRING:2] ToolFailing (files)`, the plain alert list
//! ("Labels: / - name = value / Annotations: … / Source: …"), the link to
//! the alerts of a receiver, and times in RFC 3339 as Go prints them.

use std::time::SystemTime;

use crate::model::{Alert, LabelSet, Notification};

/// Go's zero `time.Time` in JSON: what Alertmanager sends as `endsAt` of a
/// firing alert.
pub(crate) const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `time` in RFC 3339, UTC, with as many fractional digits as needed (Go's
/// RFC3339Nano, which `time.Time` uses in JSON).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time).map_or_else(|_| ZERO_TIME.to_owned(), |ts| ts.to_string())
}

/// When the alert started (its first-seen time when no start was recorded).
pub(crate) fn starts_at(alert: &Alert) -> SystemTime {
    alert
        .starts_at
        .or(alert.active_at)
        .unwrap_or(alert.updated_at)
}

/// When a resolved alert ended (its last update when no end was recorded).
pub(crate) fn resolved_at(alert: &Alert) -> SystemTime {
    alert.ends_at.unwrap_or(alert.updated_at)
}

/// "firing" or "resolved", for one alert.
pub(crate) fn alert_status(alert: &Alert) -> &'static str {
    if alert.is_resolved() {
        "resolved"
    } else {
        "firing"
    }
}

/// Alertmanager's `__subject`: `[FIRING:2] <group label values> (<values of
/// the common labels that are not group labels>)`, or `[RESOLVED] …`. Values
/// are in label-name order; Alertmanager's trailing space is left out.
pub(crate) fn subject(notification: &Notification) -> String {
    let status = notification.status();
    let mut subject = if status == "firing" {
        format!("[FIRING:{}]", notification.firing().count())
    } else {
        "[RESOLVED]".to_owned()
    };
    for value in notification.group_labels.values() {
        subject.push(' ');
        subject.push_str(value);
    }
    let common = notification.common_labels();
    let extra: Vec<&str> = common
        .iter()
        .filter(|(name, _)| !notification.group_labels.contains_key(*name))
        .map(|(_, value)| value.as_str())
        .collect();
    // Alertmanager compares the counts: common labels include the group
    // labels, so more of them means some are not group labels.
    if common.len() > notification.group_labels.len() && !extra.is_empty() {
        subject.push_str(" (");
        subject.push_str(&extra.join(" "));
        subject.push(')');
    }
    subject
}

/// Alertmanager's `__text_alert_list` of `alerts`: for each, its labels,
/// annotations and source.
pub(crate) fn alert_list<'a>(alerts: impl IntoIterator<Item = &'a Alert>) -> String {
    let mut text = String::new();
    for alert in alerts {
        text.push_str("Labels:\n");
        push_pairs(&mut text, &alert.labels);
        text.push_str("Annotations:\n");
        push_pairs(&mut text, &alert.annotations);
        text.push_str("Source: ");
        text.push_str(&alert.generator_url);
        text.push('\n');
    }
    text
}

fn push_pairs(text: &mut String, pairs: &LabelSet) {
    for (name, value) in pairs {
        text.push_str(" - ");
        text.push_str(name);
        text.push_str(" = ");
        text.push_str(value);
        text.push('\n');
    }
}

/// Alertmanager's `__alertmanagerURL`: `<external URL>/#/alerts?receiver=<name>`;
/// `None` without an external URL (a relative link would be broken).
pub(crate) fn alerts_link(external_url: &str, receiver: &str) -> Option<String> {
    let base = external_url.trim_end_matches('/');
    (!base.is_empty()).then(|| format!("{base}/#/alerts?receiver={}", query_escape(receiver)))
}

/// Go's `url.QueryEscape`: unreserved characters kept, space as "+",
/// everything else percent-encoded.
pub(crate) fn query_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                escaped.push(char::from(byte))
            }
            b' ' => escaped.push('+'),
            _ => escaped.push_str(&format!("%{byte:02X}")),
        }
    }
    escaped
}

/// The name common to the notification's alerts: the "alertname" group or
/// common label ("" when they differ).
pub(crate) fn common_alertname(notification: &Notification) -> String {
    notification
        .group_labels
        .get(crate::model::ALERTNAME)
        .cloned()
        .or_else(|| {
            notification
                .common_labels()
                .get(crate::model::ALERTNAME)
                .cloned()
        })
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::labels;
    use crate::model::{AlertState, Annotations};

    /// 2024-05-01T12:00:00Z.
    pub(crate) fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800)
    }

    /// A firing alert with `pairs` as labels, started at t0.
    pub(crate) fn firing(pairs: &[(&str, &str)]) -> Alert {
        let mut alert = Alert::new(labels(pairs), AlertState::Firing, t0());
        alert.starts_at = Some(t0());
        alert.generator_url = "http://agentmesh:50055/rules/ToolFailing".into();
        alert.annotations = Annotations::from([
            ("summary".to_owned(), "Tool calls are failing".to_owned()),
            (
                "description".to_owned(),
                "More than 5% of calls failed".to_owned(),
            ),
        ]);
        alert
    }

    /// `alert`, resolved 5 minutes after t0.
    pub(crate) fn resolved(mut alert: Alert) -> Alert {
        alert.state = AlertState::Resolved;
        alert.ends_at = Some(t0() + Duration::from_secs(300));
        alert
    }

    /// A notification of `alerts` grouped by alertname.
    pub(crate) fn notification(alerts: Vec<Alert>) -> Notification {
        Notification {
            receiver: "team".into(),
            group_key: "{}:{alertname=\"ToolFailing\"}".into(),
            group_labels: labels(&[("alertname", "ToolFailing")]),
            alerts,
            external_url: "http://alerting.example.com:50055".into(),
        }
    }

    #[test]
    fn times_are_go_rfc3339() {
        assert_eq!(rfc3339(t0()), "2024-05-01T12:00:00Z");
        assert_eq!(
            rfc3339(t0() + Duration::from_millis(1500)),
            "2024-05-01T12:00:01.5Z"
        );
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn subjects_are_alertmanagers() {
        let one = firing(&[("alertname", "ToolFailing"), ("tool", "files")]);
        let two = firing(&[("alertname", "ToolFailing"), ("tool", "shell")]);
        assert_eq!(
            subject(&notification(vec![one.clone()])),
            "[FIRING:1] ToolFailing (files)"
        );
        assert_eq!(
            subject(&notification(vec![one.clone(), two.clone()])),
            "[FIRING:2] ToolFailing"
        );
        assert_eq!(
            subject(&notification(vec![one.clone(), resolved(two.clone())])),
            "[FIRING:1] ToolFailing"
        );
        assert_eq!(
            subject(&notification(vec![resolved(one.clone())])),
            "[RESOLVED] ToolFailing (files)"
        );
        let mut ungrouped = notification(vec![one]);
        ungrouped.group_labels = LabelSet::new();
        assert_eq!(subject(&ungrouped), "[FIRING:1] (ToolFailing files)");
    }

    #[test]
    fn alert_lists_are_alertmanagers() {
        let alert = firing(&[("alertname", "ToolFailing"), ("tool", "files")]);
        assert_eq!(
            alert_list([&alert]),
            "Labels:\n - alertname = ToolFailing\n - tool = files\n\
             Annotations:\n - description = More than 5% of calls failed\n - summary = Tool calls are failing\n\
             Source: http://agentmesh:50055/rules/ToolFailing\n"
        );
    }

    #[test]
    fn links_escape_the_receiver() {
        assert_eq!(
            alerts_link("http://am.example.com/", "team a/b"),
            Some("http://am.example.com/#/alerts?receiver=team+a%2Fb".to_owned())
        );
        assert_eq!(alerts_link("", "team"), None);
    }
}
