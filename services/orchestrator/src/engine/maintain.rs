//! Keeping runs alive across instances: every third of `run_lease` this
//! instance renews its claims on its runs, adopts the runs it claims that no
//! task of it drives, and claims unfinished runs whose claim ran out (their
//! instance died), resuming each from its last checkpoint through
//! [`Engine::spawn`]. A resumed or adopted run waits for its places like
//! any other, but is never refused.
//!
//! A run claimed here but not driven is a defect, not a state: the run is
//! registered before it is stored, so it is driven unless something went
//! wrong between the two (a task that stopped, an end that could not be
//! stored). Such a run would otherwise keep its claim — renewed with the
//! others — and sit QUEUED or RUNNING until a restart. The look finds it,
//! says so (warn), and drives it; CancelRun adopts it at once
//! ([`Engine::take_over`]).
//!
//! No call is waiting on a resumed run, so its identity comes from the run
//! itself: the one it was started with, stored with it, is made current
//! ([`acting_for`]) around the run's task, so every call it makes to the
//! gateway and the tool runner carries this service's own credential plus
//! that end user's identity headers, as before the crash.

use std::sync::Arc;

use agentmesh_auth::{Identity, Mechanism};
use agentmesh_kit::RequestContext;
use agentmesh_storage::StoreError;
use http::HeaderMap;
use http::header::HeaderValue;

use super::{ActiveRun, Engine, Resume};
use crate::config::Config;
use crate::store::{Checkpoint, Claimed};

/// Orphans claimed per look.
const ORPHANS_PER_LOOK: i64 = 16;
/// This instance's claims checked per look for a driver.
const CLAIMS_PER_LOOK: i64 = 4096;

/// Keeps this instance's claims on its runs alive, drives the ones nothing
/// drives, and resumes runs whose instance died (their claim ran out), from
/// their last checkpoint. Runs until the task is aborted.
pub(crate) async fn maintain(engine: Arc<Engine>, config: Arc<Config>) {
    let period = config.run_lease / 3;
    loop {
        engine.look().await;
        tokio::time::sleep(period).await;
    }
}

/// Why a run is adopted, as its log line says.
#[derive(Debug, Clone, Copy)]
enum Why {
    /// Its instance stopped (its claim ran out).
    Orphan,
    /// Claimed by this instance, but no task drives it.
    Undriven,
    /// CancelRun asked for it.
    Cancel,
}

impl Engine {
    /// One look of the maintenance: renew, adopt the undriven, resume
    /// orphans.
    pub(crate) async fn look(self: &Arc<Self>) {
        if let Err(err) = self
            .store()
            .renew_leases(self.owner(), self.lease_until())
            .await
        {
            tracing::warn!(error = %err, "cannot renew the claims on this instance's runs");
        }
        self.advertise().await;
        self.apply_recorded_cancels().await;
        if self.is_handing_over() {
            // Its runs go to the other replicas now: take none.
            return;
        }
        self.adopt_undriven().await;
        self.resume_orphans().await;
    }

    /// Drives the runs this instance claims that no task of it drives.
    async fn adopt_undriven(self: &Arc<Self>) {
        let claimed = match self.store().claimed_by(self.owner(), CLAIMS_PER_LOOK).await {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the runs this instance claims");
                return;
            }
        };
        for run_id in claimed {
            if self.active(&run_id).is_some() {
                continue;
            }
            if let Err(err) = self.adopt(&run_id, Why::Undriven).await {
                tracing::warn!(run_id = %run_id, error = %err, "cannot adopt a run this instance claims");
            }
        }
    }

    /// Claims runs whose instance stopped (or handed them over) and drives
    /// them here.
    pub(super) async fn resume_orphans(self: &Arc<Self>) {
        let runs = match self
            .store()
            .claim_orphans(self.owner(), self.lease_until(), ORPHANS_PER_LOOK)
            .await
        {
            Ok(runs) => runs,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look for orphaned runs");
                return;
            }
        };
        for claim in runs {
            let run_id = claim.run.run_id.clone();
            if let Err(err) = self.adopt_claimed(claim, Why::Orphan).await {
                tracing::warn!(run_id = %run_id, error = %err, "cannot resume an orphaned run");
            }
        }
    }

    /// The run's live buffer for CancelRun: the task driving it here, or,
    /// when no task does, the run adopted now if this instance claims it or
    /// its claim ran out. `None`: another live instance drives it.
    pub(crate) async fn take_over(
        self: &Arc<Self>,
        run_id: &str,
    ) -> Result<Option<Arc<ActiveRun>>, StoreError> {
        if let Some(active) = self.active(run_id) {
            return Ok(Some(active));
        }
        self.adopt(run_id, Why::Cancel).await
    }

    /// Claims the unfinished run `run_id` (if it is this instance's or its
    /// claim ran out) and drives it from its checkpoint, unless a task of
    /// this instance drives it already. One adoption at a time, so the
    /// checks and the spawn are not raced by another adoption; a run's own
    /// task registers it before it is stored, so it is never raced by one.
    async fn adopt(
        self: &Arc<Self>,
        run_id: &str,
        why: Why,
    ) -> Result<Option<Arc<ActiveRun>>, StoreError> {
        let _one_at_a_time = self.adopting.lock().await;
        if let Some(active) = self.active(run_id) {
            return Ok(Some(active));
        }
        // Claimed again now (this instance's, or an orphan's claim ran out):
        // read after the check above, so a run that ended since is seen
        // ended and left alone.
        let Some(claim) = self
            .store()
            .claim(run_id, self.owner(), self.lease_until())
            .await?
        else {
            return Ok(None);
        };
        self.drive_claimed(claim, why).await
    }

    /// Drives a run claimed by [`Store::claim_orphans`] here, unless a task
    /// of this instance drives it already.
    async fn adopt_claimed(
        self: &Arc<Self>,
        claim: Claimed,
        why: Why,
    ) -> Result<Option<Arc<ActiveRun>>, StoreError> {
        let _one_at_a_time = self.adopting.lock().await;
        if let Some(active) = self.active(&claim.run.run_id) {
            return Ok(Some(active));
        }
        self.drive_claimed(claim, why).await
    }

    /// Drives the claimed run from its checkpoint (the caller holds
    /// `adopting`); a cancel recorded for it takes effect at once.
    async fn drive_claimed(
        self: &Arc<Self>,
        claim: Claimed,
        why: Why,
    ) -> Result<Option<Arc<ActiveRun>>, StoreError> {
        let run = &claim.run;
        let run_id = run.run_id.as_str();
        if run.is_terminal() {
            return Ok(None);
        }
        let checkpoint = self.store().checkpoint(run_id).await?;
        let step = checkpoint.as_ref().map_or(0, |c| c.step);
        match why {
            Why::Orphan => {
                tracing::info!(run_id, step, "resuming a run whose instance stopped");
            }
            Why::Undriven => tracing::warn!(
                run_id,
                step,
                state = run.state.as_str_name(),
                "found a run claimed by this instance that no task drives; driving it now"
            ),
            Why::Cancel => tracing::warn!(
                run_id,
                step,
                state = run.state.as_str_name(),
                "a cancel found a run claimed by this instance that no task drives; adopting it \
                 to cancel it"
            ),
        }
        let cancel = self.store().recorded_cancel(run_id).await?;
        let active = self.resume(claim, checkpoint);
        if let (Some(active), Some(cancel)) = (&active, cancel) {
            active.cancel(cancel.reason, cancel.by);
        }
        if !matches!(why, Why::Cancel) {
            self.metrics.replicas().resumed();
        }
        Ok(active)
    }

    /// Drives the claimed run from `checkpoint` with places it waits for (never
    /// refused), acting for its stored identity; the buffer of the task that
    /// drives it.
    fn resume(
        self: &Arc<Self>,
        claim: Claimed,
        checkpoint: Option<Checkpoint>,
    ) -> Option<Arc<ActiveRun>> {
        let Some(active) = self.register(&claim.run, Some(&claim)) else {
            // A task registered it meanwhile and drives it.
            return self.active(&claim.run.run_id);
        };
        // A sub-run resumes in its parent's place, as it started.
        let places = if claim.run.parent_run_id.is_some() {
            self.admission()
                .inherited(&claim.run.tenant, &claim.run.agent)
        } else {
            self.admission()
                .later(&claim.run.tenant, &claim.run.agent, claim.run.priority)
        };
        let context = acting_for(claim.run.identity.clone());
        let resume = Resume {
            checkpoint,
            abandoned: claim.abandoned,
        };
        self.spawn(
            claim.run,
            Arc::clone(&active),
            Some(resume),
            context,
            places,
            None,
        );
        Some(active)
    }
}

/// The context a resumed run's calls are made in: its stored identity.
/// A run stored before identities were has none, and resumes as it always
/// did (no forwarded identity). In the embedded mode nobody was asked, and
/// a call of the run forwarded only the tenant and subject labels it was
/// started with: so does its resume.
pub(crate) fn acting_for(identity: Option<Identity>) -> RequestContext {
    match identity {
        None => RequestContext::default(),
        Some(identity) if identity.mechanism == Mechanism::None => {
            let mut headers = HeaderMap::new();
            for (name, value) in [
                (agentmesh_auth::identity::TENANT, &identity.tenant),
                (agentmesh_auth::identity::SUBJECT, &identity.subject),
            ] {
                if let Ok(value) = HeaderValue::from_str(value)
                    && !value.is_empty()
                {
                    headers.insert(name, value);
                }
            }
            RequestContext::from_incoming(&mut headers, std::time::Instant::now())
                .with_identity(std::sync::Arc::new(identity), None)
        }
        Some(identity) => RequestContext::acting_for(identity),
    }
}

#[cfg(test)]
mod adopt_tests;
#[cfg(test)]
mod tests {
    use agentmesh_auth::{AllowList, AllowLists, Scope, ScopeSet};

    use super::*;

    #[test]
    fn a_resumed_run_acts_for_the_identity_it_was_started_with() {
        let identity = Identity {
            scopes: ScopeSet::EMPTY.with(Scope::RunsWrite),
            allow: AllowLists {
                tools: AllowList::only(["calculator"]),
                ..AllowLists::any()
            },
            credential_id: "am_test_abcdefgh".into(),
            mechanism: Mechanism::ApiKey,
            ..Identity::unauthenticated("acme", "alice")
        };
        let context = acting_for(Some(identity.clone()));
        assert_eq!(context.header("x-agentmesh-tenant"), Some("acme"));
        assert_eq!(
            context.header("x-agentmesh-allow"),
            Some("tools=calculator")
        );
        assert_eq!(
            context.header("x-agentmesh-credential"),
            Some("am_test_abcdefgh")
        );
        assert_eq!(context.identity(), Some(&identity));
        assert!(context.request_id().is_some());

        // The embedded mode forwards the labels only; an old run nothing.
        let labels = acting_for(Some(Identity::unauthenticated("acme", "")));
        assert_eq!(labels.header("x-agentmesh-tenant"), Some("acme"));
        assert_eq!(labels.header("x-agentmesh-subject"), None);
        assert_eq!(labels.header("x-agentmesh-scopes"), None);
        assert_eq!(acting_for(None).header("x-agentmesh-tenant"), None);
    }
}
