//! The leader's row (`alerting_leader`) and the fence of the leader's
//! writes, on PostgreSQL.
//!
//! ```text
//! leader:  won the lock ─▶ advertise(url, lock pid) ─┐         step down ─▶ withdraw(lock pid)
//!                                                    ▼
//!          alerting_leader (id = 1: url, lock_pid, since)
//!                                                    │ live only while pg_locks shows
//!                                                    ▼ lock_pid holding the leader lock
//! standby: leader() ─▶ Advertised(url) / NotAdvertised / Unknown
//!
//! leader's cursor commit, notification log entry:
//!   BEGIN ─▶ ensure_leader: pg_locks has LOCK_KEY granted to lock_pid? ─▶ no: refused, rolled back
//! ```
//!
//! A leader whose lock session died (terminated, network cut, server
//! restart) has lost the lock even before it notices: the check inside
//! the transaction refuses the write there, so a deposed leader cannot
//! advance the cursor or record a notification the new leader then
//! trusts. On SQLite there is one process and nothing to check.

use agentmesh_storage::{Database, StoreError};
use futures::future::BoxFuture;
use sqlx::{PgConnection, SqliteConnection};

use super::{Store, micros};
use crate::leader::LOCK_KEY;

/// The error of a write refused by the fence.
pub(crate) const NOT_LEADER: &str =
    "write refused: this alerting replica no longer holds the leader lock";

/// `pg_locks` rows of the leader lock held by the backend `$pid`: a bigint
/// advisory lock is `classid` (high half), `objid` (low half), `objsubid` 1.
macro_rules! held_by {
    ($pid:literal, $high:literal, $low:literal) => {
        concat!(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = ",
            $pid,
            " AND objsubid = 1 AND classid::bigint = ",
            $high,
            " AND objid::bigint = ",
            $low,
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    };
}

/// The two halves of [`LOCK_KEY`] as `pg_locks` shows them.
fn key_halves() -> (i64, i64) {
    ((LOCK_KEY >> 32) & 0xffff_ffff, LOCK_KEY & 0xffff_ffff)
}

/// A connection the fence check runs on (inside a transaction).
pub(super) trait FenceCheck {
    /// Fails unless the backend `lock_pid` holds the leader lock.
    fn check_lock(&mut self, lock_pid: i32) -> BoxFuture<'_, Result<(), StoreError>>;
}

impl FenceCheck for PgConnection {
    fn check_lock(&mut self, lock_pid: i32) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (high, low) = key_halves();
            let held: bool =
                sqlx::query_scalar(concat!("SELECT EXISTS (", held_by!("$1", "$2", "$3"), ")"))
                    .bind(lock_pid)
                    .bind(high)
                    .bind(low)
                    .fetch_one(self)
                    .await?;
            if held {
                Ok(())
            } else {
                Err(StoreError::Database(sqlx::Error::Protocol(
                    NOT_LEADER.to_owned(),
                )))
            }
        })
    }
}

impl FenceCheck for SqliteConnection {
    fn check_lock(&mut self, _lock_pid: i32) -> BoxFuture<'_, Result<(), StoreError>> {
        // One process per SQLite database: it always leads.
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The fence of a leader's write: nothing to check without a lock session.
pub(super) async fn ensure_leader<C: FenceCheck + ?Sized>(
    conn: &mut C,
    lock_pid: Option<i32>,
) -> Result<(), StoreError> {
    match lock_pid {
        Some(pid) => conn.check_lock(pid).await,
        None => Ok(()),
    }
}

/// Where the leader can be reached, as a standby learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaderAddress {
    /// No live leader row: no replica leads, or the leader has not
    /// advertised yet (or runs a version that does not).
    Unknown,
    /// A replica leads but advertises no address (its
    /// `leader.advertise_url` is empty).
    NotAdvertised,
    /// The leader's gRPC address.
    Advertised(String),
}

impl Store {
    /// Records this leader's address (fenced: refused unless `lock_pid`
    /// holds the lock). Replaces a previous leader's row.
    pub(crate) async fn advertise(&self, url: &str, lock_pid: i32) -> Result<(), StoreError> {
        let Database::Postgres(pool) = &self.db else {
            return Ok(());
        };
        let mut tx = pool.begin().await?;
        ensure_leader(&mut *tx, Some(lock_pid)).await?;
        sqlx::query(
            "INSERT INTO alerting_leader (id, url, lock_pid, since) VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, lock_pid = excluded.lock_pid, \
             since = excluded.since",
        )
        .bind(url)
        .bind(lock_pid)
        .bind(micros(std::time::SystemTime::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes this leader's row (a later leader's row stays).
    pub(crate) async fn withdraw(&self, lock_pid: i32) -> Result<(), StoreError> {
        let Database::Postgres(pool) = &self.db else {
            return Ok(());
        };
        sqlx::query("DELETE FROM alerting_leader WHERE id = 1 AND lock_pid = $1")
            .bind(lock_pid)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// The live leader's address: a row whose lock session holds the lock
    /// (a leader that died without withdrawing leaves a stale row).
    pub(crate) async fn leader(&self) -> Result<LeaderAddress, StoreError> {
        let Database::Postgres(pool) = &self.db else {
            return Ok(LeaderAddress::Unknown);
        };
        let (high, low) = key_halves();
        let url: Option<String> = sqlx::query_scalar(concat!(
            "SELECT l.url FROM alerting_leader l WHERE l.id = 1 AND EXISTS (",
            held_by!("l.lock_pid", "$1", "$2"),
            ")"
        ))
        .bind(high)
        .bind(low)
        .fetch_optional(pool)
        .await?;
        Ok(match url {
            None => LeaderAddress::Unknown,
            Some(url) if url.is_empty() => LeaderAddress::NotAdvertised,
            Some(url) => LeaderAddress::Advertised(url),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use agentmesh_storage::StorageConfig;
    use sqlx::Connection;

    use super::*;
    use crate::leader::Election;
    use crate::model::{NotificationLog, NotifiedEntry, NotifiedKey};
    use crate::store::{Commit, MIGRATIONS};

    async fn store(url: &str) -> Store {
        let storage = StorageConfig {
            url: Some(url.to_owned()),
            ..StorageConfig::default()
        };
        let db = Database::connect(&storage, "alerting").await.unwrap();
        db.migrate(&MIGRATIONS).await.unwrap();
        Store::new(db)
    }

    fn cursor(value: &str) -> Commit {
        Commit {
            cursor: Some(value.to_owned()),
            ..Commit::default()
        }
    }

    fn key() -> NotifiedKey {
        NotifiedKey {
            receiver: "hook".to_owned(),
            integration: "webhook[0]".to_owned(),
            group_key: "{}:{tool=\"a\"}".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_leader_whose_lock_session_ended_has_its_writes_refused_by_the_database() {
        let server = agentmesh_testkit::postgres::shared().await;
        let url = server.create_database("alerting_fenced_writes").await;
        let store = store(&url).await;
        let election = Election::for_url(&url, Duration::from_secs(5)).unwrap();
        let fence = election.try_acquire().await.unwrap().unwrap();
        let pid = fence.lock_pid().unwrap();
        let leader = store.fenced(Some(pid));
        leader
            .advertise("http://10.0.0.7:50055", pid)
            .await
            .unwrap();
        assert_eq!(
            store.leader().await.unwrap(),
            LeaderAddress::Advertised("http://10.0.0.7:50055".to_owned())
        );
        leader.commit(&cursor("one")).await.unwrap();
        leader.put(key(), NotifiedEntry::default()).await.unwrap();

        // The lock session ends (as when its connection is cut) before the
        // leader has noticed: the database refuses its next writes.
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert!(terminated);
        // pg_terminate_backend only signals the backend: wait until its
        // session has ended (and released the lock), as the test means.
        for _ in 0..500 {
            let alive: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1) \
                 OR EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = $1)",
            )
            .bind(pid)
            .fetch_one(&mut other)
            .await
            .unwrap();
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused = leader.commit(&cursor("two")).await.unwrap_err();
        assert!(refused.to_string().contains(NOT_LEADER), "{refused}");
        let entry = NotifiedEntry {
            time: Some(std::time::UNIX_EPOCH),
            ..NotifiedEntry::default()
        };
        let refused = leader.put(key(), entry).await.unwrap_err();
        assert!(refused.0.contains(NOT_LEADER), "{refused:?}");
        let refused = leader.advertise("http://10.0.0.7:50055", pid).await;
        assert!(refused.is_err());
        assert_eq!(store.load().await.unwrap().cursor.as_deref(), Some("one"));
        let logged = store.get(&key()).await.unwrap().unwrap();
        assert_ne!(logged.time, Some(std::time::UNIX_EPOCH));
        // Its row is stale now: nobody holds the lock.
        assert_eq!(store.leader().await.unwrap(), LeaderAddress::Unknown);

        // The next leader writes, and advertises without an address.
        let next = Election::for_url(&url, Duration::from_secs(5)).unwrap();
        let fence = next.try_acquire().await.unwrap().unwrap();
        let pid = fence.lock_pid().unwrap();
        let leader = store.fenced(Some(pid));
        leader.commit(&cursor("three")).await.unwrap();
        leader.advertise("", pid).await.unwrap();
        assert_eq!(store.leader().await.unwrap(), LeaderAddress::NotAdvertised);
        leader.withdraw(pid).await.unwrap();
        assert_eq!(store.leader().await.unwrap(), LeaderAddress::Unknown);
        fence.release().await;
        other.close().await.unwrap();
    }

    #[tokio::test]
    async fn an_unfenced_store_writes_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let storage = StorageConfig {
            data_dir: dir.path().to_owned(),
            ..StorageConfig::default()
        };
        let db = Database::connect(&storage, "alerting").await.unwrap();
        db.migrate(&MIGRATIONS).await.unwrap();
        let store = Store::new(db).fenced(None);
        store.commit(&cursor("one")).await.unwrap();
        assert_eq!(store.leader().await.unwrap(), LeaderAddress::Unknown);
    }
}
