//! This replica's role — leader or standby — and the loop that moves it
//! between the two.
//!
//! ```text
//! Supervisor::run ── every leader.retry ──▶ standby: Election::try_acquire
//!       │                                      │ granted: start engine, source,
//!       │                                      │ ticks, dispatcher behind the Fence
//!       │                                      ▼
//!       └── Fence::lost or a failed check ◀── leader ── shutdown: drain, then unlock
//!                 │ stop at once: tasks aborted, deliveries cut off
//!                 ▼
//!              standby
//! ```
//!
//! The API asks [`Replica`] what to answer from: the engine while this
//! replica leads; while it stands by, the store (alerts and silences as
//! the leader last wrote them, marks computed here; the configured rules).
//! Writes and WatchAlerts need the engine, so a standby forwards them to
//! the leader (`peer`), or answers UNAVAILABLE (retryable) when it cannot.
//! A leader advertises its address in the database for the term and
//! withdraws it when it steps down. Every change of role is logged and
//! shown by the gauge `agentmesh_alerting_leader`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use agentmesh_proto::alerting::v1 as pb;
use agentmesh_storage::StoreError;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::dispatch::Dispatcher;
use crate::engine::{Engine, mark_alerts, sort_alerts, sort_silences};
use crate::leader::{Election, Fence};
use crate::metrics::Metrics;
use crate::model::Alert;
use crate::peer::{LeaderPeer, not_leading};
use crate::routing::Inhibitor;
use crate::silence::Silence;
use crate::store::Store;

/// What runs for one term of leadership besides the engine.
pub(crate) struct Running {
    pub(crate) dispatcher: Dispatcher,
    pub(crate) tasks: Vec<JoinHandle<()>>,
    /// The store and lock pid this term advertised its address with.
    pub(crate) advertised: Option<(Store, i32)>,
}

/// Starts the engine and its tasks for a term held by the fence.
pub(crate) type Starter =
    Box<dyn Fn(Fence) -> BoxFuture<'static, Result<(Arc<Engine>, Running), String>> + Send + Sync>;

/// What the API answers from.
#[derive(Default)]
pub(crate) struct Replica {
    engine: RwLock<Option<Arc<Engine>>>,
    standby: OnceLock<StandbyView>,
}

/// Who takes a write or a WatchAlerts.
pub(crate) enum Writer<'a> {
    /// This replica leads.
    Leader(Arc<Engine>),
    /// This replica stands by: the leader takes it, through this peer.
    Forward(&'a LeaderPeer),
}

/// The source of a read.
pub(crate) enum Reader<'a> {
    /// This replica leads: its engine holds the state.
    Leader(Arc<Engine>),
    /// This replica stands by: the store holds what the leader wrote.
    Standby(&'a StandbyView),
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").finish_non_exhaustive()
    }
}

impl Replica {
    /// A replica leading with `engine` (tests).
    #[cfg(test)]
    pub(crate) fn leading(engine: Arc<Engine>) -> Self {
        let replica = Self::default();
        replica.set_engine(Some(engine));
        replica
    }

    fn set_engine(&self, engine: Option<Arc<Engine>>) {
        if let Ok(mut slot) = self.engine.write() {
            *slot = engine;
        }
    }

    /// Set once the database is open: from then on a standby answers reads.
    pub(crate) fn set_standby_view(&self, view: StandbyView) {
        let _ = self.standby.set(view);
    }

    /// Who takes a write or WatchAlerts: the engine while this replica
    /// leads, else the leader. A call a standby `forwarded` is never
    /// forwarded again.
    pub(crate) fn writer(&self, forwarded: bool) -> Result<Writer<'_>, Status> {
        match self.reader()? {
            Reader::Leader(engine) => Ok(Writer::Leader(engine)),
            Reader::Standby(_) if forwarded => Err(not_leading()),
            Reader::Standby(view) => Ok(Writer::Forward(&view.peer)),
        }
    }

    /// Where reads are answered from.
    pub(crate) fn reader(&self) -> Result<Reader<'_>, Status> {
        if let Some(engine) = self.engine.read().ok().and_then(|slot| slot.clone()) {
            return Ok(Reader::Leader(engine));
        }
        self.standby
            .get()
            .map(Reader::Standby)
            .ok_or_else(|| Status::unavailable("the alerting service is starting; retry shortly"))
    }
}

/// A standby's reads: what the leader stored.
pub(crate) struct StandbyView {
    pub(crate) store: Store,
    pub(crate) inhibitor: Inhibitor,
    pub(crate) rules: Vec<pb::Rule>,
    /// Where writes and WatchAlerts go.
    pub(crate) peer: LeaderPeer,
}

impl StandbyView {
    /// The stored alerts, marked as the leader marks them, in its order.
    pub(crate) async fn alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let (alerts, silences) = self.store.alerts_and_silences().await?;
        let mut alerts: BTreeMap<_, _> = alerts
            .into_iter()
            .map(|alert| (alert.fingerprint, alert))
            .collect();
        let silences: BTreeMap<_, _> = silences
            .into_iter()
            .map(|silence| (silence.id.clone(), silence))
            .collect();
        mark_alerts(&mut alerts, &silences, &self.inhibitor, SystemTime::now());
        let mut alerts: Vec<Alert> = alerts.into_values().collect();
        sort_alerts(&mut alerts);
        Ok(alerts)
    }

    /// The stored silences, newest first.
    pub(crate) async fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        let mut silences = self.store.silences().await?;
        sort_silences(&mut silences);
        Ok(silences)
    }
}

/// The role this replica last announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Starting,
    Leader,
    Standby,
}

/// Moves this replica between leader and standby.
pub(crate) struct Supervisor {
    replica: Arc<Replica>,
    election: Election,
    start: Starter,
    metrics: Metrics,
    retry: Duration,
    term: Option<(Fence, Running)>,
    role: Role,
}

impl Supervisor {
    pub(crate) fn new(
        replica: Arc<Replica>,
        election: Election,
        start: Starter,
        metrics: Metrics,
        retry: Duration,
    ) -> Self {
        Self {
            replica,
            election,
            start,
            metrics,
            retry,
            term: None,
            role: Role::Starting,
        }
    }

    /// Logs and shows a change of role.
    fn announce(&mut self, role: Role) {
        if self.role == role {
            return;
        }
        self.role = role;
        self.metrics.set_leader(role == Role::Leader);
        match role {
            Role::Leader => tracing::info!(
                "this replica leads: it evaluates the rules, follows the audit stream and sends notifications"
            ),
            Role::Standby => tracing::info!(
                retry = ?self.retry,
                "this replica stands by: it serves reads from the database and tries for the leader lock every retry"
            ),
            Role::Starting => {}
        }
    }

    /// One attempt to lead (the first one runs during start-up, so a
    /// single replica leads as soon as it is ready).
    pub(crate) async fn try_lead(&mut self) {
        match self.election.try_acquire().await {
            Ok(Some(fence)) => match (self.start)(fence.clone()).await {
                Ok((engine, running)) => {
                    self.replica.set_engine(Some(engine));
                    self.term = Some((fence, running));
                    self.announce(Role::Leader);
                }
                Err(error) => {
                    tracing::error!(%error, "won the leader lock but could not start; releasing it");
                    fence.release().await;
                    self.announce(Role::Standby);
                }
            },
            Ok(None) => self.announce(Role::Standby),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?self.retry, "the leader lock could not be tried; standing by");
                self.announce(Role::Standby);
            }
        }
    }

    /// Stops this term's work. `drain`: at shutdown, deliveries in flight
    /// may finish (the lock is still held); after a lost lock they were
    /// already cut off by the fence.
    async fn step_down(&mut self, drain: bool) {
        let Some((fence, running)) = self.term.take() else {
            return;
        };
        self.replica.set_engine(None);
        for task in &running.tasks {
            task.abort();
        }
        if let Some((store, pid)) = &running.advertised {
            // Bounded: a database that no longer answers must not hold
            // up the step-down (a stale row is ignored by standbys).
            let withdrawn = tokio::time::timeout(self.retry, store.withdraw(*pid)).await;
            if !matches!(withdrawn, Ok(Ok(()))) {
                tracing::debug!("the leader's advertised address could not be withdrawn");
            }
        }
        if drain {
            running.dispatcher.shutdown().await;
            fence.release().await;
        } else {
            fence.release().await;
            running.dispatcher.shutdown().await;
            tracing::warn!(
                "this replica lost the leader lock and stopped evaluating and notifying"
            );
        }
    }

    /// Runs until `stop` turns true, then drains this replica's term and
    /// frees the lock, so a standby takes over at once.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let fence = self.term.as_ref().map(|(fence, _)| fence.clone());
            let retry = self.retry;
            let stopping = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => true,
                () = async {
                    match &fence {
                        Some(fence) => tokio::select! {
                            () = fence.lost() => {},
                            () = tokio::time::sleep(retry) => {},
                        },
                        None => tokio::time::sleep(retry).await,
                    }
                } => false,
            };
            if stopping {
                break;
            }
            match fence {
                None => self.try_lead().await,
                Some(fence) => {
                    if !fence.holds().await {
                        self.step_down(false).await;
                        self.announce(Role::Standby);
                    }
                }
            }
        }
        self.step_down(true).await;
        self.election.close().await;
        self.metrics.set_leader(false);
    }
}
