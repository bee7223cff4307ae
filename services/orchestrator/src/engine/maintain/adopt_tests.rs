//! Runs claimed by this instance that no task drives — what a start dropped
//! between storing the run and spawning its task used to leave behind,
//! QUEUED until a restart — are adopted by the next look of the
//! maintenance, and at once by CancelRun.

use std::time::Duration;

use agentmesh_proto::orchestrator::v1 as pb;

use super::*;
use crate::config::DEFAULT_AGENT;
use crate::engine::testing::{self, undriven};
use crate::store::RunRow;
use crate::store::{Created, Tenants};

const PATIENCE: Duration = Duration::from_secs(20);
const METHOD: &str = "/agentmesh.orchestrator.v1.OrchestratorService/StartRun";

/// An engine whose tenant `t` has one place, taken by the test (so an
/// adopted run of `t` stays QUEUED), and a run of `t` stored and claimed
/// here without a task: the state the race left.
async fn with_an_undriven_run(
    dir: &tempfile::TempDir,
) -> (Arc<Engine>, RunRow, crate::admission::Places) {
    let engine = testing::engine(
        dir,
        Config {
            max_concurrent_runs_per_tenant: 1,
            ..testing::config()
        },
    )
    .await;
    let held = engine
        .admission()
        .admit("t", DEFAULT_AGENT, METHOD)
        .unwrap();
    let run = testing::run("t");
    let created = engine
        .store()
        .create_run(&run, true, engine.owner(), engine.lease_until())
        .await
        .unwrap();
    assert!(matches!(created, Created::New(_)));
    assert_eq!(undriven(&engine).await.len(), 1);
    (engine, run, held)
}

async fn stored(engine: &Engine, run_id: &str) -> RunRow {
    engine
        .store()
        .get_run(Tenants::All, run_id)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn the_next_look_drives_a_run_claimed_here_that_nothing_drives() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, run, held) = with_an_undriven_run(&dir).await;
    engine.look().await;
    assert!(undriven(&engine).await.is_empty());
    let active = engine.active(&run.run_id).expect("adopted");
    // Waiting for its tenant's place: visibly QUEUED, driven here.
    assert_eq!(
        stored(&engine, &run.run_id).await.state,
        pb::RunState::Queued
    );
    // A second look adopts nothing twice.
    engine.look().await;
    assert!(Arc::ptr_eq(&active, &engine.active(&run.run_id).unwrap()));
    // Given its place it runs (and fails: its peers are not there).
    drop(held);
    tokio::time::timeout(PATIENCE, active.ended())
        .await
        .unwrap();
    assert!(stored(&engine, &run.run_id).await.is_terminal());
    assert!(engine.active(&run.run_id).is_none());
}

#[tokio::test]
async fn a_cancel_adopts_a_run_claimed_here_that_nothing_drives() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, run, _held) = with_an_undriven_run(&dir).await;
    let active = engine
        .take_over(&run.run_id)
        .await
        .unwrap()
        .expect("this instance's run is taken over");
    active.cancel("stuck".into(), "alice".into());
    tokio::time::timeout(PATIENCE, active.ended())
        .await
        .unwrap();
    let ended = stored(&engine, &run.run_id).await;
    assert_eq!(ended.state, pb::RunState::Cancelled);
    assert!(undriven(&engine).await.is_empty());
    // An ended run is not taken over again.
    assert!(engine.take_over(&run.run_id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_run_another_live_instance_claims_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let engine = testing::engine(&dir, testing::config()).await;
    let run = testing::run("t");
    engine
        .store()
        .create_run(&run, true, "orchestrator-elsewhere", engine.lease_until())
        .await
        .unwrap();
    assert!(engine.take_over(&run.run_id).await.unwrap().is_none());
    engine.look().await;
    assert!(engine.active(&run.run_id).is_none());
}
