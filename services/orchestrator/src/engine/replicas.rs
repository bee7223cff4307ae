//! Replicas on one PostgreSQL database: what they tell each other, and the
//! hand-over of a replica's runs when it shuts down.
//!
//! ```text
//! CancelRun on any replica ─▶ store: cancel recorded ─▶ NOTIFY "cancel <run>"
//!                                 listen (driving replica) ─▶ ActiveRun::cancel
//! SIGTERM ─▶ hand_over_at_shutdown: no new runs; each run released at its
//!            next checkpoint (queued ones at once; all by the grace period)
//!            ─▶ hand_off: claim released ─▶ NOTIFY "released"
//!                                 listen (every other replica) ─▶ resume_orphans
//! follow of a run driven elsewhere ─▶ driver_channel ─▶ StreamRun there (follow.rs)
//! ```
//!
//! Notifications are wake-ups, never the only way: a recorded cancel is
//! also seen at the driver's next checkpoint and maintenance look, and a
//! released run is also found by the next look of any replica. After the
//! listener (re)connects, it looks at once, since notifications may have
//! been missed meanwhile. On SQLite there is one process: no listener, and
//! a shutdown releases its claims so that the next start resumes at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentmesh_kit::drain::Drain;
use sqlx::postgres::PgListener;

use super::active::ActiveRun;
use super::{Engine, lock};
use crate::store::CHANNEL;

/// The metadata marking a StreamRun one replica forwarded to the replica
/// driving the run; that replica serves it from what it has, never
/// forwarding it again.
pub(crate) const FORWARDED_BY: &str = "x-orchestrator-forwarded-by";

/// Channels to other replicas kept at most (see `driver_channel`).
const MAX_REPLICA_CHANNELS: usize = 64;

/// How long a listener waits before connecting again after a failure.
const RECONNECT: Duration = Duration::from_secs(1);

/// Listens to the other replicas' notifications (PostgreSQL only) until
/// the task is aborted.
pub(crate) async fn listen(engine: Arc<Engine>) {
    let Some(pool) = engine.store().postgres().cloned() else {
        return;
    };
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen to the other replicas yet");
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %err, "cannot listen to the other replicas yet");
            tokio::time::sleep(RECONNECT).await;
            continue;
        }
        // Anything announced while not listening is found by a look.
        engine.look().await;
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => engine.on_notice(notification.payload()).await,
                // The connection was lost; the next receive reconnects.
                Ok(None) => {
                    tracing::info!(
                        "the connection listening to the other replicas was lost; reconnecting"
                    );
                    engine.look().await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "listening to the other replicas failed; reconnecting");
                    tokio::time::sleep(RECONNECT).await;
                    break;
                }
            }
        }
    }
}

/// On shutdown (`drain` moving to draining), hands this instance's runs
/// over: each is released at its next checkpoint, a queued one at once,
/// and those still running when the grace period is nearly over (the
/// server's forced phase, or `until_forced` after draining began, whichever
/// comes first: the server may stop early, with no call open) are released
/// where they are (their step in flight is run again elsewhere).
pub(crate) async fn hand_over_at_shutdown(
    engine: Arc<Engine>,
    drain: Drain,
    until_forced: Duration,
) {
    drain.draining().await;
    let force_at = tokio::time::Instant::now() + until_forced;
    engine.handing_over.store(true, Ordering::Relaxed);
    let runs: Vec<Arc<ActiveRun>> = lock(&engine.active).values().cloned().collect();
    tracing::info!(
        runs = runs.len(),
        "shutting down: handing this replica's runs over at their next checkpoint"
    );
    for active in &runs {
        // A run not yet running has nothing in flight.
        if active.state() == agentmesh_proto::orchestrator::v1::RunState::Queued {
            active.release();
        }
    }
    tokio::select! {
        () = engine.all_ended() => {}
        () = async {
            tokio::select! {
                () = drain.forced() => {}
                () = tokio::time::sleep_until(force_at) => {}
            }
        } => {
            let left: Vec<Arc<ActiveRun>> = lock(&engine.active).values().cloned().collect();
            tracing::warn!(runs = left.len(), "grace period nearly over: handing over runs mid-step");
            for active in left {
                active.release();
            }
            engine.all_ended().await;
        }
    }
    if let Err(err) = engine.store().withdraw(engine.owner()).await {
        tracing::debug!(error = %err, "cannot withdraw this replica's address");
    }
}

impl Engine {
    /// Gives up the claim on a run released here, so that another replica
    /// (or the next start) resumes it at once.
    pub(super) async fn hand_off(&self, run: &crate::store::RunRow, active: &ActiveRun) {
        match self
            .store
            .release(&run.run_id, &self.owner, active.last_used())
            .await
        {
            Ok(true) => {
                tracing::info!(run_id = %run.run_id, "handed the run over to the other replicas");
                self.metrics.replicas().handed_over();
            }
            // Another replica claims it already.
            Ok(false) => {}
            Err(err) => tracing::warn!(
                run_id = %run.run_id,
                error = %err,
                "cannot release the run; another replica resumes it once its claim runs out"
            ),
        }
    }

    /// Resolves once no run is driven here.
    async fn all_ended(&self) {
        loop {
            let Some(active) = lock(&self.active).values().next().cloned() else {
                return;
            };
            active.ended().await;
            // Its task removes it right before marking it ended.
            tokio::task::yield_now().await;
        }
    }

    /// Makes the recorded cancel of `run_id` take effect and waits for the
    /// run's end: here when this replica drives it (or adopts it, its
    /// driver gone), else by the replica driving it (told at once, or at its
    /// next checkpoint). False when it has not ended within twice the run
    /// lease.
    pub(crate) async fn cancel_everywhere(
        self: &Arc<Self>,
        run_id: &str,
    ) -> Result<bool, agentmesh_storage::StoreError> {
        let give_up = tokio::time::Instant::now() + self.config.run_lease * 2;
        let mut round = 0_u32;
        loop {
            // Adopting takes a database write: at once, then every second
            // (a driver that died meanwhile).
            let adopt = round.is_multiple_of(40) && !self.is_handing_over();
            if (adopt || self.active(run_id).is_some())
                && let Some(active) = self.take_over(run_id).await?
            {
                if let Some(cancel) = self.store.recorded_cancel(run_id).await? {
                    active.cancel(cancel.reason, cancel.by);
                }
                active.ended().await;
            }
            match self.store.get_run_any_tenant(run_id).await? {
                Some(run) if !run.is_terminal() => {}
                _ => return Ok(true),
            }
            if tokio::time::Instant::now() >= give_up {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            round += 1;
        }
    }

    /// Acts on another replica's notification.
    async fn on_notice(self: &Arc<Self>, payload: &str) {
        if let Some(run_id) = payload.strip_prefix("cancel ") {
            if let Some(active) = self.active(run_id) {
                match self.store.recorded_cancel(run_id).await {
                    Ok(Some(cancel)) => active.cancel(cancel.reason, cancel.by),
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(run_id, error = %err, "cannot read a recorded cancel")
                    }
                }
            }
        } else if payload == "released" && !self.is_handing_over() {
            self.resume_orphans().await;
        }
    }

    /// Cancels the runs driven here whose cancel another replica recorded.
    pub(super) async fn apply_recorded_cancels(&self) {
        match self.store.cancels_for(&self.owner).await {
            Ok(cancels) => {
                for (run_id, cancel) in cancels {
                    if let Some(active) = self.active(&run_id) {
                        active.cancel(cancel.reason, cancel.by);
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the cancels recorded for this replica's runs")
            }
        }
    }

    /// Records where the other replicas reach this one (PostgreSQL only).
    pub(super) async fn advertise(&self) {
        if !self.store.is_shared() {
            return;
        }
        if let Err(err) = self
            .store
            .advertise(&self.owner, &self.config.advertise_url, self.lease_until())
            .await
        {
            tracing::warn!(error = %err, "cannot advertise this replica's address");
        }
    }

    /// A channel to the replica driving `run_id`, if another live one does
    /// and advertises an address.
    pub(super) async fn driver_channel(
        &self,
        run_id: &str,
    ) -> Option<agentmesh_kit::client::MeshChannel> {
        if !self.store.is_shared() {
            return None;
        }
        let (owner, url) = match self.store.driver_of(run_id).await {
            Ok(found) => found?,
            Err(err) => {
                tracing::debug!(run_id, error = %err, "cannot read which replica drives the run");
                return None;
            }
        };
        if owner == self.owner || url.is_empty() {
            return None;
        }
        let mut channels = lock(&self.replica_channels);
        if let Some(channel) = channels.get(&url) {
            return Some(channel.clone());
        }
        match self.clients.channel(&url) {
            Ok(channel) => {
                // Replicas come and go with new addresses: forget the old
                // channels rather than keep one per address ever seen.
                if channels.len() >= MAX_REPLICA_CHANNELS {
                    channels.clear();
                }
                channels.insert(url, channel.clone());
                Some(channel)
            }
            Err(err) => {
                tracing::warn!(url, error = %err, "another replica advertises an address that cannot be used");
                None
            }
        }
    }
}
