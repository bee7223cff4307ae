//! The dispatcher: turns alert changes into notifications, as Alertmanager's
//! dispatcher and notification pipeline do.
//!
//! Data flow: the alert state keeper calls [`Dispatcher::put`] with every
//! new version of an alert (firing or resolved, silenced/inhibited marks
//! set). The call only queues it for one background task, which owns all
//! state and never waits on I/O:
//!
//! 1. it routes the alert through the [`Route`] tree and files it into one
//!    aggregation group per matching route, keyed by the route and the
//!    alert's `group_by` label values (at most `max_groups` groups);
//! 2. a group flushes `group_wait` after it was created (at once when the
//!    alert started longer ago than that), then every `group_interval`;
//! 3. a flush takes the group's alerts that are not muted and starts one
//!    delivery task per integration of the route's receiver. Each task
//!    reads the notification log (nflog) entry of (receiver, integration,
//!    group key), decides with Alertmanager's `needsUpdate` whether to
//!    notify, delivers through the [`Notifier`] with the group's next flush
//!    as deadline, records the nflog entry on success and sends a
//!    [`DeliveryReport`]. A slow or failing integration holds up nothing
//!    else; a failed one is tried again by the next flush, because its nflog
//!    entry was not updated;
//! 4. once every delivery of a flush succeeded, the resolved alerts that
//!    were part of it and have not changed since leave the group, and an
//!    empty group is dropped.
//!
//! The nflog is the only state that outlives the process: a restarted
//! dispatcher rebuilds its groups from the alerts put again, and the nflog
//! keeps it from notifying again what was already notified within
//! `repeat_interval`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
#[cfg(test)]
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::{Id as TaskId, JoinError, JoinSet};
use tokio::time::Instant;

use crate::model::{
    Alert, AlertState, DeliveryReport, Fingerprint, IntegrationId, LabelSet, Notification,
    NotificationLog, NotifiedEntry, NotifiedKey, Notifier,
};
use crate::routing::{Route, label_set_string};

/// Groups kept at most by default; beyond, new groups are refused.
pub(crate) const DEFAULT_MAX_GROUPS: usize = 10_000;
/// How long [`Dispatcher::shutdown`] waits for deliveries in flight by
/// default.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// A timer far enough away to mean "never" without overflowing.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// At most one "too many groups" log line per this long.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// Where the dispatcher reads wall-clock time: nflog timestamps, the
/// `repeat_interval` check and alerts' start times are `SystemTime`s. Timers
/// use tokio's clock. Tests substitute a clock they move by hand.
#[derive(Clone)]
pub(crate) struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system's clock.
    pub(crate) fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    /// A clock reading `now`.
    #[cfg(test)]
    pub(crate) fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The current time.
    pub(crate) fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Clock").field(&self.now()).finish()
    }
}

/// A clock that stands still until moved (for tests of time-dependent
/// code).
#[derive(Debug, Clone)]
#[cfg(test)]
pub(crate) struct ManualClock(Arc<Mutex<SystemTime>>);

#[cfg(test)]
impl ManualClock {
    /// A clock standing at `start`.
    pub(crate) fn new(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// A [`Clock`] reading this one.
    pub(crate) fn clock(&self) -> Clock {
        let inner = Arc::clone(&self.0);
        Clock::from_fn(move || *inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Moves it forward by `by`.
    pub(crate) fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.checked_add(by).unwrap_or(*now);
    }

    /// Sets it to `to`.
    pub(crate) fn set(&self, to: SystemTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

/// Bounds of the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DispatcherLimits {
    /// Aggregation groups kept at most; an alert that would open another is
    /// logged and not notified through that route (0: no limit, as
    /// Alertmanager's setting).
    pub(crate) max_groups: usize,
    /// How long shutdown waits for deliveries in flight before abandoning
    /// them.
    pub(crate) shutdown_grace: Duration,
}

impl Default for DispatcherLimits {
    fn default() -> Self {
        Self {
            max_groups: DEFAULT_MAX_GROUPS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// What the dispatcher holds, as [`Dispatcher::stats`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg(test)]
pub(crate) struct DispatcherStats {
    /// Aggregation groups.
    pub(crate) groups: usize,
    /// Alerts in them, counted once per group.
    pub(crate) alerts: usize,
    /// Deliveries running.
    pub(crate) deliveries: usize,
    /// Alerts not filed into a group because of `max_groups`, since start.
    pub(crate) dropped: u64,
}

enum Command {
    Put(Box<Alert>),
    #[cfg(test)]
    Stats(oneshot::Sender<DispatcherStats>),
    Shutdown(oneshot::Sender<()>),
}

/// A cheap handle to the dispatcher's background task.
#[derive(Debug, Clone)]
pub(crate) struct Dispatcher {
    commands: mpsc::UnboundedSender<Command>,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Put(alert) => f.debug_tuple("Put").field(&alert.fingerprint).finish(),
            #[cfg(test)]
            Self::Stats(_) => f.write_str("Stats"),
            Self::Shutdown(_) => f.write_str("Shutdown"),
        }
    }
}

impl Dispatcher {
    /// Starts the background task with `limits`.
    pub(crate) fn start_with(
        limits: DispatcherLimits,
        route: Arc<Route>,
        notifier: Arc<dyn Notifier>,
        log: Arc<dyn NotificationLog>,
        reports: mpsc::UnboundedSender<DeliveryReport>,
        external_url: String,
        clock: Clock,
    ) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let state = State {
            shared: Arc::new(Shared {
                notifier,
                log,
                reports,
                external_url,
            }),
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
        };
        tokio::spawn(state.run(receiver));
        Self { commands }
    }

    /// The current version of an alert (firing or resolved, with its
    /// silenced/inhibited marks). Pending alerts are never put (and are
    /// ignored). Called whenever an alert changes; putting the same version
    /// again changes nothing.
    pub(crate) fn put(&self, alert: Alert) {
        if self.commands.send(Command::Put(Box::new(alert))).is_err() {
            tracing::debug!("the dispatcher has stopped; an alert change is not dispatched");
        }
    }

    /// What the dispatcher holds; answered after every earlier
    /// [`put`](Self::put) was filed. Zeros once it has stopped.
    #[cfg(test)]
    pub(crate) async fn stats(&self) -> DispatcherStats {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Stats(reply)).is_err() {
            return DispatcherStats::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Stops: no new flushes; waits (bounded by the shutdown grace) for
    /// deliveries in flight, then abandons the rest. Other handles' puts
    /// are ignored afterwards.
    pub(crate) async fn shutdown(self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).is_ok() {
            let _ = done.await;
        }
    }
}

/// What delivery tasks share.
struct Shared {
    notifier: Arc<dyn Notifier>,
    log: Arc<dyn NotificationLog>,
    reports: mpsc::UnboundedSender<DeliveryReport>,
    external_url: String,
}

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

/// Which delivery a task is, to account for its end even if it panicked.
#[derive(Debug, Clone)]
struct JobRef {
    group: u64,
    flush: u64,
    integration: String,
}

/// The background task's state.
struct State {
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
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
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
        let resolved_versions: Vec<(Fingerprint, u64)> = group
            .alerts
            .iter()
            .filter(|(_, slot)| slot.alert.is_resolved())
            .map(|(fingerprint, slot)| (*fingerprint, slot.version))
            .collect();
        let mut alerts: Vec<Alert> = group
            .alerts
            .values()
            .filter(|slot| !slot.alert.is_muted())
            .map(|slot| slot.alert.clone())
            .collect();
        if alerts.is_empty() {
            // Nothing to tell (all muted, as Alertmanager's pipeline stops
            // when its mute stage leaves nothing).
            self.complete(id, true, &resolved_versions);
            return;
        }
        alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
        let integrations = self.shared.notifier.integrations(&group.receiver);
        if integrations.is_empty() {
            // A receiver without integrations: its notifications go nowhere
            // (and, as in Alertmanager, that counts as done).
            self.complete(id, true, &resolved_versions);
            return;
        }

        let snapshot = Arc::new(Snapshot {
            receiver: group.receiver.clone(),
            group_key: group.key.clone(),
            group_labels: group.labels.clone(),
            alerts,
            repeat_interval: group.repeat_interval,
            flushed_at,
            deadline: group.next_flush,
        });
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

/// What a flush hands each of its delivery tasks.
#[derive(Debug)]
struct Snapshot {
    receiver: String,
    group_key: String,
    group_labels: LabelSet,
    /// The group's alerts that are not muted, sorted by labels.
    alerts: Vec<Alert>,
    repeat_interval: Duration,
    /// The flush's wall-clock time: the nflog entry's time and the
    /// reference of the repeat check.
    flushed_at: SystemTime,
    /// The group's next flush: deliveries must be over by then.
    deadline: Instant,
}

/// One integration's part of a flush: Alertmanager's dedup, retry and
/// set-notifies stages. True when it ended well (including "nothing to
/// send").
async fn deliver(shared: Arc<Shared>, snapshot: Arc<Snapshot>, integration: IntegrationId) -> bool {
    let firing: BTreeSet<Fingerprint> = snapshot
        .alerts
        .iter()
        .filter(|alert| !alert.is_resolved())
        .map(|alert| alert.fingerprint)
        .collect();
    let resolved: BTreeSet<Fingerprint> = snapshot
        .alerts
        .iter()
        .filter(|alert| alert.is_resolved())
        .map(|alert| alert.fingerprint)
        .collect();
    let key = NotifiedKey {
        receiver: snapshot.receiver.clone(),
        integration: integration.name(),
        group_key: snapshot.group_key.clone(),
    };
    let entry = match shared.log.get(&key).await {
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
    };
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
    let alerts: Vec<Alert> = snapshot
        .alerts
        .iter()
        .filter(|alert| integration.send_resolved || !alert.is_resolved())
        .cloned()
        .collect();
    if (firing.is_empty() && !integration.send_resolved) || alerts.is_empty() {
        // All resolved, and the integration does not want to hear it:
        // nothing to deliver, but the entry is recorded so that the next
        // flush does not think firing alerts are outstanding.
        return record(&*shared.log, key, new_entry).await;
    }
    let notification = Notification {
        receiver: snapshot.receiver.clone(),
        group_key: snapshot.group_key.clone(),
        group_labels: snapshot.group_labels.clone(),
        alerts,
        external_url: shared.external_url.clone(),
    };
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

#[cfg(test)]
mod tests;
