//! The store on both backends: event ids are unique per chain, and the
//! migration that made them so keeps every row of a log written before it.

use std::time::SystemTime;

use agentmesh_proto::audit::v1::{AuditEvent, EventType};
use agentmesh_storage::{Database, Migrations, StorageConfig};

use super::*;
use crate::event::Prepared;

/// A database of `backend` ("sqlite" or "postgres") with only the first
/// `versions` migrations applied; the PostgreSQL server is kept alive by
/// the returned guard.
async fn database(
    backend: &str,
    dir: &std::path::Path,
    versions: usize,
) -> (
    Database,
    Option<std::sync::Arc<agentmesh_testkit::postgres::PostgresServer>>,
) {
    let (url, server) = if backend == "postgres" {
        let server = agentmesh_testkit::postgres::shared().await;
        (server.create_database("audit_store").await, Some(server))
    } else {
        (format!("sqlite://{}", dir.join("audit.db").display()), None)
    };
    let config = StorageConfig {
        url: Some(url),
        data_dir: dir.to_owned(),
        ..StorageConfig::default()
    };
    let db = Database::connect(&config, "audit").await.unwrap();
    let first = Migrations {
        sqlite: &MIGRATIONS.sqlite[..versions],
        postgres: &MIGRATIONS.postgres[..versions],
    };
    db.migrate(&first).await.unwrap();
    (db, server)
}

fn prepared(index: usize, id: &str, tenant: &str) -> Prepared {
    Prepared::new(
        index,
        AuditEvent {
            event_id: id.into(),
            tenant: tenant.into(),
            r#type: EventType::ToolCall as i32,
            ..AuditEvent::default()
        },
        SystemTime::now(),
    )
}

async fn one_tenant_cannot_claim_another_tenants_ids(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (db, _server) = database(backend, dir.path(), MIGRATIONS.sqlite.len()).await;
    let store = Store::new(db);
    // Tenant "mallory" records the id that "acme" will use, first.
    let (written, _) = store.append(&[prepared(0, "e1", "mallory")]).await.unwrap();
    assert!(matches!(written[..], [Written::Stored(_)]));
    let (written, _) = store
        .append(&[
            prepared(0, "e1", "acme"),
            prepared(1, "e1", "acme"),
            prepared(2, "e1", "mallory"),
        ])
        .await
        .unwrap();
    let [
        Written::Stored(acme),
        Written::Duplicate(again),
        Written::Duplicate(_),
    ] = written[..]
    else {
        panic!("acme's e1 must be stored once, mallory's seen as a duplicate: {written:?}");
    };
    assert_eq!(acme, again);
    let chains = store.chains().await.unwrap();
    assert_eq!(chains.len(), 2);
}

async fn the_migration_keeps_every_row(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (db, _server) = database(backend, dir.path(), 1).await;
    let store = Store::new(db.clone());
    let batch: Vec<Prepared> = (0..50)
        .map(|i| prepared(i, &format!("e{i}"), if i % 2 == 0 { "acme" } else { "" }))
        .collect();
    store.append(&batch).await.unwrap();
    let before = store.chains().await.unwrap();

    db.migrate(&MIGRATIONS).await.unwrap();
    let after = store.chains().await.unwrap();
    assert_eq!(before, after);
    assert_eq!(store.state().await.unwrap().0, 50);
    let mut rows = 0;
    for head in &after {
        let stored = store.chain_rows(&head.chain, 0, None, 100).await.unwrap();
        let mut previous = head.anchor_hash.clone();
        for row in &stored {
            assert_eq!(row.previous_hash, previous);
            previous.clone_from(&row.hash);
        }
        assert_eq!(previous, head.head_hash);
        rows += stored.len();
    }
    assert_eq!(rows, 50);
    // The rebuilt table is still append-only, and ids are still unique
    // within a chain.
    let update = with_pool!(&db, |pool| {
        sqlx::query("UPDATE audit_events SET tool = 'x'")
            .execute(pool)
            .await
            .map(|_| ())
    });
    assert!(update.is_err());
    let delete = with_pool!(&db, |pool| {
        sqlx::query("DELETE FROM audit_events")
            .execute(pool)
            .await
            .map(|_| ())
    });
    assert!(delete.is_err());
    let (written, _) = store
        .append(&[prepared(0, "e0", "acme"), prepared(1, "e0", "globex")])
        .await
        .unwrap();
    assert!(matches!(
        written[..],
        [Written::Duplicate(_), Written::Stored(_)]
    ));
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name("sqlite").await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name("postgres").await;
            }
        }
    )*};
}

on_both_backends!(
    one_tenant_cannot_claim_another_tenants_ids,
    the_migration_keeps_every_row,
);
