//! The strategies that start sub-runs: `orchestrator_workers` (a lead
//! model with a `delegate` tool) and `router` (one sub-run of the profile
//! its objective calls for).
//!
//! ```text
//! orchestrator_workers: the tool loop, plus `delegate(agent, objective)`
//!   ─▶ a sub-run per call (parallel calls: parallel sub-runs) ─▶ its
//!   output (or error) as the tool's result ─▶ the lead answers
//! router: router's choice (JSON, one of `router.routes`, else
//!   `router.fallback`) ─▶ one sub-run ─▶ its output is the run's
//! ```
//!
//! A sub-run's model calls count against its own step limit, carved from
//! what its parent has left when it starts.

use std::sync::atomic::Ordering;

use agentmesh_proto::llm::v1 as llm;
use agentmesh_proto::orchestrator::v1 as pb;
use agentmesh_proto::tools::v1 as tools;
use serde::Deserialize;
use tonic::Status;

use super::{stop_if_released, system, user};
use crate::config::{AgentProfile, Strategy};
use crate::engine::Engine;
use crate::engine::step::StepContext;
use crate::engine::sub_runs::SubRunAsk;
use crate::store::{Checkpoint, RunRow};

/// The lead's tool.
pub(in crate::engine) const DELEGATE: &str = "delegate";

/// The `delegate` tool of an `orchestrator_workers` profile (none for
/// another strategy).
pub(in crate::engine) fn delegate_spec(profile: &AgentProfile) -> Option<llm::ToolSpec> {
    if profile.strategy != Strategy::OrchestratorWorkers {
        return None;
    }
    let agents = serde_json::to_string(&profile.workers.agents).unwrap_or_default();
    Some(llm::ToolSpec {
        name: DELEGATE.to_owned(),
        description: "Hand a self-contained task to another agent, which works on it as a \
                      run of its own; several calls at once run in parallel. Returns its \
                      answer."
            .to_owned(),
        parameters_json: format!(
            r#"{{"type": "object", "properties": {{"agent": {{"type": "string", "enum": {agents}}}, "objective": {{"type": "string"}}}}, "required": ["agent", "objective"], "additionalProperties": false}}"#
        ),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelegateArgs {
    agent: String,
    objective: String,
}

/// A sub-run's end as its parent's model sees it.
fn outcome_json(child: &RunRow) -> String {
    let state = child
        .state
        .as_str_name()
        .trim_start_matches("RUN_STATE_")
        .to_lowercase();
    let outcome = if child.state == pb::RunState::Succeeded {
        serde_json::json!({
            "run_id": child.run_id, "agent": child.agent, "state": state, "output": child.output,
        })
    } else {
        let error = child.error.as_ref().map(|error| error.message.as_str());
        serde_json::json!({
            "run_id": child.run_id, "agent": child.agent, "state": state, "error": error,
        })
    };
    outcome.to_string()
}

impl Engine {
    /// Runs a `delegate` call of model call `step`: a sub-run, waited for.
    pub(in crate::engine) async fn delegate(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        call: &llm::ToolCall,
        step: i32,
    ) -> tools::ExecuteToolResponse {
        let failed = |message: String| tools::ExecuteToolResponse {
            call_id: call.id.clone(),
            is_error: true,
            error_message: message,
            ..tools::ExecuteToolResponse::default()
        };
        let args: DelegateArgs = match serde_json::from_str(&call.arguments_json) {
            Ok(args) => args,
            Err(err) => return failed(format!("invalid arguments for delegate: {err}")),
        };
        let workers = &cx.profile.workers;
        if !workers.agents.contains(&args.agent) {
            return failed(format!(
                "agent {:?} is not one this agent may delegate to ({})",
                args.agent,
                workers.agents.join(", ")
            ));
        }
        let started = cx.sub_runs.fetch_add(1, Ordering::Relaxed);
        if started >= workers.max_sub_runs {
            return failed(format!(
                "this run started its {} sub-runs (workers.max_sub_runs); answer with what you have",
                workers.max_sub_runs
            ));
        }
        let ask = SubRunAsk {
            key: format!("step-{step}-{}", call.id),
            agent: &args.agent,
            objective: args.objective,
            max_steps: run.limits.max_steps - step,
            deadline: cx.deadline,
        };
        match self.sub_run(run, cx.active, ask).await {
            Ok(child) => tools::ExecuteToolResponse {
                call_id: call.id.clone(),
                output_json: outcome_json(&child),
                is_error: child.state != pb::RunState::Succeeded,
                error_message: child
                    .error
                    .as_ref()
                    .map(|error| error.message.clone())
                    .unwrap_or_default(),
                ..tools::ExecuteToolResponse::default()
            },
            Err(status) => failed(format!("the sub-run could not start: {}", status.message())),
        }
    }

    /// `router`: the router's choice among the profile's routes, run as a
    /// sub-run whose output is the run's (its failure, the run's).
    pub(super) async fn route(
        &self,
        run: &mut RunRow,
        cx: &StepContext<'_>,
        checkpoint: &mut Checkpoint,
    ) -> Result<String, Status> {
        stop_if_released(cx.active).await;
        let tally = super::Tally::of(checkpoint, run.limits.max_steps);
        let settings = &cx.profile.router;
        let routes: Vec<String> = settings
            .routes
            .iter()
            .map(|route| {
                let description = self
                    .config
                    .agents
                    .get(route)
                    .map(|profile| profile.description.as_str())
                    .unwrap_or_default();
                format!("- {route}: {description}")
            })
            .collect();
        let messages = [
            system(&cx.prompts.router),
            user(format!(
                "Objective: {}\n\nAgents:\n{}",
                run.objective,
                routes.join("\n")
            )),
        ];
        let schema = format!(
            r#"{{"type": "object", "properties": {{"route": {{"type": "string", "enum": {}}}, "reason": {{"type": "string"}}}}, "required": ["route", "reason"], "additionalProperties": false}}"#,
            serde_json::to_string(&settings.routes).unwrap_or_default()
        );
        let answer = self
            .ask_json(run, cx, &tally, "router", &messages, ("route", &schema))
            .await?;
        tally.copy_to(checkpoint);
        let chosen = super::plan::json_object(&answer)
            .ok()
            .and_then(|value| value.get("route")?.as_str().map(str::to_owned))
            .filter(|route| settings.routes.contains(route))
            .or_else(|| Some(settings.fallback.clone()).filter(|fallback| !fallback.is_empty()))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "the router chose none of the routes ({}) and the profile has no fallback",
                    settings.routes.join(", ")
                ))
            })?;
        let ask = SubRunAsk {
            key: "route".to_owned(),
            agent: &chosen,
            objective: run.objective.clone(),
            max_steps: run.limits.max_steps - checkpoint.step,
            deadline: cx.deadline,
        };
        let child = self.sub_run(run, cx.active, ask).await?;
        match child.state {
            pb::RunState::Succeeded => Ok(child.output),
            state => Err(Status::aborted(format!(
                "the routed run {} (agent {}) ended {}: {}",
                child.run_id,
                child.agent,
                state.as_str_name(),
                child.error.map(|error| error.message).unwrap_or_default()
            ))),
        }
    }
}
