//! A step as written: [`Store::flush`], the write of every step of every
//! run, in one transaction per step — or, on SQLite, in one transaction
//! with the steps of other runs that are waiting meanwhile
//! ([`agentmesh_storage::group_commit`]): SQLite writes through one
//! connection, so fifty runs in flight would otherwise each wait for the
//! forty-nine commits before theirs. Each caller is answered only after
//! the commit, as before.
//!
//! A step's write is safe to repeat, as group commit asks: its events are
//! inserted unless already stored (the same run and sequence, numbered by
//! the one driver that the write's fence admits, are the same event), the
//! row and checkpoint are set, not added to, and the callback is stored
//! once per run and event.

use agentmesh_kit::time::now_micros;
use agentmesh_proto::orchestrator::v1 as pb;
use agentmesh_storage::{BeginWrite as _, GroupWrite, StoreError, with_pool};
use prost::Message as _;
use sqlx::sqlite::SqliteConnection;

use super::{Checkpoint, EVENTS_PER_INSERT, Flushed, NewCallback, RecordedCancel, RunRow, Store};

/// Everything one step writes, owned (it may be written by the group
/// commit's task).
#[derive(Debug)]
pub(crate) struct StepWrite {
    run_id: String,
    tenant: String,
    state: i32,
    start_time: Option<i64>,
    end_time: Option<i64>,
    output: String,
    error: Option<Vec<u8>>,
    input_tokens: i64,
    output_tokens: i64,
    steps: i32,
    tool_calls: i32,
    last_sequence: i32,
    owner: String,
    lease_until: i64,
    reserve_to: i32,
    /// Sequence and encoded event.
    events: Vec<(i32, Vec<u8>)>,
    /// Step and encoded checkpoint.
    checkpoint: Option<(i32, Vec<u8>)>,
    callback: Option<NewCallback>,
    now: i64,
}

/// The statements of a [`StepWrite`] (`$step`) on a connection (`$conn`,
/// `&mut` either backend's), inside a transaction: one text for both
/// backends, whose connection types differ.
macro_rules! write_step {
    ($conn:expr, $step:expr) => {{
        let (conn, step) = ($conn, $step);
        // The row first, fenced by the claim: when the claim is lost,
        // nothing else is tried (the events' numbers may be taken by the
        // new driver).
        let cancel: Option<(Option<String>, String)> = sqlx::query_as(
            "UPDATE runs SET state = $2, start_time = $3, end_time = $4, output = $5, \
             error = $6, input_tokens = $7, output_tokens = $8, steps = $9, \
             tool_calls = $10, last_sequence = $11, lease_until = $13, \
             sequence_reserved = CASE WHEN sequence_reserved > $14 \
             THEN sequence_reserved ELSE $14 END \
             WHERE run_id = $1 AND owner = $12 RETURNING cancel_reason, cancelled_by",
        )
        .bind(&step.run_id)
        .bind(step.state)
        .bind(step.start_time)
        .bind(step.end_time)
        .bind(&step.output)
        .bind(&step.error)
        .bind(step.input_tokens)
        .bind(step.output_tokens)
        .bind(step.steps)
        .bind(step.tool_calls)
        .bind(step.last_sequence)
        .bind(&step.owner)
        .bind(step.lease_until)
        .bind(step.reserve_to)
        .fetch_optional(&mut *conn)
        .await?;
        match cancel {
            None => Flushed::ClaimLost,
            Some((cancel_reason, cancelled_by)) => {
                for chunk in step.events.chunks(EVENTS_PER_INSERT) {
                    let mut insert = sqlx::QueryBuilder::new(
                        "INSERT INTO run_events (run_id, sequence, event) ",
                    );
                    insert.push_values(chunk, |mut row, (sequence, event)| {
                        row.push_bind(&step.run_id)
                            .push_bind(*sequence)
                            .push_bind(event);
                    });
                    insert.push(" ON CONFLICT (run_id, sequence) DO NOTHING");
                    insert.build().execute(&mut *conn).await?;
                }
                if let Some((number, state)) = &step.checkpoint {
                    sqlx::query(
                        "INSERT INTO checkpoints (run_id, step, state, update_time) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO UPDATE \
                         SET step = excluded.step, state = excluded.state, \
                         update_time = excluded.update_time",
                    )
                    .bind(&step.run_id)
                    .bind(*number)
                    .bind(state)
                    .bind(step.now)
                    .execute(&mut *conn)
                    .await?;
                }
                if let Some(callback) = &step.callback {
                    sqlx::query(
                        "INSERT INTO run_callbacks (delivery_id, run_id, event, tenant, url, \
                         payload, create_time, next_attempt_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                         ON CONFLICT (run_id, event) DO NOTHING",
                    )
                    .bind(&callback.delivery_id)
                    .bind(&step.run_id)
                    .bind(&callback.event)
                    .bind(&step.tenant)
                    .bind(&callback.url)
                    .bind(&callback.payload)
                    .bind(step.now)
                    .execute(&mut *conn)
                    .await?;
                }
                Flushed::Stored {
                    cancel: cancel_reason.map(|reason| RecordedCancel {
                        reason,
                        by: cancelled_by,
                    }),
                }
            }
        }
    }};
}

impl GroupWrite for StepWrite {
    type Output = Flushed;

    async fn write(&self, conn: &mut SqliteConnection) -> Result<Flushed, sqlx::Error> {
        Ok(write_step!(conn, self))
    }
}

impl Store {
    /// Writes one step in one transaction: the run row's changing columns
    /// and this instance's claim on the run until `lease_until`, the step's
    /// events, the checkpoint (when given), the sequence reservation raised
    /// to at least `reserve_to` ([`super::replicas`]), and the callback
    /// reporting the step or end (when given; [`super::outbox`]: at most
    /// one per run and event). Fenced: nothing is written unless `owner`
    /// still claims the run ([`Flushed::ClaimLost`]). On SQLite the
    /// transaction may hold other runs' steps too (see the module's doc).
    pub(crate) async fn flush(
        &self,
        run: &RunRow,
        events: &[pb::RunEvent],
        checkpoint: Option<&Checkpoint>,
        claim: (&str, i64),
        reserve_to: i32,
        callback: Option<&NewCallback>,
    ) -> Result<Flushed, StoreError> {
        let (owner, lease_until) = claim;
        let step = StepWrite {
            run_id: run.run_id.clone(),
            tenant: run.tenant.clone(),
            state: i32::from(run.state),
            start_time: run.start_time,
            end_time: run.end_time,
            output: run.output.clone(),
            error: run.error.as_ref().map(prost::Message::encode_to_vec),
            input_tokens: run.input_tokens,
            output_tokens: run.output_tokens,
            steps: run.steps,
            tool_calls: run.tool_calls,
            last_sequence: run.last_sequence,
            owner: owner.to_owned(),
            lease_until,
            reserve_to,
            events: events
                .iter()
                .map(|event| (event.sequence, event.encode_to_vec()))
                .collect(),
            checkpoint: checkpoint.map(|c| (c.step, c.encode_to_vec())),
            callback: callback.cloned(),
            now: now_micros(),
        };
        if let Some(steps) = &self.steps {
            return Ok(steps.write(step).await?);
        }
        Ok(with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let flushed = write_step!(&mut *tx, &step);
            tx.commit().await?;
            flushed
        }))
    }
}

#[cfg(test)]
#[path = "step_tests.rs"]
mod tests;
