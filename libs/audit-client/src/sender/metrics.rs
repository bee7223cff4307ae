//! The sender's metrics: queue and spool gauges, events sent, spooled,
//! dropped and rejected, and the audit service's availability.

use super::*;

// === metrics ===

pub(super) struct Metrics {
    pub(super) queue_depth: IntGauge,
    pub(super) spool_bytes: IntGauge,
    pub(super) emitted: IntCounter,
    pub(super) sent: IntCounter,
    pub(super) spooled: IntCounter,
    pub(super) dropped: IntCounter,
    pub(super) rejected: IntCounter,
    pub(super) send_failures: IntCounter,
    pub(super) spool_full: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them; a registration failure (e.g.
    /// the same registry used twice) is logged, the metrics then still count
    /// but are not exported.
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            queue_depth: IntGauge::new(
                "agentmesh_audit_queue_depth",
                "Audit events held in memory, waiting to be sent or spooled.",
            )?,
            spool_bytes: IntGauge::new(
                "agentmesh_audit_spool_bytes",
                "Bytes of audit events in the local spool, waiting for the audit service.",
            )?,
            emitted: IntCounter::new(
                "agentmesh_audit_events_emitted_total",
                "Audit events emitted by this service.",
            )?,
            sent: IntCounter::new(
                "agentmesh_audit_events_sent_total",
                "Audit events acknowledged by the audit service (stored now or already stored).",
            )?,
            spooled: IntCounter::new(
                "agentmesh_audit_events_spooled_total",
                "Audit events written to the local spool because the audit service was away or the spool not yet replayed.",
            )?,
            dropped: IntCounter::new(
                "agentmesh_audit_events_dropped_total",
                "Audit events discarded: queue full with a full spool under spool_full_policy drop_oldest, or spool unwritable at shutdown.",
            )?,
            rejected: IntCounter::new(
                "agentmesh_audit_events_rejected_total",
                "Audit events the audit service rejected as invalid (not stored; not re-sent).",
            )?,
            send_failures: IntCounter::new(
                "agentmesh_audit_send_failures_total",
                "Record calls to the audit service that failed or timed out (their events were spooled).",
            )?,
            spool_full: IntCounter::new(
                "agentmesh_audit_spool_full_total",
                "Times the audit spool reached max_spool_bytes while the audit service was away.",
            )?,
        };
        let collectors: [Box<dyn Collector>; 9] = [
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.spool_bytes.clone()),
            Box::new(metrics.emitted.clone()),
            Box::new(metrics.sent.clone()),
            Box::new(metrics.spooled.clone()),
            Box::new(metrics.dropped.clone()),
            Box::new(metrics.rejected.clone()),
            Box::new(metrics.send_failures.clone()),
            Box::new(metrics.spool_full.clone()),
        ];
        for collector in collectors {
            if let Err(err) = registry.register(collector) {
                tracing::warn!(error = %err, "audit client metric not registered; it is not exported");
            }
        }
        Ok(metrics)
    }
}
