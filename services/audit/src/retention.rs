//! Retention: a background pass deletes events recorded longer ago than
//! `retention.max_age`, a bounded batch per transaction, oldest first. Each
//! chain's anchor moves to the hash of its last deleted event, so the chain
//! stays verifiable from its new first event. Every pass that deletes
//! something is itself recorded, as a RETENTION event.

use std::time::{Duration, SystemTime};

use agentmesh_kit::time::timestamp_from_micros;
use agentmesh_proto::audit::v1::{
    AuditEvent, ChainAnchor, EventType, Outcome, RetentionDetails, audit_event::Details,
};
use agentmesh_storage::StoreError;

use crate::config::RetentionConfig;
use crate::event::Prepared;
use crate::store::Store;
use crate::writer::Writer;

/// Runs retention passes every `config.interval` until the task is dropped.
pub(crate) async fn run(store: Store, writer: Writer, config: RetentionConfig) {
    let Some(max_age) = config.max_age else {
        return;
    };
    let mut ticker = tokio::time::interval(config.interval);
    loop {
        ticker.tick().await;
        if let Err(err) = pass(&store, &writer, max_age, config.batch_size).await {
            tracing::error!(error = %err, "audit retention pass failed; retrying at the next interval");
        }
    }
}

/// One pass: deletes everything older than `max_age`, batch by batch.
pub(crate) async fn pass(
    store: &Store,
    writer: &Writer,
    max_age: Duration,
    batch_size: usize,
) -> Result<u64, StoreError> {
    let cutoff = SystemTime::now()
        .checked_sub(max_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let cutoff_us = cutoff
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    let mut deleted = 0;
    let mut anchors = std::collections::BTreeMap::new();
    loop {
        let (count, moved) = store.delete_before(cutoff_us, batch_size).await?;
        deleted += count;
        anchors.extend(moved);
        if count == 0 || count < batch_size as u64 {
            break;
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, cutoff = ?cutoff, "audit retention deleted old events");
        let event = AuditEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            r#type: EventType::Retention as i32,
            service: crate::SERVICE.to_owned(),
            outcome: Outcome::Success as i32,
            details: Some(Details::Retention(RetentionDetails {
                cutoff_time: Some(timestamp_from_micros(cutoff_us)),
                deleted_count: i64::try_from(deleted).unwrap_or(i64::MAX),
                anchors: anchors
                    .into_iter()
                    .map(|(chain, anchor_hash)| ChainAnchor { chain, anchor_hash })
                    .collect(),
            })),
            ..AuditEvent::default()
        };
        record_own(writer, event).await;
    }
    Ok(deleted)
}

/// Records an event of the audit service itself, through the same writer.
pub(crate) async fn record_own(writer: &Writer, event: AuditEvent) {
    let prepared = Prepared::new(0, event, SystemTime::now());
    match writer.write(vec![prepared]).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            tracing::error!(error = %err, "recording the audit service's own event failed")
        }
        Err(err) => tracing::warn!(error = %err, "recording the audit service's own event failed"),
    }
}
