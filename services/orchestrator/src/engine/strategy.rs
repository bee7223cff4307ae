//! A run's strategy: how its steps are chosen, from its first checkpoint to
//! its answer.
//!
//! ```text
//! drive::run_steps ─▶ Engine::run_strategy (by the profile's `strategy`)
//!   tool_loop           step (step.rs) until an answer       — every step stored
//!   plan_execute        plan ─▶ steps in parallel ─▶ validate ─▶ recover
//!                       ─▶ synthesise                          — every transition stored
//!   evaluator_optimizer answer ─▶ verdict ─▶ revise …          — every round stored
//!   orchestrator_workers the tool loop with `delegate`: sub-runs in parallel
//!   router              route ─▶ one sub-run                   (sub_runs.rs)
//! ```
//!
//! Every strategy has the same shape: a state machine over the run's
//! [`Checkpoint`] (the plan, the round, the conversation), built from the
//! same pieces — a model call ([`ModelCall`]), a bounded tool loop
//! ([`Engine::work`]), a structured answer ([`Engine::ask_json`]) — and
//! stored with [`Engine::flush`] at each transition, so a run resumed after
//! a crash picks up from its last transition (work in flight starts over).
//! Waiting, deadlines, cancels and the run's end stay in [`super::drive`].
//!
//! Model calls are counted run-wide ([`Tally`]): `max_steps` bounds them
//! all, parallel plan steps included, and each call's events carry its own
//! number as their `step`.

mod evaluator;
mod plan;
mod plan_execute;
mod team;

pub(super) use team::{DELEGATE, delegate_spec};

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};

use agentmesh_proto::llm::v1 as llm;
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use tonic::Status;

use super::Engine;
use super::active::ActiveRun;
use super::step::{ModelCall, StepContext, StepOutcome, progress};
use crate::config::Strategy;
use crate::store::{Checkpoint, RunRow};

/// The run's counters while steps run in parallel: model calls, tool calls
/// and tokens, copied into the checkpoint before each store.
#[derive(Debug)]
pub(super) struct Tally {
    calls: AtomicI32,
    tool_calls: AtomicI32,
    input_tokens: AtomicI64,
    output_tokens: AtomicI64,
    max_calls: i32,
}

impl Tally {
    fn of(checkpoint: &Checkpoint, max_calls: i32) -> Self {
        Self {
            calls: AtomicI32::new(checkpoint.step),
            tool_calls: AtomicI32::new(checkpoint.tool_calls),
            input_tokens: AtomicI64::new(checkpoint.input_tokens),
            output_tokens: AtomicI64::new(checkpoint.output_tokens),
            max_calls,
        }
    }

    /// The number of the next model call, or RESOURCE_EXHAUSTED past the
    /// run's step limit.
    fn next_call(&self) -> Result<i32, Status> {
        let number = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if number > self.max_calls {
            self.calls.fetch_sub(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "the run reached its step limit ({}) without a final answer",
                self.max_calls
            )));
        }
        Ok(number)
    }

    fn used(&self, usage: Option<&llm::Usage>) {
        if let Some(usage) = usage {
            self.input_tokens
                .fetch_add(i64::from(usage.input_tokens), Ordering::Relaxed);
            self.output_tokens
                .fetch_add(i64::from(usage.output_tokens), Ordering::Relaxed);
        }
    }

    fn copy_to(&self, checkpoint: &mut Checkpoint) {
        checkpoint.step = self.calls.load(Ordering::Relaxed);
        checkpoint.tool_calls = self.tool_calls.load(Ordering::Relaxed);
        checkpoint.input_tokens = self.input_tokens.load(Ordering::Relaxed);
        checkpoint.output_tokens = self.output_tokens.load(Ordering::Relaxed);
    }
}

/// One bounded tool loop of a strategy (a plan step, a round's answer).
#[derive(Debug)]
struct Work<'w> {
    role: &'static str,
    /// Prefixes the tool calls' ids in events (`s2.`: unique across
    /// parallel steps).
    id_prefix: &'w str,
    /// Names the work in progress messages (`plan step s2`).
    label: &'w str,
    max_turns: i32,
}

impl Engine {
    /// Drives the run by its profile's strategy until its answer.
    pub(super) async fn run_strategy(
        &self,
        run: &mut RunRow,
        cx: &StepContext<'_>,
        checkpoint: &mut Checkpoint,
    ) -> Result<String, Status> {
        // A run's task holds its strategy's future for the run's whole
        // life, sized by the largest strategy unless boxed: the other
        // strategies are boxed, so a tool loop (most runs) holds none of
        // their state (the router's is twice a tool loop's).
        match cx.profile.strategy {
            Strategy::ToolLoop => self.tool_loop(run, cx, checkpoint).await,
            Strategy::PlanExecute | Strategy::EvaluatorOptimizer => {
                let tally = Tally::of(checkpoint, run.limits.max_steps);
                let result = if cx.profile.strategy == Strategy::PlanExecute {
                    Box::pin(self.plan_execute(run, cx, &tally, checkpoint)).await
                } else {
                    Box::pin(self.evaluator_optimizer(run, cx, &tally, checkpoint)).await
                };
                // A failed run's end still counts what it used.
                tally.copy_to(checkpoint);
                result
            }
            Strategy::Router => Box::pin(self.route(run, cx, checkpoint)).await,
            // The lead is a tool loop whose `delegate` calls start sub-runs.
            Strategy::OrchestratorWorkers => self.tool_loop(run, cx, checkpoint).await,
        }
    }

    /// `tool_loop`: asks the model, runs the tools it called, and repeats
    /// until an answer without tool calls or the step limit; every step is
    /// stored as it ends.
    async fn tool_loop(
        &self,
        run: &mut RunRow,
        cx: &StepContext<'_>,
        checkpoint: &mut Checkpoint,
    ) -> Result<String, Status> {
        loop {
            stop_if_released(cx.active).await;
            if checkpoint.step + 1 > run.limits.max_steps {
                return Err(Status::resource_exhausted(format!(
                    "the run reached its step limit ({}) without a final answer",
                    run.limits.max_steps
                )));
            }
            match self.step(run, cx, checkpoint).await? {
                StepOutcome::Answer(output) => return Ok(output),
                StepOutcome::ToolsCalled => {}
            }
        }
    }

    /// A bounded tool loop over `messages` (which it extends): the model's
    /// answer once it calls no tool; `Ok(None)` when `work.max_turns`
    /// model calls gave none. Nothing is stored: the strategy stores its
    /// transitions.
    async fn work(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        messages: &mut Vec<llm::Message>,
        work: &Work<'_>,
    ) -> Result<Option<String>, Status> {
        for _ in 0..work.max_turns {
            let step = tally.next_call()?;
            self.emit(
                cx.active,
                run_event::Event::Progress(progress(
                    run,
                    step,
                    format!("step {step}: {}, asking the model", work.label),
                )),
            )
            .await;
            let call = ModelCall {
                step,
                role: work.role,
                messages,
                tools: cx.specs,
                response_format: None,
                relay: true,
            };
            let answer = self.generate(run, cx, call).await?;
            tally.used(answer.usage.as_ref());
            let mut message = answer.message.unwrap_or_default();
            message.role = llm::Role::Assistant.into();
            messages.push(message.clone());
            if message.tool_calls.is_empty() {
                return Ok(Some(message.content));
            }
            let results = self
                .call_tools(run, cx, &message.tool_calls, step, work.id_prefix)
                .await;
            tally.tool_calls.fetch_add(
                i32::try_from(results.len()).unwrap_or(i32::MAX),
                Ordering::Relaxed,
            );
            messages.extend(results);
        }
        Ok(None)
    }

    /// A structured answer: `prompt` as the system message, `request` as
    /// the user's, the answer constrained to the JSON Schema `schema`
    /// (named `schema_name`); its text is not relayed (the strategy emits
    /// an event of its own). Returns the answer's text, for the caller to
    /// parse (and send back once when it does not parse).
    async fn ask_json(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        role: &'static str,
        messages: &[llm::Message],
        (schema_name, schema): (&str, &str),
    ) -> Result<String, Status> {
        let step = tally.next_call()?;
        self.emit(
            cx.active,
            run_event::Event::Progress(progress(
                run,
                step,
                format!("step {step}: asking the {role}"),
            )),
        )
        .await;
        let call = ModelCall {
            step,
            role,
            messages,
            tools: &[],
            response_format: Some(llm::ResponseFormat {
                r#type: llm::ResponseFormatType::JsonSchema.into(),
                schema_json: schema.to_owned(),
                schema_name: schema_name.to_owned(),
                strict: true,
            }),
            relay: false,
        };
        let answer = self.generate(run, cx, call).await?;
        tally.used(answer.usage.as_ref());
        Ok(answer.message.unwrap_or_default().content)
    }

    /// A structured answer `parse` accepts: asked for (as
    /// [`Self::ask_json`]), and when it does not parse, asked again once,
    /// told what was wrong (`again`); `Ok(Err(problem))` when the second
    /// answer does not parse either.
    async fn ask_parsed<T>(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        (role, schema): (&'static str, (&str, &str)),
        mut messages: Vec<llm::Message>,
        (parse, again): (impl Fn(&str) -> Result<T, String>, impl Fn(&str) -> String),
    ) -> Result<Result<T, String>, Status> {
        let mut problem = String::new();
        for attempt in 1..=2 {
            let answer = self
                .ask_json(run, cx, tally, role, &messages, schema)
                .await?;
            match parse(&answer) {
                Ok(parsed) => return Ok(Ok(parsed)),
                Err(why) => {
                    tracing::info!(run_id = %run.run_id, role, problem = %why, attempt, "an answer was refused");
                    messages.push(assistant(answer));
                    messages.push(user(again(&why)));
                    problem = why;
                }
            }
        }
        Ok(Err(problem))
    }

    /// A verdict on `request` (a result and its criteria) by the role
    /// `role` (validator, evaluator) with `prompt`. An answer that is not a
    /// verdict is asked for again once, then counts as failed.
    async fn judge(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        (role, prompt): (&'static str, &str),
        request: String,
    ) -> Result<pb::Verdict, Status> {
        let again = |problem: &str| {
            format!(
                "That is not a verdict ({problem}). Answer with JSON only: \
                 {{\"passed\": true or false, \"feedback\": \"...\"}}"
            )
        };
        let verdict = self
            .ask_parsed(
                run,
                cx,
                tally,
                (role, ("verdict", VERDICT_SCHEMA)),
                vec![system(prompt), user(request)],
                (parse_verdict, again),
            )
            .await?;
        Ok(verdict.unwrap_or_else(|problem| pb::Verdict {
            passed: false,
            feedback: format!("the {role} gave no verdict: {problem}"),
        }))
    }
}

/// The JSON Schema of a verdict.
const VERDICT_SCHEMA: &str = r#"{"type": "object", "properties": {"passed": {"type": "boolean"}, "feedback": {"type": "string"}}, "required": ["passed", "feedback"], "additionalProperties": false}"#;

fn parse_verdict(answer: &str) -> Result<pb::Verdict, String> {
    let value = plan::json_object(answer)?;
    let passed = value
        .get("passed")
        .and_then(serde_json::Value::as_bool)
        .ok_or("`passed` is not true or false")?;
    let feedback = value
        .get("feedback")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok(pb::Verdict { passed, feedback })
}

/// Waits forever once the run is released (handed over at its checkpoint):
/// it must start no more work, and its driver sees the release.
async fn stop_if_released(active: &ActiveRun) {
    if active.is_released() {
        std::future::pending::<()>().await;
    }
}

fn message(role: llm::Role, content: String) -> llm::Message {
    llm::Message {
        role: role.into(),
        content,
        ..llm::Message::default()
    }
}

fn system(content: &str) -> llm::Message {
    message(llm::Role::System, content.to_owned())
}

fn user(content: String) -> llm::Message {
    message(llm::Role::User, content)
}

fn assistant(content: String) -> llm::Message {
    message(llm::Role::Assistant, content)
}
