//! The audit service's own Prometheus metrics (the kit adds the gRPC ones):
//! what the log ingests, the cost of its group commits, its live
//! subscribers and how far behind the log they are.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `agentmesh_audit_events_ingested_total` | counter | `event_type` (e.g. `llm_call`) |
//! | `agentmesh_audit_events_duplicate_total` | counter | — |
//! | `agentmesh_audit_events_invalid_total` | counter | — |
//! | `agentmesh_audit_commit_duration_seconds` | histogram | — |
//! | `agentmesh_audit_subscribers` | gauge | — |
//! | `agentmesh_audit_tail_lag_seconds` | histogram | — |
//! | `agentmesh_audit_commit_notifications_total` | counter | — |
//! | `agentmesh_audit_listener_connected` | gauge | — |
//!
//! `event_type` is the proto enum name without its `EVENT_TYPE_` prefix, in
//! lower case; a number the contract does not define is `other`.
//!
//! # Data flow
//!
//! The writer ([`crate::writer`]) times each group commit and, once it is
//! committed, counts each event stored anew by type and each one already
//! stored (same event id) as a duplicate — whichever path wrote it (`Record`
//! or the service's own events). `Record` counts the events it rejects as
//! invalid before they reach the writer. A `Subscribe` stream holds a
//! [`Subscriber`] guard for as long as it runs, and observes the tail lag of
//! every event it sends once its replay of older events is done: the time
//! from the event's `record_time` (when a replica accepted it) to its
//! sending, so commit, notification and read included; for an event another
//! replica accepted, the two hosts' clocks are compared. On PostgreSQL the
//! listener (`crate::listener`) counts the commit notifications of other
//! replicas it receives and sets `agentmesh_audit_listener_connected` while
//! it listens (always 0 on SQLite, which has one replica and no listener).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_kit::metrics::prometheus::{
    self, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use agentmesh_proto::audit::v1::EventType;

/// Group-commit buckets, in seconds: an fsync on a fast disk to a slow
/// remote database.
const COMMIT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Tail lag buckets, in seconds: a notified read on one host to a
/// subscriber waiting for the fallback poll (`subscribe_heartbeat`).
const TAIL_LAG_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Enum numbers looked at for event types (the contract's are far below).
const MAX_EVENT_TYPE: i32 = 256;

/// The audit metrics; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AuditMetrics {
    ingested: Arc<HashMap<i32, IntCounter>>,
    ingested_other: IntCounter,
    duplicate: IntCounter,
    invalid: IntCounter,
    commit: Histogram,
    subscribers: IntGauge,
    tail_lag: Histogram,
    notifications: IntCounter,
    listener_connected: IntGauge,
}

impl AuditMetrics {
    /// Creates and registers the metrics, with a series for every event type
    /// of the contract resolved — and exported, at zero — at once.
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let ingested = IntCounterVec::new(
            Opts::new(
                "agentmesh_audit_events_ingested_total",
                "Audit events stored anew, by event type.",
            ),
            &["event_type"],
        )?;
        let duplicate = IntCounter::new(
            "agentmesh_audit_events_duplicate_total",
            "Audit events received again (same event id) and not stored twice.",
        )?;
        let invalid = IntCounter::new(
            "agentmesh_audit_events_invalid_total",
            "Audit events rejected by Record as invalid (never stored).",
        )?;
        let commit = Histogram::with_opts(
            HistogramOpts::new(
                "agentmesh_audit_commit_duration_seconds",
                "Duration of one group commit (one transaction for the events of every waiting Record call).",
            )
            .buckets(COMMIT_BUCKETS.to_vec()),
        )?;
        let subscribers =
            IntGauge::new("agentmesh_audit_subscribers", "Subscribe streams open now.")?;
        let tail_lag = Histogram::with_opts(
            HistogramOpts::new(
                "agentmesh_audit_tail_lag_seconds",
                "Time from an event's record_time to its sending on a Subscribe stream, for events sent after the stream's replay.",
            )
            .buckets(TAIL_LAG_BUCKETS.to_vec()),
        )?;
        let notifications = IntCounter::new(
            "agentmesh_audit_commit_notifications_total",
            "Commit notifications received from other replicas (PostgreSQL LISTEN/NOTIFY).",
        )?;
        let listener_connected = IntGauge::new(
            "agentmesh_audit_listener_connected",
            "1 while the replica listens for other replicas' commits (PostgreSQL), else 0.",
        )?;
        registry.register(Box::new(ingested.clone()))?;
        registry.register(Box::new(duplicate.clone()))?;
        registry.register(Box::new(invalid.clone()))?;
        registry.register(Box::new(commit.clone()))?;
        registry.register(Box::new(subscribers.clone()))?;
        registry.register(Box::new(tail_lag.clone()))?;
        registry.register(Box::new(notifications.clone()))?;
        registry.register(Box::new(listener_connected.clone()))?;
        let by_type = (0..=MAX_EVENT_TYPE)
            .filter_map(|number| {
                let event_type = EventType::try_from(number).ok()?;
                (event_type != EventType::Unspecified)
                    .then(|| (number, ingested.with_label_values(&[&label(event_type)])))
            })
            .collect();
        Ok(Self {
            ingested: Arc::new(by_type),
            ingested_other: ingested.with_label_values(&["other"]),
            duplicate,
            invalid,
            commit,
            subscribers,
            tail_lag,
            notifications,
            listener_connected,
        })
    }

    /// An event of type `event_type` (the enum's number) was stored anew.
    pub(crate) fn stored(&self, event_type: i32) {
        self.ingested
            .get(&event_type)
            .unwrap_or(&self.ingested_other)
            .inc();
    }

    /// An event was received again and not stored twice.
    pub(crate) fn duplicate(&self) {
        self.duplicate.inc();
    }

    /// `count` events were rejected as invalid.
    pub(crate) fn invalid(&self, count: usize) {
        self.invalid
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// One group commit took `took`.
    pub(crate) fn commit(&self, took: Duration) {
        self.commit.observe(took.as_secs_f64());
    }

    /// A subscription sent, live, an event recorded at `recorded` (a later
    /// time, from a host whose clock is ahead, counts as no lag).
    pub(crate) fn tail_lag(&self, recorded: SystemTime) {
        let lag = SystemTime::now()
            .duration_since(recorded)
            .unwrap_or_default();
        self.tail_lag.observe(lag.as_secs_f64());
    }

    /// A commit notification of another replica arrived.
    pub(crate) fn notified(&self) {
        self.notifications.inc();
    }

    /// The listener listens now (`true`) or lost its connection.
    pub(crate) fn listening(&self, connected: bool) {
        self.listener_connected.set(i64::from(connected));
    }

    /// A subscription starts; it ends when the guard is dropped.
    pub(crate) fn subscriber(&self) -> Subscriber {
        self.subscribers.inc();
        Subscriber(self.subscribers.clone())
    }
}

/// An event type as the label spells it: `EVENT_TYPE_LLM_CALL` → `llm_call`.
fn label(event_type: EventType) -> String {
    let name = event_type.as_str_name();
    name.strip_prefix("EVENT_TYPE_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// Holds a place in `agentmesh_audit_subscribers`.
#[derive(Debug)]
pub(crate) struct Subscriber(IntGauge);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingestion_duplicates_invalid_commits_subscribers_and_the_tail_move() {
        let registry = Registry::new();
        let metrics = AuditMetrics::new(&registry).unwrap();
        metrics.stored(EventType::LlmCall as i32);
        metrics.stored(EventType::LlmCall as i32);
        metrics.stored(9999);
        metrics.duplicate();
        metrics.invalid(3);
        metrics.commit(Duration::from_millis(2));
        metrics.tail_lag(SystemTime::now() - Duration::from_millis(3));
        metrics.tail_lag(SystemTime::now() + Duration::from_secs(1));
        metrics.notified();
        metrics.listening(true);
        let subscriber = metrics.subscriber();
        assert_eq!(metrics.subscribers.get(), 1);

        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for line in [
            r#"agentmesh_audit_events_ingested_total{event_type="llm_call"} 2"#,
            r#"agentmesh_audit_events_ingested_total{event_type="other"} 1"#,
            r#"agentmesh_audit_events_ingested_total{event_type="run_started"} 0"#,
            "agentmesh_audit_events_duplicate_total 1",
            "agentmesh_audit_events_invalid_total 3",
            "agentmesh_audit_commit_duration_seconds_count 1",
            "agentmesh_audit_subscribers 1",
            "agentmesh_audit_tail_lag_seconds_count 2",
            r#"agentmesh_audit_tail_lag_seconds_bucket{le="0.0005"} 1"#,
            "agentmesh_audit_commit_notifications_total 1",
            "agentmesh_audit_listener_connected 1",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        assert!(!text.contains("unspecified"), "{text}");
        drop(subscriber);
        assert_eq!(metrics.subscribers.get(), 0);
    }
}
