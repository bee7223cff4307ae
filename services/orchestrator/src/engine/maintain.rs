//! Keeping runs alive across instances: this instance renews its claims on
//! the runs it drives every third of `run_lease`, and claims unfinished runs
//! whose claim ran out (their instance died), resuming each from its last
//! checkpoint through [`Engine::spawn`]. A resumed run waits for its places
//! like any other, but is never refused.

use std::sync::Arc;

use agentmesh_kit::RequestContext;

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
        engine.spawn(run, checkpoint, RequestContext::default(), places, None);
    }
}
