//! Deleting finished runs: a bounded batch of one final state's runs that
//! ended before a cutoff, their events, labels and checkpoints with them
//! (`ON DELETE CASCADE`), then the sessions no run refers to any more.

use agentmesh_proto::orchestrator::v1 as pb;
use agentmesh_storage::{StoreError, with_pool};

use super::Store;

impl Store {
    /// Deletes at most `limit` runs that ended in `state` before `cutoff`
    /// (microseconds), oldest first; how many.
    pub(crate) async fn delete_finished(
        &self,
        state: pb::RunState,
        cutoff: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        Ok(with_pool!(&self.db, |pool| {
            sqlx::query(
                "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs \
                 WHERE state = $1 AND end_time IS NOT NULL AND end_time < $2 \
                 ORDER BY end_time LIMIT $3)",
            )
            .bind(i32::from(state))
            .bind(cutoff)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Deletes at most `limit` sessions created before `cutoff` that no run
    /// refers to; how many.
    pub(crate) async fn delete_empty_sessions(
        &self,
        cutoff: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        Ok(with_pool!(&self.db, |pool| {
            sqlx::query(
                "DELETE FROM sessions WHERE session_id IN (SELECT s.session_id FROM sessions s \
                 WHERE s.create_time < $1 AND NOT EXISTS \
                 (SELECT 1 FROM runs r WHERE r.session_id = s.session_id) LIMIT $2)",
            )
            .bind(cutoff)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }
}
