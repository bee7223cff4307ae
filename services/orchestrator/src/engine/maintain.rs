//! Keeping runs alive across instances: this instance renews its claims on
//! the runs it drives every third of `run_lease`, and claims unfinished runs
//! whose claim ran out (their instance died), resuming each from its last
//! checkpoint through [`Engine::spawn`]. A resumed run waits for its places
//! like any other, but is never refused.
//!
//! No call is waiting on a resumed run, so its identity comes from the run
//! itself: the one it was started with, stored with it, is made current
//! ([`acting_for`]) around the run's task, so every call it makes to the
//! gateway and the tool runner carries this service's own credential plus
//! that end user's identity headers, as before the crash.

use std::sync::Arc;

use agentmesh_auth::{Identity, Mechanism};
use agentmesh_kit::RequestContext;
use http::HeaderMap;
use http::header::HeaderValue;

use super::Engine;
use crate::config::Config;

/// Orphans claimed per look.
const ORPHANS_PER_LOOK: i64 = 16;

/// Keeps this instance's claims on its runs alive, and resumes runs whose
/// instance died (their claim ran out), from their last checkpoint. Runs
/// until the task is aborted.
pub(crate) async fn maintain(engine: Arc<Engine>, config: Arc<Config>) {
    let period = config.run_lease / 3;
    loop {
        if let Err(err) = engine
            .store()
            .renew_leases(engine.owner(), engine.lease_until())
            .await
        {
            tracing::warn!(error = %err, "cannot renew the claims on this instance's runs");
        }
        resume_orphans(&engine).await;
        tokio::time::sleep(period).await;
    }
}

/// Claims runs whose instance stopped and drives them here.
async fn resume_orphans(engine: &Arc<Engine>) {
    let runs = match engine
        .store()
        .claim_orphans(engine.owner(), engine.lease_until(), ORPHANS_PER_LOOK)
        .await
    {
        Ok(runs) => runs,
        Err(err) => {
            tracing::warn!(error = %err, "cannot look for orphaned runs");
            return;
        }
    };
    for run in runs {
        let checkpoint = match engine.store().checkpoint(&run.run_id).await {
            Ok(checkpoint) => checkpoint,
            Err(err) => {
                tracing::warn!(run_id = %run.run_id, error = %err, "cannot read the checkpoint of an orphaned run");
                continue;
            }
        };
        tracing::info!(run_id = %run.run_id, step = checkpoint.as_ref().map_or(0, |c| c.step), "resuming a run whose instance stopped");
        // Resumed runs take their places too, but wait for them
        // rather than being refused.
        let places = engine.admission().later(&run.tenant, &run.agent);
        let context = acting_for(run.identity.clone());
        engine.spawn(run, checkpoint, context, places, None);
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
