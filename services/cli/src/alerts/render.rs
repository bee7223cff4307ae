//! How alerts are shown: the table of `alerts list` (state with its marks,
//! severity, name, start relative to now, the other labels, the summary)
//! and the one-line changes of `alerts watch`.

use std::collections::HashMap;

use agentmesh_proto::alerting::v1 as pb;
use jiff::Timestamp;

use crate::alerting::matchers::escape;
use crate::output::{one_line, table};
use crate::time::{from_proto, proto_utc_text};

/// A length of time in at most two units: `45s`, `3m`, `2h5m`, `3d4h`.
fn short_duration(seconds: i64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// `time` relative to `now`: `3m ago`, `in 2h`, `now`; `-` when unset.
pub(super) fn relative_text(time: Option<&prost_types::Timestamp>, now: Timestamp) -> String {
    let Some(time) = from_proto(time) else {
        return "-".to_owned();
    };
    let seconds = now.duration_since(time).as_secs();
    if seconds == 0 {
        "now".to_owned()
    } else if seconds > 0 {
        format!("{} ago", short_duration(seconds))
    } else {
        format!("in {}", short_duration(seconds.saturating_neg()))
    }
}

/// The lowercase name of an enum value after `prefix`, or the number.
fn enum_name(name: Option<&'static str>, prefix: &str, value: i32) -> String {
    name.map_or_else(
        || value.to_string(),
        |n| n.trim_start_matches(prefix).to_lowercase(),
    )
}

/// An alert state as shown: `FIRING`.
fn state_name(state: i32) -> String {
    enum_name(
        pb::AlertState::try_from(state)
            .ok()
            .map(|s| s.as_str_name()),
        "ALERT_STATE_",
        state,
    )
    .to_uppercase()
}

/// The state with the alert's marks: `FIRING (silenced, inhibited)`.
fn marked_state(alert: &pb::Alert) -> String {
    let marks: Vec<&str> = [(alert.silenced, "silenced"), (alert.inhibited, "inhibited")]
        .into_iter()
        .filter_map(|(on, mark)| on.then_some(mark))
        .collect();
    let state = state_name(alert.state);
    if marks.is_empty() {
        state
    } else {
        format!("{state} ({})", marks.join(", "))
    }
}

/// The severity as shown: its name, else the raw label, else `-`.
fn severity_text(alert: &pb::Alert) -> String {
    match pb::Severity::try_from(alert.severity) {
        Ok(pb::Severity::Unspecified) | Err(_) => alert
            .labels
            .get("severity")
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "-".to_owned()),
        Ok(severity) => enum_name(Some(severity.as_str_name()), "SEVERITY_", alert.severity),
    }
}

fn alertname(alert: &pb::Alert) -> &str {
    alert
        .labels
        .get("alertname")
        .filter(|name| !name.is_empty())
        .map_or("-", String::as_str)
}

/// The labels but `skip`, sorted, as `k=v` separated by spaces; a value that
/// is empty or holds spaces, quotes, backslashes or commas is quoted.
fn labels_text(labels: &HashMap<String, String>, skip: &[&str]) -> String {
    let mut pairs: Vec<(&String, &String)> = labels
        .iter()
        .filter(|(name, _)| !skip.contains(&name.as_str()))
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(name, value)| {
            let plain = !value.is_empty()
                && !value.contains(|c: char| {
                    c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | ',')
                });
            if plain {
                format!("{name}={value}")
            } else {
                format!("{name}=\"{}\"", escape(value))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// When the alert started: `starts_at`, or, while pending (it has no start
/// yet), when its condition began to hold.
fn start_of(alert: &pb::Alert) -> Option<&prost_types::Timestamp> {
    alert.starts_at.as_ref().or(alert.active_at.as_ref())
}

fn alert_row(alert: &pb::Alert, now: Timestamp) -> Vec<String> {
    let summary = ["summary", "description"]
        .iter()
        .find_map(|key| alert.annotations.get(*key).filter(|text| !text.is_empty()))
        .map_or_else(String::new, |text| one_line(text));
    vec![
        marked_state(alert),
        severity_text(alert),
        alertname(alert).to_owned(),
        relative_text(start_of(alert), now),
        labels_text(&alert.labels, &["alertname", "severity"]),
        summary,
    ]
}

/// The alerts as a table: STATE, SEVERITY, ALERTNAME, STARTS (relative to
/// `now`), LABELS (the others), SUMMARY.
pub(super) fn alert_table(alerts: &[pb::Alert], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = alerts.iter().map(|alert| alert_row(alert, now)).collect();
    table(
        &[
            "STATE",
            "SEVERITY",
            "ALERTNAME",
            "STARTS",
            "LABELS",
            "SUMMARY",
        ],
        &rows,
    )
}

/// One watch message as a line: time, change, state (a transition for a
/// state change), alert name and the other labels. `None` for the messages
/// that carry no alert (end of snapshot, heartbeat).
pub(super) fn change_line(change: &pb::WatchAlertsResponse) -> Option<String> {
    let kind = pb::AlertChangeType::try_from(change.r#type).ok()?;
    let alert = change.alert.as_ref()?;
    let new = kind == pb::AlertChangeType::StateChanged
        && change.previous_state == i32::from(pb::AlertState::Unspecified);
    let (what, state) = match kind {
        pb::AlertChangeType::Snapshot => ("snapshot", marked_state(alert)),
        pb::AlertChangeType::StateChanged if new => ("new", marked_state(alert)),
        pb::AlertChangeType::StateChanged => (
            "changed",
            format!(
                "{}→{}",
                state_name(change.previous_state),
                marked_state(alert)
            ),
        ),
        pb::AlertChangeType::Updated => ("updated", marked_state(alert)),
        pb::AlertChangeType::Removed => ("removed", marked_state(alert)),
        pb::AlertChangeType::SnapshotEnd
        | pb::AlertChangeType::Heartbeat
        | pb::AlertChangeType::Unspecified => return None,
    };
    let line = format!(
        "{:<20}  {:<8}  {:<18}  {:<20}  {}",
        proto_utc_text(change.time.as_ref()),
        what,
        state,
        alertname(alert),
        labels_text(&alert.labels, &["alertname"])
    );
    Some(line.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::fake::labels;
    use crate::output::ProtoJson;
    use crate::time::testing::{at, time};

    #[test]
    fn relative_times() {
        let now = at("2026-11-21T12:00:00Z");
        for (then, expected) in [
            ("2026-11-21T12:00:00Z", "now"),
            ("2026-11-21T11:59:59.5Z", "now"),
            ("2026-11-21T11:59:15Z", "45s ago"),
            ("2026-11-21T11:57:00Z", "3m ago"),
            ("2026-11-21T11:56:30Z", "3m ago"),
            ("2026-11-21T10:00:00Z", "2h ago"),
            ("2026-11-21T09:55:00Z", "2h5m ago"),
            ("2026-11-18T12:00:00Z", "3d ago"),
            ("2026-11-18T08:00:00Z", "3d4h ago"),
            ("2026-11-21T14:00:00Z", "in 2h"),
        ] {
            assert_eq!(relative_text(time(then).as_ref(), now), expected, "{then}");
        }
        assert_eq!(relative_text(None, now), "-");
    }

    fn firing_alert() -> pb::Alert {
        pb::Alert {
            fingerprint: "a1b2c3".to_owned(),
            labels: labels(&[
                ("alertname", "ToolFailing"),
                ("severity", "critical"),
                ("tool", "web_fetch"),
                ("tenant", "acme corp"),
            ]),
            annotations: labels(&[
                ("summary", "tool web_fetch failed 7 times\nin 5m"),
                ("description", "ignored: the summary wins"),
            ]),
            state: pb::AlertState::Firing.into(),
            severity: pb::Severity::Critical.into(),
            starts_at: time("2026-11-21T11:57:00Z"),
            active_at: time("2026-11-21T11:55:00Z"),
            silenced: true,
            silenced_by: vec!["s-1".to_owned()],
            inhibited: true,
            ..pb::Alert::default()
        }
    }

    #[test]
    fn an_alert_table() {
        let now = at("2026-11-21T12:00:00Z");
        let pending = pb::Alert {
            labels: labels(&[("alertname", "NoRuns"), ("severity", "page")]),
            annotations: labels(&[("description", "no run in 30m")]),
            state: pb::AlertState::Pending.into(),
            // Pending: no start yet; the table shows when it became active.
            active_at: time("2026-11-21T11:59:30Z"),
            ..pb::Alert::default()
        };
        let bare = pb::Alert {
            state: pb::AlertState::Resolved.into(),
            ..pb::Alert::default()
        };
        let expected = "\
STATE                         SEVERITY  ALERTNAME    STARTS   LABELS                             SUMMARY
FIRING (silenced, inhibited)  critical  ToolFailing  3m ago   tenant=\"acme corp\" tool=web_fetch  tool web_fetch failed 7 times in 5m
PENDING                       page      NoRuns       30s ago                                     no run in 30m
RESOLVED                      -         -            -
";
        assert_eq!(alert_table(&[firing_alert(), pending, bare], now), expected);
        assert_eq!(
            alert_table(&[], now),
            "STATE  SEVERITY  ALERTNAME  STARTS  LABELS  SUMMARY\n"
        );
    }

    #[test]
    fn marks_and_labels() {
        let mut alert = firing_alert();
        alert.inhibited = false;
        assert_eq!(marked_state(&alert), "FIRING (silenced)");
        alert.silenced = false;
        assert_eq!(marked_state(&alert), "FIRING");
        assert_eq!(state_name(42), "42");
        assert_eq!(
            labels_text(
                &labels(&[("b", ""), ("a", "x\"y"), ("c", "1,2"), ("d", "ok")]),
                &[]
            ),
            r#"a="x\"y" b="" c="1,2" d=ok"#
        );
    }

    #[test]
    fn watch_lines() {
        let change =
            |kind: pb::AlertChangeType, previous: pb::AlertState| pb::WatchAlertsResponse {
                r#type: kind.into(),
                alert: Some(pb::Alert {
                    silenced: false,
                    inhibited: false,
                    ..firing_alert()
                }),
                previous_state: previous.into(),
                time: time("2026-11-21T12:00:00Z"),
            };
        assert_eq!(
            change_line(&change(
                pb::AlertChangeType::StateChanged,
                pb::AlertState::Pending
            )),
            Some(
                "2026-11-21T12:00:00Z  changed   PENDING→FIRING      ToolFailing           \
                 severity=critical tenant=\"acme corp\" tool=web_fetch"
                    .to_owned()
            )
        );
        let new = change_line(&change(
            pb::AlertChangeType::StateChanged,
            pb::AlertState::Unspecified,
        ))
        .unwrap();
        assert!(
            new.starts_with("2026-11-21T12:00:00Z  new       FIRING    "),
            "{new}"
        );
        let mut silenced = change(pb::AlertChangeType::Updated, pb::AlertState::Unspecified);
        if let Some(alert) = silenced.alert.as_mut() {
            alert.silenced = true;
        }
        let updated = change_line(&silenced).unwrap();
        assert!(
            updated.starts_with("2026-11-21T12:00:00Z  updated   FIRING (silenced)   ToolFailing"),
            "{updated}"
        );
        let snapshot = change_line(&change(
            pb::AlertChangeType::Snapshot,
            pb::AlertState::Unspecified,
        ))
        .unwrap();
        assert!(snapshot.contains("  snapshot  FIRING  "), "{snapshot}");
        let removed = change_line(&change(
            pb::AlertChangeType::Removed,
            pb::AlertState::Unspecified,
        ))
        .unwrap();
        assert!(removed.contains("  removed   FIRING  "), "{removed}");
        // Nothing to show for messages without an alert.
        for kind in [
            pb::AlertChangeType::SnapshotEnd,
            pb::AlertChangeType::Heartbeat,
        ] {
            let message = pb::WatchAlertsResponse {
                r#type: kind.into(),
                ..pb::WatchAlertsResponse::default()
            };
            assert_eq!(change_line(&message), None);
        }
        let heartbeat_with_alert =
            change(pb::AlertChangeType::Heartbeat, pb::AlertState::Unspecified);
        assert_eq!(change_line(&heartbeat_with_alert), None);
    }

    #[test]
    fn an_alert_as_json() {
        let json = ProtoJson::new("agentmesh.alerting.v1.Alert").unwrap();
        let alert = pb::Alert {
            labels: labels(&[("alertname", "ToolFailing")]),
            state: pb::AlertState::Firing.into(),
            starts_at: time("2026-11-21T11:57:00Z"),
            ..pb::Alert::default()
        };
        let mut out = Vec::new();
        json.write_line(&mut out, &alert).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"labels\":{\"alertname\":\"ToolFailing\"},\"state\":\"ALERT_STATE_FIRING\",\
             \"starts_at\":\"2026-11-21T11:57:00Z\"}\n"
        );
        assert!(ProtoJson::new("agentmesh.alerting.v1.WatchAlertsResponse").is_ok());
    }
}
