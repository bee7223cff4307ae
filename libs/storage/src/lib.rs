//! Database access for agentmesh services.
//!
//! Each service owns its own database. [`StorageConfig`] names it: by default
//! a SQLite file `<data_dir>/<service>.db`, created on first start (the
//! embedded mode: nothing to set up); a `postgres://` URL selects PostgreSQL,
//! the production backend. [`Database::connect`] opens a pool for either and
//! applies the SQLite settings that make it safe for a server (WAL journal,
//! a busy timeout, foreign keys on). Services run their own migrations on the
//! pool they get back.
//!
//! SQLite lets one connection write at a time. Eight pooled connections that
//! all write spend their time waiting on each other's lock (the busy handler
//! sleeps, and a step's insert could wait a second), so SQLite gets two
//! pools ([`SqlitePools`]): **one writer connection**, kept open, that every
//! statement goes through by default ([`with_pool!`]) — writes queue in
//! order in the pool instead of fighting for the lock, and a write
//! transaction starts with `BEGIN IMMEDIATE` ([`BeginWrite`]) so it holds the
//! lock from its first statement — and **readers** (`query_only`) for the
//! reads a service marks as such ([`with_reader!`]), which WAL lets run
//! beside the writer. A service's most frequent write can go further and
//! share its commits with the same write of other callers
//! ([`group_commit`]). Durability is unchanged: WAL with `synchronous =
//! NORMAL` (a commit survives a process crash; the last commits before a
//! power loss may not).
//!
//! A store's failures are one [`StoreError`] ([`error`]), which becomes a
//! gRPC status one way in every service: no database text to clients, the
//! request id in its place, UNAVAILABLE / DATA_LOSS / INTERNAL by what the
//! client can do about it.

pub mod error;
pub mod group_commit;
#[cfg(test)]
mod migrate_tests;

pub use error::StoreError;
pub use group_commit::{GroupCommit, GroupWrite};

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

/// Where a service keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory for the embedded SQLite files (created when missing).
    pub data_dir: PathBuf,
    /// Database URL: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
    /// Unset means `sqlite://<data_dir>/<service>.db`.
    pub url: Option<String>,
    /// Largest number of pooled connections. On SQLite, the readers'
    /// pool; writes go through one connection of their own.
    pub max_connections: u32,
    /// How long to wait for a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// On SQLite, whether a service commits its most frequent write (the
    /// orchestrator's steps) together with the same writes of other
    /// callers waiting meanwhile ([`group_commit`]); false: each in a
    /// transaction of its own. No effect on PostgreSQL.
    pub group_commit: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            url: None,
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            group_commit: true,
        }
    }
}

impl StorageConfig {
    /// The URL to connect to for `service`.
    pub fn url_for(&self, service: &str) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join(format!("{service}.db")).display()
            ),
        }
    }

    /// Checks the URL's scheme and the pool size.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url
            && Backend::of(url).is_none()
        {
            return Err(ConfigError::new(
                "storage.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "storage.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Which database engine a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, embedded.
    Sqlite,
    /// PostgreSQL, over the network.
    Postgres,
}

impl Backend {
    /// The backend a URL names, if any.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL names no supported backend.
    #[error("unsupported database URL (use sqlite: or postgres://)")]
    UnsupportedUrl,
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One schema migration, compiled into the binary (`include_str!`), so a
/// service needs no files beside its executable.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedMigration {
    /// Applied in increasing order; never reuse or change an applied one.
    pub version: i64,
    /// What it does, recorded in the migrations table.
    pub description: &'static str,
    /// The SQL, one or more statements.
    pub sql: &'static str,
}

/// A service's migrations, written once per backend because SQLite and
/// PostgreSQL differ in types (BLOB/BYTEA) and in what enforces append-only.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    pub sqlite: &'static [EmbeddedMigration],
    pub postgres: &'static [EmbeddedMigration],
}

/// Runs the same code on whichever pool a [`Database`] holds: `$pool` is a
/// `&SqlitePool` in one arm and a `&PgPool` in the other, so the body is
/// written once and type-checked for both backends. Queries use `$1, $2…`
/// placeholders, which both SQLite and PostgreSQL understand.
///
/// On SQLite this is the writer connection: anything may run here. Reads
/// that need no ordering with writes use [`with_reader!`].
#[macro_export]
macro_rules! with_pool {
    ($database:expr, |$pool:ident| $body:expr) => {
        match $database {
            $crate::Database::Sqlite(pools) => {
                let $pool = pools.writer();
                $body
            }
            $crate::Database::Postgres($pool) => $body,
        }
    };
}

/// [`with_pool!`] for a read: on SQLite it runs on the readers' pool
/// (`query_only`: a write there fails instead of contending with the
/// writer), beside the writer; on PostgreSQL it is the one pool.
#[macro_export]
macro_rules! with_reader {
    ($database:expr, |$pool:ident| $body:expr) => {
        match $database {
            $crate::Database::Sqlite(pools) => {
                let $pool = pools.readers();
                $body
            }
            $crate::Database::Postgres($pool) => $body,
        }
    };
}

/// A pool of connections to a service's database.
#[derive(Debug, Clone)]
pub enum Database {
    /// SQLite: one writer, several readers.
    Sqlite(SqlitePools),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// SQLite's connections: one that writes, and readers (see the crate docs).
#[derive(Debug, Clone)]
pub struct SqlitePools {
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqlitePools {
    /// The pool of the one writer connection.
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The readers' pool (`query_only`).
    pub fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    async fn connect(url: &str, config: &StorageConfig) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::from_str(url)?
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // The writer first: it creates the file and puts it in WAL mode (a
        // setting of the file, which the readers then share). It stays open
        // so the WAL and its index are not torn down between bursts.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(config.connect_timeout)
            .connect_with(
                options
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .connect_with(options.pragma("query_only", "ON"))
            .await?;
        Ok(Self { writer, readers })
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

/// A write transaction, the same call on either backend. On SQLite it is
/// `BEGIN IMMEDIATE`: the write lock is taken at the start (waiting there,
/// under the busy timeout, if another process holds it) rather than at the
/// first write, where a deferred transaction that meets a busy lock cannot
/// wait and fails.
pub trait BeginWrite {
    /// The database of the transaction.
    type Db: sqlx::Database;

    /// Begins a write transaction.
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;

    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for PgPool {
    type Db = Postgres;

    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Postgres>, sqlx::Error>> + Send
    {
        self.begin()
    }
}

/// The migrator of `list`: locking on (sqlx's default, stated here because
/// concurrent starts depend on it), and applied migrations missing from
/// `list` ignored (an older binary during a rolling upgrade; see
/// [`Database::migrate`]).
fn migrator(list: &[EmbeddedMigration]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr as _;
    let mut migrator = sqlx::migrate::Migrator::with_migrations(
        list.iter()
            .map(|m| {
                sqlx::migrate::Migration::new(
                    m.version,
                    std::borrow::Cow::Borrowed(m.description),
                    sqlx::migrate::MigrationType::Simple,
                    m.sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    migrator.set_locking(true).set_ignore_missing(true);
    migrator
}

impl Database {
    /// Connects to the database for `service` that `config` names, creating
    /// the SQLite file (and its directory) when it does not exist.
    pub async fn connect(config: &StorageConfig, service: &str) -> Result<Self, StorageError> {
        let url = config.url_for(service);
        match Backend::of(&url) {
            Some(Backend::Sqlite) => {
                if config.url.is_none() {
                    std::fs::create_dir_all(&config.data_dir).map_err(|source| {
                        StorageError::DataDir {
                            path: config.data_dir.clone(),
                            source,
                        }
                    })?;
                }
                Ok(Self::Sqlite(SqlitePools::connect(&url, config).await?))
            }
            Some(Backend::Postgres) => {
                let options = PgConnectOptions::from_str(&url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.connect_timeout)
                    .connect_with(options)
                    .await?;
                Ok(Self::Postgres(pool))
            }
            None => Err(StorageError::UnsupportedUrl),
        }
    }

    /// Which backend this is.
    /// Brings the schema up to date (applied migrations are recorded in
    /// `_sqlx_migrations`).
    ///
    /// Safe with several replicas starting at once: on PostgreSQL the
    /// migrator holds a session-level advisory lock (`pg_advisory_lock`,
    /// keyed by the database's name) while it reads and applies, so
    /// concurrent starts run one after the other and each migration is
    /// applied once. (A SQLite file has one replica: the embedded and
    /// single-replica setups.)
    ///
    /// Safe in a rolling upgrade: an applied migration this binary does not
    /// know (a newer release's) is tolerated, because migrations are
    /// additive (tables, nullable or defaulted columns, indexes; never a
    /// drop or rename of what a released version reads or writes), so an
    /// older binary keeps working on the newer schema. A known migration
    /// whose SQL changed after it was applied is still an error.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StorageError> {
        let migrator = migrator(match self.backend() {
            Backend::Sqlite => migrations.sqlite,
            Backend::Postgres => migrations.postgres,
        });
        match self {
            Self::Sqlite(pools) => migrator.run(pools.writer()).await?,
            Self::Postgres(pool) => {
                let mut connection = pool.acquire().await?;
                // What `Migrator::run` does once it has a connection; called
                // directly because `run(&mut connection)` makes a future
                // that is not `Send` (sqlx's `Acquire` is not general
                // enough), and the connection must be ours to close.
                let result = migrator.run_direct(None, &mut *connection, false).await;
                if result.is_err() {
                    // On failure the migrator returns with its advisory lock
                    // still held by this session; ending the session frees it
                    // for the next replica instead of leaving it in the pool.
                    if let Err(err) = connection.close().await {
                        tracing::warn!(error = %err, "closing the migration connection failed");
                    }
                }
                result?;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// Checks that the database answers a query.
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(pools) => {
                // Both pools: a reader alone can answer while writes fail.
                sqlx::query("SELECT 1").execute(pools.writer()).await?;
                sqlx::query("SELECT 1").execute(pools.readers()).await?
            }
            Self::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
                return Ok(());
            }
        };
        Ok(())
    }

    /// Closes every connection (at shutdown).
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pools) => pools.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// A service's database, opened during start-up (while health says
/// NOT_SERVING, retried until it works) and closed at shutdown.
#[derive(Debug, Clone)]
pub struct LazyDatabase {
    config: StorageConfig,
    service: &'static str,
    migrations: Option<&'static Migrations>,
    /// A tokio cell, so that concurrent first uses (start-up and an early
    /// call) wait for one opener instead of migrating the same database
    /// twice at once, which fails on SQLite.
    database: std::sync::Arc<tokio::sync::OnceCell<Database>>,
}

impl LazyDatabase {
    /// Not yet opened.
    pub fn new(config: StorageConfig, service: &'static str) -> Self {
        Self {
            config,
            service,
            migrations: None,
            database: std::sync::Arc::default(),
        }
    }

    /// Applies `migrations` when the database is opened.
    pub fn with_migrations(mut self, migrations: &'static Migrations) -> Self {
        self.migrations = Some(migrations);
        self
    }

    /// Opens and checks the database; does nothing if it is already open.
    pub async fn open(&self) -> Result<(), StorageError> {
        self.database
            .get_or_try_init(|| async {
                let database = Database::connect(&self.config, self.service).await?;
                database.ping().await?;
                if let Some(migrations) = self.migrations {
                    database.migrate(migrations).await?;
                }
                tracing::info!(service = self.service, backend = ?database.backend(), "database ready");
                Ok::<_, StorageError>(database)
            })
            .await?;
        Ok(())
    }

    /// The database, once open.
    pub fn get(&self) -> Option<&Database> {
        self.database.get()
    }

    /// Closes the pool if it was opened.
    pub async fn close(&self) {
        if let Some(database) = self.database.get() {
            database.close().await;
        }
    }

    /// The required readiness check `database`: `SELECT 1` on the pool.
    /// Failing until start-up has opened (and migrated) the database, and
    /// whenever the database stops answering.
    pub fn health_check(&self) -> agentmesh_kit::health::DependencyCheck {
        let database = self.clone();
        agentmesh_kit::health::DependencyCheck::required("database", move || {
            let database = database.clone();
            async move {
                match database.get() {
                    None => Err("not open yet: start-up connects and migrates it".to_owned()),
                    Some(db) => db
                        .ping()
                        .await
                        .map_err(|err| format!("SELECT 1 failed: {err}")),
                }
            }
        })
        .with_target(format!("{} database", self.backend_name()))
    }

    fn backend_name(&self) -> &'static str {
        match Backend::of(&self.config.url_for(self.service)) {
            Some(Backend::Postgres) => "PostgreSQL",
            _ => "SQLite",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_embedded_default_creates_the_sqlite_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            data_dir: dir.path().join("nested/data"),
            ..StorageConfig::default()
        };
        let db = Database::connect(&config, "audit").await.unwrap();
        db.ping().await.unwrap();
        assert_eq!(db.backend(), Backend::Sqlite);
        assert!(dir.path().join("nested/data/audit.db").is_file());
        db.close().await;
    }

    #[tokio::test]
    async fn sqlite_writes_queue_on_one_connection_and_readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            data_dir: dir.path().to_path_buf(),
            ..StorageConfig::default()
        };
        let db = Database::connect(&config, "orchestrator").await.unwrap();
        with_pool!(&db, |pool| {
            sqlx::query("CREATE TABLE t (n INTEGER NOT NULL)")
                .execute(pool)
                .await
                .unwrap();
        });
        // Many write transactions at once: each waits its turn for the one
        // writer instead of failing on SQLite's lock.
        let writes = (0..64).map(|n| {
            let db = db.clone();
            tokio::spawn(async move {
                with_pool!(&db, |pool| {
                    let mut tx = pool.begin_write().await?;
                    sqlx::query("INSERT INTO t (n) VALUES ($1)")
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await
                })
            })
        });
        for write in futures::future::join_all(writes).await {
            write.unwrap().unwrap();
        }
        let count: i64 = with_reader!(&db, |pool| {
            sqlx::query_scalar("SELECT count(*) FROM t")
                .fetch_one(pool)
                .await
                .unwrap()
        });
        assert_eq!(count, 64);
        // A write on a reader is refused, not slipped past the writer.
        let Database::Sqlite(pools) = &db else {
            return assert_eq!(db.backend(), Backend::Sqlite);
        };
        let err = sqlx::query("INSERT INTO t (n) VALUES (1)")
            .execute(pools.readers())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        db.close().await;
    }

    #[tokio::test]
    async fn postgres_by_url() {
        let server = agentmesh_testkit::postgres::shared().await;
        let config = StorageConfig {
            url: Some(server.create_database("storage_test").await),
            ..StorageConfig::default()
        };
        let db = Database::connect(&config, "audit").await.unwrap();
        db.ping().await.unwrap();
        assert_eq!(db.backend(), Backend::Postgres);
        db.close().await;
    }

    #[tokio::test]
    async fn the_health_check_fails_until_open_then_passes() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            data_dir: dir.path().to_path_buf(),
            ..StorageConfig::default()
        };
        let database = LazyDatabase::new(config, "audit");
        let check = database.health_check();
        assert_eq!(check.name(), "database");
        assert!(check.is_required());
        let reason = check.run(Duration::from_secs(5)).await.unwrap_err();
        assert!(reason.contains("not open yet"), "{reason}");
        database.open().await.unwrap();
        check.run(Duration::from_secs(5)).await.unwrap();
        database.close().await;
        let reason = check.run(Duration::from_secs(5)).await.unwrap_err();
        assert!(reason.contains("SELECT 1 failed"), "{reason}");
    }

    #[test]
    fn urls_are_checked() {
        let mut config = StorageConfig {
            url: Some("mysql://x".into()),
            ..StorageConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "storage.url");
        config.url = Some("postgres://u@127.0.0.1:5432/db".into());
        config.validate().unwrap();
        assert_eq!(
            StorageConfig::default().url_for("audit"),
            "sqlite://data/audit.db"
        );
    }
}
