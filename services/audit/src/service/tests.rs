//! What a client sees when the store fails: the shared store-error mapping
//! at the handlers, with no SQL or driver text in the message.

use agentmesh_kit::metrics::prometheus::Registry;
use agentmesh_storage::{Database, StorageConfig};
use tonic::Code;

use super::*;
use crate::metrics::AuditMetrics;

/// The handlers over a SQLite database in `dir`, migrated or not.
async fn service(dir: &std::path::Path, migrated: bool) -> (AuditServiceImpl, Database) {
    let storage = StorageConfig {
        data_dir: dir.to_owned(),
        ..StorageConfig::default()
    };
    let db = Database::connect(&storage, "audit").await.unwrap();
    if migrated {
        db.migrate(&crate::store::MIGRATIONS).await.unwrap();
    }
    let store = Store::new(db.clone());
    let metrics = AuditMetrics::new(&Registry::new()).unwrap();
    let writer = Writer::start(store.clone(), 100, metrics);
    let ready = Arc::new(OnceLock::new());
    ready.set(Ready { store, writer }).unwrap();
    let config = Arc::new(Config::default());
    let redactor = Arc::new(Redactor::new(&[]).unwrap());
    (AuditServiceImpl::new(config, ready, redactor), db)
}

fn event(id: &str) -> AuditEvent {
    AuditEvent {
        event_id: id.into(),
        r#type: pb::EventType::ToolCall as i32,
        ..Default::default()
    }
}

/// Words of the failing SQL and of SQLite's message about it.
fn assert_no_sql_text(status: &Status) {
    for word in [
        "audit_events",
        "no such table",
        "SELECT",
        "sqlite",
        "database error",
    ] {
        assert!(
            !status.message().contains(word),
            "{word:?} in the client's message: {status:?}"
        );
    }
    assert!(status.message().contains("service log"), "{status:?}");
}

#[tokio::test]
async fn a_failing_database_is_not_quoted_to_the_client() {
    let dir = tempfile::tempdir().unwrap();
    // Never migrated: every statement fails with "no such table".
    let (service, _db) = service(dir.path(), false).await;

    let query = service
        .query(Request::new(pb::QueryRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(query.code(), Code::Internal, "{query:?}");
    assert_no_sql_text(&query);

    let record = service
        .record(Request::new(pb::RecordRequest {
            events: vec![event("e1")],
        }))
        .await
        .unwrap_err();
    assert_eq!(record.code(), Code::Internal, "{record:?}");
    assert_no_sql_text(&record);
}

#[tokio::test]
async fn corrupt_stored_events_are_data_loss_not_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let (service, db) = service(dir.path(), true).await;
    service
        .record(Request::new(pb::RecordRequest {
            events: vec![event("e1")],
        }))
        .await
        .unwrap();
    // Damage the stored body behind the append-only trigger's back.
    agentmesh_storage::with_pool!(&db, |pool| {
        sqlx::query("DROP TRIGGER audit_events_no_update")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_events SET body = X'FFFFFFFF'")
            .execute(pool)
            .await
            .unwrap();
    });

    let query = service
        .query(Request::new(pb::QueryRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(query.code(), Code::DataLoss, "{query:?}");
    assert!(!query.message().contains("wire type"), "{query:?}");
}
