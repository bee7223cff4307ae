//! The alerting service's own Prometheus metrics (the kit adds the gRPC
//! ones): alerts by state, audit events evaluated, the audit stream's
//! connection, notifications by receiver, integration and outcome, and
//! whether the replica leads.

use agentmesh_kit::client::Clients;
use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::model::{Alert, AlertState, DeliveryReport};

/// Handles to the metrics; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    alerts: IntGaugeVec,
    events: IntCounter,
    stream_connected: IntGauge,
    stream_reconnects: IntCounter,
    leader: IntGauge,
    dropped_alerts: IntCounter,
    dropped_rule_events: IntCounter,
    store_failures: IntCounter,
    notifications: IntCounterVec,
    forwarded: IntCounterVec,
    /// The service's channels (its `grpc_client_*` metrics and its
    /// credential), for the audit stream.
    clients: Clients,
}

impl Metrics {
    /// Creates and registers the metrics. A registration failure (the same
    /// registry used twice, in tests) is logged; the metrics still count.
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            alerts: IntGaugeVec::new(
                Opts::new(
                    "agentmesh_alerting_alerts",
                    "Alerts held, by state (silenced and inhibited included).",
                ),
                &["state"],
            )?,
            events: IntCounter::new(
                "agentmesh_alerting_audit_events_total",
                "Audit events received from the audit stream and evaluated against the rules.",
            )?,
            stream_connected: IntGauge::new(
                "agentmesh_alerting_audit_stream_connected",
                "1 while the audit stream (AuditService/Subscribe) is connected, else 0.",
            )?,
            stream_reconnects: IntCounter::new(
                "agentmesh_alerting_audit_stream_reconnects_total",
                "Times the audit stream was lost and reconnected.",
            )?,
            leader: IntGauge::new(
                "agentmesh_alerting_leader",
                "1 while this replica leads (evaluates rules and notifies), 0 while it stands by.",
            )?,
            dropped_alerts: IntCounter::new(
                "agentmesh_alerting_alerts_dropped_total",
                "Alerts not created because max_alerts alerts were held.",
            )?,
            dropped_rule_events: IntCounter::new(
                "agentmesh_alerting_rule_events_dropped_total",
                "Audit events a rule left out because it already had max_groups_per_rule groups.",
            )?,
            store_failures: IntCounter::new(
                "agentmesh_alerting_store_failures_total",
                "Writes of alert state to the database that failed (retried with the next change).",
            )?,
            notifications: IntCounterVec::new(
                Opts::new(
                    "agentmesh_alerting_notifications_total",
                    "Notifications by receiver, integration and outcome (success or failure, after retries).",
                ),
                &["receiver", "integration", "outcome"],
            )?,
            forwarded: IntCounterVec::new(
                Opts::new(
                    "agentmesh_alerting_alertmanager_posts_total",
                    "Posts of alerts to Prometheus Alertmanagers by target and outcome.",
                ),
                &["alertmanager", "outcome"],
            )?,
            clients: Clients::default(),
        };
        let collectors: [Box<dyn Collector>; 10] = [
            Box::new(metrics.leader.clone()),
            Box::new(metrics.alerts.clone()),
            Box::new(metrics.dropped_rule_events.clone()),
            Box::new(metrics.events.clone()),
            Box::new(metrics.stream_connected.clone()),
            Box::new(metrics.stream_reconnects.clone()),
            Box::new(metrics.dropped_alerts.clone()),
            Box::new(metrics.store_failures.clone()),
            Box::new(metrics.notifications.clone()),
            Box::new(metrics.forwarded.clone()),
        ];
        for collector in collectors {
            if let Err(err) = registry.register(collector) {
                tracing::warn!(error = %err, "alerting metric not registered; it is not exported");
            }
        }
        Ok(metrics)
    }

    /// Makes the audit stream's channel the service's: counted in its
    /// `grpc_client_*` metrics, presenting its credential.
    pub(crate) fn with_clients(mut self, clients: Clients) -> Self {
        self.clients = clients;
        self
    }

    /// The service's channels.
    pub(crate) fn clients(&self) -> &Clients {
        &self.clients
    }

    /// Sets the alerts gauge from the current alerts.
    pub(crate) fn set_alerts<'a>(&self, alerts: impl Iterator<Item = &'a Alert>) {
        let (mut pending, mut firing, mut resolved) = (0, 0, 0);
        for alert in alerts {
            match alert.state {
                AlertState::Pending => pending += 1,
                AlertState::Firing => firing += 1,
                AlertState::Resolved => resolved += 1,
                AlertState::Unspecified => {}
            }
        }
        self.alerts.with_label_values(&["pending"]).set(pending);
        self.alerts.with_label_values(&["firing"]).set(firing);
        self.alerts.with_label_values(&["resolved"]).set(resolved);
    }

    pub(crate) fn events_observed(&self, count: usize) {
        self.events.inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Whether the audit stream is connected (for the health check).
    pub(crate) fn is_stream_connected(&self) -> bool {
        self.stream_connected.get() > 0
    }

    pub(crate) fn stream_connected(&self, connected: bool) {
        self.stream_connected.set(i64::from(connected));
    }

    pub(crate) fn stream_reconnect(&self) {
        self.stream_reconnects.inc();
    }

    /// Whether this replica leads.
    pub(crate) fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub(crate) fn alert_dropped(&self) {
        self.dropped_alerts.inc();
    }

    /// Moves the dropped-events counter up to `total` (the evaluator's
    /// running count).
    pub(crate) fn rule_events_dropped(&self, total: u64) {
        let counted = self.dropped_rule_events.get();
        if total > counted {
            self.dropped_rule_events.inc_by(total - counted);
        }
    }

    pub(crate) fn store_failure(&self) {
        self.store_failures.inc();
    }

    pub(crate) fn delivered(&self, report: &DeliveryReport) {
        let outcome = if report.error.is_none() {
            "success"
        } else {
            "failure"
        };
        self.notifications
            .with_label_values(&[report.receiver.as_str(), report.kind, outcome])
            .inc();
    }

    pub(crate) fn forwarded(&self, alertmanager: &str, ok: bool) {
        self.forwarded
            .with_label_values(&[alertmanager, if ok { "success" } else { "failure" }])
            .inc();
    }
}
