//! Admission's metrics, with bounded labels only: a `tenant` series for
//! each tenant the configuration names (`metric_tenants`), every other
//! tenant under `other`, and the instance's totals without labels. Request
//! values never become label values, so a flood of new tenants adds no
//! series (and no tenant name appears on the admin port unless configured).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `agentmesh_admission_in_use` | gauge | — |
//! | `agentmesh_admission_queue_depth` | gauge | — |
//! | `agentmesh_admission_tenant_in_use` | gauge | `tenant` |
//! | `agentmesh_admission_tenant_queue_depth` | gauge | `tenant` |
//! | `agentmesh_admission_rejected_total` | counter | `tenant`, `reason` |
//! | `agentmesh_admission_wait_seconds` | histogram | — |
//!
//! `reason`: `instance_queue_full`, `tenant_queue_full`, `agent_queue_full`,
//! `wait_timeout`. Every child is resolved once, at start.

use std::collections::HashMap;
use std::time::Duration;

use agentmesh_kit::metrics::prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The label value of tenants the configuration does not name.
pub(crate) const OTHER: &str = "other";

/// Queue-wait buckets, in seconds.
const WAIT_BUCKETS: [f64; 12] = [
    0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0,
];

/// Why admission refused or gave up on a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    InstanceQueueFull,
    TenantQueueFull,
    AgentQueueFull,
    WaitTimeout,
}

impl Rejection {
    const ALL: [Self; 4] = [
        Self::InstanceQueueFull,
        Self::TenantQueueFull,
        Self::AgentQueueFull,
        Self::WaitTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::InstanceQueueFull => "instance_queue_full",
            Self::TenantQueueFull => "tenant_queue_full",
            Self::AgentQueueFull => "agent_queue_full",
            Self::WaitTimeout => "wait_timeout",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::InstanceQueueFull => 0,
            Self::TenantQueueFull => 1,
            Self::AgentQueueFull => 2,
            Self::WaitTimeout => 3,
        }
    }
}

/// The children of one tenant label value.
#[derive(Debug)]
struct Series {
    in_use: IntGauge,
    queued: IntGauge,
    rejected: [IntCounter; 4],
}

/// Admission's metrics; without a registry, counters nobody reads (none
/// at all should even those fail to be made).
#[derive(Debug)]
pub(crate) struct AdmissionMetrics(Option<Families>);

#[derive(Debug)]
struct Families {
    in_use: IntGauge,
    queued: IntGauge,
    wait: Histogram,
    by_tenant: HashMap<String, Series>,
    other: Series,
}

impl AdmissionMetrics {
    /// The metrics, registered in `registry` when given (a registration
    /// failure is logged and leaves them unexported), with a series of
    /// their own for `tenants`.
    pub(crate) fn new(registry: Option<&Registry>, tenants: &[String]) -> Self {
        match Families::build(registry, tenants) {
            Ok(families) => Self(Some(families)),
            Err(err) => {
                tracing::warn!(%err, "admission metrics unavailable");
                Self(None)
            }
        }
    }

    /// A run of `tenant` took (`+1`) or gave back (`-1`) a place.
    pub(crate) fn running(&self, tenant: &str, change: i64) {
        if let Some(families) = &self.0 {
            families.in_use.add(change);
            families.series(tenant).in_use.add(change);
        }
    }

    /// A run of `tenant` joined (`+1`) or left (`-1`) the queue.
    pub(crate) fn queued(&self, tenant: &str, change: i64) {
        if let Some(families) = &self.0 {
            families.queued.add(change);
            families.series(tenant).queued.add(change);
        }
    }

    /// A run got its place after waiting `waited`.
    pub(crate) fn waited(&self, waited: Duration) {
        if let Some(families) = &self.0 {
            families.wait.observe(waited.as_secs_f64());
        }
    }

    /// A run of `tenant` refused or given up for `reason`.
    pub(crate) fn rejected(&self, tenant: &str, reason: Rejection) {
        if let Some(counter) = self
            .0
            .as_ref()
            .and_then(|families| families.series(tenant).rejected.get(reason.index()))
        {
            counter.inc();
        }
    }
}

impl Families {
    fn build(
        registry: Option<&Registry>,
        tenants: &[String],
    ) -> Result<Self, agentmesh_kit::metrics::prometheus::Error> {
        let in_use = IntGauge::new(
            "agentmesh_admission_in_use",
            "Runs holding an admission place on this orchestrator (driven now).",
        )?;
        let queued = IntGauge::new(
            "agentmesh_admission_queue_depth",
            "Runs waiting in this orchestrator's admission queue (QUEUED).",
        )?;
        let wait = Histogram::with_opts(
            HistogramOpts::new(
                "agentmesh_admission_wait_seconds",
                "How long runs that got a place waited in the admission queue.",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
        )?;
        let tenant_in_use = IntGaugeVec::new(
            Opts::new(
                "agentmesh_admission_tenant_in_use",
                "Runs holding an admission place, by configured tenant (others: other).",
            ),
            &["tenant"],
        )?;
        let tenant_queued = IntGaugeVec::new(
            Opts::new(
                "agentmesh_admission_tenant_queue_depth",
                "Runs waiting for an admission place, by configured tenant (others: other).",
            ),
            &["tenant"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "agentmesh_admission_rejected_total",
                "Runs refused (queue full) or given up (waited max_queue_wait), by configured \
                 tenant (others: other) and reason.",
            ),
            &["tenant", "reason"],
        )?;
        if let Some(registry) = registry {
            registry.register(Box::new(in_use.clone()))?;
            registry.register(Box::new(queued.clone()))?;
            registry.register(Box::new(wait.clone()))?;
            registry.register(Box::new(tenant_in_use.clone()))?;
            registry.register(Box::new(tenant_queued.clone()))?;
            registry.register(Box::new(rejected.clone()))?;
        }
        let series = |tenant: &str| -> Result<Series, agentmesh_kit::metrics::prometheus::Error> {
            let rejected = Rejection::ALL
                .map(|reason| rejected.get_metric_with_label_values(&[tenant, reason.label()]));
            let [a, b, c, d] = rejected;
            Ok(Series {
                in_use: tenant_in_use.get_metric_with_label_values(&[tenant])?,
                queued: tenant_queued.get_metric_with_label_values(&[tenant])?,
                rejected: [a?, b?, c?, d?],
            })
        };
        let mut by_tenant = HashMap::new();
        for tenant in tenants {
            if tenant != OTHER {
                by_tenant.insert(tenant.clone(), series(tenant)?);
            }
        }
        Ok(Self {
            in_use,
            queued,
            wait,
            other: series(OTHER)?,
            by_tenant,
        })
    }

    fn series(&self, tenant: &str) -> &Series {
        self.by_tenant.get(tenant).unwrap_or(&self.other)
    }
}
