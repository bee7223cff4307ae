//! Starting a run (`StartRun`, `Run`), in the order the checks cost:
//!
//! ```text
//! validate::start_request  the request alone            INVALID_ARGUMENT
//! profile                  the caller may use the agent  PERMISSION_DENIED
//!                          (its allow-list; audited)
//!                          the agent profile exists      NOT_FOUND
//! session                  the session exists (or new)   NOT_FOUND
//! callback                 a secret for the tenant       FAILED_PRECONDITION
//!                          the destination, resolved,    INVALID_ARGUMENT
//!                          allowed (crate::callbacks)
//! new_run                  the run row: limits resolved from the profile
//! no_run_in_progress       one run at a time per session FAILED_PRECONDITION
//! admission                a place now or a turn in the  RESOURCE_EXHAUSTED
//!                          queue (instance's, tenant's,
//!                          profile's bounds)
//! create                   stored (QUEUED) with the caller's identity
//!                          (acted for on every call the run makes, also
//!                          after a resume), or the run its idempotency
//!                          key names; a new run is audited and handed to
//!                          the engine with its places
//! ```
//!
//! Nothing is stored before the last step, and places taken by admission
//! are given back (dropped) if the run is not created.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_auth::Identity;
use agentmesh_kit::RequestContext;
use agentmesh_kit::time::now_micros;
use agentmesh_proto::orchestrator::v1 as pb;
use tokio::time::Instant;
use tonic::Status;
use tracing::Instrument as _;

use super::{Caller, OrchestratorServiceImpl, not_found};
use crate::admission::Places;
use crate::config::AgentProfile;
use crate::engine::Engine;
use crate::store::{Created, Limits, RunRow};
use crate::validate::{self, RequestedLimits, StartFields, StartRequest};

/// How a run is started: by which method, and (for `Run`) until when its
/// caller waits.
#[derive(Debug)]
pub(super) struct Starter {
    pub(super) method: &'static str,
    pub(super) caller_deadline: Option<Instant>,
}

impl OrchestratorServiceImpl {
    /// Validates, admits, stores and starts a run (or finds the one an
    /// idempotency key names). Returns the run and whether it already
    /// existed.
    pub(super) async fn start(
        &self,
        fields: StartFields,
        caller: Caller,
        starter: Starter,
    ) -> Result<(RunRow, bool), Status> {
        let engine = self.engine()?;
        if engine.is_handing_over() {
            // Shutting down: its runs go to the other replicas; so does this.
            return Err(Status::unavailable(
                "this orchestrator replica is shutting down and hands its runs over; retry \
                 (another replica takes the call; an idempotency key makes the retry safe)",
            ));
        }
        let mut request = validate::start_request(fields, self.config.max_objective_bytes)?;
        let agent = std::mem::take(&mut request.agent);
        let (agent, profile) = self.profile(&caller, agent, starter.method)?;
        let (session_id, new_session) = session(
            engine,
            &caller.identity.tenant,
            std::mem::take(&mut request.session_id),
        )
        .await?;
        let callback = match request.callback.take() {
            Some(requested) => Some(
                engine
                    .callbacks()
                    .check(&caller.identity.tenant, requested)
                    .await?,
            ),
            None => None,
        };
        let mut run = new_run(
            request,
            profile,
            RunOwner {
                identity: Identity {
                    // The run is the end user's; the service that forwarded
                    // them (if any) is not whom the run acts for.
                    actor: None,
                    ..caller.identity
                },
                agent,
                session_id,
            },
            starter.caller_deadline,
        );
        run.callback = callback;
        if !new_session {
            no_run_in_progress(engine, &run.session_id).await?;
        }
        // A place, held or queued, before the run exists; given back if
        // the run is not created.
        let places =
            engine
                .admission()
                .admit_at(&run.tenant, &run.agent, starter.method, run.priority)?;
        create(engine, run, new_session, caller.context, places, starter).await
    }
}

impl OrchestratorServiceImpl {
    /// The profile a request names (empty: the default one), with its
    /// name: PERMISSION_DENIED naming it when the caller's allow-list
    /// leaves it out (counted and audited; whether it exists is not said),
    /// NOT_FOUND listing the agents the caller may use when it does not
    /// exist.
    fn profile(
        &self,
        caller: &Caller,
        agent: String,
        method: &str,
    ) -> Result<(String, &AgentProfile), Status> {
        let config = &self.config;
        let agent = if agent.is_empty() {
            config.default_agent.clone()
        } else {
            agent
        };
        if !caller.allows_agent(&agent) {
            if let Some(access) = &self.access {
                access.refuse_resource(
                    &caller.identity,
                    method,
                    "agent_not_allowed",
                    &agent,
                    caller.peer,
                );
            }
            return Err(Status::permission_denied(format!(
                "agent {agent:?} is not allowed for this tenant or key ({}); allowed agents: {}",
                caller.identity.credential_id,
                caller
                    .identity
                    .allow
                    .agents
                    .names()
                    .map(|names| names.join(", "))
                    .filter(|names| !names.is_empty())
                    .unwrap_or_else(|| "none".to_owned())
            )));
        }
        match config.agents.get(&agent) {
            Some(profile) => Ok((agent, profile)),
            None => Err(Status::not_found(format!(
                "agent {} not found; configured agents: {}",
                agentmesh_kit::status::quote(&agent),
                config
                    .agents
                    .keys()
                    .filter(|name| caller.allows_agent(name))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// The run's session: the tenant's existing one it names, or a new one
/// (empty). Returns its id and whether it is new.
async fn session(
    engine: &Engine,
    tenant: &str,
    session_id: String,
) -> Result<(String, bool), Status> {
    if session_id.is_empty() {
        return Ok((uuid::Uuid::now_v7().to_string(), true));
    }
    if !engine
        .store()
        .session_exists(tenant, &session_id)
        .await
        .map_err(|e| engine.store_failed(&e))?
    {
        return Err(not_found("session", &session_id));
    }
    Ok((session_id, false))
}

/// FAILED_PRECONDITION when the session has a run that has not ended.
async fn no_run_in_progress(engine: &Engine, session_id: &str) -> Result<(), Status> {
    match engine
        .store()
        .unfinished_run_in_session(session_id)
        .await
        .map_err(|e| engine.store_failed(&e))?
    {
        Some(other) => Err(Status::failed_precondition(format!(
            "session {} has a run in progress ({other}); wait for it to end or cancel it",
            agentmesh_kit::status::quote(session_id)
        ))),
        None => Ok(()),
    }
}

/// Whose the run is, and where.
struct RunOwner {
    identity: Identity,
    agent: String,
    session_id: String,
}

/// The new run's row (QUEUED), its limits resolved from the request and
/// `profile`.
fn new_run(
    request: StartRequest,
    profile: &AgentProfile,
    owner: RunOwner,
    caller_deadline: Option<Instant>,
) -> RunRow {
    RunRow {
        run_id: uuid::Uuid::now_v7().to_string(),
        tenant: owner.identity.tenant.clone(),
        subject: owner.identity.subject.clone(),
        agent: owner.agent,
        session_id: owner.session_id,
        objective: request.objective,
        state: pb::RunState::Queued,
        idempotency_key: Some(request.idempotency_key).filter(|key| !key.is_empty()),
        model: profile.model.clone(),
        limits: limits(request.limits, profile, caller_deadline),
        labels: request.labels.into_iter().collect(),
        create_time: now_micros(),
        start_time: None,
        end_time: None,
        output: String::new(),
        error: None,
        input_tokens: 0,
        output_tokens: 0,
        steps: 0,
        tool_calls: 0,
        last_sequence: 0,
        priority: request.priority,
        identity: Some(owner.identity),
        callback: None,
        parent_run_id: None,
    }
}

/// The limits a request asked for, the profile's where it did not.
fn limits(
    requested: RequestedLimits,
    profile: &AgentProfile,
    caller_deadline: Option<Instant>,
) -> Limits {
    Limits {
        max_steps: if requested.max_steps > 0 {
            requested.max_steps
        } else {
            profile.max_steps
        },
        max_output_tokens: if requested.max_output_tokens > 0 {
            requested.max_output_tokens
        } else {
            profile.max_output_tokens
        },
        max_tokens: if requested.max_tokens > 0 {
            requested.max_tokens
        } else {
            profile.max_tokens
        },
        max_cost_micros: if requested.max_cost_micros > 0 {
            requested.max_cost_micros
        } else {
            crate::config::usd_to_micros(profile.max_cost_usd)
        },
        timeout_ms: timeout_ms(
            requested.timeout.unwrap_or(profile.timeout),
            caller_deadline,
        ),
    }
}

/// A run's timeout in milliseconds: its own, or what is left of its
/// caller's time (`Run`) if less — rounded up, so the caller's deadline is
/// what ends such a run, and it shows in GetRun and in a resume elsewhere.
fn timeout_ms(timeout: Duration, caller_deadline: Option<Instant>) -> i64 {
    let timeout = match caller_deadline {
        Some(deadline) => timeout.min(deadline.saturating_duration_since(Instant::now())),
        None => timeout,
    };
    i64::try_from(timeout.as_micros().div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

/// Stores the run and hands it to the engine with its places; or returns
/// the run its idempotency key already names (ALREADY_EXISTS if that one
/// has another objective or agent).
///
/// Runs in a task of its own, which the call only awaits: a call dropped
/// midway (its caller's deadline, a reset stream) must not leave a run
/// stored and claimed here with no task driving it. The run is registered
/// with the engine before it is stored, so the maintenance never takes a
/// run being created for one nothing drives.
async fn create(
    engine: &Arc<Engine>,
    run: RunRow,
    new_session: bool,
    context: RequestContext,
    places: Places,
    starter: Starter,
) -> Result<(RunRow, bool), Status> {
    let task = {
        let engine = Arc::clone(engine);
        let scope = context.clone().with_deadline(None);
        tokio::spawn(
            scope.scope(
                async move {
                    store_and_spawn(&engine, run, new_session, context, places, starter).await
                }
                .in_current_span(),
            ),
        )
    };
    task.await
        .map_err(|err| Status::internal(format!("storing the run stopped: {err}")))?
}

/// [`create`]'s task.
async fn store_and_spawn(
    engine: &Arc<Engine>,
    run: RunRow,
    new_session: bool,
    context: RequestContext,
    places: Places,
    starter: Starter,
) -> Result<(RunRow, bool), Status> {
    // A new id: nothing else registers it.
    let Some(active) = engine.register(&run, None) else {
        return Err(Status::internal("a new run id is taken"));
    };
    let created = engine
        .store()
        .create_run(&run, new_session, engine.owner(), engine.lease_until())
        .await;
    match created {
        Ok(Created::New(run)) => {
            tracing::debug!(run_id = %run.run_id, agent = %run.agent, "run queued");
            engine.audit_run_started(&run);
            engine.spawn(
                run.clone(),
                active,
                None,
                context,
                places,
                starter.caller_deadline,
            );
            Ok((run, false))
        }
        Ok(Created::Existing(existing)) => {
            engine.forget(&run.run_id);
            if existing.objective != run.objective || existing.agent != run.agent {
                return Err(Status::already_exists(format!(
                    "idempotency key {} was used for run {} with a different objective or agent",
                    agentmesh_kit::status::quote(&run.idempotency_key.unwrap_or_default()),
                    existing.run_id
                )));
            }
            Ok((existing, true))
        }
        Err(err) => {
            // Not stored as far as we know; should the commit have gone
            // through after all, the run is claimed here and the maintenance
            // adopts it.
            engine.forget(&run.run_id);
            Err(engine.store_failed(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::sync::OnceLock;

    use super::*;
    use crate::engine::testing::{self, undriven};
    use crate::service::{Caller, RUN};

    /// The interleaving behind runs stuck QUEUED: the call starting a run
    /// dropped (its caller's deadline, a reset stream) while the run's
    /// INSERT commits. The start is polled step by step, each step given
    /// time to finish its database work, and dropped after 1, 2, … polls,
    /// so one drop lands while the commit is in flight. Every run stored
    /// must be driven (it ends: its peers are not there), none left claimed
    /// here with no task.
    #[tokio::test]
    async fn a_start_dropped_at_any_point_leaves_no_run_that_nothing_drives() {
        let dir = tempfile::tempdir().unwrap();
        let engine = testing::engine(&dir, testing::config()).await;
        let cell = Arc::new(OnceLock::new());
        cell.set(Arc::clone(&engine)).unwrap();
        let service = OrchestratorServiceImpl::new(Arc::new(testing::config()), cell);
        for polls in 1..=16 {
            let caller = Caller {
                identity: Identity::unauthenticated("t", "alice"),
                context: RequestContext::default(),
                peer: None,
            };
            let fields = pb::RunRequest {
                objective: format!("dropped after {polls} polls"),
                ..pb::RunRequest::default()
            };
            let starter = Starter {
                method: RUN,
                caller_deadline: Some(Instant::now() + Duration::from_secs(60)),
            };
            let mut start = Box::pin(service.start(fields.into(), caller, starter));
            for _ in 0..polls {
                let poll = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(start.as_mut().poll(cx).is_ready())
                });
                if poll.await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(start);
        }
        let mut left = Vec::new();
        for _ in 0..200 {
            left = undriven(&engine).await;
            if left.is_empty() && engine.active_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            left.is_empty(),
            "runs claimed here that nothing drives: {left:?}"
        );
        assert_eq!(engine.active_count(), 0);
        // Each start, once polled past its checks, stored its run: the
        // drops did not lose them either.
        let runs = engine
            .store()
            .list_runs(
                crate::store::Tenants::All,
                &crate::store::RunFilter::default(),
                None,
                100,
            )
            .await
            .unwrap();
        assert_eq!(runs.len(), 16);
        assert!(runs.iter().all(RunRow::is_terminal), "{runs:?}");
    }

    #[test]
    fn a_request_s_limits_win_over_the_profile_s() {
        let profile = AgentProfile::default();
        let asked = RequestedLimits {
            max_steps: 3,
            max_output_tokens: 100,
            max_tokens: 5000,
            max_cost_micros: 0,
            timeout: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            limits(asked, &profile, None),
            Limits {
                max_steps: 3,
                max_output_tokens: 100,
                timeout_ms: 2000,
                max_tokens: 5000,
                max_cost_micros: 0,
            }
        );
        let none = RequestedLimits {
            max_steps: 0,
            max_output_tokens: 0,
            max_tokens: 0,
            max_cost_micros: 0,
            timeout: None,
        };
        assert_eq!(
            limits(none, &profile, None),
            Limits {
                max_steps: profile.max_steps,
                max_output_tokens: profile.max_output_tokens,
                timeout_ms: i64::try_from(profile.timeout.as_millis()).unwrap(),
                max_tokens: profile.max_tokens,
                max_cost_micros: 0,
            }
        );
    }

    #[test]
    fn a_run_s_timeout_is_cut_to_its_caller_s_time_rounded_up() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let cut = timeout_ms(Duration::from_secs(60), Some(deadline));
        assert!((9_000..=10_000).contains(&cut), "{cut}");
        // Its own timeout when that is sooner.
        assert_eq!(timeout_ms(Duration::from_secs(2), Some(deadline)), 2000);
        // Rounded up to the millisecond, and never zero, even once the
        // caller's time is up.
        assert_eq!(timeout_ms(Duration::from_micros(1500), None), 2);
        assert_eq!(timeout_ms(Duration::from_secs(60), Some(Instant::now())), 1);
        assert_eq!(timeout_ms(Duration::from_secs(60), None), 60_000);
    }
}
