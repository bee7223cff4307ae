//! Running a compiled [`Pipeline`] for one call: the state document, the
//! steps in order, fan-outs joined, conditions, the result.
//!
//! Everything here happens inside the pipeline call's attempt, which the
//! runner bounds with the call's deadline. Each step's tool call is bounded
//! on its own path (`StepCaller`) by a slightly earlier deadline: a step
//! that overruns then ends, is recorded and comes back as that step's
//! TIMEOUT, named, before the pipeline's own deadline would cut the whole
//! call off without saying where.

use std::time::{Duration, Instant};

use agentmesh_kit::text::prefix_within;
use agentmesh_proto::tools::v1::execute_tool_stream_response::Event;
use agentmesh_proto::tools::v1::{ExecuteToolStreamResponse, ToolProgress};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tonic::Status;

use super::plan::{Condition, Pipeline, Stage, Step, Test};
use super::{StepCall, StepCaller};
use crate::outcome::{ToolFailure, ToolOutcome};

/// Where a streaming caller gets progress (the same channel command tools
/// write to).
pub(crate) type Events = mpsc::Sender<Result<ExecuteToolStreamResponse, Status>>;

/// The longest call id a step's tool call may have (the runner's limit).
const MAX_CALL_ID: usize = 256;
/// Most of the pipeline's time kept back from its steps' deadline, for a
/// step that ran out of time to be stopped and reported: a tenth of the
/// time left when the pipeline starts, at most this.
const MAX_STEP_RESERVE: Duration = Duration::from_millis(250);

/// What a pipeline call runs with besides its input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipelineCall<'a> {
    pub(crate) steps: &'a dyn StepCaller,
    /// The pipeline call's id ("" when the caller set none).
    pub(crate) call_id: &'a str,
    /// The pipeline call's deadline.
    pub(crate) deadline: Instant,
    pub(crate) events: Option<&'a Events>,
}

impl Pipeline {
    /// Runs the steps for `input` (already checked against the pipeline's
    /// schema) and returns the result, or the first step failure.
    pub(crate) async fn run(&self, input: &Value, call: PipelineCall<'_>) -> ToolOutcome {
        let left = call.deadline.saturating_duration_since(Instant::now());
        let reserve = MAX_STEP_RESERVE.min(left / 10);
        let call = PipelineCall {
            deadline: call.deadline.checked_sub(reserve).unwrap_or(call.deadline),
            ..call
        };
        let mut state = json!({"input": input, "steps": {}});
        let mut last = Value::Null;
        let total = self.stages.len();
        for (index, stage) in self.stages.iter().enumerate() {
            let (id, ran) = match stage {
                Stage::Call(step) => {
                    let output = if holds(step.when.as_ref(), &state) {
                        Some(self.call_step(step, &state, call).await?)
                    } else {
                        None
                    };
                    (&step.id, output)
                }
                Stage::Parallel { id, when, branches } => {
                    let output = if holds(when.as_ref(), &state) {
                        Some(self.fan_out(branches, &mut state, call).await?)
                    } else {
                        None
                    };
                    (id, output)
                }
            };
            let message = match &ran {
                Some(_) => format!("step `{id}` done ({} of {total})", index + 1),
                None => format!("step `{id}` skipped ({} of {total})", index + 1),
            };
            record(&mut state, id, ran.as_ref());
            if let Some(output) = ran {
                last = output;
            }
            progress(call.events, message, (index + 1, total)).await;
        }
        let output = match &self.output {
            Some(template) => template
                .render(&state)
                .map_err(|pointer| missing(&state, &pointer, "the pipeline's `output`"))?,
            None => last,
        };
        let size = output.to_string().len();
        if size > self.max_output_bytes {
            return Err(ToolFailure::invalid_output(format!(
                "the result of pipeline `{}` is {size} bytes of JSON, over max_output_bytes ({})",
                self.name, self.max_output_bytes
            )));
        }
        Ok(output)
    }

    /// Runs the branches that hold at once and waits for all of them; the
    /// outputs are recorded under the branches' ids and returned collected
    /// by id. The first failing branch, in declared order, fails the
    /// fan-out (the others are named).
    async fn fan_out(
        &self,
        branches: &[Step],
        state: &mut Value,
        call: PipelineCall<'_>,
    ) -> ToolOutcome {
        let running: Vec<&Step> = branches
            .iter()
            .filter(|branch| holds(branch.when.as_ref(), state))
            .collect();
        let outcomes = {
            let before: &Value = state;
            futures::future::join_all(
                running
                    .iter()
                    .map(|branch| self.call_step(branch, before, call)),
            )
            .await
        };
        let mut failures = running
            .iter()
            .zip(&outcomes)
            .filter_map(|(branch, outcome)| {
                outcome.as_ref().err().map(|failure| (branch, failure))
            });
        if let Some((_, first)) = failures.next() {
            let others: Vec<String> = failures
                .map(|(branch, _)| format!("`{}`", branch.id))
                .collect();
            let mut failure = first.clone();
            if !others.is_empty() {
                failure.message =
                    format!("{}; also failed: {}", failure.message, others.join(", "));
            }
            return Err(failure);
        }
        let mut collected = Map::new();
        for branch in branches {
            let output = running
                .iter()
                .position(|running| running.id == branch.id)
                .and_then(|at| outcomes.get(at))
                .and_then(|outcome| outcome.as_ref().ok());
            record(state, &branch.id, output);
            if let Some(output) = output {
                collected.insert(branch.id.clone(), output.clone());
            }
        }
        Ok(Value::Object(collected))
    }

    /// One step's tool call: its arguments rendered, then the call through
    /// the service's path; a failure names the step.
    async fn call_step(&self, step: &Step, state: &Value, call: PipelineCall<'_>) -> ToolOutcome {
        let arguments = step.arguments.render(state).map_err(|pointer| {
            missing(
                state,
                &pointer,
                &format!("the arguments of step `{}`", step.id),
            )
        })?;
        let prefix = if call.call_id.is_empty() {
            self.name.as_str()
        } else {
            call.call_id
        };
        // Cut so that the step's id always fits: it is what tells the
        // steps' audit events apart.
        let room = MAX_CALL_ID.saturating_sub(step.id.len() + 1);
        let step_call = StepCall {
            pipeline: self.name.clone(),
            step: step.id.clone(),
            tool: step.tool.clone(),
            arguments,
            call_id: format!("{}/{}", prefix_within(prefix, room), step.id),
            parent_call_id: call.call_id.to_owned(),
            deadline: call.deadline,
        };
        call.steps.call(step_call).await.map_err(|failure| {
            let message = format!(
                "step `{}` (tool `{}`) of pipeline `{}` failed: {}",
                step.id, step.tool, self.name, failure.message
            );
            ToolFailure { message, ..failure }
        })
    }
}

/// Stores a step's outcome in the state: its output, or that it was
/// skipped.
fn record(state: &mut Value, id: &str, output: Option<&Value>) {
    let entry = match output {
        Some(output) => json!({"output": output, "skipped": false}),
        None => json!({"skipped": true}),
    };
    if let Some(steps) = state.get_mut("steps").and_then(Value::as_object_mut) {
        steps.insert(id.to_owned(), entry);
    }
}

/// Whether a step with this `when` runs now.
fn holds(condition: Option<&Condition>, state: &Value) -> bool {
    let Some(condition) = condition else {
        return true;
    };
    let value = state.pointer(&condition.pointer);
    match &condition.test {
        Test::Truthy => value.is_some_and(truthy),
        Test::Equals(expected) => value.is_some_and(|value| same(value, expected)),
        Test::NotEquals(expected) => !value.is_some_and(|value| same(value, expected)),
    }
}

/// JSON equality where numbers compare by value: the configuration's `0`
/// must match a tool's `0.0`.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| x == y)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, value)| y.get(key).is_some_and(|other| same(value, other)))
        }
        _ => a == b,
    }
}

/// JavaScript-like truthiness, without its surprises for strings: missing,
/// null, false, 0, "", [] and {} are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64().is_some_and(|n| n != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(entries) => !entries.is_empty(),
    }
}

/// The failure of a template whose `pointer` found nothing: the caller's
/// input lacking a value is INVALID_ARGUMENTS; a step's output lacking one
/// (or a skipped step) is the pipeline failing.
fn missing(state: &Value, pointer: &str, what: &str) -> ToolFailure {
    let tokens = super::template::tokens(pointer);
    match tokens.as_slice() {
        [root, ..] if root == "input" => ToolFailure::invalid_arguments(format!(
            "{what} read `{pointer}`, which the arguments do not have; add it to the call (and to the pipeline's schema as required)"
        )),
        [_, id, ..] => {
            let skipped = state
                .get("steps")
                .and_then(|steps| steps.get(id))
                .and_then(|step| step.get("skipped"))
                == Some(&Value::Bool(true));
            let why = if skipped {
                format!("step `{id}` was skipped (its `when` did not hold)")
            } else {
                format!("step `{id}`'s output has nothing there")
            };
            ToolFailure::failed(format!("{what} read `{pointer}`, but {why}"))
        }
        _ => ToolFailure::failed(format!("{what} read `{pointer}`, which is not there")),
    }
}

/// Tells a streaming caller that a step ended, and how far along the
/// pipeline is (`done` of `total` steps).
async fn progress(events: Option<&Events>, message: String, (done, total): (usize, usize)) {
    if let Some(events) = events {
        let percent = (done as f32 / total.max(1) as f32) * 100.0;
        // The receiver is gone only when the client left; the caller
        // notices and stops the call.
        let _ = events
            .send(Ok(ExecuteToolStreamResponse {
                event: Some(Event::Progress(ToolProgress {
                    percent: Some(percent),
                    message,
                })),
            }))
            .await;
    }
}

#[cfg(test)]
mod tests;
