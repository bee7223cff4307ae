//! Admission of runs: a bulkhead per tenant and one per agent profile (when
//! the profile sets a limit), so that one tenant's burst, or one busy
//! profile, cannot take every run slot of an instance.
//!
//! ```text
//! StartRun / Run ── Admission::admit(tenant, agent) ── before the run is stored
//!     tenant bulkhead "tenant:<t>" ─ place │ queue slot │ full ─▶ RESOURCE_EXHAUSTED
//!     agent bulkhead  "agent:<a>"  ─ place │ queue slot │ full ─▶ RESOURCE_EXHAUSTED
//!         └─▶ Places, handed to the run's task, which stays QUEUED until it
//!             holds the tenant place, then the agent place, then the
//!             instance slot, and gives them all back when the run ends
//! ```
//!
//! A place that is not free at once is a [`Queued`] ticket from
//! [`Bulkhead::enter`]: it holds a slot in the bulkhead's queue from the
//! RPC on, and the run's task awaits it. Dropping it (a queued run
//! cancelled, or its caller's deadline passed) leaves the queue.
//!
//! Places are taken in order: an agent place is only taken once the tenant
//! place is held, so a tenant queued behind its own limit does not sit on
//! places of a profile other tenants share. While the tenant place is
//! queued, the agent bulkhead is only checked for room; the run waits for
//! its agent place later (never refused once admitted). Runs resumed after a
//! restart ([`Admission::later`]) wait for every place the same way.
//!
//! Tenants' bulkheads are made on first use; the map drops bulkheads nobody
//! uses once it grows past [`IDLE_TENANTS`]. Every bulkhead is watched by
//! the reporter, which keeps its gauges (`agentmesh_bulkhead_in_use`,
//! `agentmesh_bulkhead_queue_depth`) current; every refusal is counted in
//! `agentmesh_rate_limited_total{scope,resource="concurrency"}` and recorded
//! as a RATE_LIMITED audit event.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_audit_client::resilience::{Refusal, ResilienceReporter};
use agentmesh_resilience::{Bulkhead, BulkheadFull, BulkheadPermit, Entry, Queued};
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::config::Config;

/// Tenants' bulkheads kept beyond which unused ones are dropped.
pub(crate) const IDLE_TENANTS: usize = 1024;
/// What a refused caller is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// The tenant name of calls without `x-agentmesh-tenant`.
const NO_TENANT: &str = "-";

/// The bulkheads runs are admitted through; one per engine.
pub(crate) struct Admission {
    per_tenant: usize,
    queued_per_tenant: usize,
    tenants: Mutex<HashMap<String, Arc<Bulkhead>>>,
    /// Profiles with a limit: the bulkhead and its queue bound.
    agents: HashMap<String, (Arc<Bulkhead>, usize)>,
    reporter: ResilienceReporter,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("per_tenant", &self.per_tenant)
            .field("queued_per_tenant", &self.queued_per_tenant)
            .field("agents", &self.agents.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// How a place of a run stands.
enum State {
    /// Held until dropped.
    Held(
        #[expect(dead_code, reason = "held for its Drop, which gives the place back")]
        BulkheadPermit,
    ),
    /// In the bulkhead's queue.
    Queued(Queued),
    /// Not asked for yet (or given back).
    Later,
}

/// A run's place in one bulkhead.
struct Place {
    bulkhead: Arc<Bulkhead>,
    state: State,
}

impl fmt::Debug for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Held(_) => "held",
            State::Queued(_) => "queued",
            State::Later => "later",
        };
        f.debug_struct("Place")
            .field("bulkhead", &self.bulkhead.name())
            .field("state", &state)
            .finish()
    }
}

impl Place {
    fn new(bulkhead: Arc<Bulkhead>, state: State) -> Self {
        Self { bulkhead, state }
    }

    /// A place of `bulkhead` now, a slot in its queue (kept by the
    /// ticket), or full; never waits.
    fn try_take(bulkhead: &Arc<Bulkhead>) -> Result<Self, BulkheadFull> {
        let state = match bulkhead.enter()? {
            Entry::Held(permit) => State::Held(permit),
            Entry::Queued(queued) => State::Queued(queued),
        };
        Ok(Self::new(Arc::clone(bulkhead), state))
    }

    fn held(&self) -> bool {
        matches!(self.state, State::Held(_))
    }

    /// Waits for the place (never refused).
    async fn acquire(&mut self) {
        let permit = match &mut self.state {
            State::Held(_) => return,
            State::Queued(queued) => match queued.await {
                Ok(permit) => permit,
                // A queued acquire is not refused; wait anyway if it were.
                Err(_) => wait(&self.bulkhead).await,
            },
            State::Later => wait(&self.bulkhead).await,
        };
        self.state = State::Held(permit);
    }
}

/// A place of `bulkhead` for a run that must not be refused: when even the
/// queue is full, look again a little later.
async fn wait(bulkhead: &Bulkhead) -> BulkheadPermit {
    let mut delay = Duration::from_millis(50);
    loop {
        match bulkhead.acquire().await {
            Ok(permit) => return permit,
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The places of one run: its tenant's, then its profile's (if limited).
/// Everything is given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Places {
    tenant: Option<Place>,
    agent: Option<Place>,
}

impl Places {
    /// Waits until every place is held: the tenant's first, then the
    /// profile's. Dropping the future keeps what is held and queued; dropping
    /// the places gives everything back.
    pub(crate) async fn acquire(&mut self) {
        if let Some(tenant) = &mut self.tenant {
            tenant.acquire().await;
        }
        if let Some(agent) = &mut self.agent {
            agent.acquire().await;
        }
    }

    /// Whether every place is held.
    #[cfg(test)]
    pub(crate) fn held(&self) -> bool {
        self.tenant.as_ref().is_none_or(Place::held) && self.agent.as_ref().is_none_or(Place::held)
    }
}

impl Admission {
    /// The bulkheads `config` asks for, reported through `reporter`.
    pub(crate) fn new(config: &Config, reporter: ResilienceReporter) -> Self {
        let agents = config
            .agents
            .iter()
            .filter(|(_, profile)| profile.max_concurrent_runs > 0)
            .map(|(name, profile)| {
                let bulkhead = Arc::new(Bulkhead::new(
                    format!("agent:{name}"),
                    profile.max_concurrent_runs,
                    profile.max_queued_runs,
                ));
                reporter.watch_bulkhead(&bulkhead);
                (name.clone(), (bulkhead, profile.max_queued_runs))
            })
            .collect();
        Self {
            per_tenant: config.max_concurrent_runs_per_tenant,
            queued_per_tenant: config.max_queued_runs_per_tenant,
            tenants: Mutex::new(HashMap::new()),
            agents,
            reporter,
        }
    }

    /// The reporter of the service's resilience decisions.
    pub(crate) fn reporter(&self) -> &ResilienceReporter {
        &self.reporter
    }

    /// The bulkhead of `tenant`, made on first use.
    fn tenant(&self, tenant: &str) -> Arc<Bulkhead> {
        let key = if tenant.is_empty() { NO_TENANT } else { tenant };
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bulkhead) = tenants.get(key) {
            return Arc::clone(bulkhead);
        }
        if tenants.len() >= IDLE_TENANTS {
            // A bulkhead only the map holds has no run holding or waiting
            // for a place: dropping it loses nothing. (Under the lock, so no
            // caller is between looking it up and using it.)
            tenants.retain(|_, bulkhead| Arc::strong_count(bulkhead) > 1);
        }
        let bulkhead = Arc::new(Bulkhead::new(
            format!("tenant:{key}"),
            self.per_tenant,
            self.queued_per_tenant,
        ));
        self.reporter.watch_bulkhead(&bulkhead);
        tenants.insert(key.to_owned(), Arc::clone(&bulkhead));
        bulkhead
    }

    /// Tenants with a bulkhead now.
    #[cfg(test)]
    pub(crate) fn tenants(&self) -> usize {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Admits a new run of `agent` for `tenant`, called by `method`: its
    /// places, held or queued, or RESOURCE_EXHAUSTED (with RetryInfo,
    /// counted and audited) when a queue is full. Does not wait.
    pub(crate) fn admit(&self, tenant: &str, agent: &str, method: &str) -> Result<Places, Status> {
        let key = if tenant.is_empty() { NO_TENANT } else { tenant };
        let tenant_place = match Place::try_take(&self.tenant(tenant)) {
            Ok(place) => place,
            Err(full) => return Err(self.refuse("tenant", key, &full, method)),
        };
        let agent_place = match self.agents.get(agent) {
            None => None,
            Some((bulkhead, _)) if tenant_place.held() => {
                match Place::try_take(bulkhead) {
                    Ok(place) => Some(place),
                    // Dropping the tenant place gives it back.
                    Err(full) => return Err(self.refuse("agent", agent, &full, method)),
                }
            }
            Some((bulkhead, max_queued)) => {
                // Queued for the tenant: take no agent place yet, but refuse
                // now if the profile has no room either.
                if bulkhead.in_use() >= bulkhead.max_concurrent()
                    && bulkhead.queued() >= *max_queued
                {
                    let full = BulkheadFull {
                        name: bulkhead.name().to_owned(),
                        max_concurrent: bulkhead.max_concurrent(),
                        max_queued: *max_queued,
                    };
                    return Err(self.refuse("agent", agent, &full, method));
                }
                Some(Place::new(Arc::clone(bulkhead), State::Later))
            }
        };
        Ok(Places {
            tenant: Some(tenant_place),
            agent: agent_place,
        })
    }

    /// The places of a run resumed after a restart: nothing taken yet, and
    /// never refused (the run waits for them).
    pub(crate) fn later(&self, tenant: &str, agent: &str) -> Places {
        Places {
            tenant: Some(Place::new(self.tenant(tenant), State::Later)),
            agent: self
                .agents
                .get(agent)
                .map(|(bulkhead, _)| Place::new(Arc::clone(bulkhead), State::Later)),
        }
    }

    /// Reports a refusal and returns the status the caller gets.
    fn refuse(&self, scope: &str, key: &str, full: &BulkheadFull, method: &str) -> Status {
        #[expect(
            clippy::cast_precision_loss,
            reason = "a concurrency limit is far below 2^52"
        )]
        let limit = full.max_concurrent as f64;
        self.reporter.refused(&Refusal {
            scope,
            key,
            resource: "concurrency",
            limit,
            period: None,
            retry_after: RETRY_AFTER,
            method,
        });
        let message = if scope == "tenant" {
            format!(
                "tenant {key:?} has {} runs running and {} queued on this orchestrator, its limit \
                 (max_concurrent_runs_per_tenant = {}, max_queued_runs_per_tenant = {}); retry \
                 once some of its runs end",
                full.max_concurrent, full.max_queued, full.max_concurrent, full.max_queued
            )
        } else {
            format!(
                "agent profile {key:?} has {} runs running and {} queued on this orchestrator, \
                 its limit (agents.{key}.max_concurrent_runs = {}, max_queued_runs = {}); retry \
                 once some of its runs end",
                full.max_concurrent, full.max_queued, full.max_concurrent, full.max_queued
            )
        };
        tracing::info!(scope, key, method, "run refused: {message}");
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(RETRY_AFTER));
        Status::with_error_details(tonic::Code::ResourceExhausted, message, details)
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_audit_client::AuditClient;
    use tonic_types::StatusExt as _;

    use super::*;
    use crate::config::{AgentProfile, DEFAULT_AGENT};

    const METHOD: &str = "/agentmesh.orchestrator.v1.OrchestratorService/StartRun";

    fn admission(per_tenant: usize, queued: usize, agent: Option<(usize, usize)>) -> Admission {
        let mut config = Config {
            max_concurrent_runs_per_tenant: per_tenant,
            max_queued_runs_per_tenant: queued,
            ..Config::default()
        };
        if let Some((max, max_queued)) = agent {
            config.agents.insert(
                "limited".to_owned(),
                AgentProfile {
                    max_concurrent_runs: max,
                    max_queued_runs: max_queued,
                    ..AgentProfile::default()
                },
            );
        }
        Admission::new(
            &config,
            ResilienceReporter::without_metrics(AuditClient::disabled("test")),
        )
    }

    #[tokio::test]
    async fn a_tenant_gets_its_places_then_its_queue_then_a_refusal() {
        let admission = admission(1, 1, None);
        let first = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
        assert!(first.held());
        let second = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
        assert!(!second.held());
        let refused = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("tenant \"a\""), "{refused:?}");
        assert!(
            refused
                .message()
                .contains("max_concurrent_runs_per_tenant = 1"),
            "{refused:?}"
        );
        assert_eq!(
            refused.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(RETRY_AFTER)
        );
        // Another tenant is not affected.
        assert!(admission.admit("b", DEFAULT_AGENT, METHOD).unwrap().held());
        // Calls without a tenant share one.
        assert!(admission.admit("", DEFAULT_AGENT, METHOD).unwrap().held());

        // The queued place moves to the run's task, as the engine does; the
        // first run ends and the queued one gets its place.
        let waiting = tokio::spawn(async move {
            let mut second = second;
            second.acquire().await;
            second
        });
        tokio::task::yield_now().await;
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(second.held());
    }

    #[tokio::test]
    async fn a_dropped_queued_run_leaves_the_queue() {
        let admission = admission(1, 1, None);
        let _running = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
        let queued = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
        drop(queued);
        let again = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
        assert!(!again.held());
    }

    #[tokio::test]
    async fn a_profile_limit_applies_across_tenants() {
        let admission = admission(4, 4, Some((1, 0)));
        let running = admission.admit("a", "limited", METHOD).unwrap();
        assert!(running.held());
        let refused = admission.admit("b", "limited", METHOD).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("agent profile \"limited\""),
            "{refused:?}"
        );
        assert!(
            refused
                .message()
                .contains("agents.limited.max_concurrent_runs = 1"),
            "{refused:?}"
        );
        // The refused run gave its tenant place back.
        let tenant_b = admission.tenant("b");
        assert_eq!(tenant_b.in_use(), 0);
        // Other profiles are not limited.
        assert!(admission.admit("b", DEFAULT_AGENT, METHOD).unwrap().held());
        drop(running);
        assert!(admission.admit("b", "limited", METHOD).unwrap().held());
    }

    #[tokio::test]
    async fn a_run_queued_for_its_tenant_takes_no_profile_place() {
        let admission = admission(1, 1, Some((1, 1)));
        let first = admission.admit("a", "limited", METHOD).unwrap();
        let mut second = admission.admit("a", "limited", METHOD).unwrap();
        assert!(!second.held());
        // Tenant b's run queues for the profile, ahead of a's second run.
        let mut other = admission.admit("b", "limited", METHOD).unwrap();
        assert!(!other.held());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), other.acquire())
            .await
            .unwrap();
        drop(other);
        tokio::time::timeout(Duration::from_secs(5), second.acquire())
            .await
            .unwrap();
        assert!(second.held());
    }

    #[tokio::test]
    async fn resumed_runs_wait_rather_than_being_refused() {
        let admission = admission(1, 0, None);
        let running = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
        let mut resumed = admission.later("a", DEFAULT_AGENT);
        assert!(!resumed.held());
        let waiting = tokio::spawn(async move {
            resumed.acquire().await;
            resumed
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(running);
        let resumed = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(resumed.held());
    }

    #[tokio::test]
    async fn a_queued_run_keeps_its_queue_slot_until_it_gets_its_place() {
        let admission = admission(1, 1, None);
        let first = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
        let mut second = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
        assert!(!second.held());
        // The queue's one slot is the second run's, however long it waits.
        for _ in 0..3 {
            let refused = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
            tokio::task::yield_now().await;
        }
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second.acquire())
            .await
            .unwrap();
        assert!(second.held());
        // It left the queue for the place: the queue has room again, the
        // place does not.
        let third = admission.admit("a", DEFAULT_AGENT, METHOD).unwrap();
        assert!(!third.held());
        assert!(admission.admit("a", DEFAULT_AGENT, METHOD).is_err());
        assert_eq!(admission.tenant("a").in_use(), 1);
        assert_eq!(admission.tenant("a").queued(), 1);
    }

    #[tokio::test]
    async fn a_full_profile_queue_refuses_across_tenants() {
        let admission = admission(4, 4, Some((1, 1)));
        let running = admission.admit("a", "limited", METHOD).unwrap();
        assert!(running.held());
        let queued = admission.admit("b", "limited", METHOD).unwrap();
        assert!(!queued.held());
        let refused = admission.admit("c", "limited", METHOD).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("agent profile \"limited\""),
            "{refused:?}"
        );
        // The refused run's tenant place was given back.
        assert_eq!(admission.tenant("c").in_use(), 0);
        // The queued run leaving frees the profile's queue slot.
        drop(queued);
        assert!(!admission.admit("c", "limited", METHOD).unwrap().held());
        drop(running);
    }

    #[tokio::test]
    async fn a_run_queued_for_its_tenant_is_refused_if_its_profile_has_no_room() {
        let admission = admission(1, 1, Some((1, 0)));
        let running = admission.admit("a", "limited", METHOD).unwrap();
        // Queued for tenant a, and the profile is full with no queue.
        let refused = admission.admit("a", "limited", METHOD).unwrap_err();
        assert!(
            refused.message().contains("agent profile \"limited\""),
            "{refused:?}"
        );
        // The tenant queue slot it had was given back.
        assert_eq!(admission.tenant("a").queued(), 0);
        // Another profile of the same tenant still queues.
        assert!(!admission.admit("a", DEFAULT_AGENT, METHOD).unwrap().held());
        drop(running);
    }

    #[tokio::test]
    async fn idle_tenants_are_dropped_once_there_are_many() {
        let admission = admission(1, 1, None);
        let held = admission.admit("busy", DEFAULT_AGENT, METHOD).unwrap();
        for tenant in 0..IDLE_TENANTS + 10 {
            drop(
                admission
                    .admit(&format!("t{tenant}"), DEFAULT_AGENT, METHOD)
                    .unwrap(),
            );
        }
        assert!(
            admission.tenants() <= IDLE_TENANTS,
            "{}",
            admission.tenants()
        );
        // The busy tenant's bulkhead survived: it is still full.
        assert!(
            !admission
                .admit("busy", DEFAULT_AGENT, METHOD)
                .unwrap()
                .held()
        );
        drop(held);
    }
}
