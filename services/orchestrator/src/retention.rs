//! Retention of finished runs (`[orchestrator.retention]`): every
//! `interval`, each final state with an age deletes its runs that ended
//! before now − age, a bounded batch per statement until none is left, then
//! the sessions left without runs. Every replica runs the passes; deleting
//! is idempotent, so replicas on one database never conflict. Runs still
//! queued or running are never touched.

use std::time::{Duration, SystemTime};

use agentmesh_proto::orchestrator::v1 as pb;
use agentmesh_storage::StoreError;

use crate::config::RetentionConfig;
use crate::store::Store;

/// The final states retention applies to.
const FINAL_STATES: [pb::RunState; 3] = [
    pb::RunState::Succeeded,
    pb::RunState::Failed,
    pb::RunState::Cancelled,
];

/// Runs passes every `config.interval` until the task is aborted; nothing
/// when no state has an age.
pub(crate) async fn run(
    store: Store,
    config: RetentionConfig,
    deleted: agentmesh_kit::metrics::prometheus::IntCounter,
) {
    if FINAL_STATES
        .iter()
        .all(|state| config.age_of(*state).is_none())
    {
        return;
    }
    let mut ticker = tokio::time::interval(config.interval);
    loop {
        ticker.tick().await;
        match pass(&store, &config, SystemTime::now()).await {
            Ok(0) => {}
            Ok(count) => {
                deleted.inc_by(count);
                tracing::info!(deleted = count, "retention deleted finished runs");
            }
            Err(err) => {
                tracing::error!(error = %err, "run retention pass failed; retrying at the next interval")
            }
        }
    }
}

/// Microseconds since the epoch of `now - age` (0 before the epoch).
fn cutoff(now: SystemTime, age: Duration) -> i64 {
    now.checked_sub(age)
        .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

/// One pass as of `now`: how many runs it deleted.
pub(crate) async fn pass(
    store: &Store,
    config: &RetentionConfig,
    now: SystemTime,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    let mut oldest_cutoff = None;
    for state in FINAL_STATES {
        let Some(age) = config.age_of(state) else {
            continue;
        };
        let before = cutoff(now, age);
        oldest_cutoff = Some(oldest_cutoff.map_or(before, |c: i64| c.max(before)));
        loop {
            let count = store
                .delete_finished(state, before, config.batch_size)
                .await?;
            deleted += count;
            if count < u64::try_from(config.batch_size).unwrap_or(u64::MAX) {
                break;
            }
        }
    }
    if let Some(before) = oldest_cutoff {
        while store
            .delete_empty_sessions(before, config.batch_size)
            .await?
            >= u64::try_from(config.batch_size).unwrap_or(u64::MAX)
        {}
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests;
