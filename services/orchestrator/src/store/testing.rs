//! Test helpers: a migrated store on a new SQLite database in a temporary
//! directory, or on a new database of a test PostgreSQL server.

use agentmesh_storage::{Database, StorageConfig};
use agentmesh_testkit::postgres::PostgresServer;

use super::{MIGRATIONS, Store};

async fn open(storage: StorageConfig) -> Store {
    let db = Database::connect(&storage, "orchestrator").await.unwrap();
    db.migrate(&MIGRATIONS).await.unwrap();
    Store::new(db, storage.group_commit)
}

/// A store on a new SQLite database in `dir`.
pub(crate) async fn sqlite(dir: &tempfile::TempDir) -> Store {
    open(StorageConfig {
        data_dir: dir.path().to_owned(),
        ..StorageConfig::default()
    })
    .await
}

/// A store on a new database of `server`, named after `prefix`, with room
/// for concurrent claims.
pub(crate) async fn postgres(server: &PostgresServer, prefix: &str) -> Store {
    open(StorageConfig {
        url: Some(server.create_database(prefix).await),
        max_connections: 16,
        ..StorageConfig::default()
    })
    .await
}
