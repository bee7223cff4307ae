//! Reading runs: the pages of `ListRuns` (filtered, newest first) and a
//! run's sub-runs.

use agentmesh_storage::{StoreError, with_reader};

use super::row::{RunRow, run_from_row};
use super::{RunFilter, Store, Tenants};

impl Store {
    /// Runs of `tenants`, newest first, after the `(create_time, run_id)`
    /// position of the previous page.
    pub(crate) async fn list_runs(
        &self,
        tenants: Tenants<'_>,
        filter: &RunFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<RunRow>, StoreError> {
        with_reader!(&self.db, |pool| {
            let mut query = sqlx::QueryBuilder::new("SELECT ");
            query.push(run_columns!());
            query.push(" FROM runs r WHERE ");
            match tenants {
                Tenants::One(tenant) => query.push("tenant = ").push_bind(tenant),
                Tenants::All => query.push("1 = 1"),
            };
            if !filter.states.is_empty() {
                query.push(" AND state IN (");
                let mut states = query.separated(", ");
                for state in &filter.states {
                    states.push_bind(*state);
                }
                query.push(")");
            }
            if !filter.agent.is_empty() {
                query.push(" AND agent = ").push_bind(&filter.agent);
            }
            if !filter.parent_run_id.is_empty() {
                query
                    .push(" AND parent_run_id = ")
                    .push_bind(&filter.parent_run_id);
            }
            if !filter.session_id.is_empty() {
                query
                    .push(" AND session_id = ")
                    .push_bind(&filter.session_id);
            }
            if let Some(start) = filter.create_time_start {
                query.push(" AND create_time >= ").push_bind(start);
            }
            if let Some(end) = filter.create_time_end {
                query.push(" AND create_time < ").push_bind(end);
            }
            for (key, value) in &filter.labels {
                query
                    .push(" AND EXISTS (SELECT 1 FROM run_labels l WHERE l.run_id = r.run_id AND l.key = ")
                    .push_bind(key)
                    .push(" AND l.value = ")
                    .push_bind(value)
                    .push(")");
            }
            if let Some((time, run_id)) = &after {
                query
                    .push(" AND (create_time < ")
                    .push_bind(*time)
                    .push(" OR (create_time = ")
                    .push_bind(*time)
                    .push(" AND run_id < ")
                    .push_bind(run_id)
                    .push("))");
            }
            query
                .push(" ORDER BY create_time DESC, run_id DESC LIMIT ")
                .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
            query
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(run_from_row)
                .collect()
        })
    }

    /// The sub-runs of `parent_run_id` that have not ended, by id.
    pub(crate) async fn unfinished_sub_runs(
        &self,
        parent_run_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = with_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT run_id FROM runs WHERE parent_run_id = $1 AND state IN ($2, $3) \
                 ORDER BY run_id",
            )
            .bind(parent_run_id)
            .bind(i32::from(
                agentmesh_proto::orchestrator::v1::RunState::Queued,
            ))
            .bind(i32::from(
                agentmesh_proto::orchestrator::v1::RunState::Running,
            ))
            .fetch_all(pool)
            .await?
        });
        Ok(ids)
    }
}
