//! The `agentmesh.orchestrator.v1.OrchestratorService` handlers: validate
//! ([`crate::validate`]), then hand over to the [`Engine`] (runs) or read
//! the [`Store`](crate::store::Store). Starting a run — this instance's
//! queue bound, the tenant's and the profile's bulkheads, storing it — is
//! [`start`]'s. List page tokens are made and checked here.
//!
//! `Run` is `StartRun` and `StreamRun` in one call, with one difference: its
//! run ends at the caller's deadline, and its stream ends then with
//! DEADLINE_EXCEEDED.

mod start;

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, OnceLock};

use agentmesh_kit::RequestContext;
use agentmesh_kit::status::invalid_argument;
use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_server::OrchestratorService,
};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use self::start::Starter;
use crate::config::Config;
use crate::engine::Engine;
use crate::store::{self, RunFilter, RunRow};
use crate::validate;

const TENANT: &str = "x-agentmesh-tenant";
const SUBJECT: &str = "x-agentmesh-subject";
/// Default and largest page sizes of the List RPCs.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// The methods that start runs, as refusals name them.
const START_RUN: &str = "/agentmesh.orchestrator.v1.OrchestratorService/StartRun";
const RUN: &str = "/agentmesh.orchestrator.v1.OrchestratorService/Run";

/// The handlers; the engine is set once start-up has opened the database.
#[derive(Debug)]
pub(crate) struct OrchestratorServiceImpl {
    config: Arc<Config>,
    engine: Arc<OnceLock<Arc<Engine>>>,
}

impl OrchestratorServiceImpl {
    pub(crate) fn new(config: Arc<Config>, engine: Arc<OnceLock<Arc<Engine>>>) -> Self {
        Self { config, engine }
    }

    fn engine(&self) -> Result<&Arc<Engine>, Status> {
        self.engine
            .get()
            .ok_or_else(|| Status::unavailable("the orchestrator is starting; retry shortly"))
    }
}

/// Who is calling: the tenant owns the runs it starts.
#[derive(Debug)]
struct Caller {
    tenant: String,
    subject: String,
    /// Identity and trace, handed to the task of a run it starts.
    context: RequestContext,
}

fn caller<T>(request: &Request<T>) -> Caller {
    let context = RequestContext::from_request(request).unwrap_or_default();
    Caller {
        tenant: context.header(TENANT).unwrap_or_default().to_owned(),
        subject: context.header(SUBJECT).unwrap_or_default().to_owned(),
        context,
    }
}

fn not_found(what: &str, id: &str) -> Status {
    Status::not_found(format!("{what} {id:?} not found"))
}

impl OrchestratorServiceImpl {
    /// A stream of the run's events after `after`.
    fn follow(
        &self,
        run: RunRow,
        after: i32,
    ) -> Result<ReceiverStream<Result<pb::RunEvent, Status>>, Status> {
        let engine = Arc::clone(self.engine()?);
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        tokio::spawn(engine.follow(run, after, sender));
        Ok(ReceiverStream::new(receiver))
    }

    async fn run_of(&self, tenant: &str, run_id: &str) -> Result<RunRow, Status> {
        if run_id.is_empty() {
            return Err(invalid_argument([("run_id", "must not be empty")]));
        }
        let engine = self.engine()?;
        engine
            .store()
            .get_run(tenant, run_id)
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

/// The page size a request asks for.
fn page_size(requested: i32) -> Result<usize, Status> {
    match usize::try_from(requested) {
        Err(_) => Err(invalid_argument([("page_size", "must not be negative")])),
        Ok(0) => Ok(DEFAULT_PAGE),
        Ok(n) => Ok(n.min(MAX_PAGE)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// ListRuns page tokens: the last run's position and a fingerprint of the
/// filters, so a token is not reused with other filters.
fn filter_fingerprint(request: &pb::ListRunsRequest) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    request.states.hash(&mut hasher);
    let labels: BTreeMap<_, _> = request.labels.iter().collect();
    labels.hash(&mut hasher);
    request.agent.hash(&mut hasher);
    request.session_id.hash(&mut hasher);
    request
        .create_time_start
        .map(|t| (t.seconds, t.nanos))
        .hash(&mut hasher);
    request
        .create_time_end
        .map(|t| (t.seconds, t.nanos))
        .hash(&mut hasher);
    hasher.finish()
}

fn runs_page_token(last: &RunRow, fingerprint: u64) -> String {
    hex(format!("{}|{}|{fingerprint:x}", last.create_time, last.run_id).as_bytes())
}

fn parse_runs_page_token(token: &str, fingerprint: u64) -> Result<Option<(i64, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        invalid_argument([(
            "page_token",
            "is not a page token of this query (filters must stay the same between pages)",
        )])
    };
    let text = unhex(token)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(bad)?;
    let mut parts = text.splitn(3, '|');
    let (Some(time), Some(run_id), Some(print)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if print != format!("{fingerprint:x}") {
        return Err(bad());
    }
    Ok(Some((time.parse().map_err(|_| bad())?, run_id.to_owned())))
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
        let tenant = caller(&request).tenant;
        let request = request.into_inner();
        if request.after_sequence < 0 {
            return Err(invalid_argument([(
                "after_sequence",
                "must not be negative (0 = from the first event)",
            )]));
        }
        let run = self.run_of(&tenant, &request.run_id).await?;
        let events = self.follow(run, request.after_sequence)?;
        Ok(Response::new(
            events
                .map(|event| event.map(|event| pb::StreamRunResponse { event: Some(event) }))
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
        let (run, _) = self
            .start(request.into_inner().into(), caller, starter)
            .await?;
        let events = self.follow(run, 0)?;
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
        let tenant = caller(&request).tenant;
        let run = self.run_of(&tenant, &request.get_ref().run_id).await?;
        Ok(Response::new(pb::GetRunResponse {
            run: Some(run.to_proto()),
        }))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let tenant = caller(&request).tenant;
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        validate::list_runs_request(&request)?;
        let fingerprint = filter_fingerprint(&request);
        let after = parse_runs_page_token(&request.page_token, fingerprint)?;
        let filter = RunFilter {
            states: request.states.clone(),
            labels: request.labels.clone().into_iter().collect(),
            agent: request.agent.clone(),
            session_id: request.session_id.clone(),
            create_time_start: request.create_time_start.as_ref().map(store::micros_of),
            create_time_end: request.create_time_end.as_ref().map(store::micros_of),
        };
        let engine = self.engine()?;
        let mut runs = engine
            .store()
            .list_runs(&tenant, &filter, after, size + 1)
            .await
            .map_err(|e| engine.store_failed(&e))?;
        let next_page_token = if runs.len() > size {
            runs.truncate(size);
            runs.last()
                .map(|last| runs_page_token(last, fingerprint))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(RunRow::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let Caller {
            tenant, subject, ..
        } = caller(&request);
        let request = request.into_inner();
        let run = self.run_of(&tenant, &request.run_id).await?;
        if run.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "run {} has already ended ({})",
                run.run_id,
                run.state.as_str_name()
            )));
        }
        let engine = self.engine()?;
        let Some(active) = engine.active(&run.run_id) else {
            return Err(Status::unavailable(format!(
                "run {} is driven by another orchestrator instance that is not reachable from here; retry shortly (it resumes here once its claim runs out)",
                run.run_id
            )));
        };
        let reason = if request.reason.is_empty() {
            if subject.is_empty() {
                "cancelled by request".to_owned()
            } else {
                format!("cancelled by {subject}")
            }
        } else {
            request.reason
        };
        active.cancel(reason, subject);
        active.ended().await;
        let run = self.run_of(&tenant, &run.run_id).await?;
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
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                unhex(&request.page_token)
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| {
                        invalid_argument([("page_token", "is not a page token of ListAgents")])
                    })?,
            )
        };
        let mut agents: Vec<pb::Agent> = self
            .config
            .agents
            .iter()
            .filter(|(name, _)| after.as_ref().is_none_or(|after| *name > after))
            .take(size + 1)
            .map(|(name, profile)| profile.to_proto(name, *name == self.config.default_agent))
            .collect();
        let next_page_token = if agents.len() > size {
            agents.truncate(size);
            agents
                .last()
                .map(|a| hex(a.name.as_bytes()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let name = &request.get_ref().name;
        if name.is_empty() {
            return Err(invalid_argument([("name", "must not be empty")]));
        }
        let profile = self
            .config
            .agents
            .get(name)
            .ok_or_else(|| not_found("agent", name))?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(profile.to_proto(name, *name == self.config.default_agent)),
        }))
    }
}
