//! The agent loop and the live state of the runs this instance drives.
//!
//! Each run is driven by one task ([`Engine::drive`]): it waits (QUEUED)
//! for its places — its tenant's and its profile's bulkheads
//! ([`crate::admission`]), then this instance's slot — then asks the gateway
//! for the next answer (streaming its text to followers as `token_delta`
//! events), runs the tool calls the model asked for in parallel, feeds the
//! results back, and repeats until a final answer, the step limit, the
//! timeout, a cancel or an unrecoverable error.
//!
//! Deadlines: every call to a peer carries a `grpc-timeout` of what is left
//! of the run's time. A run started by `Run` also ends at its caller's
//! deadline (FAILED, DEADLINE_EXCEEDED), queued or running; one started by
//! `StartRun` outlives the call and has only its own timeout.
//!
//! Events get their sequence numbers here, go at once to followers through a
//! broadcast channel, and wait in [`Live::pending`] until the end of the step,
//! when one transaction stores them with the run row and the checkpoint. A
//! follower ([`Engine::follow`]) takes, under one lock, the stored position,
//! the pending events and a subscription, so replay and live tail meet
//! without a gap or a duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_audit_client::{AuditClient, code_name};
use agentmesh_kit::client::MeshChannel;
use agentmesh_kit::metrics::GrpcClientMetrics;
use agentmesh_kit::{RequestContext, telemetry};
use agentmesh_proto::audit::v1::{
    AuditEvent, ErrorDetails, EventType, Outcome, RunDetails, audit_event::Details,
};
use agentmesh_proto::llm::v1::{self as llm, generate_stream_response};
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use agentmesh_proto::tools::v1 as tools;
use agentmesh_resilience::Backoff;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use llm::llm_gateway_service_client::LlmGatewayServiceClient;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tools::tool_runner_service_client::ToolRunnerServiceClient;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::admission::{Admission, Places};
use crate::config::{AgentProfile, Config};
use crate::metrics::{RunEnd, RunMetrics};
use crate::store::{self, Checkpoint, RunRow, Store, now_micros};

/// Events a slow follower may fall behind before it re-reads from the store.
const FOLLOWER_BUFFER: usize = 1024;
/// How often a follower of a run driven elsewhere looks for new events.
const REMOTE_POLL: Duration = Duration::from_millis(200);
/// How long the tool list is cached.
const TOOL_CACHE: Duration = Duration::from_secs(10);
/// The component named in ERROR audit events about the run store.
const DATABASE: &str = "database";
/// How close to the caller's deadline a failed call counts as cut by it
/// (a peer's or the client's own timer may fire a hair before ours:
/// `grpc-timeout` values are truncated to their unit).
const DEADLINE_SLACK: Duration = Duration::from_millis(5);
/// Attempts at listing the tools when the tool runner is UNAVAILABLE
/// (draining or restarting): the call is idempotent.
const LIST_TOOLS_ATTEMPTS: u32 = 3;

/// The runs this instance drives, and what it needs to drive them.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    config: Arc<Config>,
    gateway: LlmGatewayServiceClient<MeshChannel>,
    tools: ToolRunnerServiceClient<MeshChannel>,
    active: Mutex<HashMap<String, Arc<ActiveRun>>>,
    slots: Arc<Semaphore>,
    /// This instance's name in the runs it claims.
    owner: String,
    tool_cache: tokio::sync::Mutex<Option<(Instant, Vec<tools::Tool>)>>,
    audit: AuditClient,
    metrics: RunMetrics,
    admission: Admission,
}

/// A run driven by this instance.
#[derive(Debug)]
pub struct ActiveRun {
    run_id: String,
    cancel: CancellationToken,
    /// The first cancel's reason and the subject who asked for it.
    cancel_reason: Mutex<Option<(String, String)>>,
    live: Mutex<Live>,
    /// Becomes true once the run's terminal event is stored.
    ended: watch::Sender<bool>,
}

/// Events not yet stored, and the channel to the followers.
#[derive(Debug)]
struct Live {
    /// Highest sequence stored.
    stored: i32,
    /// Events with a larger sequence, in order.
    pending: Vec<pb::RunEvent>,
    last_sequence: i32,
    state: pb::RunState,
    followers: broadcast::Sender<pb::RunEvent>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ActiveRun {
    fn new(run: &RunRow) -> Arc<Self> {
        let (followers, _) = broadcast::channel(FOLLOWER_BUFFER);
        Arc::new(Self {
            run_id: run.run_id.clone(),
            cancel: CancellationToken::new(),
            cancel_reason: Mutex::new(None),
            live: Mutex::new(Live {
                stored: run.last_sequence,
                pending: Vec::new(),
                last_sequence: run.last_sequence,
                state: run.state,
                followers,
            }),
            ended: watch::Sender::new(false),
        })
    }

    /// Gives the event the next sequence number, keeps it for the next
    /// flush and sends it to the followers.
    fn emit(&self, event: run_event::Event) -> pb::RunEvent {
        let mut live = lock(&self.live);
        live.last_sequence += 1;
        let event = pb::RunEvent {
            run_id: self.run_id.clone(),
            sequence: live.last_sequence,
            time: Some(store::timestamp(now_micros())),
            event: Some(event),
        };
        live.pending.push(event.clone());
        // No followers is fine: the event is stored at the end of the step.
        let _ = live.followers.send(event.clone());
        event
    }

    /// Gives the terminal event its sequence number without publishing it:
    /// it goes to the followers only once stored ([`Self::publish_stored`]),
    /// so a client that sees the end of a run finds it ended everywhere
    /// (GetRun, a new run in the same session).
    fn reserve(&self, event: run_event::Event) -> pb::RunEvent {
        let mut live = lock(&self.live);
        live.last_sequence += 1;
        pb::RunEvent {
            run_id: self.run_id.clone(),
            sequence: live.last_sequence,
            time: Some(store::timestamp(now_micros())),
            event: Some(event),
        }
    }

    /// Publishes a reserved event stored by the caller.
    fn publish_stored(&self, event: pb::RunEvent) {
        let mut live = lock(&self.live);
        live.stored = live.stored.max(event.sequence);
        live.pending
            .retain(|pending| pending.sequence > event.sequence);
        let _ = live.followers.send(event);
    }

    fn set_state(&self, state: pb::RunState) {
        lock(&self.live).state = state;
    }

    /// The events to store now, and the last sequence among them.
    fn unstored(&self) -> (Vec<pb::RunEvent>, i32) {
        let live = lock(&self.live);
        (live.pending.clone(), live.last_sequence)
    }

    /// Marks events up to `sequence` as stored.
    fn stored(&self, sequence: i32) {
        let mut live = lock(&self.live);
        live.pending.retain(|event| event.sequence > sequence);
        live.stored = live.stored.max(sequence);
    }

    /// Requests the run to stop, for `reason`, on behalf of `by` (the
    /// caller's subject, may be empty); the driver records the cancel.
    pub fn cancel(&self, reason: String, by: String) {
        lock(&self.cancel_reason).get_or_insert((reason, by));
        self.cancel.cancel();
    }

    /// Waits until the run's terminal event is stored.
    pub async fn ended(&self) {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
    }
}

/// How a run's loop ended.
enum Ending {
    Finished(String),
    Failed(Status),
    Cancelled(String),
}

/// How a queued run's wait for its places and slot ended.
enum Wait {
    Admitted(tokio::sync::OwnedSemaphorePermit),
    Cancelled,
    CallerDeadline,
}

/// The status of a run stopped by its caller's deadline.
fn caller_deadline_passed(waited: Duration, queued: bool) -> Status {
    let when = if queued {
        "while the run was still queued"
    } else {
        "while the run was running"
    };
    Status::deadline_exceeded(format!(
        "the caller's deadline passed {when} ({waited:.1?} after it was created), so the run was \
         stopped: a run started with Run ends with its call; use StartRun and StreamRun for runs \
         that outlive the call"
    ))
}

/// Waits until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Engine {
    /// An engine over `store`, calling the gateway and the tool runner at
    /// the configured addresses (connections are made lazily and reused),
    /// recording run starts and ends in `audit`, runs in `metrics`, the
    /// calls to its peers in `client_metrics`, and bulkheads, refusals and
    /// retries through `admission`.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        audit: AuditClient,
        metrics: RunMetrics,
        client_metrics: &GrpcClientMetrics,
        admission: Admission,
    ) -> Result<Arc<Self>, tonic::transport::Error> {
        let channel = |uri: &str| agentmesh_kit::client::channel_with_metrics(uri, client_metrics);
        let gateway = LlmGatewayServiceClient::new(channel(&config.llm_gateway_url)?)
            .max_decoding_message_size(config.server.max_message_bytes)
            .max_encoding_message_size(config.server.max_message_bytes);
        let tools = ToolRunnerServiceClient::new(channel(&config.tool_runner_url)?)
            .max_decoding_message_size(config.server.max_message_bytes)
            .max_encoding_message_size(config.server.max_message_bytes);
        Ok(Arc::new(Self {
            store,
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs)),
            config,
            gateway,
            tools,
            active: Mutex::new(HashMap::new()),
            owner: format!("orchestrator-{}", uuid::Uuid::new_v4()),
            tool_cache: tokio::sync::Mutex::new(None),
            audit,
            metrics,
            admission,
        }))
    }

    /// The bulkheads runs are admitted through.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This instance's name in run claims.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// When a claim made now runs out.
    pub fn lease_until(&self) -> i64 {
        now_micros()
            .saturating_add(i64::try_from(self.config.run_lease.as_micros()).unwrap_or(i64::MAX))
    }

    /// Runs driven here and not yet started (waiting for a slot) or running.
    pub fn active_count(&self) -> usize {
        lock(&self.active).len()
    }

    /// The run, if this instance drives it.
    pub fn active(&self, run_id: &str) -> Option<Arc<ActiveRun>> {
        lock(&self.active).get(run_id).cloned()
    }

    /// Starts driving a stored run in the background, from its checkpoint
    /// when `resume` is set, once it holds `places` (and a slot of this
    /// instance). `context` carries the identity and trace of the request
    /// that started it; its deadline is dropped (a run outlives the call
    /// that started it) unless given again as `caller_deadline`, by `Run`,
    /// whose run ends at its caller's deadline.
    pub fn spawn(
        self: &Arc<Self>,
        run: RunRow,
        resume: Option<Checkpoint>,
        context: RequestContext,
        places: Places,
        caller_deadline: Option<Instant>,
    ) {
        let active = ActiveRun::new(&run);
        lock(&self.active).insert(run.run_id.clone(), Arc::clone(&active));
        let engine = Arc::clone(self);
        // The run's span: a child of the call that started it (or a root
        // when a run resumes after a restart), open until the run ends.
        let span = tracing::info_span!(
            target: "agentmesh::run",
            "invoke_agent",
            otel.name = %format_args!("invoke_agent {}", run.agent),
            otel.kind = "internal",
            otel.status_code = Empty,
            error.type = Empty,
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %run.agent,
            gen_ai.conversation.id = %run.session_id,
            gen_ai.request.model = %run.model,
            run_id = %run.run_id,
            trace_id = Empty,
            span_id = Empty,
        );
        telemetry::record_ids(&span);
        tokio::spawn(
            context
                .with_deadline(None)
                .scope(async move {
                    engine
                        .drive(run, active, resume, places, caller_deadline)
                        .await
                })
                .instrument(span),
        );
    }

    async fn drive(
        self: Arc<Self>,
        mut run: RunRow,
        active: Arc<ActiveRun>,
        resume: Option<Checkpoint>,
        mut places: Places,
        caller_deadline: Option<Instant>,
    ) {
        let run_id = run.run_id.clone();
        // Wait for the tenant's place, the profile's and a slot of this
        // instance (QUEUED), unless cancelled or out of the caller's time
        // meanwhile; leaving drops the queue slots.
        let queued = self.metrics.queued();
        let queued_at = Instant::now();
        let wait = tokio::select! {
            permit = async {
                places.acquire().await;
                Arc::clone(&self.slots).acquire_owned().await
            } => match permit {
                Ok(permit) => Wait::Admitted(permit),
                // The semaphore is never closed.
                Err(_) => Wait::Cancelled,
            },
            () = active.cancel.cancelled() => Wait::Cancelled,
            () = until(caller_deadline) => Wait::CallerDeadline,
        };
        drop(queued);
        let profile = self
            .config
            .agents
            .get(&run.agent)
            .cloned()
            .unwrap_or_default();
        // What the loop carries from step to step, stored after each one.
        let mut checkpoint = match resume {
            Some(checkpoint) => checkpoint,
            None => self.first_checkpoint(&run, &profile).await,
        };
        let started = Instant::now();
        let mut running = None;
        let mut permit = None;
        let ending = match wait {
            Wait::Cancelled => Ending::Cancelled(self.cancel_reason(&active)),
            Wait::CallerDeadline => {
                Ending::Failed(caller_deadline_passed(queued_at.elapsed(), true))
            }
            Wait::Admitted(slot) => {
                permit = Some(slot);
                // Time the run already ran (on an instance that stopped),
                // measured now: storing its start below takes time too.
                let elapsed_before = run
                    .start_time
                    .map(|start| {
                        Duration::from_micros(u64::try_from(now_micros() - start).unwrap_or(0))
                    })
                    .unwrap_or_default();
                running = Some(
                    self.metrics
                        .agent(&run.agent)
                        .running(run.start_time.is_none()),
                );
                if run.start_time.is_none() {
                    run.start_time = Some(now_micros());
                    run.state = pb::RunState::Running;
                    active.set_state(run.state);
                    active.emit(run_event::Event::RunStarted(pb::RunStarted {
                        agent: run.agent.clone(),
                        model: run.model.clone(),
                        session_id: run.session_id.clone(),
                        limits: run.to_proto().limits,
                        objective: run.objective.clone(),
                    }));
                    self.flush(&mut run, &active, Some(&checkpoint)).await;
                } else {
                    // Resumed after the instance that drove it stopped.
                    active.emit(run_event::Event::Progress(pb::Progress {
                        step: checkpoint.step + 1,
                        max_steps: run.limits.max_steps,
                        percent: percent(checkpoint.step, run.limits.max_steps),
                        message: format!(
                            "step {} restarted: the run resumed from its checkpoint after the \
                             instance driving it stopped",
                            checkpoint.step + 1
                        ),
                        step_restarted: true,
                    }));
                }
                let timeout =
                    Duration::from_millis(u64::try_from(run.limits.timeout_ms).unwrap_or(0))
                        .saturating_sub(elapsed_before);
                // The run's own timeout, or its caller's deadline if sooner.
                let own_deadline = started + timeout;
                let by_caller = caller_deadline.is_some_and(|caller| caller <= own_deadline);
                let deadline =
                    caller_deadline.map_or(own_deadline, |caller| caller.min(own_deadline));
                let work = self.steps(&mut run, &active, &profile, &mut checkpoint, deadline);
                tokio::select! {
                    () = active.cancel.cancelled() => Ending::Cancelled(self.cancel_reason(&active)),
                    result = tokio::time::timeout_at(deadline, work) => match result {
                        Ok(Ok(output)) => Ending::Finished(output),
                        Ok(Err(status)) if by_caller && Instant::now() + DEADLINE_SLACK >= deadline => {
                            // A peer answered DEADLINE_EXCEEDED (or its call was
                            // not made) just as the caller's time ran out.
                            tracing::debug!(run_id = %run.run_id, error = %status, "a call failed at the caller's deadline");
                            Ending::Failed(caller_deadline_passed(queued_at.elapsed(), false))
                        }
                        Ok(Err(status)) => Ending::Failed(status),
                        Err(_) if by_caller => {
                            Ending::Failed(caller_deadline_passed(queued_at.elapsed(), false))
                        }
                        Err(_) => Ending::Failed(Status::deadline_exceeded(format!(
                            "the run exceeded its timeout of {:?}",
                            Duration::from_millis(u64::try_from(run.limits.timeout_ms).unwrap_or(0))
                        ))),
                    },
                }
            }
        };
        // Give back the slot and the places: the run has stopped working.
        drop(permit);
        drop(places);
        if let Ending::Failed(status) = &ending {
            mark_failed(&tracing::Span::current(), status);
        }
        self.finish(&mut run, &active, checkpoint, ending, started.elapsed())
            .await;
        drop(running);
        lock(&self.active).remove(&run_id);
        active.ended.send_replace(true);
    }

    fn cancel_reason(&self, active: &ActiveRun) -> String {
        lock(&active.cancel_reason)
            .as_ref()
            .map(|(reason, _)| reason.clone())
            .unwrap_or_default()
    }

    fn cancelled_by(&self, active: &ActiveRun) -> String {
        lock(&active.cancel_reason)
            .as_ref()
            .map(|(_, by)| by.clone())
            .unwrap_or_default()
    }

    /// The conversation a new run starts with: the profile's system prompt,
    /// the session's history, the objective.
    async fn first_checkpoint(&self, run: &RunRow, profile: &AgentProfile) -> Checkpoint {
        let mut messages = Vec::new();
        let history = match self.store.session_history(&run.session_id).await {
            Ok(history) => history,
            Err(err) => {
                tracing::warn!(run_id = %run.run_id, error = %err, "cannot read the session's history; starting without it");
                Vec::new()
            }
        };
        if history.first().map(|m| m.role()) != Some(llm::Role::System)
            && !profile.system_prompt.is_empty()
        {
            messages.push(llm::Message {
                role: llm::Role::System.into(),
                content: profile.system_prompt.clone(),
                ..llm::Message::default()
            });
        }
        messages.extend(history);
        messages.push(llm::Message {
            role: llm::Role::User.into(),
            content: run.objective.clone(),
            ..llm::Message::default()
        });
        Checkpoint {
            messages,
            ..Checkpoint::default()
        }
    }

    /// The loop. Returns the final answer.
    async fn steps(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        profile: &AgentProfile,
        checkpoint: &mut Checkpoint,
        deadline: Instant,
    ) -> Result<String, Status> {
        let specs = self.tool_specs(profile, deadline).await?;
        let series = Arc::clone(self.metrics.agent(&run.agent));
        loop {
            let step_started = Instant::now();
            let step = checkpoint.step + 1;
            if step > run.limits.max_steps {
                return Err(Status::resource_exhausted(format!(
                    "the run reached its step limit ({}) without a final answer",
                    run.limits.max_steps
                )));
            }
            active.emit(run_event::Event::Progress(pb::Progress {
                step,
                max_steps: run.limits.max_steps,
                percent: percent(step - 1, run.limits.max_steps),
                message: format!("step {step}: asking the model"),
                step_restarted: false,
            }));
            // A span per step: the model call and the tool calls it asks for.
            let span = tracing::info_span!(
                target: "agentmesh::run",
                "step",
                otel.name = %format_args!("step {step}"),
                otel.status_code = Empty,
                error.type = Empty,
                agentmesh.run.step = step,
                span_id = Empty,
            );
            telemetry::record_ids(&span);
            let answer = self
                .generate(
                    run,
                    active,
                    profile,
                    &checkpoint.messages,
                    &specs,
                    step,
                    deadline,
                )
                .instrument(span.clone())
                .await
                .inspect_err(|status| mark_failed(&span, status))?;
            let usage = answer.usage.unwrap_or_default();
            checkpoint.input_tokens += i64::from(usage.input_tokens);
            checkpoint.output_tokens += i64::from(usage.output_tokens);
            let mut message = answer.message.unwrap_or_default();
            message.role = llm::Role::Assistant.into();
            checkpoint.messages.push(message.clone());
            checkpoint.step = step;
            if message.tool_calls.is_empty() {
                // The last step is stored with the run's end.
                series.step(step_started.elapsed());
                return Ok(message.content);
            }
            let results = self
                .call_tools(run, active, profile, &message.tool_calls, step, deadline)
                .instrument(span)
                .await;
            checkpoint.tool_calls += i32::try_from(results.len()).unwrap_or(i32::MAX);
            checkpoint.messages.extend(results);
            self.apply(run, checkpoint);
            self.flush(run, active, Some(checkpoint)).await;
            series.step(step_started.elapsed());
        }
    }

    /// Copies the checkpoint's counters onto the run row.
    fn apply(&self, run: &mut RunRow, checkpoint: &Checkpoint) {
        run.steps = checkpoint.step;
        run.tool_calls = checkpoint.tool_calls;
        run.input_tokens = checkpoint.input_tokens;
        run.output_tokens = checkpoint.output_tokens;
    }

    /// One model call, its text relayed as it arrives.
    #[expect(clippy::too_many_arguments, reason = "one call's worth of context")]
    async fn generate(
        &self,
        run: &RunRow,
        active: &ActiveRun,
        profile: &AgentProfile,
        messages: &[llm::Message],
        specs: &[llm::ToolSpec],
        step: i32,
        deadline: Instant,
    ) -> Result<llm::StreamFinished, Status> {
        let mut request = tonic::Request::new(llm::GenerateStreamRequest {
            model: run.model.clone(),
            messages: messages.to_vec(),
            tools: specs.to_vec(),
            temperature: profile.temperature,
            max_output_tokens: run.limits.max_output_tokens,
            run_id: run.run_id.clone(),
            ..llm::GenerateStreamRequest::default()
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut stream = self
            .gateway
            .clone()
            .generate_stream(request)
            .await
            .map_err(|status| downstream("the model call", status))?
            .into_inner();
        let mut finished = None;
        while let Some(message) = stream
            .message()
            .await
            .map_err(|status| downstream("the model stream", status))?
        {
            match message.event {
                Some(generate_stream_response::Event::TextDelta(delta)) => {
                    active.emit(run_event::Event::TokenDelta(pb::TokenDelta {
                        text: delta.text,
                        step,
                    }));
                }
                Some(generate_stream_response::Event::Reset(reset)) => {
                    active.emit(run_event::Event::Progress(pb::Progress {
                        step,
                        max_steps: run.limits.max_steps,
                        percent: percent(step - 1, run.limits.max_steps),
                        message: format!("step {step} restarted: {}", reset.reason),
                        step_restarted: true,
                    }));
                }
                Some(generate_stream_response::Event::Finished(done)) => finished = Some(done),
                Some(generate_stream_response::Event::ToolCallDelta(_)) | None => {}
            }
        }
        finished
            .ok_or_else(|| Status::unavailable("the model stream ended without its final message"))
    }

    /// Runs the tool calls of one answer in parallel; each result (or error)
    /// becomes a tool message for the model, in the order of the calls.
    async fn call_tools(
        &self,
        run: &RunRow,
        active: &ActiveRun,
        profile: &AgentProfile,
        calls: &[llm::ToolCall],
        step: i32,
        deadline: Instant,
    ) -> Vec<llm::Message> {
        for call in calls {
            active.emit(run_event::Event::ToolCallStarted(pb::ToolCallStarted {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                arguments_json: call.arguments_json.clone(),
                step,
            }));
        }
        let mut pending: FuturesUnordered<_> = calls
            .iter()
            .enumerate()
            .map(|(index, call)| async move {
                (index, self.call_tool(run, profile, call, deadline).await)
            })
            .collect();
        let mut results: Vec<Option<llm::Message>> = vec![None; calls.len()];
        while let Some((index, result)) = pending.next().await {
            let call = &calls[index];
            active.emit(run_event::Event::ToolCallFinished(pb::ToolCallFinished {
                call_id: call.id.clone(),
                output_json: result.output_json.clone(),
                is_error: result.is_error,
                error_message: result.error_message.clone(),
                duration: result.duration,
                tool: call.name.clone(),
                step,
            }));
            let content = if result.is_error {
                serde_json::json!({ "error": result.error_message }).to_string()
            } else {
                result.output_json
            };
            results[index] = Some(llm::Message {
                role: llm::Role::Tool.into(),
                content,
                tool_call_id: call.id.clone(),
                name: call.name.clone(),
                is_error: result.is_error,
                ..llm::Message::default()
            });
        }
        results.into_iter().flatten().collect()
    }

    async fn call_tool(
        &self,
        run: &RunRow,
        profile: &AgentProfile,
        call: &llm::ToolCall,
        deadline: Instant,
    ) -> tools::ExecuteToolResponse {
        let failed = |message: String| tools::ExecuteToolResponse {
            is_error: true,
            error_message: message,
            call_id: call.id.clone(),
            ..tools::ExecuteToolResponse::default()
        };
        if !profile.allows(&call.name) {
            return failed(format!(
                "tool {:?} is not available to agent {:?}; available: {}",
                call.name,
                run.agent,
                profile.tools.join(", ")
            ));
        }
        let mut request = tonic::Request::new(tools::ExecuteToolRequest {
            tool: call.name.clone(),
            arguments_json: call.arguments_json.clone(),
            call_id: call.id.clone(),
            timeout: None,
            run_id: run.run_id.clone(),
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        match self.tools.clone().execute_tool(request).await {
            Ok(response) => response.into_inner(),
            // The model gets the error as the tool's result and may recover.
            Err(status) => failed(format!(
                "the tool call failed ({:?}): {}",
                status.code(),
                status.message()
            )),
        }
    }

    /// The tool specs the profile may use, from the tool runner (cached
    /// briefly: tools change rarely and a run needs them at every step).
    async fn tool_specs(
        &self,
        profile: &AgentProfile,
        deadline: Instant,
    ) -> Result<Vec<llm::ToolSpec>, Status> {
        if profile.tools.is_empty() {
            return Ok(Vec::new());
        }
        let mut cache = self.tool_cache.lock().await;
        let fresh = cache
            .as_ref()
            .is_some_and(|(fetched, _)| fetched.elapsed() < TOOL_CACHE);
        if !fresh {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = self
                    .list_tools(&page_token, deadline)
                    .await
                    .map_err(|status| downstream("listing the tools", status))?;
                all.extend(page.tools);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            *cache = Some((Instant::now(), all));
        }
        Ok(cache
            .as_ref()
            .map(|(_, all)| {
                all.iter()
                    .filter(|tool| profile.allows(&tool.name))
                    .map(|tool| llm::ToolSpec {
                        name: tool.name.clone(),
                        description: tool.description.clone(),
                        parameters_json: tool.parameters_json.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One page of ListTools, with what is left of the run's time, retried
    /// (it is idempotent) while the tool runner is UNAVAILABLE — draining
    /// or restarting — with jittered backoff that stops at the deadline.
    async fn list_tools(
        &self,
        page_token: &str,
        deadline: Instant,
    ) -> Result<tools::ListToolsResponse, Status> {
        let backoff = Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
            Duration::ZERO,
        );
        let mut attempt = 1;
        loop {
            let mut request = tonic::Request::new(tools::ListToolsRequest {
                page_size: 1000,
                page_token: page_token.to_owned(),
                ..tools::ListToolsRequest::default()
            });
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
            let status = match self.tools.clone().list_tools(request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            if status.code() != tonic::Code::Unavailable || attempt >= LIST_TOOLS_ATTEMPTS {
                return Err(status);
            }
            let Ok(delay) = backoff.delay(attempt, None, Some(deadline)) else {
                return Err(status);
            };
            tracing::debug!(attempt, ?delay, error = %status, "the tool runner is unavailable; listing the tools again");
            self.admission
                .reporter()
                .retried("tool-runner/ListTools", "unavailable");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Records the run's end: the terminal event, the row, the final
    /// checkpoint (the session's history for the next run).
    async fn finish(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        checkpoint: Checkpoint,
        ending: Ending,
        duration: Duration,
    ) {
        self.apply(run, &checkpoint);
        let usage = Some(store::usage(run.input_tokens, run.output_tokens));
        let duration = prost_types::Duration::try_from(duration).ok();
        let (audit_type, audit_failure) = match &ending {
            Ending::Finished(_) => (EventType::RunFinished, None),
            Ending::Failed(status) => (
                EventType::RunFailed,
                Some((status.message().to_owned(), code_name(status.code()))),
            ),
            Ending::Cancelled(reason) => (
                EventType::RunCancelled,
                Some((
                    cancel_audit_reason(reason, &self.cancelled_by(active)),
                    code_name(tonic::Code::Cancelled),
                )),
            ),
        };
        let event = match ending {
            Ending::Finished(output) => {
                run.state = pb::RunState::Succeeded;
                run.output.clone_from(&output);
                run_event::Event::RunFinished(pb::RunFinished {
                    output,
                    usage,
                    steps: run.steps,
                    duration,
                })
            }
            Ending::Failed(status) => {
                tracing::info!(run_id = %run.run_id, code = ?status.code(), message = status.message(), "run failed");
                run.state = pb::RunState::Failed;
                let error = agentmesh_kit::status::to_rpc_status(&status);
                run.error = Some(error.clone());
                run_event::Event::RunFailed(pb::RunFailed {
                    error: Some(error),
                    usage,
                    steps: run.steps,
                    duration,
                })
            }
            Ending::Cancelled(reason) => {
                run.state = pb::RunState::Cancelled;
                run_event::Event::RunCancelled(pb::RunCancelled {
                    reason,
                    cancelled_by: self.cancelled_by(active),
                    usage,
                    steps: run.steps,
                })
            }
        };
        run.end_time = Some(now_micros());
        active.set_state(run.state);
        let terminal = active.reserve(event);
        // The end must be stored: retry a while (the store may be restarting).
        let mut delay = Duration::from_millis(50);
        let mut stored = false;
        for attempt in 1..=8 {
            let (mut events, _) = active.unstored();
            events.push(terminal.clone());
            run.last_sequence = terminal.sequence;
            match self
                .store
                .flush(
                    run,
                    &events,
                    Some(&checkpoint),
                    &self.owner,
                    self.lease_until(),
                )
                .await
            {
                Ok(()) => {
                    stored = true;
                    break;
                }
                Err(err) if attempt == 8 => {
                    tracing::error!(run_id = %run.run_id, error = %err, "could not store the end of the run; another instance will resume it from its last checkpoint");
                    self.audit_error(
                        DATABASE,
                        store_code(&err),
                        format!("could not store the end of run {}: {err}", run.run_id),
                        Some(run),
                    );
                }
                Err(err) => {
                    tracing::warn!(run_id = %run.run_id, error = %err, "cannot store the end of the run yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        // Recorded once, by the instance that stored the end; when storing
        // failed, the instance that resumes the run records its end.
        if stored {
            let mut event = self.run_audit_event(audit_type, run);
            if let Some((reason, code)) = audit_failure {
                event.outcome = Outcome::Failure.into();
                event.reason = reason;
                if let Some(Details::Run(details)) = &mut event.details {
                    code.clone_into(&mut details.error_code);
                }
            }
            self.audit.emit(event);
            if let Some(end) = RunEnd::of(run.state) {
                let start = run.start_time.unwrap_or(run.create_time);
                let took = Duration::from_micros(
                    u64::try_from(now_micros().saturating_sub(start)).unwrap_or(0),
                );
                self.metrics.agent(&run.agent).finished(end, took);
            }
        }
        active.publish_stored(terminal);
    }

    /// Records that `run` was created (RUN_STARTED), while handling the
    /// request that created it.
    pub fn audit_run_started(&self, run: &RunRow) {
        self.audit
            .emit(self.run_audit_event(EventType::RunStarted, run));
    }

    /// An audit event about `run`. Tenant and subject come from the run row:
    /// a run ends outside the request that started it (or on another
    /// instance, after a resume).
    fn run_audit_event(&self, event_type: EventType, run: &RunRow) -> AuditEvent {
        let mut event = self.audit.event(event_type);
        event.run_id.clone_from(&run.run_id);
        event.tenant.clone_from(&run.tenant);
        event.subject.clone_from(&run.subject);
        let duration = (event_type != EventType::RunStarted).then(|| {
            let start = run.start_time.unwrap_or(run.create_time);
            agentmesh_audit_client::duration(Duration::from_micros(
                u64::try_from(now_micros().saturating_sub(start)).unwrap_or(0),
            ))
        });
        event.details = Some(Details::Run(RunDetails {
            agent: run.agent.clone(),
            session_id: run.session_id.clone(),
            model: run.model.clone(),
            objective: Some(self.audit.capture(&run.objective)),
            steps: run.steps,
            input_tokens: run.input_tokens,
            output_tokens: run.output_tokens,
            estimated_cost_usd: None,
            duration,
            error_code: String::new(),
            labels: run
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }));
        event
    }

    /// Records an infrastructure failure of this instance (one it logs as
    /// an error) as an ERROR audit event.
    fn audit_error(
        &self,
        component: &str,
        code: tonic::Code,
        message: String,
        run: Option<&RunRow>,
    ) {
        let mut event = self.audit.event(EventType::Error);
        if let Some(run) = run {
            event.run_id.clone_from(&run.run_id);
            event.tenant.clone_from(&run.tenant);
            event.subject.clone_from(&run.subject);
        }
        event.outcome = Outcome::Failure.into();
        event.reason.clone_from(&message);
        event.details = Some(Details::Error(ErrorDetails {
            code: code_name(code).to_owned(),
            message,
            component: component.to_owned(),
        }));
        self.audit.emit(event);
    }

    /// A store failure as the status a caller gets ([`store_status`]),
    /// recorded as an ERROR audit event.
    pub fn store_failed(&self, err: &store::StoreError) -> Status {
        let status = store_status(err);
        self.audit_error(DATABASE, status.code(), err.to_string(), None);
        status
    }

    /// Stores the pending events, the run row and the checkpoint; true when
    /// stored. A failure keeps the events pending for the next flush.
    async fn flush(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        checkpoint: Option<&Checkpoint>,
    ) -> bool {
        let (events, last_sequence) = active.unstored();
        run.last_sequence = last_sequence;
        match self
            .store
            .flush(run, &events, checkpoint, &self.owner, self.lease_until())
            .await
        {
            Ok(()) => {
                active.stored(last_sequence);
                true
            }
            Err(err) => {
                tracing::error!(run_id = %run.run_id, error = %err, "cannot store the run's step");
                self.audit_error(
                    DATABASE,
                    store_code(&err),
                    format!("cannot store a step of run {}: {err}", run.run_id),
                    Some(run),
                );
                false
            }
        }
    }

    /// Sends the run's events after `after` to `sender`: the stored ones,
    /// then the live ones, until the terminal event or until the receiver
    /// goes away. Idle periods get heartbeats.
    pub async fn follow(
        self: Arc<Self>,
        run: RunRow,
        after: i32,
        sender: mpsc::Sender<Result<pb::RunEvent, Status>>,
    ) {
        let mut follower = Follower {
            engine: &self,
            run_id: run.run_id.clone(),
            last: after,
            sender,
            next_heartbeat: Instant::now() + self.config.heartbeat_interval,
        };
        if let Err(FollowEnd::Error(status)) = follower.run().await {
            let _ = follower.sender.send(Err(status)).await;
        }
    }
}

/// Why a follower stopped.
enum FollowEnd {
    /// The terminal event went out, or the client left.
    Done,
    /// The stream must end with this status.
    Error(Status),
}

struct Follower<'a> {
    engine: &'a Engine,
    run_id: String,
    last: i32,
    sender: mpsc::Sender<Result<pb::RunEvent, Status>>,
    next_heartbeat: Instant,
}

impl Follower<'_> {
    fn store_failed(&self, err: &store::StoreError) -> FollowEnd {
        FollowEnd::Error(self.engine.store_failed(err))
    }

    async fn run(&mut self) -> Result<(), FollowEnd> {
        loop {
            match self.engine.active(&self.run_id) {
                Some(active) => self.follow_live(&active).await?,
                None => self.follow_stored().await?,
            }
        }
    }

    async fn send(&mut self, event: pb::RunEvent) -> Result<(), FollowEnd> {
        if event.sequence <= self.last {
            return Ok(());
        }
        self.last = event.sequence;
        let terminal = matches!(
            event.event,
            Some(
                run_event::Event::RunFinished(_)
                    | run_event::Event::RunFailed(_)
                    | run_event::Event::RunCancelled(_)
            )
        );
        self.sender
            .send(Ok(event))
            .await
            .map_err(|_| FollowEnd::Done)?;
        self.next_heartbeat = Instant::now() + self.engine.config.heartbeat_interval;
        if terminal {
            return Err(FollowEnd::Done);
        }
        Ok(())
    }

    async fn heartbeat(&mut self, state: pb::RunState) -> Result<(), FollowEnd> {
        let beat = pb::RunEvent {
            run_id: self.run_id.clone(),
            sequence: 0,
            time: Some(store::timestamp(now_micros())),
            event: Some(run_event::Event::Heartbeat(pb::Heartbeat {
                last_sequence: self.last,
                state: state.into(),
            })),
        };
        self.sender
            .send(Ok(beat))
            .await
            .map_err(|_| FollowEnd::Done)?;
        self.next_heartbeat = Instant::now() + self.engine.config.heartbeat_interval;
        Ok(())
    }

    /// Catch up from the store and the pending events, then tail the live
    /// ones. Returns to be called again when the run stops being driven here
    /// or this follower fell behind.
    async fn follow_live(&mut self, active: &ActiveRun) -> Result<(), FollowEnd> {
        let (stored, pending, mut live) = {
            let live = lock(&active.live);
            (
                live.stored,
                live.pending.clone(),
                live.followers.subscribe(),
            )
        };
        if stored > self.last {
            for event in self
                .engine
                .store
                .events(&self.run_id, self.last, stored)
                .await
                .map_err(|err| self.store_failed(&err))?
            {
                self.send(event).await?;
            }
        }
        for event in pending {
            self.send(event).await?;
        }
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) => self.send(event).await?,
                    // Fell behind, or the run ended: catch up again.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return Ok(()),
                },
                () = tokio::time::sleep_until(self.next_heartbeat) => {
                    let state = lock(&active.live).state;
                    self.heartbeat(state).await?;
                }
                () = self.sender.closed() => return Err(FollowEnd::Done),
            }
            if *active.ended.borrow() {
                return Ok(());
            }
        }
    }

    /// Replay from the store; for a run driven elsewhere, look again
    /// periodically.
    async fn follow_stored(&mut self) -> Result<(), FollowEnd> {
        let run = self
            .engine
            .store
            .get_run_any_tenant(&self.run_id)
            .await
            .map_err(|err| self.store_failed(&err))?
            .ok_or_else(|| {
                FollowEnd::Error(Status::not_found(format!(
                    "run {} no longer exists",
                    self.run_id
                )))
            })?;
        for event in self
            .engine
            .store
            .events(&self.run_id, self.last, i32::MAX)
            .await
            .map_err(|err| self.store_failed(&err))?
        {
            self.send(event).await?;
        }
        if run.is_terminal() {
            // The terminal event is always stored with the terminal state.
            return Err(FollowEnd::Done);
        }
        tokio::select! {
            () = tokio::time::sleep(REMOTE_POLL) => {}
            () = self.sender.closed() => return Err(FollowEnd::Done),
        }
        if Instant::now() >= self.next_heartbeat {
            self.heartbeat(run.state).await?;
        }
        Ok(())
    }
}

/// Marks a span failed with `status`'s code as its `error.type`.
fn mark_failed(span: &tracing::Span, status: &Status) {
    span.record("otel.status_code", "error");
    span.record("error.type", code_name(status.code()));
}

fn percent(done: i32, max: i32) -> f32 {
    if max <= 0 {
        return 0.0;
    }
    #[expect(clippy::cast_precision_loss, reason = "step counts are small")]
    let ratio = done.clamp(0, max) as f32 / max as f32;
    ratio * 100.0
}

/// A downstream failure as the run's error, saying which call failed.
fn downstream(what: &str, status: Status) -> Status {
    Status::with_details(
        status.code(),
        format!("{what} failed: {}", status.message()),
        status.details().to_vec().into(),
    )
}

/// The status code of a store failure (see [`store_status`]).
fn store_code(err: &store::StoreError) -> tonic::Code {
    match err {
        store::StoreError::Database(_) => tonic::Code::Unavailable,
        store::StoreError::Corrupt(_) => tonic::Code::Internal,
    }
}

/// How the audit log says why a run was cancelled: "cancelled by <who>",
/// with the reason given, if any.
fn cancel_audit_reason(reason: &str, by: &str) -> String {
    match (reason.trim(), by) {
        (reason, _) if reason.starts_with("cancelled") => reason.to_owned(),
        ("", "") => "cancelled".to_owned(),
        ("", by) => format!("cancelled by {by}"),
        (reason, "") => format!("cancelled: {reason}"),
        (reason, by) => format!("cancelled by {by}: {reason}"),
    }
}

/// A store failure as a status: the database is a dependency that may come
/// back, so UNAVAILABLE (retryable), with no SQL in the message.
pub fn store_status(err: &store::StoreError) -> Status {
    match err {
        store::StoreError::Database(_) => {
            tracing::error!(error = %err, "database error");
            Status::unavailable("the run store is unavailable; retry shortly")
        }
        store::StoreError::Corrupt(_) => {
            tracing::error!(error = %err, "corrupt stored data");
            Status::internal("stored run data cannot be read")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_say_who_and_why() {
        assert_eq!(
            cancel_audit_reason("cancelled by ana", "ana"),
            "cancelled by ana"
        );
        assert_eq!(
            cancel_audit_reason("cancelled by request", ""),
            "cancelled by request"
        );
        assert_eq!(
            cancel_audit_reason("wrong objective", "ana"),
            "cancelled by ana: wrong objective"
        );
        assert_eq!(
            cancel_audit_reason("wrong objective", ""),
            "cancelled: wrong objective"
        );
        assert_eq!(cancel_audit_reason("", "ana"), "cancelled by ana");
        assert_eq!(cancel_audit_reason(" ", ""), "cancelled");
    }
}
