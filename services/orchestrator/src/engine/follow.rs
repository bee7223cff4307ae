//! `StreamRun`/`Run` followers: a run's events after a given sequence,
//! stored ones first, then the live ones, until the terminal event or until
//! the client leaves (which does not stop the run).
//!
//! ```text
//! Follower::run ─┬ run driven here  ─▶ follow_live: snapshot of the buffer
//! (loops)        │                      → store up to `stored`, `pending`,
//!                │                      then the subscription (tail)
//!                └ run not driven here ─▶ follow_stored: read the store,
//!                                         poll again (driven elsewhere)
//! ```
//!
//! A run driven by another replica (on one PostgreSQL database) is
//! followed there: `follow_remote` opens StreamRun on that replica (marked
//! [`FORWARDED_BY`], so it is served from what that replica has and never
//! forwarded again) from the last sequence sent, and relays its events as
//! they come, tokens included. When that stream ends without the run's end
//! (the run moved, the replica stopped), the follower looks again: the
//! store, then the run's new driver. A replica that advertises no address,
//! or cannot be reached, is followed through the store.
//!
//! A follower only ever sends events with a sequence above the last it
//! sent, so the hand-over between the store, the pending events and the
//! subscription — and between follow_live and follow_stored when the run
//! ends or moves — never repeats an event; the snapshot ([`super::active`])
//! makes sure none is skipped. A follower that falls behind the broadcast
//! starts over from the store. Idle periods get heartbeats (sequence 0,
//! the run's state and the last sequence sent).

use std::sync::Arc;
use std::time::Duration;

use agentmesh_kit::time::{now_micros, timestamp_from_micros};
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use agentmesh_storage::StoreError;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tonic::Status;

use agentmesh_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;

use super::Engine;
use super::active::{ActiveRun, Snapshot};
use super::replicas::FORWARDED_BY;
use crate::store::RunRow;

/// How often a follower of a run driven elsewhere looks for new events.
const REMOTE_POLL: Duration = Duration::from_millis(200);

impl Engine {
    /// Sends the run's events after `after` to `sender`: the stored ones,
    /// then the live ones, until the terminal event or until the receiver
    /// goes away. Idle periods get heartbeats.
    ///
    /// `context` is the follower's call (its identity goes with a follow
    /// forwarded to the replica driving the run); `forwarded` says that
    /// call is itself such a follow: it is served from this replica only.
    pub(crate) async fn follow(
        self: Arc<Self>,
        run: RunRow,
        after: i32,
        sender: mpsc::Sender<Box<Result<pb::RunEvent, Status>>>,
        forwarded: bool,
    ) {
        let mut follower = Follower {
            engine: &self,
            run_id: run.run_id.clone(),
            last: after,
            sender,
            next_heartbeat: Instant::now() + self.config.heartbeat_interval,
            forwarded,
        };
        if let Err(FollowEnd::Error(status)) = follower.run().await {
            let _ = follower.sender.send(Box::new(Err(status))).await;
        }
    }
}

/// Why a follower stopped.
enum FollowEnd {
    /// The terminal event went out, or the client left.
    Done,
    /// The stream must end with this status.
    Error(Status),
}

struct Follower<'a> {
    engine: &'a Engine,
    run_id: String,
    /// The last sequence sent.
    last: i32,
    sender: mpsc::Sender<Box<Result<pb::RunEvent, Status>>>,
    next_heartbeat: Instant,
    /// Another replica forwarded this follow here.
    forwarded: bool,
}

/// Whether `event` ends its run.
fn is_terminal(event: &pb::RunEvent) -> bool {
    matches!(
        event.event,
        Some(
            run_event::Event::RunFinished(_)
                | run_event::Event::RunFailed(_)
                | run_event::Event::RunCancelled(_)
        )
    )
}

impl Follower<'_> {
    fn store_failed(&self, err: &StoreError) -> FollowEnd {
        FollowEnd::Error(self.engine.store_failed(err))
    }

    async fn run(&mut self) -> Result<(), FollowEnd> {
        loop {
            // The other ways are boxed: a follow's future lives as long as
            // its stream, and most of it is spent in `follow_live`.
            if let Some(active) = self.engine.active(&self.run_id) {
                self.follow_live(&active).await?;
            } else if self.forwarded {
                Box::pin(self.follow_stored_here()).await?;
            } else if let Some(channel) = Box::pin(self.engine.driver_channel(&self.run_id)).await {
                Box::pin(self.follow_remote(channel)).await?;
            } else {
                Box::pin(self.follow_stored()).await?;
            }
        }
    }

    /// Sends `event` unless it was sent already; `Done` after the terminal
    /// event or when the client left.
    async fn send(&mut self, event: pb::RunEvent) -> Result<(), FollowEnd> {
        if event.sequence <= self.last {
            return Ok(());
        }
        self.last = event.sequence;
        if let Some(time) = &event.time {
            let lag = now_micros() - (time.seconds * 1_000_000 + i64::from(time.nanos / 1000));
            #[expect(clippy::cast_precision_loss, reason = "a lag in microseconds")]
            self.engine
                .metrics
                .replicas()
                .follower_lag(lag as f64 / 1e6);
        }
        let terminal = is_terminal(&event);
        self.sender
            .send(Box::new(Ok(event)))
            .await
            .map_err(|_| FollowEnd::Done)?;
        self.next_heartbeat = Instant::now() + self.engine.config.heartbeat_interval;
        if terminal {
            return Err(FollowEnd::Done);
        }
        Ok(())
    }

    async fn heartbeat(&mut self, state: pb::RunState) -> Result<(), FollowEnd> {
        let beat = pb::RunEvent {
            run_id: self.run_id.clone(),
            sequence: 0,
            time: Some(timestamp_from_micros(now_micros())),
            event: Some(run_event::Event::Heartbeat(pb::Heartbeat {
                last_sequence: self.last,
                state: state.into(),
            })),
        };
        self.sender
            .send(Box::new(Ok(beat)))
            .await
            .map_err(|_| FollowEnd::Done)?;
        self.next_heartbeat = Instant::now() + self.engine.config.heartbeat_interval;
        Ok(())
    }

    /// Catch up from the store and the pending events, then tail the live
    /// ones. Returns to be called again when the run stops being driven here
    /// or this follower fell behind.
    async fn follow_live(&mut self, active: &ActiveRun) -> Result<(), FollowEnd> {
        let Snapshot {
            stored,
            pending,
            mut live,
        } = active.snapshot();
        if stored > self.last {
            // Boxed, as the other ways in `run`: this read is brief.
            for event in Box::pin(self.engine.store.events(&self.run_id, self.last, stored))
                .await
                .map_err(|err| self.store_failed(&err))?
            {
                self.send(event).await?;
            }
        }
        for event in pending {
            self.send(event).await?;
        }
        loop {
            tokio::select! {
                biased;
                received = live.recv() => match received {
                    Ok(event) => self.send(Arc::unwrap_or_clone(event)).await?,
                    // Fell behind, or the run ended: catch up again.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return Ok(()),
                },
                // Ended, or released to another replica without an end:
                // look again (the store, or the run's new driver).
                () = active.ended() => return Ok(()),
                () = tokio::time::sleep_until(self.next_heartbeat) => {
                    let state = active.state();
                    self.heartbeat(state).await?;
                }
                () = self.sender.closed() => return Err(FollowEnd::Done),
            }
            if active.has_ended() {
                return Ok(());
            }
        }
    }

    /// Follows the run on the replica driving it, from the last sequence
    /// sent, until that stream ends (the run ended, moved or that replica
    /// stops); the store is read for one poll instead when it cannot be
    /// reached or sends nothing.
    async fn follow_remote(
        &mut self,
        channel: agentmesh_kit::client::MeshChannel,
    ) -> Result<(), FollowEnd> {
        let limit = self.engine.config.server.max_message_bytes;
        let mut client = OrchestratorServiceClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let mut request = tonic::Request::new(pb::StreamRunRequest {
            run_id: self.run_id.clone(),
            after_sequence: self.last,
            ..pb::StreamRunRequest::default()
        });
        request.metadata_mut().insert(
            FORWARDED_BY,
            tonic::metadata::MetadataValue::from_static("orchestrator"),
        );
        let mut stream = match client.stream_run(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::debug!(run_id = %self.run_id, error = %status, "cannot follow the run on the replica driving it; reading the store");
                return self.follow_stored().await;
            }
        };
        self.engine.metrics.replicas().forwarded_follow();
        let mut relayed = false;
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(pb::StreamRunResponse {
                        event: Some(event), ..
                    })) => {
                        // Heartbeats are this follower's own business.
                        if event.sequence > 0 {
                            relayed = true;
                            self.send(event).await?;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) if relayed => return Ok(()),
                    Ok(None) | Err(_) => return self.follow_stored().await,
                },
                () = tokio::time::sleep_until(self.next_heartbeat) => {
                    self.heartbeat(pb::RunState::Running).await?;
                }
                () = self.sender.closed() => return Err(FollowEnd::Done),
            }
        }
    }

    /// A forwarded follow of a run not (or no longer) driven here: what the
    /// store has, then the run's end, or UNAVAILABLE so that the replica
    /// that forwarded it looks for the run's driver again.
    async fn follow_stored_here(&mut self) -> Result<(), FollowEnd> {
        self.replay_stored().await?;
        Err(FollowEnd::Error(Status::unavailable(format!(
            "run {} is not driven by this orchestrator replica (any more); follow it again \
             through any replica",
            self.run_id
        ))))
    }

    /// Replay from the store; for a run driven elsewhere, look again
    /// periodically.
    async fn follow_stored(&mut self) -> Result<(), FollowEnd> {
        let run = self.replay_stored().await?;
        tokio::select! {
            () = tokio::time::sleep(REMOTE_POLL) => {}
            () = self.sender.closed() => return Err(FollowEnd::Done),
        }
        if Instant::now() >= self.next_heartbeat {
            self.heartbeat(run.state).await?;
        }
        Ok(())
    }

    /// Sends the stored events after the last one sent: `Done` once the
    /// run's end went out, else the run as read before them.
    async fn replay_stored(&mut self) -> Result<RunRow, FollowEnd> {
        let run = self
            .engine
            .store
            .get_run_any_tenant(&self.run_id)
            .await
            .map_err(|err| self.store_failed(&err))?
            .ok_or_else(|| {
                FollowEnd::Error(Status::not_found(format!(
                    "run {} no longer exists",
                    self.run_id
                )))
            })?;
        for event in self
            .engine
            .store
            .events(&self.run_id, self.last, i32::MAX)
            .await
            .map_err(|err| self.store_failed(&err))?
        {
            self.send(event).await?;
        }
        if run.is_terminal() {
            // The terminal event is always stored with the terminal state.
            return Err(FollowEnd::Done);
        }
        Ok(run)
    }
}

#[cfg(test)]
mod tests;
