//! One step of a run: the unit a strategy ([`super::drive`]'s loop) is
//! built from.
//!
//! A step asks the model for its next answer over the conversation so far
//! (`GenerateStream`, its text relayed live as `token_delta` events, a
//! restarted attempt announced as a `progress` event), then:
//!
//! * no tool calls: the answer is the run's final answer
//!   ([`StepOutcome::Answer`]); the step is stored with the run's end;
//! * tool calls: they run in parallel (`tool_call_started`/`_finished`
//!   events), their results join the conversation in the order of the
//!   calls, and the step is stored — its events, the run row, the
//!   checkpoint — in one transaction ([`StepOutcome::ToolsCalled`]).
//!
//! The step owns its span (`step N`, the model call and the tool calls
//! under it) and its duration metric. It knows nothing of limits or
//! deadlines beyond the one it is given: deciding whether there is a next
//! step is the strategy's job.

use std::sync::Arc;

use agentmesh_kit::telemetry;
use agentmesh_proto::llm::v1::{self as llm, generate_stream_response};
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tonic::Status;
use tracing::Instrument as _;
use tracing::field::Empty;

use super::active::ActiveRun;
use super::memory_tools::is_memory_tool;
use super::peers::downstream;
use super::strategy::DELEGATE;
use super::{Engine, mark_failed};
use crate::config::{AgentProfile, Prompts, Strategy};
use crate::metrics::AgentSeries;
use crate::store::{Checkpoint, RunRow};

/// What every step of one run shares.
#[derive(Debug)]
pub(super) struct StepContext<'a> {
    pub(super) active: &'a ActiveRun,
    pub(super) profile: &'a AgentProfile,
    /// The tools the model may call.
    pub(super) specs: &'a [llm::ToolSpec],
    /// When the run's time is up: every call's `grpc-timeout`.
    pub(super) deadline: Instant,
    /// The run's profile's metrics.
    pub(super) series: Arc<AgentSeries>,
    /// The prompts of the profile's strategy roles.
    pub(super) prompts: &'a Prompts,
    /// Sub-runs this driver started (`workers.max_sub_runs`).
    pub(super) sub_runs: std::sync::atomic::AtomicUsize,
}

/// What one model call asks for.
#[derive(Debug)]
pub(super) struct ModelCall<'m> {
    /// The call's number in the run (events carry it as their `step`).
    pub(super) step: i32,
    /// What the strategy asks it for (`GenerateStreamRequest.agent_role`);
    /// empty for a plain tool-loop step.
    pub(super) role: &'static str,
    pub(super) messages: &'m [llm::Message],
    /// The tools offered (none for a structured answer).
    pub(super) tools: &'m [llm::ToolSpec],
    pub(super) response_format: Option<llm::ResponseFormat>,
    /// Whether its text goes out as `token_delta` events (not for
    /// structured answers: plans and verdicts have events of their own).
    pub(super) relay: bool,
}

/// How a step ended.
#[derive(Debug)]
pub(super) enum StepOutcome {
    /// The model answered without tool calls: the run's final answer. The
    /// step is counted in the checkpoint but not stored yet: it is stored
    /// with the run's end.
    Answer(String),
    /// The model called tools; their results are in the checkpoint, and the
    /// step is stored (or kept pending, if the store failed).
    ToolsCalled,
}

impl Engine {
    /// Runs step `checkpoint.step + 1` of `run`, adding the model's answer
    /// and the tool results to `checkpoint`. An error is the run's failure
    /// (a model call that failed).
    pub(super) async fn step(
        &self,
        run: &mut RunRow,
        cx: &StepContext<'_>,
        checkpoint: &mut Checkpoint,
    ) -> Result<StepOutcome, Status> {
        let step_started = Instant::now();
        let step = checkpoint.step + 1;
        self.emit(
            cx.active,
            run_event::Event::Progress(progress(
                run,
                step,
                format!("step {step}: asking the model"),
            )),
        )
        .await;
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
        // A lead delegating to sub-runs, or a sub-run's own loop: scripted
        // models (and logs) can tell them from a plain run.
        let role = if cx.profile.strategy == Strategy::OrchestratorWorkers {
            "lead"
        } else if run.parent_run_id.is_some() {
            "worker"
        } else {
            ""
        };
        let call = ModelCall {
            step,
            role,
            messages: &checkpoint.messages,
            tools: cx.specs,
            response_format: None,
            relay: true,
        };
        let answer = self
            .generate(run, cx, call)
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
            cx.series.step(step_started.elapsed());
            return Ok(StepOutcome::Answer(message.content));
        }
        let results = self
            .call_tools(run, cx, &message.tool_calls, step, "")
            .instrument(span)
            .await;
        checkpoint.tool_calls += i32::try_from(results.len()).unwrap_or(i32::MAX);
        checkpoint.messages.extend(results);
        super::persist::apply(run, checkpoint);
        self.flush(run, cx.active, Some(checkpoint)).await;
        cx.series.step(step_started.elapsed());
        Ok(StepOutcome::ToolsCalled)
    }

    /// One model call, its text relayed as it arrives when `call.relay`.
    pub(super) async fn generate(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        call: ModelCall<'_>,
    ) -> Result<llm::StreamFinished, Status> {
        let step = call.step;
        let request = llm::GenerateStreamRequest {
            model: run.model.clone(),
            messages: call.messages.to_vec(),
            tools: call.tools.to_vec(),
            response_format: call.response_format,
            temperature: cx.profile.temperature,
            max_output_tokens: run.limits.max_output_tokens,
            run_id: run.run_id.clone(),
            agent_role: call.role.to_owned(),
            ..llm::GenerateStreamRequest::default()
        };
        let budget = self.budget_for(run);
        if let Some(budget) = &budget {
            budget.check()?;
        }
        let mut stream = self.peers.generate_stream(request, cx.deadline).await?;
        let mut finished = None;
        while let Some(message) = stream
            .message()
            .await
            .map_err(|status| downstream("the model stream", status))?
        {
            match message.event {
                Some(generate_stream_response::Event::TextDelta(delta)) if call.relay => {
                    self.emit(
                        cx.active,
                        run_event::Event::TokenDelta(pb::TokenDelta {
                            text: delta.text,
                            step,
                        }),
                    )
                    .await;
                }
                Some(generate_stream_response::Event::Reset(reset)) => {
                    self.emit(
                        cx.active,
                        run_event::Event::Progress(pb::Progress {
                            step_restarted: true,
                            ..progress(
                                run,
                                step,
                                format!("step {step} restarted: {}", reset.reason),
                            )
                        }),
                    )
                    .await;
                }
                Some(generate_stream_response::Event::Finished(done)) => finished = Some(done),
                Some(
                    generate_stream_response::Event::ToolCallDelta(_)
                    | generate_stream_response::Event::TextDelta(_),
                )
                | None => {}
            }
        }
        let finished = finished.ok_or_else(|| {
            Status::unavailable("the model stream ended without its final message")
        })?;
        if let (Some(budget), Some(usage)) = (&budget, &finished.usage) {
            budget.spend(
                i64::from(usage.input_tokens) + i64::from(usage.output_tokens),
                usage.estimated_cost_usd,
            );
        }
        Ok(finished)
    }

    /// Runs the tool calls of one answer in parallel; each result (or error)
    /// becomes a tool message for the model, in the order of the calls.
    /// The events name each call `id_prefix` + the model's call id (calls
    /// of parallel plan steps would otherwise share ids).
    pub(super) async fn call_tools(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        calls: &[llm::ToolCall],
        step: i32,
        id_prefix: &str,
    ) -> Vec<llm::Message> {
        for call in calls {
            self.emit(
                cx.active,
                run_event::Event::ToolCallStarted(pb::ToolCallStarted {
                    call_id: format!("{id_prefix}{}", call.id),
                    tool: call.name.clone(),
                    arguments_json: call.arguments_json.clone(),
                    step,
                }),
            )
            .await;
        }
        let mut pending: FuturesUnordered<_> = calls
            .iter()
            .enumerate()
            .map(|(index, call)| async move {
                let result = if cx.profile.memory.enabled && is_memory_tool(&call.name) {
                    self.call_memory_tool(run, cx.profile, call).await
                } else if call.name == DELEGATE
                    && cx.profile.strategy == Strategy::OrchestratorWorkers
                {
                    self.delegate(run, cx, call, step).await
                } else {
                    self.call_tool(run, cx, call, step, id_prefix).await
                };
                (index, call, result)
            })
            .collect();
        let mut results: Vec<Option<llm::Message>> = vec![None; calls.len()];
        while let Some((index, call, result)) = pending.next().await {
            self.emit(
                cx.active,
                run_event::Event::ToolCallFinished(pb::ToolCallFinished {
                    call_id: format!("{id_prefix}{}", call.id),
                    output_json: result.output_json.clone(),
                    is_error: result.is_error,
                    error_message: result.error_message.clone(),
                    duration: result.duration,
                    tool: call.name.clone(),
                    step,
                }),
            )
            .await;
            let content = if result.is_error {
                serde_json::json!({ "error": result.error_message }).to_string()
            } else {
                result.output_json
            };
            // `index` enumerates `calls`, and `results` has one slot per call.
            if let Some(slot) = results.get_mut(index) {
                *slot = Some(llm::Message {
                    role: llm::Role::Tool.into(),
                    content,
                    tool_call_id: call.id.clone(),
                    name: call.name.clone(),
                    is_error: result.is_error,
                    ..llm::Message::default()
                });
            }
        }
        results.into_iter().flatten().collect()
    }
}

impl Engine {
    /// One call on the tool runner; what the tool reports while it runs is
    /// the run's progress, naming the call.
    async fn call_tool(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        call: &llm::ToolCall,
        step: i32,
        id_prefix: &str,
    ) -> agentmesh_proto::tools::v1::ExecuteToolResponse {
        let (sender, mut updates) = tokio::sync::mpsc::channel(16);
        let calling = self
            .peers
            .call_tool(run, cx.profile, call, cx.deadline, sender);
        tokio::pin!(calling);
        loop {
            let update = tokio::select! {
                // Reports first: the result is sent after the last of them.
                biased;
                Some(update) = updates.recv() => update,
                result = &mut calling => return result,
            };
            let message = format!("step {step}: {}: {}", call.name, update.message);
            self.emit(
                cx.active,
                run_event::Event::Progress(pb::Progress {
                    tool_call_id: format!("{id_prefix}{}", call.id),
                    tool_percent: update.percent,
                    ..progress(run, step, message)
                }),
            )
            .await;
        }
    }
}

/// The progress of `run` as `step` begins (the steps before it done).
pub(super) fn progress(run: &RunRow, step: i32, message: String) -> pb::Progress {
    pb::Progress {
        step,
        max_steps: run.limits.max_steps,
        percent: percent(step - 1, run.limits.max_steps),
        message,
        ..pb::Progress::default()
    }
}

/// How far a run is, in percent of its step limit.
fn percent(done: i32, max: i32) -> f32 {
    if max <= 0 {
        return 0.0;
    }
    #[expect(clippy::cast_precision_loss, reason = "step counts are small")]
    let ratio = done.clamp(0, max) as f32 / max as f32;
    ratio * 100.0
}
