//! One integration's part of a flush: Alertmanager's dedup, retry and
//! set-notifies stages, run in its own task so a slow receiver holds up
//! nothing else.
//!
//! Data flow: [`deliver`] reads the nflog entry of (receiver, integration,
//! group key), asks [`needs_update`] whether anything is new, sends the
//! notification through the [`Notifier`] with the group's next flush as
//! deadline, records the new nflog entry after a success, and reports the
//! outcome as a [`DeliveryReport`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::{
    Alert, DeliveryReport, Fingerprint, IntegrationId, LabelSet, Notification, NotificationLog,
    NotifiedEntry, NotifiedKey, Notifier,
};

/// What delivery tasks share.
pub(super) struct Shared {
    pub(super) notifier: Arc<dyn Notifier>,
    pub(super) log: Arc<dyn NotificationLog>,
    pub(super) reports: mpsc::UnboundedSender<DeliveryReport>,
    pub(super) external_url: String,
}

/// What a flush hands each of its delivery tasks.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) receiver: String,
    pub(super) group_key: String,
    pub(super) group_labels: LabelSet,
    /// The group's alerts that are not muted, sorted by labels.
    pub(super) alerts: Vec<Alert>,
    pub(super) repeat_interval: Duration,
    /// The flush's wall-clock time: the nflog entry's time and the
    /// reference of the repeat check.
    pub(super) flushed_at: SystemTime,
    /// The group's next flush: deliveries must be over by then.
    pub(super) deadline: Instant,
}

impl Snapshot {
    /// The alerts an integration is told of: resolved ones only when it
    /// has `send_resolved`.
    fn alerts_for(&self, send_resolved: bool) -> Vec<Alert> {
        self.alerts
            .iter()
            .filter(|alert| send_resolved || !alert.is_resolved())
            .cloned()
            .collect()
    }

    /// The notification of `alerts` from this group.
    fn notification(&self, alerts: Vec<Alert>, external_url: &str) -> Notification {
        Notification {
            receiver: self.receiver.clone(),
            group_key: self.group_key.clone(),
            group_labels: self.group_labels.clone(),
            alerts,
            external_url: external_url.to_owned(),
        }
    }

    /// The fingerprints of the firing and of the resolved alerts.
    fn firing_and_resolved(&self) -> (BTreeSet<Fingerprint>, BTreeSet<Fingerprint>) {
        let (resolved, firing): (Vec<&Alert>, Vec<&Alert>) =
            self.alerts.iter().partition(|alert| alert.is_resolved());
        (
            firing.iter().map(|alert| alert.fingerprint).collect(),
            resolved.iter().map(|alert| alert.fingerprint).collect(),
        )
    }
}

/// One integration's part of a flush: Alertmanager's dedup, retry and
/// set-notifies stages. True when it ended well (including "nothing to
/// send").
pub(super) async fn deliver(
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    integration: IntegrationId,
) -> bool {
    let (firing, resolved) = snapshot.firing_and_resolved();
    let key = NotifiedKey {
        receiver: snapshot.receiver.clone(),
        integration: integration.name(),
        group_key: snapshot.group_key.clone(),
    };
    let entry = read_entry(&*shared.log, &key).await;
    if !needs_update(
        entry.as_ref(),
        &firing,
        &resolved,
        integration.send_resolved,
        snapshot.repeat_interval,
        snapshot.flushed_at,
    ) {
        return true;
    }
    let new_entry = NotifiedEntry {
        firing: firing.clone(),
        resolved: resolved.clone(),
        time: Some(snapshot.flushed_at),
    };
    let alerts = snapshot.alerts_for(integration.send_resolved);
    if (firing.is_empty() && !integration.send_resolved) || alerts.is_empty() {
        // All resolved, and the integration does not want to hear it:
        // nothing to deliver, but the entry is recorded so that the next
        // flush does not think firing alerts are outstanding.
        return record(&*shared.log, key, new_entry).await;
    }
    let notification = snapshot.notification(alerts, &shared.external_url);
    let status = notification.status();
    let alert_count = notification.alerts.len();
    let delivery = shared
        .notifier
        .deliver(
            &snapshot.receiver,
            integration,
            notification,
            snapshot.deadline,
        )
        .await;
    let ok = delivery.error.is_none();
    if ok {
        // Delivered: a failure to record it only risks a repeat, so the
        // delivery still counts as done.
        record(&*shared.log, key, new_entry).await;
    } else {
        tracing::debug!(
            receiver = %snapshot.receiver,
            integration = %integration.name(),
            group = %snapshot.group_key,
            "delivery failed; the next flush tries again"
        );
    }
    let _ = shared.reports.send(DeliveryReport {
        receiver: snapshot.receiver.clone(),
        kind: integration.kind,
        index: integration.index,
        group_key: snapshot.group_key.clone(),
        status,
        alert_count,
        attempts: delivery.attempts,
        error: delivery.error,
    });
    ok
}

/// The nflog entry of `key`; none when it cannot be read.
async fn read_entry(log: &dyn NotificationLog, key: &NotifiedKey) -> Option<NotifiedEntry> {
    match log.get(key).await {
        Ok(entry) => entry,
        Err(err) => {
            // Alertmanager gives up the flush here. A notification log
            // that cannot be read must not silence alerting: go on as if
            // nothing had been sent (at worst a duplicate notification).
            tracing::warn!(
                receiver = %key.receiver,
                integration = %key.integration,
                group = %key.group_key,
                error = %err,
                "cannot read the notification log; notifying as if nothing had been sent"
            );
            None
        }
    }
}

/// Writes an nflog entry; false (and a warning) when it cannot.
async fn record(log: &dyn NotificationLog, key: NotifiedKey, entry: NotifiedEntry) -> bool {
    let (receiver, integration, group) = (
        key.receiver.clone(),
        key.integration.clone(),
        key.group_key.clone(),
    );
    match log.put(key, entry).await {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(
                %receiver,
                %integration,
                %group,
                error = %err,
                "cannot write the notification log; the group may be notified again"
            );
            false
        }
    }
}

/// Alertmanager's `DedupStage.needsUpdate`: whether the group must be
/// notified through an integration, given what was last notified (`entry`)
/// and the firing and resolved alerts (not muted) now.
pub(crate) fn needs_update(
    entry: Option<&NotifiedEntry>,
    firing: &BTreeSet<Fingerprint>,
    resolved: &BTreeSet<Fingerprint>,
    send_resolved: bool,
    repeat_interval: Duration,
    now: SystemTime,
) -> bool {
    let Some(entry) = entry else {
        // Never notified: notify unless there is only resolved news.
        return !firing.is_empty();
    };
    if !firing.is_subset(&entry.firing) {
        return true;
    }
    if firing.is_empty() {
        // All resolved: tell, whatever send_resolved says, so the entry
        // forgets its firing alerts; unless nothing was notified as firing
        // (alerts that fired and resolved between two flushes).
        return !entry.firing.is_empty();
    }
    if send_resolved && !resolved.is_subset(&entry.resolved) {
        return true;
    }
    // Nothing changed: repeat once repeat_interval has passed.
    match (entry.time, now.checked_sub(repeat_interval)) {
        (Some(time), Some(limit)) => time < limit,
        (None, _) => true,
        (Some(_), None) => false,
    }
}
