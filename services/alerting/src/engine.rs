//! The alert state machine: turns rule evaluations and pushed alerts into
//! alerts with a lifecycle, marks them silenced or inhibited, persists what
//! changed, tells the dispatcher, and broadcasts every change to
//! `WatchAlerts` streams.
//!
//! ```text
//! audit events ─▶ observe ─▶ Evaluator ─┐
//! FireAlert ────────────────────────────┤
//! ticks (evaluation_interval) ──────────┼─▶ reconcile: pending → firing → resolved → removed
//! silences ─────────────────────────────┘        │ marks (silences, inhibition)
//!                                                 ├─▶ Store::commit (with the audit cursor)
//!                                                 ├─▶ Dispatcher::put (firing and resolved)
//!                                                 └─▶ broadcast of changes (WatchAlerts)
//! ```
//!
//! One mutex guards the state; every operation holds it for its whole
//! read-modify-write, including the database write, so the stored state is
//! always one the service actually was in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_proto::alerting::v1 as pb;
use agentmesh_proto::audit::v1::AuditEvent;
use agentmesh_storage::StoreError;
use tokio::sync::{Mutex, broadcast};

use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::model::{ALERTNAME, Alert, AlertState, Annotations, Fingerprint, LabelSet};
use crate::routing::Inhibitor;
use crate::rules::{Evaluator, RuleAlert};
use crate::silence::Silence;
use crate::store::{Commit, Loaded, Store};

/// How an alert changed, for `WatchAlerts`.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) kind: pb::AlertChangeType,
    pub(crate) alert: Alert,
    pub(crate) previous: AlertState,
    pub(crate) time: SystemTime,
}

/// Settings of the state machine.
#[derive(Debug, Clone)]
pub(crate) struct EngineSettings {
    /// A pushed alert without an end resolves this long after its last push.
    pub(crate) resolve_timeout: Duration,
    /// Resolved alerts stay listed this long.
    pub(crate) resolved_retention: Duration,
    /// At most this many alerts are kept; beyond, new ones are refused.
    pub(crate) max_alerts: usize,
}

/// An alert pushed with FireAlert, after validation.
#[derive(Debug, Clone)]
pub(crate) struct Pushed {
    pub(crate) labels: LabelSet,
    pub(crate) annotations: Annotations,
    pub(crate) starts_at: Option<SystemTime>,
    pub(crate) ends_at: Option<SystemTime>,
    pub(crate) generator_url: String,
}

/// Why a push was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    #[error(
        "the alerting service keeps at most {0} alerts; resolve or silence some, or raise max_alerts"
    )]
    TooManyAlerts(usize),
}

struct State {
    evaluator: Evaluator,
    alerts: BTreeMap<Fingerprint, Alert>,
    silences: BTreeMap<String, Silence>,
    /// The stream position reached (committed or not).
    cursor: Option<String>,
    /// Changes a failed commit left unwritten; merged into the next.
    unwritten: Commit,
}

/// The shared alert state.
pub(crate) struct Engine {
    state: Mutex<State>,
    store: Store,
    dispatcher: Dispatcher,
    inhibitor: Inhibitor,
    settings: EngineSettings,
    changes: broadcast::Sender<Change>,
    metrics: Metrics,
}

impl Engine {
    /// Restores the state read at start, and hands the dispatcher every
    /// alert it must know (its notification log keeps it from notifying
    /// again what was notified before the restart).
    pub(crate) fn start(
        mut evaluator: Evaluator,
        loaded: Loaded,
        store: Store,
        dispatcher: Dispatcher,
        inhibitor: Inhibitor,
        settings: EngineSettings,
        metrics: Metrics,
    ) -> Arc<Self> {
        for (rule, group_key, state) in &loaded.rule_groups {
            if let Err(err) = evaluator.restore(rule, group_key, state) {
                tracing::warn!(%rule, %group_key, error = %err, "a stored rule window cannot be read; it starts empty");
            }
        }
        let alerts = loaded
            .alerts
            .into_iter()
            .map(|alert| (alert.fingerprint, alert))
            .collect();
        let silences = loaded
            .silences
            .into_iter()
            .map(|silence| (silence.id.clone(), silence))
            .collect();
        let (changes, _) = broadcast::channel(4096);
        Arc::new(Self {
            state: Mutex::new(State {
                evaluator,
                alerts,
                silences,
                cursor: loaded.cursor,
                unwritten: Commit::default(),
            }),
            store,
            dispatcher,
            inhibitor,
            settings,
            changes,
            metrics,
        })
    }

    /// Marks every alert and hands the notifiable ones to the dispatcher:
    /// the first thing after [`start`](Self::start).
    pub(crate) async fn resume(&self) {
        let mut state = self.state.lock().await;
        let now = SystemTime::now();
        mark(&mut state, &self.inhibitor, now);
        for alert in state.alerts.values() {
            if alert.state != AlertState::Pending {
                self.dispatcher.put(alert.clone());
            }
        }
        self.metrics.set_alerts(state.alerts.values());
    }

    /// The position reached in the audit stream.
    pub(crate) async fn cursor(&self) -> Option<String> {
        self.state.lock().await.cursor.clone()
    }

    /// Every change from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Applies a batch of audit events (in stream order) and the position
    /// after them, then re-evaluates.
    pub(crate) async fn observe(&self, events: &[AuditEvent], cursor: Option<String>) {
        let mut state = self.state.lock().await;
        for event in events {
            state.evaluator.observe(event);
        }
        self.metrics.events_observed(events.len());
        self.metrics
            .rule_events_dropped(state.evaluator.dropped_groups());
        if cursor.is_some() {
            state.cursor = cursor;
        }
        let mut commit = Commit {
            cursor: state.cursor.clone(),
            ..Commit::default()
        };
        self.reconcile(&mut state, SystemTime::now(), &mut commit);
        self.write(&mut state, commit).await;
    }

    /// Re-evaluates with no new event (time passed).
    pub(crate) async fn tick(&self) {
        let mut state = self.state.lock().await;
        let mut commit = Commit::default();
        self.reconcile(&mut state, SystemTime::now(), &mut commit);
        self.write(&mut state, commit).await;
    }

    /// Adds or refreshes a pushed alert.
    pub(crate) async fn push(&self, pushed: Pushed) -> Result<Alert, PushError> {
        let mut state = self.state.lock().await;
        let now = SystemTime::now();
        let fingerprint = Fingerprint::of(&pushed.labels);
        let existing = state.alerts.get(&fingerprint).cloned();
        if existing.is_none() && state.alerts.len() >= self.settings.max_alerts {
            self.metrics.alert_dropped();
            return Err(PushError::TooManyAlerts(self.settings.max_alerts));
        }
        let ends_at = pushed
            .ends_at
            .unwrap_or(now + self.settings.resolve_timeout);
        let resolved = ends_at <= now;
        let mut alert = match &existing {
            // A re-send of an active alert keeps its start (as Alertmanager
            // merges them), unless the pusher says otherwise.
            Some(old) if old.state != AlertState::Resolved => old.clone(),
            _ => Alert::new(pushed.labels.clone(), AlertState::Firing, now),
        };
        alert.rule.clear();
        alert.annotations = pushed.annotations;
        alert.generator_url = pushed.generator_url;
        alert.starts_at = Some(pushed.starts_at.or(alert.starts_at).unwrap_or(now));
        alert.ends_at = Some(ends_at);
        alert.active_at = alert.starts_at;
        alert.state = if resolved {
            AlertState::Resolved
        } else {
            AlertState::Firing
        };
        alert.updated_at = now;
        alert.value = 0.0;
        let previous = existing
            .as_ref()
            .map_or(AlertState::Unspecified, |old| old.state);
        let kind = if previous == alert.state {
            pb::AlertChangeType::Updated
        } else {
            pb::AlertChangeType::StateChanged
        };
        let mut changes = vec![(kind, previous, alert.clone())];
        state.alerts.insert(fingerprint, alert.clone());
        self.reconcile_marks(&mut state, now, &mut changes);
        let mut commit = Commit::default();
        self.publish(&mut state, now, changes, &mut commit);
        self.write(&mut state, commit).await;
        // Inserted above under the same lock, so nothing removed it since;
        // the stored copy carries the marks set after the insert.
        Ok(state.alerts.get(&fingerprint).cloned().unwrap_or(alert))
    }

    /// Stores a new silence and re-marks the alerts.
    pub(crate) async fn add_silence(&self, silence: Silence) -> Result<Silence, StoreError> {
        self.store.put_silence(&silence).await?;
        let mut state = self.state.lock().await;
        state.silences.insert(silence.id.clone(), silence.clone());
        self.remark(&mut state);
        Ok(silence)
    }

    /// Expires a silence; `None` when no silence has that id.
    pub(crate) async fn expire_silence(&self, id: &str) -> Result<Option<Silence>, StoreError> {
        let mut state = self.state.lock().await;
        let Some(mut silence) = state.silences.get(id).cloned() else {
            return Ok(None);
        };
        let now = SystemTime::now();
        if silence.expire(now) {
            self.store.put_silence(&silence).await?;
            state.silences.insert(silence.id.clone(), silence.clone());
            self.remark(&mut state);
        }
        Ok(Some(silence))
    }

    /// The silences, newest first.
    pub(crate) async fn silences(&self) -> Vec<Silence> {
        let state = self.state.lock().await;
        let mut silences: Vec<Silence> = state.silences.values().cloned().collect();
        sort_silences(&mut silences);
        silences
    }

    /// Forgets silences that ended before `cutoff`.
    pub(crate) async fn forget_silences_ended_before(&self, cutoff: SystemTime) {
        let mut state = self.state.lock().await;
        state
            .silences
            .retain(|_, silence| silence.ends_at >= cutoff);
        if let Err(err) = self.store.delete_silences_ended_before(cutoff).await {
            tracing::warn!(error = %err, "old silences could not be deleted; will retry");
        }
    }

    /// The current alerts, critical first, then newest first.
    pub(crate) async fn alerts(&self) -> Vec<Alert> {
        let state = self.state.lock().await;
        let mut alerts: Vec<Alert> = state.alerts.values().cloned().collect();
        sort_alerts(&mut alerts);
        alerts
    }

    /// The current alerts, and a receiver of every change after them (for
    /// WatchAlerts: no change lost between the snapshot and the stream).
    pub(crate) async fn snapshot_and_subscribe(&self) -> (Vec<Alert>, broadcast::Receiver<Change>) {
        let state = self.state.lock().await;
        let receiver = self.changes.subscribe();
        let mut alerts: Vec<Alert> = state.alerts.values().cloned().collect();
        sort_alerts(&mut alerts);
        (alerts, receiver)
    }

    /// The rules in effect.
    pub(crate) async fn rules(&self) -> Vec<pb::Rule> {
        let state = self.state.lock().await;
        state
            .evaluator
            .rules()
            .iter()
            .map(|rule| rule.to_proto())
            .collect()
    }

    fn remark(&self, state: &mut State) {
        let now = SystemTime::now();
        let mut changes = Vec::new();
        self.reconcile_marks(state, now, &mut changes);
        // Marks are derived (recomputed at start), not stored: only the
        // dispatcher and the watchers need to hear of them.
        self.publish(state, now, changes, &mut Commit::default());
    }

    /// Moves alerts through their lifecycle at `now`.
    fn reconcile(&self, state: &mut State, now: SystemTime, commit: &mut Commit) {
        let active: Vec<RuleAlert> = state.evaluator.evaluate(now);
        for (rule, group_key, group) in state.evaluator.take_dirty() {
            commit.rule_groups.insert((rule, group_key), group);
        }
        let mut changes: Vec<(pb::AlertChangeType, AlertState, Alert)> = Vec::new();
        let seen = self.track(state, active, now, &mut changes);
        self.sweep(state, &seen, now, &mut changes);
        self.reconcile_marks(state, now, &mut changes);
        self.publish(state, now, changes, commit);
    }

    /// Brings the alerts of the rules' active groups up to date: new ones
    /// pending or firing, pending ones firing once due, annotations and
    /// values refreshed. Returns the fingerprints seen.
    fn track(
        &self,
        state: &mut State,
        active: Vec<RuleAlert>,
        now: SystemTime,
        changes: &mut Vec<(pb::AlertChangeType, AlertState, Alert)>,
    ) -> HashSet<Fingerprint> {
        let mut seen: HashSet<Fingerprint> = HashSet::with_capacity(active.len());
        for rule_alert in active {
            let fingerprint = Fingerprint::of(&rule_alert.labels);
            seen.insert(fingerprint);
            let existing = state.alerts.get(&fingerprint);
            let previous = existing.map_or(AlertState::Unspecified, |alert| alert.state);
            let wanted = if rule_alert.firing {
                AlertState::Firing
            } else {
                AlertState::Pending
            };
            match existing {
                Some(alert) if alert.state != AlertState::Resolved => {
                    let mut alert = alert.clone();
                    let mut changed = false;
                    if alert.state == AlertState::Pending && wanted == AlertState::Firing {
                        alert.state = AlertState::Firing;
                        alert.starts_at = Some(now);
                        changed = true;
                    }
                    let annotations_changed = alert.annotations != rule_alert.annotations;
                    alert.annotations = rule_alert.annotations;
                    alert.value = rule_alert.value;
                    alert.active_at = Some(rule_alert.active_at);
                    alert.rule = rule_alert.rule;
                    if changed {
                        alert.updated_at = now;
                        changes.push((pb::AlertChangeType::StateChanged, previous, alert.clone()));
                    } else if annotations_changed {
                        alert.updated_at = now;
                        changes.push((pb::AlertChangeType::Updated, previous, alert.clone()));
                    }
                    state.alerts.insert(fingerprint, alert);
                }
                _ => {
                    if existing.is_none() && state.alerts.len() >= self.settings.max_alerts {
                        self.metrics.alert_dropped();
                        tracing::warn!(
                            rule = %rule_alert.rule,
                            max_alerts = self.settings.max_alerts,
                            "an alert was not created: the service keeps at most max_alerts alerts"
                        );
                        continue;
                    }
                    let mut alert = Alert::new(rule_alert.labels, wanted, now);
                    alert.annotations = rule_alert.annotations;
                    alert.value = rule_alert.value;
                    alert.active_at = Some(rule_alert.active_at);
                    alert.rule = rule_alert.rule;
                    if wanted == AlertState::Firing {
                        alert.starts_at = Some(now);
                    }
                    changes.push((pb::AlertChangeType::StateChanged, previous, alert.clone()));
                    state.alerts.insert(fingerprint, alert);
                }
            }
        }
        seen
    }

    /// Resolves the firing alerts whose rule group is no longer active (or,
    /// pushed, whose end has passed), drops pending ones that went away,
    /// and removes resolved alerts past their retention.
    fn sweep(
        &self,
        state: &mut State,
        seen: &HashSet<Fingerprint>,
        now: SystemTime,
        changes: &mut Vec<(pb::AlertChangeType, AlertState, Alert)>,
    ) {
        let mut removed = Vec::new();
        for (fingerprint, alert) in &mut state.alerts {
            let from_rule = !alert.rule.is_empty();
            match alert.state {
                AlertState::Pending if from_rule && !seen.contains(fingerprint) => {
                    removed.push(*fingerprint);
                }
                AlertState::Firing
                    if (from_rule && !seen.contains(fingerprint))
                        || (!from_rule && alert.ends_at.is_some_and(|end| end <= now)) =>
                {
                    let previous = alert.state;
                    alert.state = AlertState::Resolved;
                    if from_rule {
                        alert.ends_at = Some(now);
                    }
                    alert.updated_at = now;
                    changes.push((pb::AlertChangeType::StateChanged, previous, alert.clone()));
                }
                AlertState::Resolved
                    if alert
                        .ends_at
                        .is_none_or(|end| end + self.settings.resolved_retention <= now) =>
                {
                    removed.push(*fingerprint);
                }
                _ => {}
            }
        }
        for fingerprint in removed {
            if let Some(alert) = state.alerts.remove(&fingerprint) {
                let previous = alert.state;
                changes.push((pb::AlertChangeType::Removed, previous, alert));
            }
        }
    }

    /// Recomputes the silenced and inhibited marks, recording changed ones.
    fn reconcile_marks(
        &self,
        state: &mut State,
        now: SystemTime,
        changes: &mut Vec<(pb::AlertChangeType, AlertState, Alert)>,
    ) {
        let before: HashMap<Fingerprint, (Vec<String>, Vec<Fingerprint>)> = state
            .alerts
            .iter()
            .map(|(fp, alert)| (*fp, (alert.silenced_by.clone(), alert.inhibited_by.clone())))
            .collect();
        mark(state, &self.inhibitor, now);
        for (fingerprint, alert) in &state.alerts {
            let Some((silenced_by, inhibited_by)) = before.get(fingerprint) else {
                continue;
            };
            if *silenced_by != alert.silenced_by || *inhibited_by != alert.inhibited_by {
                // A state change already queued carries the new marks.
                if let Some(queued) = changes
                    .iter_mut()
                    .find(|(_, _, queued)| queued.fingerprint == *fingerprint)
                {
                    queued.2 = alert.clone();
                } else {
                    changes.push((pb::AlertChangeType::Updated, alert.state, alert.clone()));
                }
            }
        }
    }

    /// Hands changes to the dispatcher and the watchers, and records them
    /// for the database.
    fn publish(
        &self,
        state: &mut State,
        now: SystemTime,
        changes: Vec<(pb::AlertChangeType, AlertState, Alert)>,
        commit: &mut Commit,
    ) {
        if changes.is_empty() {
            return;
        }
        for (kind, previous, alert) in changes {
            // The latest version (marks may have moved since it was queued).
            let current = state.alerts.get(&alert.fingerprint).cloned();
            match kind {
                pb::AlertChangeType::Removed => {
                    commit.alerts.insert(alert.fingerprint, None);
                }
                _ => {
                    commit.alerts.insert(alert.fingerprint, current.clone());
                }
            }
            let alert = current.unwrap_or(alert);
            if kind != pb::AlertChangeType::Removed && alert.state != AlertState::Pending {
                self.dispatcher.put(alert.clone());
            }
            if kind == pb::AlertChangeType::StateChanged {
                tracing::info!(
                    alertname = alert.labels.get(ALERTNAME).map_or("", String::as_str),
                    fingerprint = %alert.fingerprint,
                    from = previous.as_str_name(),
                    to = alert.state.as_str_name(),
                    "alert state changed"
                );
            }
            let _ = self.changes.send(Change {
                kind,
                alert,
                previous,
                time: now,
            });
        }
        self.metrics.set_alerts(state.alerts.values());
    }

    /// Writes `commit` (with whatever a failed write left), keeping it for
    /// the next write when the database fails.
    async fn write(&self, state: &mut State, commit: Commit) {
        let mut pending = std::mem::take(&mut state.unwritten);
        pending.merge(commit);
        if pending.is_empty() {
            return;
        }
        match self.store.commit(&pending).await {
            Ok(()) => {}
            Err(err) => {
                self.metrics.store_failure();
                tracing::error!(error = %err, "alert state could not be stored; retrying with the next change");
                state.unwritten = pending;
            }
        }
    }
}

/// Sets every alert's silenced and inhibited marks at `now`.
fn mark(state: &mut State, inhibitor: &Inhibitor, now: SystemTime) {
    mark_alerts(&mut state.alerts, &state.silences, inhibitor, now);
}

/// Sets the silenced and inhibited marks of `alerts` at `now` (marks are
/// derived, never stored: a standby computes them the same way).
pub(crate) fn mark_alerts(
    alerts: &mut BTreeMap<Fingerprint, Alert>,
    silences: &BTreeMap<String, Silence>,
    inhibitor: &Inhibitor,
    now: SystemTime,
) {
    for alert in alerts.values_mut() {
        alert.silenced_by = silences
            .values()
            .filter(|silence| silence.silences(&alert.labels, now))
            .map(|silence| silence.id.clone())
            .collect();
    }
    let firing: Vec<Alert> = alerts
        .values()
        .filter(|alert| alert.state == AlertState::Firing)
        .cloned()
        .collect();
    let index = inhibitor.index(&firing);
    for alert in alerts.values_mut() {
        alert.inhibited_by = index.inhibited_by(alert);
    }
}

/// Newest first, then by id.
pub(crate) fn sort_silences(silences: &mut [Silence]) {
    silences.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.id.cmp(&a.id))
    });
}

/// Critical first, then the newest start first, then by fingerprint.
pub(crate) fn sort_alerts(alerts: &mut [Alert]) {
    alerts.sort_by(|a, b| {
        (b.severity() as i32)
            .cmp(&(a.severity() as i32))
            .then_with(|| {
                b.starts_at
                    .or(b.active_at)
                    .cmp(&a.starts_at.or(a.active_at))
            })
            .then_with(|| a.fingerprint.cmp(&b.fingerprint))
    });
}
