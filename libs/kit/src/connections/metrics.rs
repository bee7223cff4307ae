//! The connection metrics of a service's listeners, and the throttle that
//! keeps their log lines few under a flood.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `agentmesh_connections_open` | gauge | `listener` (`grpc`, `admin`) |
//! | `agentmesh_connections_max` | gauge | `listener` |
//! | `agentmesh_connections_refused_total` | counter | `listener` |
//! | `agentmesh_connections_closed_total` | counter | `listener`, `reason` (`handshake_timeout`, `idle_timeout`) |
//!
//! Descriptor use itself is the process collector's `process_open_fds`
//! and `process_max_fds`. Every label value is fixed here: nothing about a
//! peer becomes a label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::time::Instant;

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The opening (HTTP/2 preface, first request) did not finish in time.
    Handshake,
    /// No call (or no byte) for the idle timeout.
    Idle,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            Self::Handshake => "handshake_timeout",
            Self::Idle => "idle_timeout",
        }
    }

    /// The error the connection's IO ends with.
    pub(super) fn message(self) -> &'static str {
        match self {
            Self::Handshake => "the connection did not finish its opening in time",
            Self::Idle => "the connection was idle too long",
        }
    }
}

/// The families, registered once per service registry.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    open: IntGaugeVec,
    max: IntGaugeVec,
    refused: IntCounterVec,
    closed: IntCounterVec,
}

impl ConnectionMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let open = IntGaugeVec::new(
            Opts::new(
                "agentmesh_connections_open",
                "Connections a listener holds now.",
            ),
            &["listener"],
        )?;
        let max = IntGaugeVec::new(
            Opts::new(
                "agentmesh_connections_max",
                "Connections a listener holds at most (server.connections.max_grpc / max_admin, or derived from the descriptor limit).",
            ),
            &["listener"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "agentmesh_connections_refused_total",
                "Connections closed at once because the listener held its maximum.",
            ),
            &["listener"],
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "agentmesh_connections_closed_total",
                "Connections the server closed: handshake_timeout (opening not finished in time), idle_timeout.",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(max.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        Ok(Self {
            open,
            max,
            refused,
            closed,
        })
    }

    /// The series of one listener, its cap set.
    pub(super) fn listener(&self, listener: &'static str, cap: usize) -> ListenerSeries {
        self.max
            .with_label_values(&[listener])
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
        let closed =
            |reason: CloseReason| self.closed.with_label_values(&[listener, reason.label()]);
        ListenerSeries {
            open: self.open.with_label_values(&[listener]),
            refused: self.refused.with_label_values(&[listener]),
            closed_handshake: closed(CloseReason::Handshake),
            closed_idle: closed(CloseReason::Idle),
        }
    }
}

/// One listener's children.
#[derive(Debug)]
pub(super) struct ListenerSeries {
    pub(super) open: IntGauge,
    pub(super) refused: IntCounter,
    pub(super) closed_handshake: IntCounter,
    pub(super) closed_idle: IntCounter,
}

/// How often a throttled log line is written at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Lets one log line through per [`LOG_EVERY`], counting the events in
/// between, so a flood of refusals logs a line every ten seconds, not one
/// per connection.
#[derive(Debug)]
pub(super) struct Throttle {
    epoch: Instant,
    /// Milliseconds since `epoch` of the next line allowed (0: at once).
    next_ms: AtomicU64,
    pending: AtomicU64,
}

impl Throttle {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            next_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Notes one event; returns how many to report (this one included)
    /// when a line is due now.
    pub(super) fn note(&self) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Acquire);
        if now < next {
            return None;
        }
        let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        self.next_ms
            .compare_exchange(
                next,
                now.saturating_add(every),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()
            .map(|_| self.pending.swap(0, Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_throttle_lets_a_line_through_every_ten_seconds() {
        let throttle = Throttle::new();
        assert_eq!(throttle.note(), Some(1));
        for _ in 0..99 {
            assert_eq!(throttle.note(), None);
        }
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(throttle.note(), Some(100));
        assert_eq!(throttle.note(), None);
    }
}
