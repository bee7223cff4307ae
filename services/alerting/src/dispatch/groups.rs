//! The dispatcher's background task: it owns the aggregation groups, files
//! alerts into them, schedules their flushes and starts one delivery task
//! per integration at each flush.
//!
//! Data flow: [`State::run`] takes commands from the [`Dispatcher`](super::Dispatcher) handles
//! (`put`, `shutdown`), the ends of delivery tasks, and due flush timers, in
//! that order of priority. A flush snapshots the group's notifiable alerts
//! for `delivery`; when all of a flush's deliveries ended well, its resolved
//! alerts leave the group ([`State::complete`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::{Id as TaskId, JoinError, JoinSet};
use tokio::time::Instant;

#[cfg(test)]
use super::DispatcherStats;
use super::clock::Clock;
use super::delivery::{Shared, Snapshot, deliver};
use super::{Command, DispatcherLimits};
use crate::model::{Alert, AlertState, Fingerprint, LabelSet};
use crate::routing::{Route, label_set_string};

/// A timer far enough away to mean "never" without overflowing.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// At most one "too many groups" log line per this long.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// An alert in a group, with the version it was filed at, so that a flush
/// removes a resolved alert only when it has not changed since.
#[derive(Debug)]
struct Slot {
    alert: Alert,
    version: u64,
}

/// A flush whose deliveries are still running.
#[derive(Debug)]
struct PendingFlush {
    /// Deliveries not finished yet.
    remaining: usize,
    /// False once one of them failed (or could not start).
    ok: bool,
    /// The resolved alerts it covered, with their versions.
    resolved: Vec<(Fingerprint, u64)>,
}

/// An aggregation group (Alertmanager's `aggrGroup`).
#[derive(Debug)]
struct Group {
    /// The key in [`State::index`]: route id and group labels.
    ident: String,
    /// The group key (route key and group labels), keying the nflog.
    key: String,
    labels: LabelSet,
    receiver: String,
    group_wait: Duration,
    group_interval: Duration,
    repeat_interval: Duration,
    alerts: BTreeMap<Fingerprint, Slot>,
    has_flushed: bool,
    next_flush: Instant,
    /// Integrations (by name) with a delivery running.
    in_flight: HashSet<String>,
    pending: HashMap<u64, PendingFlush>,
    next_flush_seq: u64,
}

impl Group {
    /// The resolved alerts, with the versions a flush covers.
    fn resolved_versions(&self) -> Vec<(Fingerprint, u64)> {
        self.alerts
            .iter()
            .filter(|(_, slot)| slot.alert.is_resolved())
            .map(|(fingerprint, slot)| (*fingerprint, slot.version))
            .collect()
    }

    /// The alerts a flush tells of: those not muted, sorted by labels.
    fn notifiable(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self
            .alerts
            .values()
            .filter(|slot| !slot.alert.is_muted())
            .map(|slot| slot.alert.clone())
            .collect();
        alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
        alerts
    }

    /// What a flush at `flushed_at` hands its delivery tasks.
    fn snapshot(&self, alerts: Vec<Alert>, flushed_at: SystemTime) -> Snapshot {
        Snapshot {
            receiver: self.receiver.clone(),
            group_key: self.key.clone(),
            group_labels: self.labels.clone(),
            alerts,
            repeat_interval: self.repeat_interval,
            flushed_at,
            deadline: self.next_flush,
        }
    }
}

/// Which delivery a task is, to account for its end even if it panicked.
#[derive(Debug, Clone)]
struct JobRef {
    group: u64,
    flush: u64,
    integration: String,
}

/// The background task's state.
pub(super) struct State {
    shared: Arc<Shared>,
    route: Arc<Route>,
    clock: Clock,
    limits: DispatcherLimits,
    groups: HashMap<u64, Group>,
    /// Group ids by route id and group labels.
    index: HashMap<String, u64>,
    /// Next flush times.
    schedule: BTreeSet<(Instant, u64)>,
    next_group: u64,
    next_version: u64,
    deliveries: JoinSet<bool>,
    jobs: HashMap<TaskId, JobRef>,
    dropped: u64,
    last_drop_log: Option<Instant>,
}

impl State {
    /// A dispatcher with no groups yet.
    pub(super) fn new(
        limits: DispatcherLimits,
        route: Arc<Route>,
        shared: Shared,
        clock: Clock,
    ) -> Self {
        Self {
            shared: Arc::new(shared),
            route,
            clock,
            limits,
            groups: HashMap::new(),
            index: HashMap::new(),
            schedule: BTreeSet::new(),
            next_group: 0,
            next_version: 0,
            deliveries: JoinSet::new(),
            jobs: HashMap::new(),
            dropped: 0,
            last_drop_log: None,
        }
    }

    /// The task's loop: commands, finished deliveries and due flushes,
    /// until shutdown.
    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let next = self.schedule.first().map(|(at, _)| *at);
            tokio::select! {
                // Commands first, then finished deliveries, then timers: a
                // delivery that ends at its deadline (the next flush) is
                // accounted for before that flush.
                biased;
                command = commands.recv() => match command {
                    Some(Command::Put(alert)) => self.put(*alert),
                    #[cfg(test)]
                    Some(Command::Stats(reply)) => {
                        let _ = reply.send(self.stats());
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.drain().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        // Every handle is gone: stop as on shutdown.
                        self.drain().await;
                        return;
                    }
                },
                Some(result) = self.deliveries.join_next_with_id(), if !self.deliveries.is_empty() => {
                    self.finished(result);
                }
                () = sleep_until(next), if next.is_some() => self.flush_due(),
            }
        }
    }

    #[cfg(test)]
    fn stats(&self) -> DispatcherStats {
        DispatcherStats {
            groups: self.groups.len(),
            alerts: self.groups.values().map(|group| group.alerts.len()).sum(),
            deliveries: self.deliveries.len(),
            dropped: self.dropped,
        }
    }

    /// Files `alert` into the groups of every route it matches.
    fn put(&mut self, alert: Alert) {
        if alert.state == AlertState::Pending {
            tracing::debug!(fingerprint = %alert.fingerprint, "a pending alert is not dispatched");
            return;
        }
        let route = Arc::clone(&self.route);
        let now = Instant::now();
        let wall = self.clock.now();
        for matched in route.match_alert(&alert.labels) {
            let labels = matched.group_labels(&alert.labels);
            let ident = format!("{}:{}", matched.id(), label_set_string(&labels));
            let id = match self.index.get(&ident) {
                Some(id) => *id,
                None => match self.new_group(matched, ident, labels, now) {
                    Some(id) => id,
                    None => continue,
                },
            };
            self.next_version += 1;
            let version = self.next_version;
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            match group.alerts.get_mut(&alert.fingerprint) {
                Some(slot) if slot.alert == alert => {}
                Some(slot) => {
                    slot.alert = alert.clone();
                    slot.version = version;
                }
                None => {
                    group.alerts.insert(
                        alert.fingerprint,
                        Slot {
                            alert: alert.clone(),
                            version,
                        },
                    );
                }
            }
            // As Alertmanager: an alert that started longer than group_wait
            // ago has waited enough, so a group that never flushed flushes
            // now.
            let waited = alert
                .starts_at
                .and_then(|start| start.checked_add(group.group_wait))
                .is_some_and(|ready| ready < wall);
            if !group.has_flushed && waited && group.next_flush > now {
                reschedule(&mut self.schedule, id, group, now);
            }
        }
    }

    /// Opens a group, unless there are `max_groups` already.
    fn new_group(
        &mut self,
        route: &Route,
        ident: String,
        labels: LabelSet,
        now: Instant,
    ) -> Option<u64> {
        if self.limits.max_groups > 0 && self.groups.len() >= self.limits.max_groups {
            self.dropped += 1;
            // Alertmanager logs every refusal; at a flood, one line a
            // minute with the count says as much.
            if self
                .last_drop_log
                .is_none_or(|at| now.saturating_duration_since(at) >= DROP_LOG_EVERY)
            {
                self.last_drop_log = Some(now);
                tracing::error!(
                    max_groups = self.limits.max_groups,
                    dropped = self.dropped,
                    group = %route.group_key(&labels),
                    "too many aggregation groups: an alert is not notified through this route"
                );
            }
            return None;
        }
        self.next_group += 1;
        let id = self.next_group;
        let opts = route.opts();
        let next_flush = later(now, opts.group_wait);
        let group = Group {
            ident: ident.clone(),
            key: route.group_key(&labels),
            labels,
            receiver: opts.receiver.clone(),
            group_wait: opts.group_wait,
            group_interval: opts.group_interval,
            repeat_interval: opts.repeat_interval,
            alerts: BTreeMap::new(),
            has_flushed: false,
            next_flush,
            in_flight: HashSet::new(),
            pending: HashMap::new(),
            next_flush_seq: 0,
        };
        self.schedule.insert((next_flush, id));
        self.index.insert(ident, id);
        self.groups.insert(id, group);
        Some(id)
    }

    /// Flushes every group whose time has come.
    fn flush_due(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.schedule.first() {
            if at > now {
                break;
            }
            self.schedule.remove(&(at, id));
            self.flush(id, now);
        }
    }

    /// One flush of a group (Alertmanager's `aggrGroup.flush` followed by
    /// the notification pipeline, whose per-integration part runs in
    /// delivery tasks).
    fn flush(&mut self, id: u64, now: Instant) {
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        group.has_flushed = true;
        group.next_flush = later(now, group.group_interval);
        self.schedule.insert((group.next_flush, id));

        let flushed_at = self.clock.now();
        // Every resolved alert of the group leaves it once the flush
        // succeeded, muted or not, as in Alertmanager.
        let resolved_versions = group.resolved_versions();
        let alerts = group.notifiable();
        if alerts.is_empty() {
            // Nothing to tell (all muted, as Alertmanager's pipeline stops
            // when its mute stage leaves nothing).
            self.complete(id, true, &resolved_versions);
            return;
        }
        let integrations = self.shared.notifier.integrations(&group.receiver);
        if integrations.is_empty() {
            // A receiver without integrations: its notifications go nowhere
            // (and, as in Alertmanager, that counts as done).
            self.complete(id, true, &resolved_versions);
            return;
        }

        let snapshot = Arc::new(group.snapshot(alerts, flushed_at));
        group.next_flush_seq += 1;
        let seq = group.next_flush_seq;
        let mut pending = PendingFlush {
            remaining: 0,
            ok: true,
            resolved: resolved_versions,
        };
        for integration in integrations {
            let name = integration.name();
            if group.in_flight.contains(&name) {
                // The previous delivery overran its deadline: do not send
                // twice at once; the next flush looks again.
                tracing::warn!(
                    receiver = %group.receiver,
                    integration = %name,
                    group = %group.key,
                    "the previous notification is still being delivered; this flush skips it"
                );
                pending.ok = false;
                continue;
            }
            group.in_flight.insert(name.clone());
            pending.remaining += 1;
            let task = self.deliveries.spawn(deliver(
                Arc::clone(&self.shared),
                Arc::clone(&snapshot),
                integration,
            ));
            self.jobs.insert(
                task.id(),
                JobRef {
                    group: id,
                    flush: seq,
                    integration: name,
                },
            );
        }
        if pending.remaining == 0 {
            let resolved = std::mem::take(&mut pending.resolved);
            self.complete(id, pending.ok, &resolved);
        } else {
            group.pending.insert(seq, pending);
        }
    }

    /// Accounts for a finished delivery task.
    fn finished(&mut self, result: Result<(TaskId, bool), JoinError>) {
        let (task, ok) = match result {
            Ok((task, ok)) => (task, ok),
            Err(err) => {
                if err.is_panic() {
                    tracing::error!("a notification delivery panicked; the next flush tries again");
                }
                (err.id(), false)
            }
        };
        let Some(job) = self.jobs.remove(&task) else {
            return;
        };
        let Some(group) = self.groups.get_mut(&job.group) else {
            return;
        };
        group.in_flight.remove(&job.integration);
        let Some(pending) = group.pending.get_mut(&job.flush) else {
            return;
        };
        pending.remaining = pending.remaining.saturating_sub(1);
        pending.ok &= ok;
        if pending.remaining > 0 {
            return;
        }
        let Some(done) = group.pending.remove(&job.flush) else {
            return;
        };
        self.complete(job.group, done.ok, &done.resolved);
    }

    /// Ends a flush: after success, its resolved alerts that have not
    /// changed since leave the group (Alertmanager's
    /// `DeleteIfNotModified`); an empty, idle group is dropped. After a
    /// failure everything stays, so the next flush tries again.
    fn complete(&mut self, id: u64, ok: bool, resolved: &[(Fingerprint, u64)]) {
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        if ok {
            for (fingerprint, version) in resolved {
                if group
                    .alerts
                    .get(fingerprint)
                    .is_some_and(|slot| slot.version == *version)
                {
                    group.alerts.remove(fingerprint);
                }
            }
        }
        if group.alerts.is_empty() && group.in_flight.is_empty() && group.pending.is_empty() {
            self.schedule.remove(&(group.next_flush, id));
            self.index.remove(&group.ident);
            self.groups.remove(&id);
        }
    }

    /// Waits (bounded) for the deliveries in flight, then abandons the rest.
    async fn drain(&mut self) {
        self.schedule.clear();
        let grace = self.limits.shutdown_grace;
        let waited = tokio::time::timeout(grace, async {
            while let Some(result) = self.deliveries.join_next_with_id().await {
                self.finished(result);
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                deliveries = self.deliveries.len(),
                grace = %humantime_serde::re::humantime::format_duration(grace),
                "shutting down: notifications still being delivered are abandoned"
            );
            self.deliveries.abort_all();
            while self.deliveries.join_next().await.is_some() {}
        }
    }
}

/// Moves a group's next flush to `at`.
fn reschedule(schedule: &mut BTreeSet<(Instant, u64)>, id: u64, group: &mut Group, at: Instant) {
    schedule.remove(&(group.next_flush, id));
    group.next_flush = at;
    schedule.insert((at, id));
}

/// `now + by`, saturating far in the future (the routing settings are
/// bounded, so this is only a guard).
fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
