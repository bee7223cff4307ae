//! Storing what a run did: once per step, never once per token.
//!
//! [`Engine::flush`] writes a step in one transaction — the events pending
//! in the run's [`ActiveRun`] buffer, the run row, the checkpoint, this
//! instance's claim, and the step's callback when the run's callback asks
//! for every step (the run's end always has one, stored by
//! [`Engine::store_end`]; see `crate::callbacks`) — and only then marks the
//! events stored; a failure keeps
//! them pending for the next flush, so a crash loses at most the step in
//! flight, which is run again from the checkpoint. [`Engine::store_end`]
//! stores the run's end the same way, with the withheld terminal event,
//! retrying a while because an end that is not stored makes another
//! instance resume the run.
//!
//! Every write is fenced by this instance's claim: a driver whose claim was
//! taken (it stalled past its lease and another replica resumed the run)
//! writes nothing and stops driving the run ([`ActiveRun::release`]). A
//! flush also raises the run's sequence reservation, and brings back a
//! cancel recorded by another replica. [`Engine::emit`] numbers an event
//! only within the reservation, storing a larger one first when a step
//! outgrows it.

use std::time::Duration;

use agentmesh_kit::time::now_micros;
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};

use super::active::ActiveRun;
use super::{DATABASE, Engine};
use crate::callbacks::{end_callback, step_callback};
use crate::store::{Checkpoint, Flushed, RESERVE_BLOCK, RunRow};

/// Attempts at storing a run's end before giving up on it (another instance
/// resumes the run from its last checkpoint once its claim runs out).
const END_ATTEMPTS: u32 = 8;

/// Copies the checkpoint's counters onto the run row.
pub(super) fn apply(run: &mut RunRow, checkpoint: &Checkpoint) {
    run.steps = checkpoint.step;
    run.tool_calls = checkpoint.tool_calls;
    run.input_tokens = checkpoint.input_tokens;
    run.output_tokens = checkpoint.output_tokens;
}

impl Engine {
    /// Stores the pending events, the run row and the checkpoint; true when
    /// stored. A failure keeps the events pending for the next flush; a
    /// lost claim releases the run (see the module's doc).
    pub(super) async fn flush(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        checkpoint: Option<&Checkpoint>,
    ) -> bool {
        self.flush_with(run, active, checkpoint, None).await
    }

    /// [`Self::flush`], storing also `first`: an event numbered but not yet
    /// sent (a run's first event is stored before it goes out, so that a
    /// run that never stored one has streamed nothing).
    pub(super) async fn flush_with(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        checkpoint: Option<&Checkpoint>,
        first: Option<&pb::RunEvent>,
    ) -> bool {
        let (mut events, mut last_sequence) = active.unstored();
        if let Some(first) = first {
            events.push(first.clone());
            last_sequence = last_sequence.max(first.sequence);
        }
        run.last_sequence = last_sequence;
        let reserve_to = last_sequence.saturating_add(RESERVE_BLOCK);
        // A completed step (not a run's start, step 0) is reported to a
        // callback that asks for every step.
        let callback = checkpoint
            .filter(|checkpoint| checkpoint.step >= 1)
            .and_then(|checkpoint| step_callback(run, checkpoint.step, now_micros()));
        // Boxed: a store write's future is some 9 KiB (the database
        // driver's), and unboxed it would be part of every open run's task
        // for the run's whole life, not only while it writes.
        let flushed = Box::pin(self.store.flush(
            run,
            &events,
            checkpoint,
            (&self.owner, self.lease_until()),
            reserve_to,
            callback.as_ref(),
        ))
        .await;
        match flushed {
            Ok(Flushed::Stored { cancel }) => {
                if callback.is_some() {
                    self.callbacks.wake();
                }
                active.stored(last_sequence);
                active.reserved(reserve_to);
                if let Some(cancel) = cancel {
                    active.cancel(cancel.reason, cancel.by);
                }
                if self.is_handing_over() {
                    active.release();
                }
                true
            }
            Ok(Flushed::ClaimLost) => {
                self.claim_lost(active);
                false
            }
            Err(err) => {
                tracing::error!(run_id = %run.run_id, error = %err, "cannot store the run's step");
                self.audit_error(
                    DATABASE,
                    err.code(),
                    format!("cannot store a step of run {}: {err}", run.run_id),
                    Some(run),
                );
                false
            }
        }
    }

    /// Another replica claims the run now: stop driving it here.
    fn claim_lost(&self, active: &ActiveRun) {
        tracing::warn!(
            run_id = active.run_id(),
            "another replica claims this run now (this one stalled past its lease); \
             stopping it here without storing more"
        );
        self.metrics.replicas().claim_lost();
        active.release();
    }

    /// Numbers `event` and sends it to the followers, first storing a
    /// larger sequence reservation when the run has used up its own
    /// (retried while the store fails: an event never goes out unreserved).
    /// A lost claim releases the run, and the event is dropped.
    pub(super) async fn emit(&self, active: &ActiveRun, event: run_event::Event) {
        // One lock for an event within the reservation (every token).
        let Some((event, upto)) = active.emit_reserved(event, RESERVE_BLOCK) else {
            return;
        };
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.reserve(active.run_id(), &self.owner, upto).await {
                Ok(true) => {
                    active.reserved(upto);
                    break;
                }
                Ok(false) => {
                    self.claim_lost(active);
                    return;
                }
                Err(err) => {
                    tracing::warn!(run_id = active.run_id(), error = %err, "cannot reserve sequence numbers yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        active.emit(event);
    }

    /// Stores the run's end: the pending events and the reserved `terminal`
    /// event, the final row and checkpoint (the session's history for the
    /// next run). Retries a while (the store may be restarting); true once
    /// stored.
    pub(super) async fn store_end(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        checkpoint: &Checkpoint,
        terminal: &pb::RunEvent,
    ) -> bool {
        let mut delay = Duration::from_millis(50);
        run.last_sequence = terminal.sequence;
        // Built once: every try stores the same delivery (at most one end
        // callback per run is stored anyway).
        let callback = end_callback(run, terminal, now_micros());
        for attempt in 1..=END_ATTEMPTS {
            let (mut events, _) = active.unstored();
            events.push(terminal.clone());
            let reserve_to = terminal.sequence;
            // Boxed, as in `flush_with`.
            let stored = Box::pin(self.store.flush(
                run,
                &events,
                Some(checkpoint),
                (&self.owner, self.lease_until()),
                reserve_to,
                callback.as_ref(),
            ));
            match stored.await {
                Ok(Flushed::Stored { .. }) => {
                    if callback.is_some() {
                        self.callbacks.wake();
                    }
                    return true;
                }
                Ok(Flushed::ClaimLost) => {
                    // The replica that claims it now ends it.
                    self.claim_lost(active);
                    return false;
                }
                Err(err) if attempt == END_ATTEMPTS => {
                    tracing::error!(run_id = %run.run_id, error = %err, "could not store the end of the run; another instance will resume it from its last checkpoint");
                    self.audit_error(
                        DATABASE,
                        err.code(),
                        format!("could not store the end of run {}: {err}", run.run_id),
                        Some(run),
                    );
                }
                Err(err) => {
                    tracing::warn!(run_id = %run.run_id, error = %err, "cannot store the end of the run yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        false
    }
}
