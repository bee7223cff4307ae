//! The single writer: `Record` calls hand their validated events to one task,
//! which groups whatever has arrived into one transaction (group commit).
//! Under load, many calls share one commit, so the cost of a commit — the
//! fsync — is paid once per group, not once per call. After each commit the
//! new events are published to the live tail of subscriptions, in sequence
//! order, tagged with the sequence number before them so a subscriber can
//! tell whether it missed anything. Commits of other replicas enter the same
//! tail as their last sequence number only (see `listener`): subscribers read
//! those events from the store. When traces are exported, each event
//! that names the span it came from gets an `audit.write` span under it.

use std::sync::Arc;
use std::time::Instant;

use agentmesh_kit::telemetry;
use agentmesh_storage::StoreError;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::field::Empty;

use crate::event::Prepared;
use crate::metrics::AuditMetrics;
use crate::store::{Committed, Store, Written};

/// Writes queued ahead of the writer before `Record` calls wait.
const QUEUED_WRITES: usize = 256;

/// Commits kept for subscribers that fall behind before they must catch up
/// from the database.
const LIVE_BUFFER: usize = 1024;

/// What the live tail carries, in the order this replica learns of it.
#[derive(Debug, Clone)]
pub(crate) enum Live {
    /// A commit of this replica, its events at hand.
    Committed(Arc<Committed>),
    /// Another replica committed events up to this sequence number: they
    /// are in the store.
    Elsewhere(i64),
}

struct Write {
    events: Vec<Prepared>,
    reply: oneshot::Sender<Result<Vec<Written>, Arc<StoreError>>>,
}

/// The handle `Record` and `Subscribe` use.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    writes: mpsc::Sender<Write>,
    live: broadcast::Sender<Live>,
    metrics: AuditMetrics,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Write")
            .field("events", &self.events.len())
            .finish()
    }
}

/// The writer is gone (the service is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the audit writer has stopped")]
pub(crate) struct WriterStopped;

impl Writer {
    /// Starts the writer task over `store`, committing at most
    /// `max_commit_events` events per transaction, counting commits and the
    /// events they store in `metrics`.
    pub(crate) fn start(store: Store, max_commit_events: usize, metrics: AuditMetrics) -> Self {
        let (writes, receiver) = mpsc::channel(QUEUED_WRITES);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        tokio::spawn(run(
            store,
            receiver,
            live.clone(),
            max_commit_events,
            metrics.clone(),
        ));
        Self {
            writes,
            live,
            metrics,
        }
    }

    /// The service's metrics (for `Record` and `Subscribe`).
    pub(crate) fn metrics(&self) -> &AuditMetrics {
        &self.metrics
    }

    /// Stores events; answers once they are committed.
    pub(crate) async fn write(
        &self,
        events: Vec<Prepared>,
    ) -> Result<Result<Vec<Written>, Arc<StoreError>>, WriterStopped> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Write { events, reply })
            .await
            .map_err(|_| WriterStopped)?;
        answer.await.map_err(|_| WriterStopped)
    }

    /// The live tail: every commit from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// Wakes every subscription: the log holds events up to `last_seq`,
    /// committed by another replica (or while this one was not listening).
    pub(crate) fn committed_elsewhere(&self, last_seq: i64) {
        // No subscriber is not an error.
        let _ = self.live.send(Live::Elsewhere(last_seq));
    }
}

async fn run(
    store: Store,
    mut receiver: mpsc::Receiver<Write>,
    live: broadcast::Sender<Live>,
    max_commit_events: usize,
    metrics: AuditMetrics,
) {
    while let Some(first) = receiver.recv().await {
        let mut count = first.events.len();
        let mut group = vec![first];
        while count < max_commit_events {
            match receiver.try_recv() {
                Ok(write) => {
                    count += write.events.len();
                    group.push(write);
                }
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(group.len());
        for write in group {
            replies.push((write.events.len(), write.reply));
            events.extend(write.events);
        }
        // One span per event whose origin span was sampled: the write of
        // the event as a child of the span that emitted it, so the run's
        // trace shows its audit writes. Nothing is built when traces are off.
        let spans = write_spans(&events);
        let began = Instant::now();
        let appended = store.append(&events).await;
        metrics.commit(began.elapsed());
        match appended {
            Ok((written, committed)) => {
                for (prepared, outcome) in events.iter().zip(&written) {
                    match outcome {
                        Written::Stored(_) => metrics.stored(prepared.event.r#type),
                        Written::Duplicate(_) => metrics.duplicate(),
                    }
                }
                for (_, event) in &committed.events {
                    tracing::debug!(
                        event_id = %event.event_id,
                        event_type = event.r#type().as_str_name(),
                        sequence = %event.cursor,
                        run_id = %event.run_id,
                        request_id = %event.request_id,
                        trace_id = %event.trace_id,
                        "stored audit event"
                    );
                }
                drop(spans);
                let mut written = written.into_iter();
                for (len, reply) in replies {
                    let _ = reply.send(Ok(written.by_ref().take(len).collect()));
                }
                if !committed.events.is_empty() {
                    // No subscriber is not an error.
                    let _ = live.send(Live::Committed(Arc::new(committed)));
                }
            }
            Err(err) => {
                for span in &spans {
                    span.record("otel.status_code", "error");
                    span.record("error.type", "storage_error");
                }
                drop(spans);
                tracing::error!(error = %err, events = events.len(), "storing audit events failed");
                let err = Arc::new(err);
                for (_, reply) in replies {
                    let _ = reply.send(Err(Arc::clone(&err)));
                }
            }
        }
    }
}

/// The spans of writing `events` (see [`run`]).
fn write_spans(events: &[Prepared]) -> Vec<tracing::Span> {
    if !telemetry::enabled() {
        return Vec::new();
    }
    events
        .iter()
        .filter(|prepared| {
            !prepared.event.span_id.is_empty() && !prepared.event.trace_id.is_empty()
        })
        .map(|prepared| {
            let event = &prepared.event;
            let kind = event.r#type().as_str_name();
            let kind = kind.strip_prefix("EVENT_TYPE_").unwrap_or(kind);
            let span = tracing::info_span!(
                target: "agentmesh::audit",
                parent: None,
                "audit.write",
                otel.name = %format_args!("audit.write {}", kind.to_ascii_lowercase()),
                otel.status_code = Empty,
                error.type = Empty,
                audit.event_id = %event.event_id,
                audit.event_type = kind,
                audit.service = %event.service,
                run_id = %event.run_id,
            );
            telemetry::set_remote_parent(&span, &event.trace_id, &event.span_id);
            span
        })
        .collect()
}
