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
//!
//! Layout: this module is the handle ([`Dispatcher`]) and its settings;
//! `groups` is the background task (steps 1, 2 and 4), `delivery` the
//! delivery task of step 3, `clock` the wall clock tests replace.

mod clock;
mod delivery;
mod groups;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub(crate) use self::clock::Clock;
#[cfg(test)]
pub(crate) use self::clock::ManualClock;
use self::delivery::Shared;
#[cfg(test)]
pub(crate) use self::delivery::needs_update;
use self::groups::State;
use crate::model::{Alert, DeliveryReport, NotificationLog, Notifier};
use crate::routing::Route;

/// Groups kept at most by default; beyond, new groups are refused.
pub(crate) const DEFAULT_MAX_GROUPS: usize = 10_000;
/// How long [`Dispatcher::shutdown`] waits for deliveries in flight by
/// default.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
        let shared = Shared {
            notifier,
            log,
            reports,
            external_url,
        };
        let state = State::new(limits, route, shared, clock);
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

#[cfg(test)]
mod tests;
