//! Admission of runs with per-tenant fairness, in the manner of Kubernetes'
//! API priority and fairness: a cap on the runs this instance drives at
//! once, a share per tenant, and a bounded wait queue served round-robin
//! across tenants, so that one tenant's burst cannot starve the others.
//!
//! ```text
//! StartRun / Run ── Admission::admit(tenant, agent) ── before the run is stored
//!     room now?  instance below max_concurrent_runs, tenant below
//!                max_concurrent_runs_per_tenant with nobody of its own
//!                waiting, profile below its max_concurrent_runs ─▶ place held
//!     else queue: instance queue (max_queued_runs), the tenant's
//!                 (max_queued_runs_per_tenant), the profile's (its
//!                 max_queued_runs) ─ full ─▶ RESOURCE_EXHAUSTED + RetryInfo
//!          └─▶ Places, handed to the run's task, which stays QUEUED until
//!              granted (or cancelled, or its caller's deadline, or
//!              max_queue_wait: FAILED, RESOURCE_EXHAUSTED)
//! a place given back ─▶ dispatch: to the tenant holding the fewest places
//!     among those with a run that may go (round-robin among equals); each
//!     tenant's runs by priority, then age, skipping a run whose profile is
//!     full; until the instance is full or nobody can go
//! ```
//!
//! Fairness across tenants comes before priority: a run's `priority` orders
//! it only within its tenant's queue, so no tenant's high priorities can
//! starve another tenant of places.
//!
//! Runs resumed here ([`Admission::later`]: after a restart, or adopted)
//! were admitted once: they queue like others but beyond the bounds, and
//! are never refused nor timed out.
//!
//! All of it is one lock-protected state, small and never held across an
//! await; a [`Places`] dropped (its run ended, or left the queue) gives back
//! what it held and dispatches. Tenants without runs are forgotten.
//!
//! Metrics ([`metrics`]) have a series per tenant only for the tenants the
//! configuration names (`metric_tenants`), every other tenant counting
//! under `other`, plus the instance's totals: traffic never makes a label.
//! Every refusal is also counted in
//! `agentmesh_rate_limited_total{scope,resource="concurrency"}` and
//! recorded as a RATE_LIMITED audit event (which names the tenant).

mod metrics;
mod places;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use agentmesh_audit_client::resilience::{Refusal, ResilienceReporter};
use agentmesh_kit::metrics::prometheus::Registry;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt as _};

use self::metrics::{AdmissionMetrics, Rejection};
use crate::config::Config;

/// What a caller refused for its tenant's or a profile's limit is told to
/// wait.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// What a caller refused because the instance's queue is full is told.
const INSTANCE_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The tenant name of calls without `x-agentmesh-tenant`.
const NO_TENANT: &str = "-";

/// The limits, from the configuration.
#[derive(Debug, Clone, Copy)]
struct Limits {
    running: usize,
    running_per_tenant: usize,
    queued: usize,
    queued_per_tenant: usize,
    max_wait: Option<Duration>,
}

/// A profile's limit (only profiles with one).
#[derive(Debug, Clone, Copy)]
struct AgentLimit {
    running: usize,
    queued: usize,
}

/// Runs holding a place and runs waiting.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    running: usize,
    queued: usize,
}

/// A run waiting for its place.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    /// Higher first within the tenant's queue; then the lower ticket.
    priority: i32,
    agent: String,
    since: Instant,
    granted: oneshot::Sender<()>,
}

/// One tenant's runs here.
#[derive(Debug, Default)]
struct Tenant {
    running: usize,
    queue: VecDeque<Waiter>,
}

/// Everything admission knows, under one lock.
#[derive(Debug, Default)]
struct State {
    total: Usage,
    tenants: HashMap<String, Tenant>,
    /// Tenants with waiting runs, in the order they are served.
    ring: VecDeque<String>,
    /// Limited profiles' usage.
    agents: HashMap<String, Usage>,
    next_ticket: u64,
}

struct Inner {
    limits: Limits,
    agents: HashMap<String, AgentLimit>,
    state: Mutex<State>,
    metrics: AdmissionMetrics,
}

/// Admits the runs of one engine.
pub(crate) struct Admission {
    inner: Arc<Inner>,
    reporter: ResilienceReporter,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("limits", &self.inner.limits)
            .field("agents", &self.inner.agents)
            .finish_non_exhaustive()
    }
}

/// Why a run was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    Instance,
    Tenant,
    Agent,
}

/// How a run stands in admission.
#[derive(Debug)]
enum Stage {
    /// Holds its place until dropped.
    Held,
    /// Waiting; `granted` fires when it is given its place.
    Waiting {
        ticket: u64,
        granted: oneshot::Receiver<()>,
    },
    /// Not queued yet (a resumed run).
    Later,
    /// A sub-run: it runs in its parent's place (a parent waiting for its
    /// sub-runs must not hold the place they need), takes none of its own
    /// and gives none back.
    Inherited,
}

/// A run's place: held, or its turn in the queue. Dropping it gives back
/// the place or leaves the queue.
pub(crate) struct Places {
    inner: Arc<Inner>,
    tenant: String,
    agent: String,
    priority: i32,
    stage: Stage,
    /// When a queued new run gives up (`max_queue_wait`).
    deadline: Option<Instant>,
}

impl fmt::Debug for Places {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Places")
            .field("tenant", &self.tenant)
            .field("agent", &self.agent)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

fn tenant_key(tenant: &str) -> &str {
    if tenant.is_empty() { NO_TENANT } else { tenant }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain counters behind it: keep going after a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a run of `agent` may take a place of its profile now.
    fn agent_has_room(&self, state: &State, agent: &str) -> bool {
        self.agents.get(agent).is_none_or(|limit| {
            state
                .agents
                .get(agent)
                .is_none_or(|usage| usage.running < limit.running)
        })
    }

    /// Counts a place taken by a run of `tenant` and `agent`.
    fn take(&self, state: &mut State, tenant: &str, agent: &str) {
        state.total.running += 1;
        state.tenants.entry(tenant.to_owned()).or_default().running += 1;
        if self.agents.contains_key(agent) {
            state.agents.entry(agent.to_owned()).or_default().running += 1;
        }
        self.metrics.running(tenant, 1);
    }

    /// Queues a run of `tenant` and `agent`; returns its ticket and the
    /// receiver of its grant.
    fn enqueue(
        &self,
        state: &mut State,
        tenant: &str,
        agent: &str,
        priority: i32,
    ) -> (u64, oneshot::Receiver<()>) {
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let (sender, receiver) = oneshot::channel();
        state.total.queued += 1;
        if self.agents.contains_key(agent) {
            state.agents.entry(agent.to_owned()).or_default().queued += 1;
        }
        let entry = state.tenants.entry(tenant.to_owned()).or_default();
        // Behind every run of the same or a higher priority (they came
        // first), ahead of the lower ones.
        let at = entry
            .queue
            .iter()
            .position(|waiter| waiter.priority < priority)
            .unwrap_or(entry.queue.len());
        entry.queue.insert(
            at,
            Waiter {
                ticket,
                priority,
                agent: agent.to_owned(),
                since: Instant::now(),
                granted: sender,
            },
        );
        if entry.queue.len() == 1 {
            state.ring.push_back(tenant.to_owned());
        }
        self.metrics.queued(tenant, 1);
        (ticket, receiver)
    }

    /// Gives back a place.
    fn release(&self, state: &mut State, tenant: &str, agent: &str) {
        state.total.running = state.total.running.saturating_sub(1);
        if let Some(entry) = state.tenants.get_mut(tenant) {
            entry.running = entry.running.saturating_sub(1);
        }
        if let Some(usage) = state.agents.get_mut(agent) {
            usage.running = usage.running.saturating_sub(1);
        }
        self.metrics.running(tenant, -1);
        Self::forget_if_idle(state, tenant);
    }

    /// Takes a run out of the queue without a place.
    fn leave(&self, state: &mut State, tenant: &str, ticket: u64) {
        let Some(entry) = state.tenants.get_mut(tenant) else {
            return;
        };
        let Some(at) = entry.queue.iter().position(|w| w.ticket == ticket) else {
            return;
        };
        let Some(waiter) = entry.queue.remove(at) else {
            return;
        };
        if entry.queue.is_empty() {
            state.ring.retain(|t| t != tenant);
        }
        state.total.queued = state.total.queued.saturating_sub(1);
        if let Some(usage) = state.agents.get_mut(&waiter.agent) {
            usage.queued = usage.queued.saturating_sub(1);
        }
        self.metrics.queued(tenant, -1);
        Self::forget_if_idle(state, tenant);
    }

    fn forget_if_idle(state: &mut State, tenant: &str) {
        if state
            .tenants
            .get(tenant)
            .is_some_and(|t| t.running == 0 && t.queue.is_empty())
        {
            state.tenants.remove(tenant);
        }
    }

    /// Gives places to waiting runs while the instance has room. Each
    /// place goes to the tenant with the fewest runs holding one among
    /// those with a run that may go (below its share, its profile not
    /// full), the earliest in turn on a tie, which then goes to the back of
    /// the turn: fair queuing by runs held, round-robin among equals.
    fn dispatch(&self, state: &mut State) {
        while state.total.running < self.limits.running {
            let mut best: Option<(usize, usize)> = None;
            for (at, tenant) in state.ring.iter().enumerate() {
                let Some(entry) = state.tenants.get(tenant) else {
                    continue;
                };
                if entry.running >= self.limits.running_per_tenant
                    || best.is_some_and(|(_, fewest)| entry.running >= fewest)
                    || !entry
                        .queue
                        .iter()
                        .any(|w| self.agent_has_room(state, &w.agent))
                {
                    continue;
                }
                best = Some((at, entry.running));
            }
            let Some(tenant) = best.and_then(|(at, _)| state.ring.remove(at)) else {
                return;
            };
            self.grant_one(state, &tenant);
            if state
                .tenants
                .get(&tenant)
                .is_some_and(|t| !t.queue.is_empty())
            {
                state.ring.push_back(tenant);
            }
        }
    }

    /// Gives a place to the first run of `tenant` that may go; whether one
    /// did.
    fn grant_one(&self, state: &mut State, tenant: &str) -> bool {
        let Some(entry) = state.tenants.get(tenant) else {
            return false;
        };
        if entry.running >= self.limits.running_per_tenant {
            return false;
        }
        let Some(at) = entry
            .queue
            .iter()
            .position(|w| self.agent_has_room(state, &w.agent))
        else {
            return false;
        };
        let Some(waiter) = state
            .tenants
            .get_mut(tenant)
            .and_then(|entry| entry.queue.remove(at))
        else {
            return false;
        };
        state.total.queued = state.total.queued.saturating_sub(1);
        if let Some(usage) = state.agents.get_mut(&waiter.agent) {
            usage.queued = usage.queued.saturating_sub(1);
        }
        self.metrics.queued(tenant, -1);
        self.take(state, tenant, &waiter.agent);
        self.metrics.waited(waiter.since.elapsed());
        // Its Places leaves the queue under this lock before dropping the
        // receiver, so this is received (or seen by `Places::drop`).
        let _ = waiter.granted.send(());
        true
    }

    /// Why a new run of `tenant` and `agent` cannot queue, if it cannot.
    fn full(&self, state: &State, tenant: &str, agent: &str) -> Option<Full> {
        if state.total.queued >= self.limits.queued {
            return Some(Full::Instance);
        }
        let queued = state.tenants.get(tenant).map_or(0, |t| t.queue.len());
        if queued >= self.limits.queued_per_tenant {
            return Some(Full::Tenant);
        }
        if let Some(limit) = self.agents.get(agent) {
            let usage = state.agents.get(agent).copied().unwrap_or_default();
            if usage.running >= limit.running && usage.queued >= limit.queued {
                return Some(Full::Agent);
            }
        }
        None
    }
}

impl Admission {
    /// Admission with the limits of `config`, its metrics in `registry`
    /// (none without), refusals reported through `reporter`.
    pub(crate) fn new(
        config: &Config,
        registry: Option<&Registry>,
        reporter: ResilienceReporter,
    ) -> Self {
        let agents = config
            .agents
            .iter()
            .filter(|(_, profile)| profile.max_concurrent_runs > 0)
            .map(|(name, profile)| {
                (
                    name.clone(),
                    AgentLimit {
                        running: profile.max_concurrent_runs,
                        queued: profile.max_queued_runs,
                    },
                )
            })
            .collect();
        let limits = Limits {
            running: config.max_concurrent_runs.max(1),
            running_per_tenant: config.max_concurrent_runs_per_tenant.max(1),
            queued: config.max_queued_runs,
            queued_per_tenant: config.max_queued_runs_per_tenant,
            max_wait: Some(config.max_queue_wait).filter(|wait| !wait.is_zero()),
        };
        Self {
            inner: Arc::new(Inner {
                limits,
                agents,
                state: Mutex::new(State::default()),
                metrics: AdmissionMetrics::new(registry, &config.metric_tenants),
            }),
            reporter,
        }
    }

    /// The reporter of the service's resilience decisions.
    pub(crate) fn reporter(&self) -> &ResilienceReporter {
        &self.reporter
    }

    /// Admits a new run of `agent` for `tenant`, called by `method`: its
    /// place, held or queued, or RESOURCE_EXHAUSTED (with RetryInfo,
    /// counted and audited) when its queue is full. Does not wait.
    #[cfg(test)]
    pub(crate) fn admit(&self, tenant: &str, agent: &str, method: &str) -> Result<Places, Status> {
        self.admit_at(tenant, agent, method, 0)
    }

    /// [`Self::admit`] for a run of `priority` (higher first in its
    /// tenant's queue).
    pub(crate) fn admit_at(
        &self,
        tenant: &str,
        agent: &str,
        method: &str,
        priority: i32,
    ) -> Result<Places, Status> {
        let tenant = tenant_key(tenant);
        let inner = &self.inner;
        let stage = {
            let mut state = inner.lock();
            // Room everywhere means nobody waiting could take this place
            // (every change dispatches): a run of its own tenant still
            // waiting is held by its profile's limit.
            let may_run = state.total.running < inner.limits.running
                && state
                    .tenants
                    .get(tenant)
                    .is_none_or(|t| t.running < inner.limits.running_per_tenant)
                && inner.agent_has_room(&state, agent);
            if may_run {
                inner.take(&mut state, tenant, agent);
                Stage::Held
            } else if let Some(full) = inner.full(&state, tenant, agent) {
                drop(state);
                return Err(self.refuse(full, tenant, agent, method));
            } else {
                let (ticket, granted) = inner.enqueue(&mut state, tenant, agent, priority);
                Stage::Waiting { ticket, granted }
            }
        };
        let deadline = match stage {
            Stage::Held => None,
            _ => inner.limits.max_wait.map(|wait| Instant::now() + wait),
        };
        Ok(Places {
            inner: Arc::clone(inner),
            tenant: tenant.to_owned(),
            agent: agent.to_owned(),
            priority,
            stage,
            deadline,
        })
    }

    /// The place of a run resumed here: queued when it first waits, never
    /// refused nor timed out.
    pub(crate) fn later(&self, tenant: &str, agent: &str, priority: i32) -> Places {
        Places {
            inner: Arc::clone(&self.inner),
            tenant: tenant_key(tenant).to_owned(),
            agent: agent.to_owned(),
            priority,
            stage: Stage::Later,
            deadline: None,
        }
    }

    /// The place of a sub-run: its parent's (see [`Stage::Inherited`]).
    pub(crate) fn inherited(&self, tenant: &str, agent: &str) -> Places {
        Places {
            inner: Arc::clone(&self.inner),
            tenant: tenant_key(tenant).to_owned(),
            agent: agent.to_owned(),
            priority: 0,
            stage: Stage::Inherited,
            deadline: None,
        }
    }

    /// Runs holding a place and runs waiting, on this instance.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.total.running, state.total.queued)
    }

    /// Tenants with runs here now.
    #[cfg(test)]
    pub(crate) fn tenants(&self) -> usize {
        self.inner.lock().tenants.len()
    }

    /// Reports a refusal and returns the status the caller gets.
    fn refuse(&self, full: Full, tenant: &str, agent: &str, method: &str) -> Status {
        let limits = self.inner.limits;
        let (scope, key, limit, retry_after, message) = match full {
            Full::Instance => (
                "instance",
                tenant,
                limits.running,
                INSTANCE_RETRY_AFTER,
                format!(
                    "this orchestrator runs {} runs and has {} queued, its limit \
                     (max_concurrent_runs = {}, max_queued_runs = {}); retry later",
                    limits.running, limits.queued, limits.running, limits.queued
                ),
            ),
            Full::Tenant => (
                "tenant",
                tenant,
                limits.running_per_tenant,
                RETRY_AFTER,
                format!(
                    "tenant {tenant:?} has runs running and {} queued on this orchestrator, its \
                     limit (max_concurrent_runs_per_tenant = {}, max_queued_runs_per_tenant = {}); \
                     retry once some of its runs end",
                    limits.queued_per_tenant, limits.running_per_tenant, limits.queued_per_tenant
                ),
            ),
            Full::Agent => {
                let limit = self.inner.agents.get(agent).copied().unwrap_or(AgentLimit {
                    running: 0,
                    queued: 0,
                });
                (
                    "agent",
                    agent,
                    limit.running,
                    RETRY_AFTER,
                    format!(
                        "agent profile {agent:?} has {} runs running and {} queued on this \
                         orchestrator, its limit (agents.{agent}.max_concurrent_runs = {}, \
                         max_queued_runs = {}); retry once some of its runs end",
                        limit.running, limit.queued, limit.running, limit.queued
                    ),
                )
            }
        };
        self.inner.metrics.rejected(
            tenant,
            match full {
                Full::Instance => Rejection::InstanceQueueFull,
                Full::Tenant => Rejection::TenantQueueFull,
                Full::Agent => Rejection::AgentQueueFull,
            },
        );
        #[expect(
            clippy::cast_precision_loss,
            reason = "a concurrency limit is far below 2^52"
        )]
        let limit = limit as f64;
        self.reporter.refused(&Refusal {
            scope,
            key,
            resource: "concurrency",
            limit,
            period: None,
            retry_after,
            method,
        });
        tracing::info!(scope, key, method, "run refused: {message}");
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(retry_after));
        Status::with_error_details(tonic::Code::ResourceExhausted, message, details)
    }
}

#[cfg(test)]
mod tests;
