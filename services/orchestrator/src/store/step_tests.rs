//! Steps as written, on both backends and on SQLite without group commit:
//! many runs' steps at once all stored (on SQLite, sharing commits), a
//! lost claim among them writing nothing and failing no other, and a step
//! written twice (a write its caller stopped waiting for, then retried)
//! stored once.

use std::sync::Arc;

use agentmesh_kit::time::now_micros;
use agentmesh_proto::orchestrator::v1 as pb;

use crate::engine::testing;
use crate::store::testing::sqlite;
use crate::store::{Flushed, RunRow, Store};

const OWNER: &str = "replica-a";

fn event(sequence: i32) -> pb::RunEvent {
    pb::RunEvent {
        sequence,
        ..pb::RunEvent::default()
    }
}

async fn flush(store: &Store, run: &RunRow, owner: &str, events: &[pb::RunEvent]) -> Flushed {
    store
        .flush(
            run,
            events,
            None,
            (owner, now_micros() + 60_000_000),
            0,
            None,
        )
        .await
        .unwrap()
}

async fn steps_of_many_runs_at_once(store: Store) {
    let store = Arc::new(store);
    let mut runs = Vec::new();
    for _ in 0..40 {
        let run = testing::run("acme");
        store
            .create_run(&run, true, OWNER, now_micros() + 60_000_000)
            .await
            .unwrap();
        runs.push(run);
    }
    // Each run writes three steps of two events; every fifth is written by
    // a replica that does not claim it.
    let writers: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(n, run)| {
            let (store, run) = (Arc::clone(&store), run.clone());
            let owner = if n % 5 == 0 { "replica-b" } else { OWNER };
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for step in 0..3 {
                    let events = [event(step * 2 + 1), event(step * 2 + 2)];
                    outcomes.push(flush(&store, &run, owner, &events).await);
                }
                outcomes
            })
        })
        .collect();
    for (n, (writer, run)) in writers.into_iter().zip(&runs).enumerate() {
        let outcomes = writer.await.unwrap();
        let stored = store.events(&run.run_id, 0, i32::MAX).await.unwrap();
        if n % 5 == 0 {
            assert!(outcomes.iter().all(|o| *o == Flushed::ClaimLost));
            assert!(stored.is_empty());
        } else {
            assert!(
                outcomes
                    .iter()
                    .all(|o| *o == Flushed::Stored { cancel: None })
            );
            let sequences: Vec<i32> = stored.iter().map(|e| e.sequence).collect();
            assert_eq!(sequences, (1..=6).collect::<Vec<_>>());
        }
    }
    // The same step again: written, and its events stored once.
    let run = &runs[1];
    let again = [event(5), event(6), event(7)];
    assert_eq!(
        flush(&store, run, OWNER, &again).await,
        Flushed::Stored { cancel: None }
    );
    let sequences: Vec<i32> = (store.events(&run.run_id, 0, i32::MAX).await.unwrap())
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(sequences, (1..=7).collect::<Vec<_>>());
}

#[tokio::test]
async fn steps_on_sqlite_commit_together() {
    let dir = tempfile::tempdir().unwrap();
    steps_of_many_runs_at_once(sqlite(&dir).await).await;
}

#[tokio::test]
async fn steps_on_sqlite_without_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = agentmesh_storage::Database::connect(
        &agentmesh_storage::StorageConfig {
            data_dir: dir.path().to_owned(),
            group_commit: false,
            ..agentmesh_storage::StorageConfig::default()
        },
        "orchestrator",
    )
    .await
    .unwrap();
    db.migrate(&crate::store::MIGRATIONS).await.unwrap();
    steps_of_many_runs_at_once(Store::new(db, false)).await;
}

#[tokio::test]
async fn steps_on_postgres() {
    let server = agentmesh_testkit::postgres::shared().await;
    steps_of_many_runs_at_once(crate::store::testing::postgres(&server, "steps").await).await;
}
