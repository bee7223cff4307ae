//! Storing what a run did: once per step, never once per token.
//!
//! [`Engine::flush`] writes a step in one transaction — the events pending
//! in the run's [`ActiveRun`] buffer, the run row, the checkpoint and this
//! instance's claim — and only then marks the events stored; a failure keeps
//! them pending for the next flush, so a crash loses at most the step in
//! flight, which is run again from the checkpoint. [`Engine::store_end`]
//! stores the run's end the same way, with the withheld terminal event,
//! retrying a while because an end that is not stored makes another
//! instance resume the run.

use std::time::Duration;

use agentmesh_proto::orchestrator::v1 as pb;

use super::active::ActiveRun;
use super::{DATABASE, Engine};
use crate::store::{Checkpoint, RunRow};

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
    /// stored. A failure keeps the events pending for the next flush.
    pub(super) async fn flush(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        checkpoint: Option<&Checkpoint>,
    ) -> bool {
        let (events, last_sequence) = active.unstored();
        run.last_sequence = last_sequence;
        match self
            .store
            .flush(run, &events, checkpoint, &self.owner, self.lease_until())
            .await
        {
            Ok(()) => {
                active.stored(last_sequence);
                true
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
        for attempt in 1..=END_ATTEMPTS {
            let (mut events, _) = active.unstored();
            events.push(terminal.clone());
            run.last_sequence = terminal.sequence;
            match self
                .store
                .flush(
                    run,
                    &events,
                    Some(checkpoint),
                    &self.owner,
                    self.lease_until(),
                )
                .await
            {
                Ok(()) => return true,
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
