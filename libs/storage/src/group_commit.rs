//! Group commit on SQLite: many callers' writes in one transaction.
//!
//! A caller hands its write ([`GroupWrite`]) to [`GroupCommit::write`] and
//! waits. One task owns the writing: it takes every write queued since its
//! last commit (up to [`MAX_BATCH`]), runs them in order in one
//! `BEGIN IMMEDIATE` transaction on the writer connection, commits, and
//! only then answers each caller — so nothing is acknowledged before it is
//! durable, and fifty runs' steps cost one commit (one WAL append of the
//! pages they share) instead of fifty.
//!
//! ```text
//! callers ─ write(job) ─▶ queue ─▶ writer task: BEGIN IMMEDIATE; job₁ … jobₙ; COMMIT
//!        ◀─ result ───────────────────────────── (after COMMIT, in order)
//! ```
//!
//! Batching never waits for company: a write that finds the writer idle is
//! committed at once, alone. When a batch fails (one job's statement fails,
//! or the commit does), it is rolled back whole and each of its jobs is
//! written again in a transaction of its own, so one bad write fails only
//! its own caller.
//!
//! A write once queued is written even if its caller stops waiting (its
//! future dropped), as a transaction whose COMMIT was sent would be: a
//! [`GroupWrite`] must therefore be safe to write again (idempotent), since
//! its caller may retry what it did not see succeed.

use std::future::Future;

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 128;

/// Writes queued beyond the one being committed before callers wait to
/// queue theirs.
const QUEUE: usize = 1024;

/// A write the group-commit task runs inside its transaction.
pub trait GroupWrite: Send + Sync + 'static {
    /// What the caller gets back once the write is committed.
    type Output: Send + 'static;

    /// Runs the write's statements on `conn`, inside a transaction that
    /// the caller of this method begins and commits.
    fn write(
        &self,
        conn: &mut SqliteConnection,
    ) -> impl Future<Output = Result<Self::Output, sqlx::Error>> + Send;
}

/// A queued write and where its result goes.
struct Job<W: GroupWrite> {
    write: W,
    reply: oneshot::Sender<Result<W::Output, sqlx::Error>>,
}

/// The handle callers write through; cloned freely. The writing task ends
/// when the last handle is dropped.
pub struct GroupCommit<W: GroupWrite> {
    jobs: mpsc::Sender<Job<W>>,
}

impl<W: GroupWrite> Clone for GroupCommit<W> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<W: GroupWrite> std::fmt::Debug for GroupCommit<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("queued", &(QUEUE - self.jobs.capacity()))
            .finish()
    }
}

impl<W: GroupWrite> GroupCommit<W> {
    /// Starts the writing task on `writer` (the pool of SQLite's one writer
    /// connection; the task holds the connection only while it commits a
    /// batch, so other writes interleave between batches). Must be called
    /// within a Tokio runtime.
    pub fn start(writer: SqlitePool) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, queue));
        Self { jobs }
    }

    /// Queues `write` and waits until it is committed (or has failed).
    pub async fn write(&self, write: W) -> Result<W::Output, sqlx::Error> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Job { write, reply })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        // The task answers every job it takes; no answer means it is gone
        // (the runtime is shutting down).
        result.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}

/// The writing task: one batch after another, until every handle is gone.
async fn run<W: GroupWrite>(writer: SqlitePool, mut queue: mpsc::Receiver<Job<W>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        commit(&writer, &mut batch).await;
    }
}

/// Commits `batch` (emptying it) and answers its callers.
async fn commit<W: GroupWrite>(writer: &SqlitePool, batch: &mut Vec<Job<W>>) {
    if batch.len() > 1 {
        match write_together(writer, batch).await {
            Ok(outputs) => {
                for (job, output) in batch.drain(..).zip(outputs) {
                    // A caller that stopped waiting needs no answer.
                    let _ = job.reply.send(Ok(output));
                }
                return;
            }
            Err(err) => {
                tracing::debug!(error = %err, writes = batch.len(), "a group commit failed; writing its writes one by one");
            }
        }
    }
    for job in batch.drain(..) {
        let result = write_alone(writer, &job.write).await;
        let _ = job.reply.send(result);
    }
}

/// Every write of `batch` in one transaction; their outputs, in order.
async fn write_together<W: GroupWrite>(
    writer: &SqlitePool,
    batch: &[Job<W>],
) -> Result<Vec<W::Output>, sqlx::Error> {
    let mut tx = begin(writer).await?;
    let mut outputs = Vec::with_capacity(batch.len());
    for job in batch {
        // An error drops `tx`, which rolls the whole batch back.
        outputs.push(job.write.write(&mut tx).await?);
    }
    tx.commit().await?;
    Ok(outputs)
}

/// One write in a transaction of its own.
async fn write_alone<W: GroupWrite>(
    writer: &SqlitePool,
    write: &W,
) -> Result<W::Output, sqlx::Error> {
    let mut tx = begin(writer).await?;
    let output = write.write(&mut tx).await?;
    tx.commit().await?;
    Ok(output)
}

async fn begin(writer: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    writer.begin_with("BEGIN IMMEDIATE").await
}

#[cfg(test)]
mod tests;
