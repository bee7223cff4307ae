//! The run callbacks' outbox (`run_callbacks`): rows written with the run's
//! step or end ([`Store::flush`]), then claimed, attempted and settled by
//! the delivery task of any replica (`crate::callbacks`).
//!
//! ```text
//! flush (same transaction as the step/end) ─▶ pending, due now
//! claim_callbacks: due, unclaimed ─▶ claimed by one replica until its
//!                  lease, attempts + 1 (counted before the attempt, so a
//!                  crash mid-attempt still counts it)
//! settle_callback (fenced by the claim) ─▶ delivered | due again later
//!                  | given up
//! ```
//!
//! On PostgreSQL the claim takes rows `FOR UPDATE SKIP LOCKED`, so replicas
//! claiming at once never share a row; SQLite serialises writers, and its
//! one process clears stale claims at start
//! ([`Store::release_callback_claims`]). A delivered or given-up row is kept
//! (and never claimed again) until its run is deleted.

use agentmesh_kit::time::now_micros;
use agentmesh_storage::{Database, StoreError, with_pool};

use super::Store;

/// A callback to deliver, stored with the step or end it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewCallback {
    /// Its id for every attempt (`x-agentmesh-delivery`).
    pub(crate) delivery_id: String,
    /// `step:<n>` or `end`: at most one row per run and event.
    pub(crate) event: String,
    pub(crate) url: String,
    /// The JSON body without `delivery_id` and `attempt`.
    pub(crate) payload: String,
}

/// A callback claimed for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DueCallback {
    pub(crate) delivery_id: String,
    pub(crate) run_id: String,
    pub(crate) tenant: String,
    pub(crate) url: String,
    pub(crate) payload: String,
    /// When its step or end was stored.
    pub(crate) create_time: i64,
    /// This attempt's number, from 1.
    pub(crate) attempt: i32,
}

/// How an attempt ended, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The receiver answered 2xx: never sent again.
    Delivered { status: u16 },
    /// Failed; due again at `at`.
    Retry { at: i64, status: u16, error: String },
    /// Failed for the last time (or refused): never sent again.
    GaveUp { status: u16, error: String },
}

/// Which rows [`Store::claim_callbacks`] takes: due, pending, unclaimed.
macro_rules! due_callbacks {
    () => {
        "SELECT delivery_id FROM run_callbacks WHERE delivered_at IS NULL \
         AND given_up_at IS NULL AND next_attempt_at <= $3 AND claimed_until < $3 \
         ORDER BY next_attempt_at LIMIT $4"
    };
}

macro_rules! claim_callbacks {
    ($due:expr) => {
        concat!(
            "UPDATE run_callbacks SET claimed_by = $1, claimed_until = $2, \
             attempts = attempts + 1 WHERE delivery_id IN (",
            $due,
            ") RETURNING delivery_id, run_id, tenant, url, payload, create_time, attempts"
        )
    };
}

/// The row a claim returns.
type ClaimedRow = (String, String, String, String, String, i64, i32);

impl Store {
    /// Claims up to `limit` due callbacks for `owner` until `lease_until`,
    /// oldest due first, counting the attempt about to be made.
    pub(crate) async fn claim_callbacks(
        &self,
        owner: &str,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<DueCallback>, StoreError> {
        let now = now_micros();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<ClaimedRow> = match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_as(claim_callbacks!(concat!(
                    due_callbacks!(),
                    " FOR UPDATE SKIP LOCKED"
                )))
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Database::Sqlite(pools) => {
                sqlx::query_as(claim_callbacks!(due_callbacks!()))
                    .bind(owner)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(pools.writer())
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(
                |(delivery_id, run_id, tenant, url, payload, create_time, attempt)| DueCallback {
                    delivery_id,
                    run_id,
                    tenant,
                    url,
                    payload,
                    create_time,
                    attempt,
                },
            )
            .collect())
    }

    /// Records how an attempt ended, if `owner` still claims the callback;
    /// false when it does not (its lease ran out and another replica took
    /// it), and nothing is written.
    pub(crate) async fn settle_callback(
        &self,
        delivery_id: &str,
        owner: &str,
        settled: &Settled,
    ) -> Result<bool, StoreError> {
        let now = now_micros();
        let (status, error, next, delivered, given_up) = match settled {
            Settled::Delivered { status } => (*status, "", None, Some(now), None),
            Settled::Retry { at, status, error } => {
                (*status, error.as_str(), Some(*at), None, None)
            }
            Settled::GaveUp { status, error } => (*status, error.as_str(), None, None, Some(now)),
        };
        let done = with_pool!(&self.db, |pool| {
            sqlx::query(
                "UPDATE run_callbacks SET claimed_by = '', claimed_until = 0, \
                 last_status = $3, last_error = $4, \
                 next_attempt_at = COALESCE($5, next_attempt_at), \
                 delivered_at = $6, given_up_at = $7 \
                 WHERE delivery_id = $1 AND claimed_by = $2 \
                 AND delivered_at IS NULL AND given_up_at IS NULL",
            )
            .bind(delivery_id)
            .bind(owner)
            .bind(i32::from(status))
            .bind(error)
            .bind(next)
            .bind(delivered)
            .bind(given_up)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Gives up the claims of `owner` (every claim, for `None`) on
    /// callbacks not yet settled, so they are due again at once: at
    /// shutdown, and at start on SQLite, whose one process is the only
    /// claimer (a claim left by a crash would otherwise wait out its lease).
    pub(crate) async fn release_callback_claims(
        &self,
        owner: Option<&str>,
    ) -> Result<u64, StoreError> {
        Ok(with_pool!(&self.db, |pool| {
            sqlx::query(
                "UPDATE run_callbacks SET claimed_by = '', claimed_until = 0 \
                 WHERE claimed_until > 0 AND delivered_at IS NULL AND given_up_at IS NULL \
                 AND ($1 IS NULL OR claimed_by = $1)",
            )
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Callbacks neither delivered nor given up (every replica's).
    pub(crate) async fn pending_callbacks(&self) -> Result<i64, StoreError> {
        Ok(with_pool!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM run_callbacks \
                 WHERE delivered_at IS NULL AND given_up_at IS NULL",
            )
            .fetch_one(pool)
            .await?
        }))
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
