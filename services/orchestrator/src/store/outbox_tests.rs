//! The outbox on both backends: rows stored with their step or end (at most
//! one per run and event, none when the claim on the run is lost), claims
//! that count attempts and exclude each other, settling fenced by the
//! claim, and delivered rows never claimed again.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use crate::engine::testing;
use crate::store::testing::sqlite;
use crate::store::{Flushed, RunRow};
use agentmesh_kit::time::now_micros;

const OWNER: &str = "replica-a";

async fn postgres(server: &agentmesh_testkit::postgres::PostgresServer) -> Store {
    crate::store::testing::postgres(server, "outbox").await
}

fn callback(event: &str) -> NewCallback {
    NewCallback {
        delivery_id: uuid::Uuid::now_v7().to_string(),
        event: event.to_owned(),
        url: "https://hooks.example.com/x".to_owned(),
        payload: format!(r#"{{"type":"run.step","event":"{event}"}}"#),
    }
}

/// A run stored and claimed by [`OWNER`].
async fn stored_run(store: &Store) -> RunRow {
    let run = testing::run("acme");
    store
        .create_run(&run, true, OWNER, now_micros() + 60_000_000)
        .await
        .unwrap();
    run
}

async fn flush(store: &Store, run: &RunRow, owner: &str, callback: &NewCallback) -> Flushed {
    store
        .flush(
            run,
            &[],
            None,
            (owner, now_micros() + 60_000_000),
            0,
            Some(callback),
        )
        .await
        .unwrap()
}

async fn the_outbox_stores_claims_and_settles(store: Store) {
    let run = stored_run(&store).await;
    let first = callback("step:1");
    assert!(matches!(
        flush(&store, &run, OWNER, &first).await,
        Flushed::Stored { .. }
    ));
    // The same step again (a retried write): still one row, the first.
    assert!(matches!(
        flush(&store, &run, OWNER, &callback("step:1")).await,
        Flushed::Stored { .. }
    ));
    // A replica whose claim on the run is gone stores nothing.
    assert!(matches!(
        flush(&store, &run, "replica-b", &callback("end")).await,
        Flushed::ClaimLost
    ));
    assert_eq!(store.pending_callbacks().await.unwrap(), 1);

    let lease = now_micros() + 60_000_000;
    let claimed = store.claim_callbacks(OWNER, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let due = &claimed[0];
    assert_eq!(due.delivery_id, first.delivery_id);
    assert_eq!(
        (due.run_id.as_str(), due.tenant.as_str()),
        (run.run_id.as_str(), "acme")
    );
    assert_eq!(due.attempt, 1);
    // Claimed: nobody else gets it meanwhile.
    assert!(
        store
            .claim_callbacks("replica-b", lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Only the claimer settles it.
    let retry = Settled::Retry {
        at: 0,
        status: 503,
        error: "the receiver answered 503".into(),
    };
    assert!(
        !store
            .settle_callback(&due.delivery_id, "replica-b", &retry)
            .await
            .unwrap()
    );
    assert!(
        store
            .settle_callback(&due.delivery_id, OWNER, &retry)
            .await
            .unwrap()
    );

    // Due again at once (at = 0): the next claim is attempt 2, by anyone.
    let again = store.claim_callbacks("replica-b", lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    // Released (a shutdown, or a start on SQLite): due again, attempt 3.
    assert_eq!(
        store
            .release_callback_claims(Some("replica-b"))
            .await
            .unwrap(),
        1
    );
    let third = store.claim_callbacks(OWNER, lease, 10).await.unwrap();
    assert_eq!(third[0].attempt, 3);
    let delivered = Settled::Delivered { status: 204 };
    assert!(
        store
            .settle_callback(&due.delivery_id, OWNER, &delivered)
            .await
            .unwrap()
    );
    // Delivered: never claimed, settled or released again.
    assert!(
        !store
            .settle_callback(&due.delivery_id, OWNER, &delivered)
            .await
            .unwrap()
    );
    assert_eq!(store.release_callback_claims(None).await.unwrap(), 0);
    assert!(
        store
            .claim_callbacks(OWNER, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.pending_callbacks().await.unwrap(), 0);

    // A retry in the future is not due yet; a given-up one never again.
    assert!(matches!(
        flush(&store, &run, OWNER, &callback("end")).await,
        Flushed::Stored { .. }
    ));
    let end = store.claim_callbacks(OWNER, lease, 10).await.unwrap();
    let later = Settled::Retry {
        at: now_micros() + 60_000_000,
        status: 0,
        error: "timed out".into(),
    };
    assert!(
        store
            .settle_callback(&end[0].delivery_id, OWNER, &later)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_callbacks(OWNER, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.pending_callbacks().await.unwrap(), 1);
}

#[tokio::test]
async fn the_outbox_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    the_outbox_stores_claims_and_settles(sqlite(&dir).await).await;
}

#[tokio::test]
async fn the_outbox_on_postgres() {
    let server = agentmesh_testkit::postgres::shared().await;
    the_outbox_stores_claims_and_settles(postgres(&server).await).await;
}

/// Replicas claiming at the same moment never get the same callback.
#[tokio::test]
async fn replicas_claiming_at_once_share_nothing_on_postgres() {
    let server = agentmesh_testkit::postgres::shared().await;
    let store = postgres(&server).await;
    let mut stored = HashSet::new();
    for _ in 0..20 {
        let run = stored_run(&store).await;
        for event in ["step:1", "step:2", "end"] {
            let row = callback(event);
            stored.insert(row.delivery_id.clone());
            flush(&store, &run, OWNER, &row).await;
        }
    }
    let store = Arc::new(store);
    let claimers: Vec<_> = (0..6)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let owner = format!("replica-{n}");
                let mut mine = Vec::new();
                loop {
                    let claimed = store
                        .claim_callbacks(&owner, now_micros() + 60_000_000, 4)
                        .await
                        .unwrap();
                    if claimed.is_empty() {
                        return mine;
                    }
                    mine.extend(claimed.into_iter().map(|due| due.delivery_id));
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for claimer in claimers {
        for id in claimer.await.unwrap() {
            assert!(seen.insert(id), "a callback was claimed twice");
        }
    }
    assert_eq!(seen, stored);
}
