//! What replicas on one database share about runs: claims (with the
//! sequence reservation a claim takes), recorded cancels, released claims,
//! and the replicas' addresses; on PostgreSQL each change that another
//! replica must act on at once is also announced with `NOTIFY` on
//! [`CHANNEL`] (see `engine::replicas`).
//!
//! ```text
//! claim / claim_orphans ─▶ owner, lease, sequence_reserved += RESERVE_BLOCK
//!                          ─▶ Claimed { run, first sequence, abandoned range }
//! reserve (mid-step, > RESERVE_BLOCK events) ─▶ sequence_reserved (fenced)
//! request_cancel ─▶ cancel_reason, cancelled_by   + NOTIFY "cancel <run id>"
//! release        ─▶ lease_until = 0 (fenced)      + NOTIFY "released"
//! advertise / replica_url ─▶ orchestrator_replicas (owner, url, seen_until)
//! ```
//!
//! **Sequence reservations** make event numbers exact across a hand-over:
//! a driver streams an event only below the run's stored
//! `sequence_reserved`, so a driver that resumes the run knows every
//! number that may have been streamed and starts after them. Flushes raise
//! the reservation by [`RESERVE_BLOCK`] in the same transaction, so a
//! reservation of its own is written only by a step of more events than
//! that.

use std::ops::RangeInclusive;

use agentmesh_kit::time::now_micros;
use agentmesh_proto::orchestrator::v1 as pb;
use agentmesh_storage::{BeginWrite as _, Database, StoreError, with_pool};

use super::row::run_from_row;
use super::{RunRow, Store};

/// The NOTIFY channel of the orchestrator replicas.
pub(crate) const CHANNEL: &str = "agentmesh_orchestrator";

/// Sequence numbers reserved ahead of the last event: each flush and each
/// claim reserves this many after the last number used.
pub(crate) const RESERVE_BLOCK: i32 = 1024;

/// A run claimed to be driven here.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) run: RunRow,
    /// The last sequence a previous driver may have used: this driver's
    /// events are numbered after it.
    pub(crate) sequence_from: i32,
    /// The numbers a previous driver may have streamed but never stored;
    /// the restart marker names them.
    pub(crate) abandoned: Option<RangeInclusive<i32>>,
    /// Reserved for this driver up to here.
    pub(crate) reserved: i32,
}

/// A cancel recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordedCancel {
    pub(crate) reason: String,
    /// The subject who asked ("" if unknown).
    pub(crate) by: String,
}

/// The outcome of a fenced write of the run's driver.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Written; a cancel recorded meanwhile, if any.
    Stored { cancel: Option<RecordedCancel> },
    /// Another replica claims the run now: nothing was written, and this
    /// one must stop driving it.
    ClaimLost,
}

/// Of a claim's stored `last_sequence` and new reservation (`reserved`,
/// [`RESERVE_BLOCK`] past the previous driver's), the claim as the driver
/// uses it. Only a run that had started (RUNNING) can have streamed events
/// beyond what is stored: a run's first event is stored before it is sent.
fn claimed(run: RunRow, reserved: i32) -> Claimed {
    let sequence_from = (reserved - RESERVE_BLOCK).max(run.last_sequence);
    let abandoned = (run.state == pb::RunState::Running && sequence_from > run.last_sequence)
        .then(|| run.last_sequence + 1..=sequence_from);
    Claimed {
        run,
        sequence_from,
        abandoned,
        reserved,
    }
}

/// The reservation a claim sets: [`RESERVE_BLOCK`] (1024) past what any
/// driver may have used.
macro_rules! claim_reservation {
    () => {
        "sequence_reserved = CASE WHEN sequence_reserved > last_sequence \
         THEN sequence_reserved ELSE last_sequence END + 1024"
    };
}

impl Store {
    /// Claims one unfinished run for `owner` until `lease_until` if it is
    /// `owner`'s already or its claim ran out (or was released); returns the
    /// claim if so (a conditional update: never taken from a live
    /// instance).
    pub(crate) async fn claim(
        &self,
        run_id: &str,
        owner: &str,
        lease_until: i64,
    ) -> Result<Option<Claimed>, StoreError> {
        let reserved: Option<i32> = with_pool!(&self.db, |pool| {
            sqlx::query_scalar(concat!(
                "UPDATE runs SET owner = $2, lease_until = $3, ",
                claim_reservation!(),
                " WHERE run_id = $1 AND state IN (1, 2) AND (owner = $2 OR lease_until < $4) \
                 RETURNING sequence_reserved"
            ))
            .bind(run_id)
            .bind(owner)
            .bind(lease_until)
            .bind(now_micros())
            .fetch_optional(pool)
            .await?
        });
        let Some(reserved) = reserved else {
            return Ok(None);
        };
        Ok(self
            .get_run_any_tenant(run_id)
            .await?
            .map(|run| claimed(run, reserved)))
    }

    /// Claims unfinished runs whose claim ran out or was released (their
    /// instance is gone or handed them over), at most `limit`, for `owner`
    /// until `lease_until`. Each is claimed with a conditional update, so
    /// two instances never both take one.
    pub(crate) async fn claim_orphans(
        &self,
        owner: &str,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = now_micros();
        let candidates: Vec<String> = with_pool!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT run_id FROM runs WHERE state IN (1, 2) AND lease_until < $1 \
                 ORDER BY create_time LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        let mut claims = Vec::new();
        for run_id in candidates {
            let reserved: Option<i32> = with_pool!(&self.db, |pool| {
                sqlx::query_scalar(concat!(
                    "UPDATE runs SET owner = $2, lease_until = $3, ",
                    claim_reservation!(),
                    " WHERE run_id = $1 AND state IN (1, 2) AND lease_until < $4 \
                     RETURNING sequence_reserved"
                ))
                .bind(&run_id)
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .fetch_optional(pool)
                .await?
            });
            if let Some(reserved) = reserved {
                let run = with_pool!(&self.db, |pool| {
                    sqlx::query(select_runs!("WHERE run_id = $1"))
                        .bind(&run_id)
                        .fetch_optional(pool)
                        .await?
                        .map(|row| run_from_row(&row))
                        .transpose()?
                });
                claims.extend(run.map(|run| claimed(run, reserved)));
            }
        }
        Ok(claims)
    }

    /// Raises the run's reservation to `upto` while `owner` claims it;
    /// false when the claim is lost.
    pub(crate) async fn reserve(
        &self,
        run_id: &str,
        owner: &str,
        upto: i32,
    ) -> Result<bool, StoreError> {
        let rows = with_pool!(&self.db, |pool| {
            sqlx::query(
                "UPDATE runs SET sequence_reserved = $3 \
                 WHERE run_id = $1 AND owner = $2 AND sequence_reserved < $3",
            )
            .bind(run_id)
            .bind(owner)
            .bind(upto)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if rows == 1 {
            return Ok(true);
        }
        // Nothing changed: already that high while still ours, or lost.
        let still_ours: Option<i32> = with_pool!(&self.db, |pool| {
            sqlx::query_scalar("SELECT 1 FROM runs WHERE run_id = $1 AND owner = $2")
                .bind(run_id)
                .bind(owner)
                .fetch_optional(pool)
                .await?
        });
        Ok(still_ours.is_some())
    }

    /// Records a cancel of the unfinished run (the first one wins) and
    /// tells the replicas; the cancel now recorded, or `None` when the run
    /// has ended.
    pub(crate) async fn request_cancel(
        &self,
        run_id: &str,
        reason: &str,
        by: &str,
    ) -> Result<Option<RecordedCancel>, StoreError> {
        let recorded: Option<(Option<String>, String)> = with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "UPDATE runs SET cancel_reason = $2, cancelled_by = $3 \
                 WHERE run_id = $1 AND state IN (1, 2) AND cancel_reason IS NULL",
            )
            .bind(run_id)
            .bind(reason)
            .bind(by)
            .execute(&mut *tx)
            .await?;
            let recorded = sqlx::query_as(
                "SELECT cancel_reason, cancelled_by FROM runs \
                 WHERE run_id = $1 AND state IN (1, 2)",
            )
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            recorded
        });
        let Some((Some(reason), by)) = recorded else {
            return Ok(None);
        };
        self.notify(&format!("cancel {run_id}")).await;
        Ok(Some(RecordedCancel { reason, by }))
    }

    /// The cancels recorded for unfinished runs `owner` claims.
    pub(crate) async fn cancels_for(
        &self,
        owner: &str,
    ) -> Result<Vec<(String, RecordedCancel)>, StoreError> {
        let rows: Vec<(String, String, String)> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT run_id, cancel_reason, cancelled_by FROM runs \
                 WHERE owner = $1 AND state IN (1, 2) AND cancel_reason IS NOT NULL",
            )
            .bind(owner)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(run_id, reason, by)| (run_id, RecordedCancel { reason, by }))
            .collect())
    }

    /// The cancel recorded for one run, if any.
    pub(crate) async fn recorded_cancel(
        &self,
        run_id: &str,
    ) -> Result<Option<RecordedCancel>, StoreError> {
        let row: Option<(Option<String>, String)> = with_pool!(&self.db, |pool| {
            sqlx::query_as("SELECT cancel_reason, cancelled_by FROM runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.and_then(|(reason, by)| reason.map(|reason| RecordedCancel { reason, by })))
    }

    /// Gives up `owner`'s claim on the unfinished run so another replica
    /// resumes it at once (not after the lease), and tells the replicas.
    /// `used` is the last sequence this driver numbered an event with: the
    /// reservation shrinks to it, so the next driver abandons exactly the
    /// numbers streamed and not stored (none after a clean hand-over).
    pub(crate) async fn release(
        &self,
        run_id: &str,
        owner: &str,
        used: i32,
    ) -> Result<bool, StoreError> {
        let rows = with_pool!(&self.db, |pool| {
            sqlx::query(
                "UPDATE runs SET owner = '', lease_until = 0, sequence_reserved = $3 \
                 WHERE run_id = $1 AND owner = $2 AND state IN (1, 2)",
            )
            .bind(run_id)
            .bind(owner)
            .bind(used)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if rows == 1 {
            self.notify("released").await;
        }
        Ok(rows == 1)
    }

    /// The replica claiming the run, if a live one does: its owner name and
    /// the address it advertises ("" when it advertises none).
    pub(crate) async fn driver_of(
        &self,
        run_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        Ok(with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT r.owner, COALESCE(p.url, '') FROM runs r \
                 LEFT JOIN orchestrator_replicas p ON p.owner = r.owner AND p.seen_until >= $2 \
                 WHERE r.run_id = $1 AND r.state IN (1, 2) AND r.lease_until >= $2",
            )
            .bind(run_id)
            .bind(now_micros())
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Records (or renews) where the other replicas reach `owner`, until
    /// `seen_until`.
    pub(crate) async fn advertise(
        &self,
        owner: &str,
        url: &str,
        seen_until: i64,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO orchestrator_replicas (owner, url, seen_until) VALUES ($1, $2, $3) \
                 ON CONFLICT (owner) DO UPDATE SET url = excluded.url, \
                 seen_until = excluded.seen_until",
            )
            .bind(owner)
            .bind(url)
            .bind(seen_until)
            .execute(pool)
            .await?;
            // Replicas gone for long are forgotten.
            sqlx::query("DELETE FROM orchestrator_replicas WHERE seen_until < $1")
                .bind(now_micros() - 3_600_000_000)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Forgets `owner`'s address (at shutdown).
    pub(crate) async fn withdraw(&self, owner: &str) -> Result<(), StoreError> {
        with_pool!(&self.db, |pool| {
            sqlx::query("DELETE FROM orchestrator_replicas WHERE owner = $1")
                .bind(owner)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Whether the replicas can tell each other about changes (PostgreSQL).
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.db, Database::Postgres(_))
    }

    /// The PostgreSQL pool, for the replicas' listener.
    pub(crate) fn postgres(&self) -> Option<&sqlx::PgPool> {
        match &self.db {
            Database::Postgres(pool) => Some(pool),
            Database::Sqlite(_) => None,
        }
    }

    /// Tells the other replicas (PostgreSQL only; best effort: each of them
    /// also finds the change at its next maintenance look).
    async fn notify(&self, payload: &str) {
        if let Database::Postgres(pool) = &self.db
            && let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(pool)
                .await
        {
            tracing::warn!(error = %err, payload, "cannot notify the other replicas");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: pb::RunState, last_sequence: i32) -> RunRow {
        RunRow {
            state,
            last_sequence,
            ..crate::engine::testing::run("acme")
        }
    }

    #[test]
    fn the_claim_reservation_is_one_block() {
        assert!(claim_reservation!().ends_with(&format!("+ {RESERVE_BLOCK}")));
    }

    #[test]
    fn a_claim_starts_after_every_number_a_previous_driver_may_have_streamed() {
        // Running, 10 stored, the previous driver had reserved up to 1034
        // (flushed at 10): this claim reserved 1034 + 1024.
        let claim = claimed(run(pb::RunState::Running, 10), 1034 + RESERVE_BLOCK);
        assert_eq!(claim.sequence_from, 1034);
        assert_eq!(claim.abandoned, Some(11..=1034));
        assert_eq!(claim.reserved, 2058);
    }

    #[test]
    fn after_a_release_only_the_numbers_used_and_not_stored_are_abandoned() {
        // Released with 12 used and 10 stored: the claim reserves 12 + 1024.
        let claim = claimed(run(pb::RunState::Running, 10), 12 + RESERVE_BLOCK);
        assert_eq!(claim.abandoned, Some(11..=12));
        let clean = claimed(run(pb::RunState::Running, 10), 10 + RESERVE_BLOCK);
        assert_eq!(clean.abandoned, None);
    }

    #[test]
    fn a_run_that_never_started_or_was_cleanly_handed_over_abandons_nothing() {
        // Queued: its first event is stored before it is sent.
        let queued = claimed(run(pb::RunState::Queued, 0), RESERVE_BLOCK);
        assert_eq!((queued.sequence_from, queued.abandoned), (0, None));
        // A run stored before reservations (sequence_reserved 0).
        let old = claimed(run(pb::RunState::Running, 7), 7 + RESERVE_BLOCK);
        assert_eq!((old.sequence_from, old.abandoned), (7, None));
    }
}
