//! Schema migrations as a deployment meets them, with real audit binaries on
//! one PostgreSQL database: replicas starting at the same moment (a
//! Deployment scaled up, or a rollout) each migrate at start-up, and must
//! take turns so every migration is applied once and every replica comes up
//! ready; and a replica of an older release, starting on a database a newer
//! release has already migrated (a rolling upgrade), must start and keep
//! writing, because migrations only add.
//!
//! The migrations expected are the files under
//! `services/audit/migrations/postgres/` (`NNNN_name.sql`, version NNNN).

#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::path::PathBuf;
use std::time::Duration;

use agentmesh_proto::audit::v1::audit_service_client::AuditServiceClient;
use agentmesh_proto::audit::v1::{
    AuditEvent, EventType, Outcome, RecordRequest, ToolCallDetails, audit_event::Details,
};
use agentmesh_tests::{RunningBinary, channel, wait_serving, within};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// Replicas started at once.
const REPLICAS: usize = 4;
const AUDIT: &str = "agentmesh.audit.v1.AuditService";

/// The versions of the audit service's PostgreSQL migrations, from the
/// file names.
fn expected_versions() -> Vec<i64> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../services/audit/migrations/postgres");
    let mut versions: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql"))
        .map(|name| name.split('_').next().unwrap().parse().unwrap())
        .collect();
    versions.sort_unstable();
    assert!(!versions.is_empty(), "no migrations in {}", dir.display());
    versions
}

/// Starts an audit binary on `url` in a directory of its own (its SQLite
/// default must not be what it uses) and waits until it is SERVING.
async fn start_audit(url: &str) -> (RunningBinary, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let audit = RunningBinary::start(
        "agentmesh-audit",
        &[],
        &[("AGENTMESH_AUDIT__STORAGE__URL", url)],
        dir.path(),
    )
    .await;
    within(
        "the replica to be ready",
        Duration::from_secs(60),
        wait_serving(channel(audit.grpc), AUDIT),
    )
    .await;
    (audit, dir)
}

/// `(version, success)` of every row of `_sqlx_migrations`, in order.
async fn applied(db: &mut PgConnection) -> Vec<(i64, bool)> {
    sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(db)
        .await
        .unwrap()
}

async fn tables(db: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY table_name",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

fn tool_call(id: &str) -> AuditEvent {
    AuditEvent {
        event_id: id.to_owned(),
        r#type: EventType::ToolCall as i32,
        service: "tool-runner".into(),
        tenant: "acme".into(),
        run_id: "run-1".into(),
        outcome: Outcome::Success as i32,
        details: Some(Details::ToolCall(ToolCallDetails {
            tool: "calculator".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn record(audit: &RunningBinary, id: &str) {
    let response = AuditServiceClient::new(channel(audit.grpc))
        .record(RecordRequest {
            events: vec![tool_call(id)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.accepted_count, 1, "{response:?}");
}

#[tokio::test]
async fn replicas_starting_at_once_apply_each_migration_once_and_all_come_up() {
    let server = agentmesh_testkit::postgres::shared().await;
    let url = server.create_database("deploy_migrations").await;
    let replicas = within(
        "four replicas starting at once",
        Duration::from_secs(120),
        futures::future::join_all((0..REPLICAS).map(|_| start_audit(&url))),
    )
    .await;
    assert_eq!(replicas.len(), REPLICAS);

    let mut db = PgConnection::connect(&url).await.unwrap();
    let expected: Vec<(i64, bool)> = expected_versions().into_iter().map(|v| (v, true)).collect();
    assert_eq!(
        applied(&mut db).await,
        expected,
        "each migration once, all succeeded"
    );
    let tables = tables(&mut db).await;
    for table in ["audit_chains", "audit_events", "audit_log_state"] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing: {tables:?}"
        );
    }
    // Every replica writes to the one log.
    for (index, (audit, _)) in replicas.iter().enumerate() {
        record(audit, &format!("e-{index}")).await;
    }
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT event_id FROM audit_events WHERE event_id LIKE 'e-%' ORDER BY event_id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let expected: Vec<String> = (0..REPLICAS).map(|index| format!("e-{index}")).collect();
    assert_eq!(stored, expected);
    db.close().await.unwrap();
}

#[tokio::test]
async fn an_older_replica_starts_and_writes_on_a_schema_a_newer_release_migrated() {
    let server = agentmesh_testkit::postgres::shared().await;
    let url = server.create_database("deploy_migrations_upgrade").await;
    let (first, _first_dir) = start_audit(&url).await;
    record(&first, "before").await;

    // A newer release migrates: an additive change (a nullable column, an
    // index) recorded under a version this binary does not know.
    let mut db = PgConnection::connect(&url).await.unwrap();
    sqlx::query("ALTER TABLE audit_events ADD COLUMN newer_release_field TEXT")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations \
         (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer release', TRUE, '\\x00'::bytea, 0)",
    )
    .execute(&mut db)
    .await
    .unwrap();

    // This release's binary, as an old replica during the rollout: it
    // starts (no "missing migration" refusal) and keeps writing.
    let (older, _older_dir) = start_audit(&url).await;
    record(&older, "during-rollout").await;
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT event_id FROM audit_events \
         WHERE event_id IN ('before', 'during-rollout') ORDER BY event_id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(stored, ["before", "during-rollout"]);
    let versions: Vec<i64> = applied(&mut db).await.into_iter().map(|(v, _)| v).collect();
    assert_eq!(versions.last(), Some(&99_990_101_000_000));
    assert_eq!(versions.len(), expected_versions().len() + 1);
    db.close().await.unwrap();
}
