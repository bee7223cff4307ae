//! Metrics of replicas cooperating on one database: runs handed over and
//! resumed, follows forwarded to the driving replica, and how far behind
//! the events followers get them.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `agentmesh_run_handovers_total` | counter | `reason` (`shutdown`, `claim_lost`) |
//! | `agentmesh_runs_resumed_total` | counter | — |
//! | `agentmesh_run_follows_forwarded_total` | counter | — |
//! | `agentmesh_run_follower_lag_seconds` | histogram | — |

use agentmesh_kit::metrics::prometheus::{
    self, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
};

/// Follower-lag buckets, in seconds: from a local hand-off (tens of
/// microseconds) to a store poll.
const LAG_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

/// The replica metrics (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct ReplicaMetrics {
    handed_over_at_shutdown: IntCounter,
    claims_lost: IntCounter,
    resumed: IntCounter,
    forwarded_follows: IntCounter,
    follower_lag: Histogram,
}

impl ReplicaMetrics {
    /// Creates and registers them in `registry`.
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let handovers = IntCounterVec::new(
            Opts::new(
                "agentmesh_run_handovers_total",
                "Runs this replica stopped driving without ending them: handed over at shutdown, \
                 or their claim taken by another replica.",
            ),
            &["reason"],
        )?;
        let resumed = IntCounter::new(
            "agentmesh_runs_resumed_total",
            "Runs this replica resumed from their last checkpoint (their driver stopped, handed \
             them over, or dropped them).",
        )?;
        let forwarded_follows = IntCounter::new(
            "agentmesh_run_follows_forwarded_total",
            "StreamRun and Run followers served live from the replica driving the run.",
        )?;
        let follower_lag = Histogram::with_opts(
            HistogramOpts::new(
                "agentmesh_run_follower_lag_seconds",
                "Time from an event's creation to its sending to a follower on this replica.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(handovers.clone()))?;
        registry.register(Box::new(resumed.clone()))?;
        registry.register(Box::new(forwarded_follows.clone()))?;
        registry.register(Box::new(follower_lag.clone()))?;
        Ok(Self {
            handed_over_at_shutdown: handovers.with_label_values(&["shutdown"]),
            claims_lost: handovers.with_label_values(&["claim_lost"]),
            resumed,
            forwarded_follows,
            follower_lag,
        })
    }

    /// A run handed over at shutdown.
    pub(crate) fn handed_over(&self) {
        self.handed_over_at_shutdown.inc();
    }

    /// A run whose claim another replica took.
    pub(crate) fn claim_lost(&self) {
        self.claims_lost.inc();
    }

    /// A run resumed here.
    pub(crate) fn resumed(&self) {
        self.resumed.inc();
    }

    /// A follow forwarded to the driving replica.
    pub(crate) fn forwarded_follow(&self) {
        self.forwarded_follows.inc();
    }

    /// An event sent to a follower `seconds` after it was created.
    pub(crate) fn follower_lag(&self, seconds: f64) {
        self.follower_lag.observe(seconds.max(0.0));
    }
}
