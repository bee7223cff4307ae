//! Runs as stored: the `runs` row, the event log, the latest checkpoint and
//! sessions, on SQLite or PostgreSQL through the same queries.
//!
//! The engine is the only writer of a run while it drives it. It writes once
//! per step ([`Store::flush`], [`step`]: the step's events, the run row, the
//! checkpoint and the step's callback in one transaction, on SQLite shared
//! with other runs' steps), never once per token, so a crash loses at most the step in flight, which is then run
//! again from the checkpoint. The callbacks' outbox is [`outbox`]; the
//! long-term memory's notes are [`memory`].

mod row;

use std::collections::BTreeMap;

use agentmesh_proto::llm::v1 as llm;
use agentmesh_proto::orchestrator::v1 as pb;
use agentmesh_storage::{
    BeginWrite as _, Database, EmbeddedMigration, GroupCommit, Migrations, StoreError, with_pool,
    with_reader,
};
use prost::Message as _;

pub(crate) use outbox::{DueCallback, NewCallback, Settled};
pub(crate) use replicas::{CHANNEL, Claimed, Flushed, RESERVE_BLOCK, RecordedCancel};
use row::run_from_row;
pub(crate) use row::{Checkpoint, Limits, RunCallback, RunRow, usage};

/// The orchestrator's schema, per backend.
pub(crate) static MIGRATIONS: Migrations = Migrations {
    sqlite: &[
        EmbeddedMigration {
            version: 1,
            description: "runs, events, checkpoints, sessions",
            sql: include_str!("../migrations/sqlite/0001_runs.sql"),
        },
        EmbeddedMigration {
            version: 2,
            description: "the identity a run was started with",
            sql: include_str!("../migrations/sqlite/0002_run_identity.sql"),
        },
        EmbeddedMigration {
            version: 3,
            description: "replicas: sequence reservations, recorded cancels, replica addresses",
            sql: include_str!("../migrations/sqlite/0003_replicas.sql"),
        },
        EmbeddedMigration {
            version: 4,
            description: "run callbacks: the run's callback, the outbox",
            sql: include_str!("../migrations/sqlite/0004_run_callbacks.sql"),
        },
        EmbeddedMigration {
            version: 5,
            description: "long-term memory: notes and their full-text index",
            sql: include_str!("../migrations/sqlite/0005_memory.sql"),
        },
        EmbeddedMigration {
            version: 6,
            description: "sub-runs: a run's parent",
            sql: include_str!("../migrations/sqlite/0006_sub_runs.sql"),
        },
    ],
    postgres: &[
        EmbeddedMigration {
            version: 1,
            description: "runs, events, checkpoints, sessions",
            sql: include_str!("../migrations/postgres/0001_runs.sql"),
        },
        EmbeddedMigration {
            version: 2,
            description: "the identity a run was started with",
            sql: include_str!("../migrations/postgres/0002_run_identity.sql"),
        },
        EmbeddedMigration {
            version: 3,
            description: "replicas: sequence reservations, recorded cancels, replica addresses",
            sql: include_str!("../migrations/postgres/0003_replicas.sql"),
        },
        EmbeddedMigration {
            version: 4,
            description: "run callbacks: the run's callback, the outbox",
            sql: include_str!("../migrations/postgres/0004_run_callbacks.sql"),
        },
        EmbeddedMigration {
            version: 5,
            description: "long-term memory: notes and their full-text index",
            sql: include_str!("../migrations/postgres/0005_memory.sql"),
        },
        EmbeddedMigration {
            version: 6,
            description: "sub-runs: a run's parent",
            sql: include_str!("../migrations/postgres/0006_sub_runs.sql"),
        },
    ],
};

/// Rows per multi-row INSERT of events (3 parameters each; far below
/// SQLite's and PostgreSQL's parameter limits).
const EVENTS_PER_INSERT: usize = 300;

/// The outcome of [`Store::create_run`].
#[derive(Debug)]
pub(crate) enum Created {
    /// The run was stored.
    New(RunRow),
    /// The tenant's idempotency key already named this run.
    Existing(RunRow),
}

/// Filters of [`Store::list_runs`].
#[derive(Debug, Clone, Default)]
pub(crate) struct RunFilter {
    pub(crate) states: Vec<i32>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) agent: String,
    pub(crate) session_id: String,
    /// Only sub-runs of this run (empty: any run).
    pub(crate) parent_run_id: String,
    pub(crate) create_time_start: Option<i64>,
    pub(crate) create_time_end: Option<i64>,
}

/// Whose runs a read may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tenants<'a> {
    /// One tenant's (every caller's own).
    One(&'a str),
    /// Every tenant's (an authenticated `admin`).
    All,
}

/// The orchestrator's database.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: Database,
    /// On SQLite, the group commit of steps ([`step`]).
    steps: Option<GroupCommit<step::StepWrite>>,
}

/// The `runs` columns a [`RunRow`] is read from.
macro_rules! run_columns {
    () => {
        "run_id, tenant, subject, agent, session_id, objective, state, idempotency_key, model, \
         max_steps, max_output_tokens, timeout_ms, labels, create_time, start_time, end_time, \
         output, error, input_tokens, output_tokens, steps, tool_calls, last_sequence, identity, \
         priority, callback_url, callback_events, parent_run_id, max_tokens, max_cost_micros"
    };
}

macro_rules! select_runs {
    ($tail:literal) => {
        concat!("SELECT ", run_columns!(), " FROM runs ", $tail)
    };
}

// After the macros above, which they use.
pub(crate) mod memory;
mod outbox;
mod replicas;
mod retention;
mod runs;
mod step;
#[cfg(test)]
pub(crate) mod testing;

impl Store {
    /// A store over an opened, migrated database. On SQLite with
    /// `group_commit` (`storage.group_commit`) this starts the task that
    /// commits steps together, so it must be called within a Tokio runtime.
    pub(crate) fn new(db: Database, group_commit: bool) -> Self {
        let steps = match &db {
            Database::Sqlite(pools) if group_commit => {
                Some(GroupCommit::start(pools.writer().clone()))
            }
            Database::Sqlite(_) | Database::Postgres(_) => None,
        };
        Self { db, steps }
    }

    /// Stores a new run (and its new session), or returns the run an
    /// idempotency key already names.
    /// `owner` claims the run until `lease_until` (so no other instance takes
    /// it for an orphan while it waits for a place).
    // Kept whole: one transaction (session, run, labels) whose statements
    // share the backend-generic transaction of `with_pool!`; split, each part
    // would need that type spelled out for both backends.
    pub(crate) async fn create_run(
        &self,
        run: &RunRow,
        new_session: bool,
        owner: &str,
        lease_until: i64,
    ) -> Result<Created, StoreError> {
        if let Some(existing) = self.find_by_idempotency_key(run).await? {
            return Ok(Created::Existing(existing));
        }
        let (labels, identity) = run.encoded()?;
        let inserted: Result<(), sqlx::Error> = with_pool!(&self.db, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                if new_session {
                    sqlx::query(
                        "INSERT INTO sessions (session_id, tenant, agent, create_time) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&run.session_id)
                    .bind(&run.tenant)
                    .bind(&run.agent)
                    .bind(run.create_time)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO runs (run_id, tenant, subject, agent, session_id, objective, \
                     state, idempotency_key, model, max_steps, max_output_tokens, timeout_ms, \
                     labels, create_time, owner, lease_until, credential_id, identity, \
                     priority, callback_url, callback_events, parent_run_id, max_tokens, \
                     max_cost_micros) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                     $16, $17, $18, $19, $20, $21, $22, $23, $24)",
                )
                .bind(&run.run_id)
                .bind(&run.tenant)
                .bind(&run.subject)
                .bind(&run.agent)
                .bind(&run.session_id)
                .bind(&run.objective)
                .bind(i32::from(run.state))
                .bind(&run.idempotency_key)
                .bind(&run.model)
                .bind(run.limits.max_steps)
                .bind(run.limits.max_output_tokens)
                .bind(run.limits.timeout_ms)
                .bind(&labels)
                .bind(run.create_time)
                .bind(owner)
                .bind(lease_until)
                .bind(run.identity.as_ref().map(|who| who.credential_id.as_str()))
                .bind(&identity)
                .bind(run.priority)
                .bind(run.callback.as_ref().map(|callback| callback.url.as_str()))
                .bind(run.callback.as_ref().map_or(0, RunCallback::events_number))
                .bind(&run.parent_run_id)
                .bind(run.limits.max_tokens)
                .bind(run.limits.max_cost_micros)
                .execute(&mut *tx)
                .await?;
                for (key, value) in &run.labels {
                    sqlx::query("INSERT INTO run_labels (run_id, key, value) VALUES ($1, $2, $3)")
                        .bind(&run.run_id)
                        .bind(key)
                        .bind(value)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await
        });
        match inserted {
            Ok(()) => Ok(Created::New(run.clone())),
            // Two requests with the same key raced; the other one won.
            Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
                match self.find_by_idempotency_key(run).await? {
                    Some(existing) => Ok(Created::Existing(existing)),
                    None => Err(sqlx::Error::Database(err).into()),
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn find_by_idempotency_key(&self, run: &RunRow) -> Result<Option<RunRow>, StoreError> {
        let Some(key) = &run.idempotency_key else {
            return Ok(None);
        };
        with_reader!(&self.db, |pool| {
            sqlx::query(select_runs!("WHERE tenant = $1 AND idempotency_key = $2"))
                .bind(&run.tenant)
                .bind(key)
                .fetch_optional(pool)
                .await?
                .map(|row| run_from_row(&row))
                .transpose()
        })
    }

    /// A run of `tenant` (of any tenant for [`Tenants::All`]).
    pub(crate) async fn get_run(
        &self,
        tenants: Tenants<'_>,
        run_id: &str,
    ) -> Result<Option<RunRow>, StoreError> {
        let Tenants::One(tenant) = tenants else {
            return self.get_run_any_tenant(run_id).await;
        };
        with_reader!(&self.db, |pool| {
            sqlx::query(select_runs!("WHERE tenant = $1 AND run_id = $2"))
                .bind(tenant)
                .bind(run_id)
                .fetch_optional(pool)
                .await?
                .map(|row| run_from_row(&row))
                .transpose()
        })
    }

    /// A run, whoever owns it (for callers that checked the tenant already).
    pub(crate) async fn get_run_any_tenant(
        &self,
        run_id: &str,
    ) -> Result<Option<RunRow>, StoreError> {
        with_reader!(&self.db, |pool| {
            sqlx::query(select_runs!("WHERE run_id = $1"))
                .bind(run_id)
                .fetch_optional(pool)
                .await?
                .map(|row| run_from_row(&row))
                .transpose()
        })
    }

    /// Whether `session_id` exists for `tenant`.
    pub(crate) async fn session_exists(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<i64> = with_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT create_time FROM sessions WHERE tenant = $1 AND session_id = $2",
            )
            .bind(tenant)
            .bind(session_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(found.is_some())
    }

    /// The unfinished run of a session, if one is still going.
    pub(crate) async fn unfinished_run_in_session(
        &self,
        session_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(with_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT run_id FROM runs WHERE session_id = $1 AND state IN (1, 2) LIMIT 1",
            )
            .bind(session_id)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// The conversation a session has reached: the final checkpoint of its
    /// latest run that succeeded (failed and cancelled runs add nothing).
    pub(crate) async fn session_history(
        &self,
        session_id: &str,
    ) -> Result<Vec<llm::Message>, StoreError> {
        let state: Option<Vec<u8>> = with_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT c.state FROM checkpoints c JOIN runs r ON r.run_id = c.run_id \
                 WHERE r.session_id = $1 AND r.state = 3 \
                 ORDER BY r.create_time DESC, r.run_id DESC LIMIT 1",
            )
            .bind(session_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(match state {
            Some(bytes) => Checkpoint::decode(bytes.as_slice())?.messages,
            None => Vec::new(),
        })
    }

    /// The run's latest checkpoint.
    pub(crate) async fn checkpoint(&self, run_id: &str) -> Result<Option<Checkpoint>, StoreError> {
        let state: Option<Vec<u8>> = with_reader!(&self.db, |pool| {
            sqlx::query_scalar("SELECT state FROM checkpoints WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(state
            .map(|bytes| Checkpoint::decode(bytes.as_slice()))
            .transpose()?)
    }

    /// Stored events of a run with `after < sequence <= upto`, in order.
    pub(crate) async fn events(
        &self,
        run_id: &str,
        after: i32,
        upto: i32,
    ) -> Result<Vec<pb::RunEvent>, StoreError> {
        let rows: Vec<Vec<u8>> = with_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT event FROM run_events WHERE run_id = $1 AND sequence > $2 \
                 AND sequence <= $3 ORDER BY sequence",
            )
            .bind(run_id)
            .bind(after)
            .bind(upto)
            .fetch_all(pool)
            .await?
        });
        rows.iter()
            .map(|bytes| Ok(pb::RunEvent::decode(bytes.as_slice())?))
            .collect()
    }

    /// Extends this instance's claim on the runs it drives.
    pub(crate) async fn renew_leases(
        &self,
        owner: &str,
        lease_until: i64,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, |pool| {
            sqlx::query("UPDATE runs SET lease_until = $2 WHERE owner = $1 AND state IN (1, 2)")
                .bind(owner)
                .bind(lease_until)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Unfinished runs `owner` claims, oldest first, at most `limit`: the
    /// maintenance checks that each is driven.
    pub(crate) async fn claimed_by(
        &self,
        owner: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(with_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT run_id FROM runs WHERE owner = $1 AND state IN (1, 2) \
                 ORDER BY create_time LIMIT $2",
            )
            .bind(owner)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }
}
