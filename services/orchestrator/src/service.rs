//! The `agentmesh.orchestrator.v1.OrchestratorService` handlers: validate
//! ([`crate::validate`]), then hand over to the [`Engine`] (runs) or read
//! the [`Store`](crate::store::Store). Starting a run — this instance's
//! admission (fair across tenants), storing it — is
//! [`start`]'s. List pages use the kit's page tokens
//! ([`agentmesh_kit::paging`]); which filters a token is bound to is said
//! here.
//!
//! `Run` is `StartRun` and `StreamRun` in one call, with one difference: its
//! run ends at the caller's deadline, and its stream ends then with
//! DEADLINE_EXCEEDED.

mod driven;
mod start;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use agentmesh_auth::{Identity, Mechanism, Scope};
use agentmesh_kit::RequestContext;
use agentmesh_kit::auth::AccessControl;
use agentmesh_kit::paging::{FilterHash, Page, PageLimits};
use agentmesh_kit::status::invalid_argument;
use agentmesh_kit::time::micros_of;
use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_server::OrchestratorService,
};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use prost::Message as _;
use tonic::{Request, Response, Status};

use self::start::Starter;
use crate::config::{Config, Strategy};
use crate::engine::{Engine, FORWARDED_BY};
use crate::store::{RunFilter, RunRow, Tenants};
use crate::validate;

/// Default and largest page sizes of the List RPCs.
const PAGE_LIMITS: PageLimits = PageLimits::new(50, 1000);
/// The methods that start runs, as refusals name them.
const START_RUN: &str = "/agentmesh.orchestrator.v1.OrchestratorService/StartRun";
const RUN: &str = "/agentmesh.orchestrator.v1.OrchestratorService/Run";

/// The handlers; the engine is set once start-up has opened the database.
#[derive(Debug, Clone)]
pub(crate) struct OrchestratorServiceImpl {
    config: Arc<Config>,
    engine: Arc<OnceLock<Arc<Engine>>>,
    /// Where refusals of agents outside a caller's allow-list are recorded.
    access: Option<Arc<AccessControl>>,
}

impl OrchestratorServiceImpl {
    pub(crate) fn new(config: Arc<Config>, engine: Arc<OnceLock<Arc<Engine>>>) -> Self {
        Self {
            config,
            engine,
            access: None,
        }
    }

    /// Records refusals of agents outside a caller's allow-list through
    /// `access` (the host's: counted and audited).
    pub(crate) fn with_access(mut self, access: Arc<AccessControl>) -> Self {
        self.access = Some(access);
        self
    }

    fn engine(&self) -> Result<&Arc<Engine>, Status> {
        self.engine
            .get()
            .ok_or_else(|| Status::unavailable("the orchestrator is starting; retry shortly"))
    }
}

/// Sub-runs GetRun lists at most (a run starts at most 64).
const MAX_SHOWN_SUB_RUNS: usize = 256;

/// Who is calling: the verified identity, whose tenant owns the runs it
/// starts. In the embedded mode (nobody is asked) it is the tenant and
/// subject headers, as labels.
#[derive(Debug)]
struct Caller {
    identity: Identity,
    /// Identity and trace, handed to the task of a run it starts.
    context: RequestContext,
    peer: Option<std::net::SocketAddr>,
}

fn caller<T>(request: &Request<T>) -> Caller {
    let context = RequestContext::from_request(request).unwrap_or_default();
    let identity = context.identity().cloned().unwrap_or_else(|| {
        Identity::unauthenticated(
            context
                .header(agentmesh_auth::identity::TENANT)
                .unwrap_or_default(),
            context
                .header(agentmesh_auth::identity::SUBJECT)
                .unwrap_or_default(),
        )
    });
    Caller {
        identity,
        context,
        peer: request.remote_addr(),
    }
}

impl Caller {
    /// Whose runs the caller may see and act on: an authenticated `admin`
    /// every tenant's; anyone else its own tenant's. In the embedded mode
    /// every label holds every scope, so there `admin` means nothing and
    /// the tenant header still picks the runs, as it always did.
    fn tenants(&self) -> Tenants<'_> {
        if self.identity.is_admin() && self.identity.mechanism != Mechanism::None {
            Tenants::All
        } else {
            Tenants::One(&self.identity.tenant)
        }
    }

    /// Whether the caller may start runs of (and see) agent `name`.
    fn allows_agent(&self, name: &str) -> bool {
        self.identity.allow.agents.allows(name)
    }
}

fn not_found(what: &str, id: &str) -> Status {
    Status::not_found(format!(
        "{what} {} not found",
        agentmesh_kit::status::quote(id)
    ))
}

impl OrchestratorServiceImpl {
    /// The run's events after `after`, followed — as the stream is read,
    /// by the stream itself ([`driven`]) — acting in the caller's `context`
    /// (a follow forwarded to the replica driving the run carries the
    /// caller's identity); `forwarded`: this call is such a follow.
    fn follow(
        &self,
        run: RunRow,
        after: i32,
        context: RequestContext,
        forwarded: bool,
    ) -> Result<driven::Driven<Result<pb::RunEvent, Status>>, Status> {
        let engine = Arc::clone(self.engine()?);
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        Ok(driven::Driven::new(
            context
                .with_deadline(None)
                .scope(engine.follow(run, after, sender, forwarded)),
            receiver,
        ))
    }

    /// The run as GetRun shows it: with its plan (in its last checkpoint)
    /// for a planning agent, its sub-runs for an agent that starts some.
    async fn shown(&self, tenants: Tenants<'_>, run: RunRow) -> Result<pb::Run, Status> {
        let mut shown = run.to_proto();
        let strategy = self
            .config
            .agents
            .get(&run.agent)
            .map(|profile| profile.strategy)
            .unwrap_or_default();
        let engine = self.engine()?;
        if strategy == Strategy::PlanExecute {
            shown.plan = engine
                .store()
                .checkpoint(&run.run_id)
                .await
                .map_err(|e| engine.store_failed(&e))?
                .and_then(|checkpoint| checkpoint.plan);
        }
        if matches!(strategy, Strategy::Router | Strategy::OrchestratorWorkers) {
            let filter = RunFilter {
                parent_run_id: run.run_id.clone(),
                ..RunFilter::default()
            };
            let children = engine
                .store()
                .list_runs(tenants, &filter, None, MAX_SHOWN_SUB_RUNS)
                .await
                .map_err(|e| engine.store_failed(&e))?;
            shown.sub_runs = children
                .into_iter()
                .rev()
                .map(|child| pb::SubRunSummary {
                    run_id: child.run_id,
                    agent: child.agent,
                    state: child.state.into(),
                })
                .collect();
        }
        Ok(shown)
    }

    /// The run `run_id` of `tenants`: another tenant's is NOT_FOUND, as an
    /// unknown one is.
    async fn run_of(&self, tenants: Tenants<'_>, run_id: &str) -> Result<RunRow, Status> {
        if run_id.is_empty() {
            return Err(invalid_argument([("run_id", "must not be empty")]));
        }
        let engine = self.engine()?;
        engine
            .store()
            .get_run(tenants, run_id)
            .await
            .map_err(|e| engine.store_failed(&e))?
            .ok_or_else(|| not_found("run", run_id))
    }
}

/// The events of a run started by `Run`, ending with DEADLINE_EXCEEDED at
/// the caller's deadline: when it passes first, or after the run's terminal
/// event if that came at (or after) it. (The server's own timeout covers the
/// handler, not a stream it returned.)
fn until_deadline(
    events: impl futures::Stream<Item = Result<pb::RunEvent, Status>> + Send + Unpin + 'static,
    deadline: tokio::time::Instant,
) -> impl futures::Stream<Item = Result<pb::RunEvent, Status>> + Send {
    let passed = || {
        Status::deadline_exceeded(
            "the caller's deadline passed; a run started by Run ends with its call (GetRun shows \
             how it ended)",
        )
    };
    let timer = Box::pin(tokio::time::sleep_until(deadline));
    futures::stream::unfold(Some((events, timer)), move |state| async move {
        let (mut events, mut timer) = state?;
        tokio::select! {
            biased;
            event = events.next() => match event {
                Some(event) => Some((event, Some((events, timer)))),
                None if tokio::time::Instant::now() >= deadline => Some((Err(passed()), None)),
                None => None,
            },
            () = &mut timer => Some((Err(passed()), None)),
        }
    })
}

/// The position a ListRuns page ends at: the last run's `(create_time,
/// run_id)`, the order runs are listed in (newest first).
type RunPosition = (i64, String);

/// The filters a ListRuns page token is bound to: every field but the page
/// size and token. The labels are fed in key order (a map's encoding order
/// differs between processes).
fn runs_filter(request: &pb::ListRunsRequest) -> FilterHash {
    let fields = pb::ListRunsRequest {
        page_size: 0,
        page_token: String::new(),
        labels: HashMap::new(),
        ..request.clone()
    };
    let labels: BTreeMap<_, _> = request.labels.iter().collect();
    labels
        .into_iter()
        .fold(
            FilterHash::hasher().field(fields.encode_to_vec()),
            |hasher, (key, value)| hasher.field(key).field(value),
        )
        .finish()
}

/// ListAgents has no filters: its tokens are bound to the empty request.
fn agents_filter() -> FilterHash {
    FilterHash::of_message(&pb::ListAgentsRequest::default())
}

#[tonic::async_trait]
impl OrchestratorService for OrchestratorServiceImpl {
    type StreamRunStream = BoxStream<'static, Result<pb::StreamRunResponse, Status>>;
    type RunStream = BoxStream<'static, Result<pb::RunResponse, Status>>;

    async fn start_run(
        &self,
        request: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let caller = caller(&request);
        // The run outlives this call: the caller's deadline bounds only the
        // call.
        let starter = Starter {
            method: START_RUN,
            caller_deadline: None,
        };
        let (run, existing) = self
            .start(request.into_inner().into(), caller, starter)
            .await?;
        Ok(Response::new(pb::StartRunResponse {
            run_id: run.run_id.clone(),
            run: Some(run.to_proto()),
            existing,
        }))
    }

    async fn stream_run(
        &self,
        request: Request<pb::StreamRunRequest>,
    ) -> Result<Response<Self::StreamRunStream>, Status> {
        let caller = caller(&request);
        let forwarded = request.metadata().contains_key(FORWARDED_BY);
        if forwarded {
            agentmesh_kit::auth::forwarded_caller_allows(&request, Scope::RunsRead)?;
        }
        let request = request.into_inner();
        if request.after_sequence < 0 {
            return Err(invalid_argument([(
                "after_sequence",
                "must not be negative (0 = from the first event)",
            )]));
        }
        let run = self.run_of(caller.tenants(), &request.run_id).await?;
        if request.include_sub_runs {
            let last = if request.cursor.is_empty() {
                HashMap::from([(run.run_id.clone(), request.after_sequence)])
            } else {
                tree::parse_cursor(&request.cursor, &run.run_id)?
            };
            let tenants = match caller.tenants() {
                Tenants::One(tenant) => Some(tenant.to_owned()),
                Tenants::All => None,
            };
            let merged = self.follow_tree(run, last, tenants, caller.context).await?;
            return Ok(Response::new(merged));
        }
        if !request.cursor.is_empty() {
            return Err(invalid_argument([(
                "cursor",
                "only resumes a merged stream: set include_sub_runs too, or use after_sequence",
            )]));
        }
        let events = self.follow(run, request.after_sequence, caller.context, forwarded)?;
        Ok(Response::new(
            events
                .map(|event| {
                    event.map(|event| pb::StreamRunResponse {
                        event: Some(event),
                        cursor: String::new(),
                    })
                })
                .boxed(),
        ))
    }

    async fn run(
        &self,
        request: Request<pb::RunRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let caller = caller(&request);
        // The run ends at the caller's deadline, if it gave one.
        let caller_deadline = caller
            .context
            .deadline()
            .map(tokio::time::Instant::from_std);
        let starter = Starter {
            method: RUN,
            caller_deadline,
        };
        let context = caller.context.clone();
        let (run, _) = self
            .start(request.into_inner().into(), caller, starter)
            .await?;
        let events = self.follow(run, 0, context, false)?;
        let events = match caller_deadline {
            Some(deadline) => until_deadline(events, deadline).boxed(),
            None => events.boxed(),
        };
        Ok(Response::new(
            events
                .map(|event| event.map(|event| pb::RunResponse { event: Some(event) }))
                .boxed(),
        ))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let caller = caller(&request);
        let run = self
            .run_of(caller.tenants(), &request.get_ref().run_id)
            .await?;
        let shown = self.shown(caller.tenants(), run).await?;
        Ok(Response::new(pb::GetRunResponse { run: Some(shown) }))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        // The page size first, then the filters, then the token, as before.
        PAGE_LIMITS
            .size(request.page_size)
            .map_err(|violation| invalid_argument([violation]))?;
        validate::list_runs_request(&request)?;
        let page = Page::<RunPosition>::from_request(
            PAGE_LIMITS,
            request.page_size,
            &request.page_token,
            runs_filter(&request),
        )?;
        let filter = RunFilter {
            states: request.states.clone(),
            labels: request.labels.clone().into_iter().collect(),
            agent: request.agent.clone(),
            session_id: request.session_id.clone(),
            parent_run_id: request.parent_run_id.clone(),
            create_time_start: request.create_time_start.as_ref().map(micros_of),
            create_time_end: request.create_time_end.as_ref().map(micros_of),
        };
        let engine = self.engine()?;
        let mut runs = engine
            .store()
            .list_runs(
                caller.tenants(),
                &filter,
                page.after().cloned(),
                page.fetch_size(),
            )
            .await
            .map_err(|e| engine.store_failed(&e))?;
        let next_page_token =
            page.finish(&mut runs, |last| (last.create_time, last.run_id.clone()));
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(RunRow::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let caller = caller(&request);
        let subject = caller.identity.subject.clone();
        let request = request.into_inner();
        let run = self.run_of(caller.tenants(), &request.run_id).await?;
        if run.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "run {} has already ended ({})",
                run.run_id,
                run.state.as_str_name()
            )));
        }
        let reason = if request.reason.is_empty() {
            if subject.is_empty() {
                "cancelled by request".to_owned()
            } else {
                format!("cancelled by {subject}")
            }
        } else {
            request.reason
        };
        let engine = self.engine()?;
        // Recorded first: whichever replica drives the run (told at once),
        // or resumes it later, cancels it. The first cancel's reason wins.
        let recorded = engine
            .store()
            .request_cancel(&run.run_id, &reason, &subject)
            .await
            .map_err(|e| engine.store_failed(&e))?;
        if recorded.is_some()
            && !engine
                .cancel_everywhere(&run.run_id)
                .await
                .map_err(|e| engine.store_failed(&e))?
        {
            return Err(Status::unavailable(format!(
                "the cancel of run {} is recorded, but the replica driving it has not ended it \
                 yet; it takes effect at the run's next checkpoint (GetRun shows when)",
                run.run_id
            )));
        }
        let run = self.run_of(Tenants::One(&run.tenant), &run.run_id).await?;
        if run.state != pb::RunState::Cancelled {
            return Err(Status::failed_precondition(format!(
                "run {} ended ({}) before the cancel took effect",
                run.run_id,
                run.state.as_str_name()
            )));
        }
        Ok(Response::new(pb::CancelRunResponse {
            run: Some(run.to_proto()),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let page = Page::<String>::from_request(
            PAGE_LIMITS,
            request.page_size,
            &request.page_token,
            agents_filter(),
        )?;
        let mut agents: Vec<pb::Agent> = self
            .config
            .agents
            .iter()
            .filter(|(name, _)| caller.allows_agent(name))
            .filter(|(name, _)| page.after().is_none_or(|after| *name > after))
            .take(page.fetch_size())
            .map(|(name, profile)| profile.to_proto(name, *name == self.config.default_agent))
            .collect();
        let next_page_token = page.finish(&mut agents, |last| last.name.clone());
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let caller = caller(&request);
        let name = &request.get_ref().name;
        if name.is_empty() {
            return Err(invalid_argument([("name", "must not be empty")]));
        }
        // An agent the caller may not use is as unknown to it as a missing one.
        let profile = self
            .config
            .agents
            .get(name)
            .filter(|_| caller.allows_agent(name))
            .ok_or_else(|| not_found("agent", name))?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(profile.to_proto(name, *name == self.config.default_agent)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_kit::paging::{decode_token, encode_token};

    use super::*;

    fn with_labels(labels: &[(&str, &str)]) -> pb::ListRunsRequest {
        pb::ListRunsRequest {
            labels: labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            ..pb::ListRunsRequest::default()
        }
    }

    #[test]
    fn a_runs_token_is_bound_to_the_filters_not_the_paging() {
        let filter = runs_filter(&with_labels(&[("team", "red"), ("env", "prod")]));
        // The labels map in another order, another page size and token.
        let mut same = with_labels(&[("env", "prod"), ("team", "red")]);
        same.page_size = 7;
        same.page_token = "x".into();
        assert_eq!(runs_filter(&same), filter);
        for other in [
            with_labels(&[("team", "red")]),
            with_labels(&[("team", "blue"), ("env", "prod")]),
            pb::ListRunsRequest {
                states: vec![pb::RunState::Failed.into()],
                ..with_labels(&[("team", "red"), ("env", "prod")])
            },
            pb::ListRunsRequest {
                agent: "default".into(),
                ..with_labels(&[("team", "red"), ("env", "prod")])
            },
        ] {
            assert_ne!(runs_filter(&other), filter, "{other:?}");
        }
    }

    /// Tokens depend only on the filters and the position, not on the
    /// process: one made by another instance (a replica, or this one before a
    /// restart) or by an earlier build is good here. The literals are
    /// committed (and were checked by hand: version 1, the first 16 bytes of
    /// SHA-256 of the length-prefixed filter fields, JSON of the position):
    /// changing the format means a new token version, not new literals.
    #[test]
    fn tokens_from_another_instance_or_build_are_accepted() {
        const RUNS: &str = "01f2c9e13f21eed4bb3f9467ca8c0e85ad5b313730303030303030303030303030302c2272756e2d31225d";
        const AGENTS: &str = "01af5570f5a1810b7af78caf4bc70a660f226265746122";
        let runs = runs_filter(&with_labels(&[("team", "red"), ("env", "prod")]));
        let position: RunPosition = (1_700_000_000_000_000, "run-1".to_owned());
        assert_eq!(encode_token(&position, &runs), RUNS);
        assert_eq!(
            decode_token::<RunPosition>(RUNS, &runs).unwrap(),
            Some(position)
        );
        assert_eq!(encode_token(&"beta", &agents_filter()), AGENTS);
        assert_eq!(
            decode_token::<String>(AGENTS, &agents_filter()).unwrap(),
            Some("beta".to_owned())
        );
        // A token of the format before is refused (the client starts again).
        let before = "313730303030303030303030303030307c72756e2d317c61626364";
        assert!(decode_token::<RunPosition>(before, &runs).is_err());
    }
}
