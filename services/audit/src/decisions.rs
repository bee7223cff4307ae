//! The audit service's own access decisions. Every other service sends its
//! AUTHENTICATION and AUTHORIZATION events through its audit producer, over
//! gRPC to `Record`; the audit service cannot call itself that way (its
//! `Record` sits behind the very checks that produce the decisions, and a
//! refused call must still be recorded), so its decisions are appended to
//! its own log directly, through the same writer as every event.
//!
//! ```text
//! auth layer ─▶ DecisionLog (aggregates refusals) ─▶ OwnDecisions::record
//!     ─▶ bounded queue ─▶ task (started once the database is open) ─▶ writer ─▶ store
//! ```
//!
//! `record` never waits: the queue holds the decisions made before the
//! database opened, and a decision that finds it full is dropped and
//! counted (`agentmesh_audit_own_decisions_dropped_total`). Refusals reach
//! it already aggregated per credential and peer, so even a flood of bad
//! credentials stays a few events per interval.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use agentmesh_audit_client::Redactor;
use agentmesh_auth::decision::{Decision, DecisionSink};
use agentmesh_kit::metrics::prometheus::{self, IntCounter, Registry};
use agentmesh_proto::audit::v1::AuditEvent;
use tokio::sync::mpsc;

use crate::event::Prepared;
use crate::writer::Writer;

/// Decisions waiting for the writer.
const QUEUED: usize = 4096;
/// Decisions written per commit at most.
const PER_COMMIT: usize = 256;

/// The audit service's decision sink.
#[derive(Debug)]
pub(crate) struct OwnDecisions {
    queue: mpsc::Sender<AuditEvent>,
    dropped: IntCounter,
}

/// The receiving end, until the database is open and [`run`] takes it.
#[derive(Debug, Default)]
pub(crate) struct Pending(Mutex<Option<mpsc::Receiver<AuditEvent>>>);

impl Pending {
    /// The queue's receiver, the first time.
    pub(crate) fn take(&self) -> Option<mpsc::Receiver<AuditEvent>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl OwnDecisions {
    /// A sink and its pending receiver, counting drops in `registry`.
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<(Arc<Self>, Pending)> {
        let dropped = IntCounter::new(
            "agentmesh_audit_own_decisions_dropped_total",
            "Access decisions of the audit service itself dropped because its queue to the log was full.",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let (queue, receiver) = mpsc::channel(QUEUED);
        Ok((
            Arc::new(Self { queue, dropped }),
            Pending(Mutex::new(Some(receiver))),
        ))
    }
}

impl DecisionSink for OwnDecisions {
    fn record(&self, decision: Decision) {
        let event = agentmesh_audit_client::access_event(crate::SERVICE, decision);
        if self.queue.try_send(event).is_err() {
            self.dropped.inc();
        }
    }
}

/// Appends the queued decisions to the log until the sink is gone.
pub(crate) async fn run(
    mut receiver: mpsc::Receiver<AuditEvent>,
    writer: Writer,
    redactor: Arc<Redactor>,
) {
    let mut batch = Vec::with_capacity(PER_COMMIT);
    while receiver.recv_many(&mut batch, PER_COMMIT).await > 0 {
        let now = SystemTime::now();
        let prepared = batch
            .drain(..)
            .enumerate()
            .map(|(index, mut event)| {
                // Nothing secret is in a decision; redacting anyway keeps
                // every stored event under the same last line of defence.
                redactor.redact_event(&mut event);
                Prepared::new(index, event, now)
            })
            .collect();
        match writer.write(prepared).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::error!(error = %err, "recording the audit service's own access decisions failed");
            }
            Err(err) => {
                tracing::warn!(error = %err, "recording the audit service's own access decisions failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_auth::Mechanism;
    use agentmesh_auth::decision::DecisionKind;

    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let registry = Registry::new();
        let (sink, pending) = OwnDecisions::new(&registry).unwrap();
        let decision = Decision {
            kind: DecisionKind::Authentication,
            allowed: false,
            method: "/agentmesh.audit.v1.AuditService/Query".into(),
            mechanism: Mechanism::ApiKey,
            credential_id: "am_test_abcdefgh".into(),
            peer: "127.0.0.1".into(),
            reason: "unknown_key",
            permission: String::new(),
            tenant: String::new(),
            subject: String::new(),
            resource: String::new(),
            actor: String::new(),
            count: 1,
        };
        for _ in 0..QUEUED + 3 {
            sink.record(decision.clone());
        }
        assert_eq!(sink.dropped.get(), 3);
        let mut receiver = pending.take().unwrap();
        assert!(pending.take().is_none(), "taken once");
        let event = receiver.try_recv().unwrap();
        assert_eq!(event.service, "audit");
        assert_eq!(
            event.r#type(),
            agentmesh_proto::audit::v1::EventType::Authentication
        );
    }
}
