//! A run's [`Places`]: waiting for its turn, its deadline, and giving back
//! what it held when dropped.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt as _};

use super::metrics::Rejection;
use super::{Places, RETRY_AFTER, Stage};

impl Places {
    /// Waits until the run holds its place (never refused). Dropping the
    /// future keeps the run's turn; dropping the places gives it up.
    pub(crate) async fn acquire(&mut self) {
        loop {
            match &mut self.stage {
                Stage::Held | Stage::Inherited => return,
                Stage::Later => {
                    let inner = Arc::clone(&self.inner);
                    let mut state = inner.lock();
                    let (ticket, granted) =
                        inner.enqueue(&mut state, &self.tenant, &self.agent, self.priority);
                    inner.dispatch(&mut state);
                    self.stage = Stage::Waiting { ticket, granted };
                }
                Stage::Waiting { granted, .. } => {
                    if granted.await.is_ok() {
                        self.stage = Stage::Held;
                        return;
                    }
                    // Never happens (the grant is sent before the sender
                    // goes); queue again rather than run without a place.
                    self.stage = Stage::Later;
                }
            }
        }
    }

    /// When a queued new run stops waiting (`max_queue_wait`); none for a
    /// resumed run, or without the setting.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Counts a run that waited until its [`Self::deadline`].
    pub(crate) fn timed_out(&self) -> Status {
        self.inner
            .metrics
            .rejected(&self.tenant, Rejection::WaitTimeout);
        let waited = self.inner.limits.max_wait.unwrap_or_default();
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(RETRY_AFTER));
        Status::with_error_details(
            tonic::Code::ResourceExhausted,
            format!(
                "the run waited {waited:?} in this orchestrator's queue without getting a place \
                 (max_queue_wait); its tenant or the instance stayed at its limit; retry later"
            ),
            details,
        )
    }

    /// Whether the run holds its place.
    #[cfg(test)]
    pub(crate) fn held(&self) -> bool {
        matches!(self.stage, Stage::Held)
    }
}

impl Drop for Places {
    fn drop(&mut self) {
        let inner = Arc::clone(&self.inner);
        let mut state = inner.lock();
        match &mut self.stage {
            Stage::Held => inner.release(&mut state, &self.tenant, &self.agent),
            Stage::Waiting { ticket, granted } => {
                // Under the lock: either granted already (then give the
                // place back) or still queued (then leave the queue).
                if granted.try_recv().is_ok() {
                    inner.release(&mut state, &self.tenant, &self.agent);
                } else {
                    inner.leave(&mut state, &self.tenant, *ticket);
                }
            }
            Stage::Later | Stage::Inherited => return,
        }
        inner.dispatch(&mut state);
    }
}
