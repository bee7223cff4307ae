use std::sync::Arc;

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::Notify;

use super::{GroupCommit, GroupWrite};
use crate::{Database, SqlitePools, StorageConfig};

/// Inserts `n` into `t` (whose `n` is unique); answers how many rows a
/// reader saw committed just before. Given a [`Hold`], it first says it
/// has begun and waits to be released.
struct Insert {
    n: i64,
    readers: SqlitePool,
    hold: Option<Hold>,
}

#[derive(Clone, Default)]
struct Hold {
    begun: Arc<Notify>,
    release: Arc<Notify>,
}

impl GroupWrite for Insert {
    type Output = i64;

    async fn write(&self, conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
        if let Some(hold) = &self.hold {
            hold.begun.notify_one();
            hold.release.notified().await;
        }
        let committed = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&self.readers)
            .await?;
        sqlx::query("INSERT INTO t (n) VALUES ($1)")
            .bind(self.n)
            .execute(&mut *conn)
            .await?;
        Ok(committed)
    }
}

async fn database(dir: &tempfile::TempDir) -> SqlitePools {
    let config = StorageConfig {
        data_dir: dir.path().to_path_buf(),
        ..StorageConfig::default()
    };
    let db = Database::connect(&config, "group").await.unwrap();
    let Database::Sqlite(pools) = db else {
        panic!("the default is SQLite, not {:?}", db.backend())
    };
    sqlx::query("CREATE TABLE t (n INTEGER NOT NULL UNIQUE)")
        .execute(pools.writer())
        .await
        .unwrap();
    pools
}

fn spawn_insert(
    group: &GroupCommit<Insert>,
    pools: &SqlitePools,
    n: i64,
    hold: Option<Hold>,
) -> tokio::task::JoinHandle<Result<i64, sqlx::Error>> {
    let (group, readers) = (group.clone(), pools.readers().clone());
    tokio::spawn(async move { group.write(Insert { n, readers, hold }).await })
}

async fn committed(pools: &SqlitePools) -> Vec<i64> {
    sqlx::query_scalar("SELECT n FROM t ORDER BY n")
        .fetch_all(pools.readers())
        .await
        .unwrap()
}

/// Writes 0 and, while it holds the writer, queues `rest`: they are then
/// taken as one batch. The handles of `rest`, once 0 is committed.
async fn one_batch_after_a_held_write(
    group: &GroupCommit<Insert>,
    pools: &SqlitePools,
    rest: impl IntoIterator<Item = i64>,
) -> Vec<tokio::task::JoinHandle<Result<i64, sqlx::Error>>> {
    let hold = Hold::default();
    let first = spawn_insert(group, pools, 0, Some(hold.clone()));
    hold.begun.notified().await;
    let rest: Vec<_> = rest
        .into_iter()
        .map(|n| spawn_insert(group, pools, n, None))
        .collect();
    while group.jobs.capacity() > super::QUEUE - rest.len() {
        tokio::task::yield_now().await;
    }
    hold.release.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), 0);
    rest
}

#[tokio::test]
async fn writes_queued_meanwhile_commit_together_and_a_bad_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pools = database(&dir).await;
    let group = GroupCommit::start(pools.writer().clone());
    // 1..=20, and 7 a second time: that one must fail, and only that one.
    let rest = one_batch_after_a_held_write(&group, &pools, (1..=20).chain([7])).await;
    let mut seen = Vec::new();
    let mut failed = 0;
    for write in rest {
        match write.await.unwrap() {
            Ok(before) => seen.push(before),
            Err(err) => {
                assert!(err.to_string().contains("UNIQUE"), "{err}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 1, "only the duplicate fails");
    assert_eq!(committed(&pools).await, (0..=20).collect::<Vec<_>>());
    // The batch failed on the duplicate and was written again one by one,
    // so the survivors saw 1, 2, … rows before them: each commit was
    // acknowledged only once a reader could see it.
    seen.sort_unstable();
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_batch_without_failures_is_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let pools = database(&dir).await;
    let group = GroupCommit::start(pools.writer().clone());
    let rest = one_batch_after_a_held_write(&group, &pools, 1..=20).await;
    // All twenty ran in one transaction after the first committed: each
    // saw the same one committed row, none of the others'.
    for write in rest {
        assert_eq!(write.await.unwrap().unwrap(), 1);
    }
    assert_eq!(committed(&pools).await, (0..=20).collect::<Vec<_>>());
}
