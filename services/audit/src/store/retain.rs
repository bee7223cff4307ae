//! Retention's part of the store: deleting the oldest events while keeping
//! every chain verifiable (see [`Store::delete_before`]).
//!
//! The delete runs under the same write lock as appends, and with the
//! schema's retention guard switched on for its transaction only (SQLite: a
//! guard row; PostgreSQL: a transaction-local setting), so the triggers that
//! refuse every other delete let this one through.

use std::collections::HashMap;

use agentmesh_storage::{Database, StoreError};
use sqlx::Row;

use super::{Store, WRITE_LOCK_KEY};

impl Store {
    /// Deletes, in one transaction, up to `limit` of the oldest events
    /// recorded before `cutoff_us` — always a prefix of the log, so every
    /// chain keeps a contiguous tail — and moves each affected chain's anchor
    /// to the hash of its last deleted event. Returns how many were deleted
    /// and the new anchors.
    pub(crate) async fn delete_before(
        &self,
        cutoff_us: i64,
        limit: usize,
    ) -> Result<(u64, Vec<(String, String)>), StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        macro_rules! delete_prefix {
            ($tx:expr) => {{
                let tx = $tx;
                let rows = sqlx::query(
                    "SELECT seq, chain, hash, record_time_us FROM audit_events ORDER BY seq LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&mut **tx)
                .await?;
                let mut anchors: HashMap<String, (i64, String)> = HashMap::new();
                let mut last = None;
                for row in &rows {
                    let record_time_us: i64 = row.try_get("record_time_us")?;
                    if record_time_us >= cutoff_us {
                        break;
                    }
                    let seq: i64 = row.try_get("seq")?;
                    anchors.insert(row.try_get("chain")?, (seq, row.try_get("hash")?));
                    last = Some(seq);
                }
                let Some(last) = last else {
                    return Ok((0, Vec::new()));
                };
                let deleted = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
                    .bind(last)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                for (chain, (seq, hash)) in &anchors {
                    sqlx::query("UPDATE audit_chains SET anchor_seq = $1, anchor_hash = $2 WHERE chain = $3")
                        .bind(seq)
                        .bind(hash)
                        .bind(chain)
                        .execute(&mut **tx)
                        .await?;
                }
                sqlx::query("UPDATE audit_log_state SET retained_from = $1 WHERE id = 1")
                    .bind(last + 1)
                    .execute(&mut **tx)
                    .await?;
                let mut anchors: Vec<(String, String)> =
                    anchors.into_iter().map(|(chain, (_, hash))| (chain, hash)).collect();
                anchors.sort();
                (deleted, anchors)
            }};
        }
        match &self.db {
            Database::Sqlite(pools) => {
                let mut tx = pools.writer().begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query("UPDATE audit_retention_guard SET active = 1 WHERE id = 1")
                    .execute(&mut *tx)
                    .await?;
                let result = delete_prefix!(&mut tx);
                sqlx::query("UPDATE audit_retention_guard SET active = 0 WHERE id = 1")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(result)
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT set_config('agentmesh.audit_retention', 'on', true)")
                    .execute(&mut *tx)
                    .await?;
                let result = delete_prefix!(&mut tx);
                tx.commit().await?;
                Ok(result)
            }
        }
    }
}
