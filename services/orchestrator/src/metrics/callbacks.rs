//! Metrics of run callbacks: each delivery attempt by outcome, the outbox's
//! depth, and how long deliveries take from the step or end they report.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `agentmesh_run_callback_deliveries_total` | counter | `outcome` (`delivered`, `retrying`, `given_up`, `refused`) |
//! | `agentmesh_run_callback_outbox_depth` | gauge | — |
//! | `agentmesh_run_callback_delay_seconds` | histogram | — |
//!
//! No label carries a tenant, a URL or a host: their values come from
//! requests.

use agentmesh_kit::metrics::prometheus::{
    self, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Delay buckets, in seconds: from an immediate delivery to a day of retries.
const DELAY_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 7200.0, 86400.0,
];

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It failed and will be tried again.
    Retrying,
    /// It failed for the last time.
    GivenUp,
    /// The destination was refused (it resolved to an address not allowed).
    Refused,
}

/// The callback metrics (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct CallbackMetrics {
    delivered: IntCounter,
    retrying: IntCounter,
    given_up: IntCounter,
    refused: IntCounter,
    depth: IntGauge,
    delay: Histogram,
}

impl CallbackMetrics {
    /// Creates and registers them in `registry`.
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "agentmesh_run_callback_deliveries_total",
                "Run callback delivery attempts made by this replica, by outcome: delivered \
                 (2xx), retrying (failed, tried again later), given_up (failed for the last \
                 time), refused (the destination resolved to an address not allowed).",
            ),
            &["outcome"],
        )?;
        let depth = IntGauge::new(
            "agentmesh_run_callback_outbox_depth",
            "Run callbacks neither delivered nor given up (every replica's), as this replica \
             last counted them.",
        )?;
        let delay = Histogram::with_opts(
            HistogramOpts::new(
                "agentmesh_run_callback_delay_seconds",
                "Time from a run's step or end being stored to its callback's delivery.",
            )
            .buckets(DELAY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(depth.clone()))?;
        registry.register(Box::new(delay.clone()))?;
        Ok(Self {
            delivered: deliveries.with_label_values(&["delivered"]),
            retrying: deliveries.with_label_values(&["retrying"]),
            given_up: deliveries.with_label_values(&["given_up"]),
            refused: deliveries.with_label_values(&["refused"]),
            depth,
            delay,
        })
    }

    /// One attempt ended with `outcome`; a delivery `seconds` after its
    /// step or end was stored.
    pub(crate) fn attempt(&self, outcome: AttemptOutcome, seconds: f64) {
        match outcome {
            AttemptOutcome::Delivered => {
                self.delivered.inc();
                self.delay.observe(seconds.max(0.0));
            }
            AttemptOutcome::Retrying => self.retrying.inc(),
            AttemptOutcome::GivenUp => self.given_up.inc(),
            AttemptOutcome::Refused => self.refused.inc(),
        }
    }

    /// The outbox holds `pending` callbacks.
    pub(crate) fn outbox_depth(&self, pending: i64) {
        self.depth.set(pending);
    }
}
