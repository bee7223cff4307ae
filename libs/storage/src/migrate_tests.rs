//! Tests of [`Database::migrate`] under a deployment's conditions: replicas
//! migrating one database at once, an older binary starting on a schema a
//! newer release has migrated, and a migration that fails part-way (its
//! advisory lock must not outlive it). Run on both backends where both
//! apply; the concurrent and lock cases are PostgreSQL's (a SQLite file has
//! one replica).

use std::time::Duration;

use super::*;

static V1: EmbeddedMigration = EmbeddedMigration {
    version: 1,
    description: "things",
    sql: "CREATE TABLE things (id BIGINT PRIMARY KEY, name TEXT NOT NULL)",
};
static V2: EmbeddedMigration = EmbeddedMigration {
    version: 2,
    description: "things by name",
    sql: "CREATE INDEX things_name ON things (name)",
};
static V3: EmbeddedMigration = EmbeddedMigration {
    version: 3,
    description: "thing colour",
    sql: "ALTER TABLE things ADD COLUMN colour TEXT",
};
static V1_CHANGED: EmbeddedMigration = EmbeddedMigration {
    version: 1,
    description: "things",
    sql: "CREATE TABLE things (id BIGINT PRIMARY KEY)",
};
static BROKEN: EmbeddedMigration = EmbeddedMigration {
    version: 1,
    description: "broken",
    sql: "CREATE TABLE broken (id BIGINT PRIMARY KEY); SELECT no_such_function()",
};

fn both(list: &'static [EmbeddedMigration]) -> Migrations {
    Migrations {
        sqlite: list,
        postgres: list,
    }
}

static OLD: [EmbeddedMigration; 2] = [V1, V2];
static NEW: [EmbeddedMigration; 3] = [V1, V2, V3];

/// A fresh database of `backend` ("sqlite" or "postgres"), and what keeps
/// it alive.
async fn fresh(
    backend: &str,
    dir: &std::path::Path,
) -> (
    StorageConfig,
    Option<std::sync::Arc<agentmesh_testkit::postgres::PostgresServer>>,
) {
    let (url, server) = if backend == "postgres" {
        let server = agentmesh_testkit::postgres::shared().await;
        (
            server.create_database("storage_migrate").await,
            Some(server),
        )
    } else {
        (format!("sqlite://{}", dir.join("m.db").display()), None)
    };
    let config = StorageConfig {
        url: Some(url),
        data_dir: dir.to_owned(),
        ..StorageConfig::default()
    };
    (config, server)
}

async fn applied(db: &Database) -> Vec<i64> {
    with_pool!(db, |pool| sqlx::query_scalar::<_, i64>(
        "SELECT version FROM _sqlx_migrations ORDER BY version"
    )
    .fetch_all(pool)
    .await
    .unwrap())
}

async fn an_older_binary_starts_on_a_newer_schema(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (config, _server) = fresh(backend, dir.path()).await;
    let new = Database::connect(&config, "svc").await.unwrap();
    new.migrate(&both(&NEW)).await.unwrap();
    // The older release knows versions 1 and 2 only: it starts, and keeps
    // reading and writing what it knows.
    let old = Database::connect(&config, "svc").await.unwrap();
    old.migrate(&both(&OLD)).await.unwrap();
    let inserted = with_pool!(&old, |pool| sqlx::query(
        "INSERT INTO things (id, name) VALUES (1, 'one')"
    )
    .execute(pool)
    .await
    .unwrap()
    .rows_affected());
    assert_eq!(inserted, 1);
    assert_eq!(applied(&old).await, [1, 2, 3]);
    // A known migration changed after it was applied is still refused.
    let err = old
        .migrate(&both(std::slice::from_ref(&V1_CHANGED)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Migrate(sqlx::migrate::MigrateError::VersionMismatch(1))
        ),
        "{err:?}"
    );
    old.close().await;
    new.close().await;
}

#[tokio::test]
async fn an_older_binary_starts_on_a_newer_sqlite_schema() {
    an_older_binary_starts_on_a_newer_schema("sqlite").await;
}

#[tokio::test]
async fn an_older_binary_starts_on_a_newer_postgres_schema() {
    an_older_binary_starts_on_a_newer_schema("postgres").await;
}

#[tokio::test]
async fn replicas_migrating_one_postgres_database_at_once_apply_each_migration_once() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _server) = fresh("postgres", dir.path()).await;
    let mut replicas = Vec::new();
    for _ in 0..6 {
        replicas.push(Database::connect(&config, "svc").await.unwrap());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for db in &replicas {
        let db = db.clone();
        tasks.spawn(async move { db.migrate(&NEW_MIGRATIONS).await });
    }
    let results = agentmesh_testkit::within(
        "six migrations at once",
        Duration::from_secs(60),
        tasks.join_all(),
    )
    .await;
    for result in results {
        result.unwrap();
    }
    let first = replicas.first().unwrap();
    assert_eq!(applied(first).await, [1, 2, 3]);
    for db in replicas {
        db.close().await;
    }
}

static NEW_MIGRATIONS: Migrations = Migrations {
    sqlite: &NEW,
    postgres: &NEW,
};

#[tokio::test]
async fn a_failed_postgres_migration_leaves_no_lock_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _server) = fresh("postgres", dir.path()).await;
    let db = Database::connect(&config, "svc").await.unwrap();
    let err = db
        .migrate(&both(std::slice::from_ref(&BROKEN)))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Migrate(_)), "{err:?}");
    let Database::Postgres(pool) = &db else {
        panic!("a PostgreSQL database");
    };
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        held, 0,
        "the failed migration's advisory lock is still held"
    );
    // The next replica (a fresh pool) is not blocked.
    let next = Database::connect(&config, "svc").await.unwrap();
    agentmesh_testkit::within(
        "the next migration",
        Duration::from_secs(30),
        next.migrate(&NEW_MIGRATIONS),
    )
    .await
    .unwrap();
    next.close().await;
    db.close().await;
}
