//! `plan_execute`: plan, run the plan's steps in parallel where their
//! dependencies allow, validate each, let the model choose how to recover
//! from a failed step, then synthesise the answer.
//!
//! ```text
//! planner ─▶ plan (checked; sent back once) ─▶ plan_created       stored
//! loop: ready steps (≤ max_parallel_steps) ─▶ plan_step_started
//!         each: executor tool loop ─▶ validator ─▶ (failed) recovery
//!       a step ends ─▶ plan_step_finished (+ recovery_decided,
//!                      plan_updated)                              stored
//!       replan: once no step runs, the planner again from the state
//! synthesizer (streamed) ─▶ the run's answer
//! ```
//!
//! The plan lives in the checkpoint: a run resumed after a crash keeps the
//! steps that finished and starts over those that were running. A step's
//! work is one future; the loop applies each step's outcome as it comes,
//! so a recovery choice never waits for the other steps.

use agentmesh_proto::orchestrator::v1::{self as pb, PlanStepState, RecoveryAction, run_event};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tonic::Status;

use super::plan::{self, PLAN_SCHEMA};
use super::{Tally, Work, assistant, stop_if_released, system, user};
use crate::engine::Engine;
use crate::engine::persist::apply;
use crate::engine::step::{ModelCall, StepContext, progress};
use crate::store::{Checkpoint, RunRow};

/// The JSON Schema of a recovery choice.
const RECOVERY_SCHEMA: &str = r#"{"type": "object", "properties": {"action": {"type": "string", "enum": ["retry", "revise_step", "skip", "replan", "abort"]}, "reason": {"type": "string"}, "revised_description": {"type": "string"}}, "required": ["action", "reason", "revised_description"], "additionalProperties": false}"#;

/// What one attempt at a plan step came to.
#[derive(Debug)]
struct Attempt {
    id: String,
    attempt: i32,
    result: String,
    verdict: pb::Verdict,
    /// The model's recovery choice, when the verdict failed.
    recovery: Option<pb::RecoveryDecided>,
}

impl Engine {
    /// Runs `plan_execute` from `checkpoint` to the synthesised answer,
    /// counting in `tally`.
    pub(super) async fn plan_execute(
        &self,
        run: &mut RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        checkpoint: &mut Checkpoint,
    ) -> Result<String, Status> {
        // The steps' futures read this copy while the loop stores `run`.
        let view = run.clone();
        let mut plan = match checkpoint.plan.take() {
            Some(stored) => plan::resumed(stored),
            None => {
                let steps = self.make_plan(&view, cx, tally, &[], None).await?;
                let plan = pb::Plan {
                    steps,
                    revision: 1,
                    replans: 0,
                };
                self.emit(
                    cx.active,
                    run_event::Event::PlanCreated(pb::PlanCreated {
                        plan: Some(plan.clone()),
                    }),
                )
                .await;
                self.store_plan(run, cx, tally, checkpoint, &plan).await;
                plan
            }
        };
        let settings = &cx.profile.plan;
        let mut running = FuturesUnordered::new();
        let mut replan: Option<String> = None;
        loop {
            stop_if_released(cx.active).await;
            if replan.is_none() {
                let room = settings.max_parallel_steps.saturating_sub(running.len());
                for (step, brief) in self.start_ready(cx, &view, &mut plan, room).await {
                    running.push(self.attempt(&view, cx, tally, step, brief, plan.clone()));
                }
            }
            let Some(done) = running.next().await else {
                if let Some(reason) = replan.take() {
                    self.replan(&view, cx, tally, &mut plan, reason).await?;
                    self.store_plan(run, cx, tally, checkpoint, &plan).await;
                    continue;
                }
                if plan::finished(&plan) {
                    break;
                }
                return Err(Status::internal(
                    "the plan has steps that can never run (their dependencies failed)",
                ));
            };
            let done = done?;
            if let Some(reason) = self.settle(cx, &mut plan, done).await? {
                replan = Some(reason);
            }
            self.store_plan(run, cx, tally, checkpoint, &plan).await;
        }
        let answer = self.synthesize(&view, cx, tally, &plan).await?;
        checkpoint.messages.push(assistant(answer.clone()));
        checkpoint.plan = Some(plan);
        tally.copy_to(checkpoint);
        Ok(answer)
    }

    /// Marks up to `room` ready steps RUNNING (`plan_step_started`); each
    /// with what its executor is told.
    async fn start_ready(
        &self,
        cx: &StepContext<'_>,
        run: &RunRow,
        plan: &mut pb::Plan,
        room: usize,
    ) -> Vec<(pb::PlanStep, String)> {
        let mut started = Vec::new();
        for id in plan::ready(plan, room) {
            let Some(step) = plan::step_mut(plan, &id) else {
                continue;
            };
            step.set_state(PlanStepState::Running);
            step.attempts += 1;
            let step = step.clone();
            self.emit(
                cx.active,
                run_event::Event::PlanStepStarted(pb::PlanStepStarted {
                    step_id: step.id.clone(),
                    attempt: step.attempts,
                    description: step.description.clone(),
                }),
            )
            .await;
            let brief = brief(run, plan, &step);
            started.push((step, brief));
        }
        started
    }

    /// Makes the rest of the plan again (`replan`), keeping the finished
    /// steps (`plan_updated`).
    async fn replan(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        plan: &mut pb::Plan,
        reason: String,
    ) -> Result<(), Status> {
        let kept = kept_steps(plan);
        let steps = self
            .make_plan(run, cx, tally, &kept, Some((plan, &reason)))
            .await?;
        plan.steps = kept.into_iter().chain(steps).collect();
        plan.revision += 1;
        plan.replans += 1;
        self.plan_updated(cx, plan, reason).await;
        Ok(())
    }

    /// Stores the plan with the run's counters (a transition).
    async fn store_plan(
        &self,
        run: &mut RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        checkpoint: &mut Checkpoint,
        plan: &pb::Plan,
    ) {
        tally.copy_to(checkpoint);
        checkpoint.plan = Some(plan.clone());
        apply(run, checkpoint);
        self.flush(run, cx.active, Some(checkpoint)).await;
    }

    /// Asks the planner for steps (a new plan, or the rest of `current`
    /// after `failure`), sending a refused plan back once with the reason.
    async fn make_plan(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        kept: &[pb::PlanStep],
        replanning: Option<(&pb::Plan, &str)>,
    ) -> Result<Vec<pb::PlanStep>, Status> {
        let tools: Vec<&str> = cx.specs.iter().map(|spec| spec.name.as_str()).collect();
        let mut request = format!(
            "Objective: {}\n\nTools available to the steps: {}",
            run.objective,
            if tools.is_empty() {
                "none".to_owned()
            } else {
                tools.join(", ")
            }
        );
        if let Some((current, failure)) = replanning {
            request.push_str(&format!(
                "\n\nThe plan so far:\n{}\n\nIt must be made again: {failure}. Finished steps are \
                 kept as they are (new steps may depend on them); give the steps that remain.",
                plan::describe(current)
            ));
        }
        let max_steps = cx.profile.plan.max_plan_steps;
        let again = |problem: &str| {
            format!("The plan was refused: {problem}. Answer with a corrected plan.")
        };
        self.ask_parsed(
            run,
            cx,
            tally,
            ("planner", ("plan", PLAN_SCHEMA)),
            vec![system(&cx.prompts.planner), user(request)],
            (
                |answer: &str| plan::parse_steps(answer, max_steps, kept),
                again,
            ),
        )
        .await?
        .map_err(|problem| {
            Status::aborted(format!(
                "the planner gave no usable plan in two attempts: {problem}"
            ))
        })
    }

    /// One attempt at a plan step: the executor's tool loop, the validator's
    /// verdict, and on a failed verdict the model's recovery choice.
    async fn attempt(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        step: pb::PlanStep,
        brief: String,
        plan: pb::Plan,
    ) -> Result<Attempt, Status> {
        let mut messages = vec![system(&cx.prompts.executor), user(brief)];
        // Unique across parallel steps and attempts (each attempt's model
        // numbers its calls afresh).
        let id_prefix = format!("{}.{}.", step.id, step.attempts);
        let label = format!("plan step {}", step.id);
        let work = Work {
            role: "executor",
            id_prefix: &id_prefix,
            label: &label,
            max_turns: cx.profile.plan.max_turns_per_step,
        };
        let answer = self.work(run, cx, tally, &mut messages, &work).await?;
        let (result, verdict) = match answer {
            None => (
                String::new(),
                pb::Verdict {
                    passed: false,
                    feedback: format!(
                        "the step gave no result within {} model calls \
                         (plan.max_turns_per_step)",
                        work.max_turns
                    ),
                },
            ),
            Some(result) if step.success_criteria.trim().is_empty() => (
                result,
                pb::Verdict {
                    passed: true,
                    feedback: "no criteria to check".to_owned(),
                },
            ),
            Some(result) => {
                let request = format!(
                    "Step: {}\nSuccess criteria: {}\nResult: {result}",
                    step.description, step.success_criteria
                );
                let verdict = self
                    .judge(
                        run,
                        cx,
                        tally,
                        ("validator", &cx.prompts.validator),
                        request,
                    )
                    .await?;
                (result, verdict)
            }
        };
        let recovery = if verdict.passed {
            None
        } else {
            Some(
                self.choose_recovery(run, cx, tally, &step, &result, &verdict, &plan)
                    .await?,
            )
        };
        Ok(Attempt {
            id: step.id,
            attempt: step.attempts,
            result,
            verdict,
            recovery,
        })
    }

    /// The model's recovery choice for a failed step (an answer that is not
    /// one is asked for again once, then aborts).
    #[expect(clippy::too_many_arguments, reason = "the failure's whole context")]
    async fn choose_recovery(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        step: &pb::PlanStep,
        result: &str,
        verdict: &pb::Verdict,
        plan: &pb::Plan,
    ) -> Result<pb::RecoveryDecided, Status> {
        let request = format!(
            "Objective: {}\n\nThe plan:\n{}\n\nStep {} failed.\nIts description: {}\n\
             Its result: {result}\nWhat is wrong: {}",
            run.objective,
            plan::describe(plan),
            step.id,
            step.description,
            verdict.feedback
        );
        let again = |problem: &str| {
            format!("That is not a recovery choice ({problem}). Answer with JSON only.")
        };
        let decided = self
            .ask_parsed(
                run,
                cx,
                tally,
                ("recovery", ("recovery", RECOVERY_SCHEMA)),
                vec![system(&cx.prompts.recovery), user(request)],
                (|answer: &str| parse_recovery(answer, &step.id), again),
            )
            .await?;
        Ok(decided.unwrap_or_else(|problem| pb::RecoveryDecided {
            step_id: step.id.clone(),
            action: RecoveryAction::Abort.into(),
            reason: format!("the model gave no recovery choice: {problem}"),
            revised_description: String::new(),
        }))
    }

    /// Applies a step's outcome to the plan (events included); the reason
    /// to replan, when the model chose that. An `abort` ends the run.
    async fn settle(
        &self,
        cx: &StepContext<'_>,
        plan: &mut pb::Plan,
        done: Attempt,
    ) -> Result<Option<String>, Status> {
        let settings = &cx.profile.plan;
        let replans = plan.replans;
        let Some(step) = plan::step_mut(plan, &done.id) else {
            return Ok(None);
        };
        step.result.clone_from(&done.result);
        step.set_state(if done.verdict.passed {
            PlanStepState::Succeeded
        } else {
            PlanStepState::Failed
        });
        self.emit(
            cx.active,
            run_event::Event::PlanStepFinished(pb::PlanStepFinished {
                step_id: done.id.clone(),
                attempt: done.attempt,
                result: done.result.clone(),
                verdict: Some(done.verdict.clone()),
                state: step.state,
            }),
        )
        .await;
        let Some(mut decided) = done.recovery else {
            return Ok(None);
        };
        enforce_limits(&mut decided, step, replans, settings);
        self.emit(
            cx.active,
            run_event::Event::RecoveryDecided(decided.clone()),
        )
        .await;
        match decided.action() {
            RecoveryAction::Retry => step.set_state(PlanStepState::Pending),
            RecoveryAction::ReviseStep => {
                step.description.clone_from(&decided.revised_description);
                step.revisions += 1;
                step.set_state(PlanStepState::Pending);
                plan.revision += 1;
                let reason = format!("step {} revised", done.id);
                self.plan_updated(cx, plan, reason).await;
            }
            RecoveryAction::Skip => step.set_state(PlanStepState::Skipped),
            RecoveryAction::Replan => {
                return Ok(Some(format!(
                    "step {} failed ({}); {}",
                    done.id, done.verdict.feedback, decided.reason
                )));
            }
            RecoveryAction::Abort | RecoveryAction::Unspecified => {
                return Err(Status::aborted(format!(
                    "plan step {} failed and the run was aborted: {}",
                    done.id, decided.reason
                )));
            }
        }
        Ok(None)
    }

    async fn plan_updated(&self, cx: &StepContext<'_>, plan: &pb::Plan, reason: String) {
        self.emit(
            cx.active,
            run_event::Event::PlanUpdated(pb::PlanUpdated {
                plan: Some(plan.clone()),
                reason,
            }),
        )
        .await;
    }

    /// The final answer from the steps' results, streamed.
    async fn synthesize(
        &self,
        run: &RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        plan: &pb::Plan,
    ) -> Result<String, Status> {
        let step = tally.next_call()?;
        self.emit(
            cx.active,
            run_event::Event::Progress(progress(
                run,
                step,
                format!("step {step}: writing the answer from the plan's results"),
            )),
        )
        .await;
        let messages = [
            system(&cx.prompts.synthesizer),
            user(format!(
                "Objective: {}\n\nThe plan's steps and their results:\n{}",
                run.objective,
                plan::describe(plan)
            )),
        ];
        let call = ModelCall {
            step,
            role: "synthesizer",
            messages: &messages,
            tools: &[],
            response_format: None,
            relay: true,
        };
        let answer = self.generate(run, cx, call).await?;
        tally.used(answer.usage.as_ref());
        Ok(answer.message.unwrap_or_default().content)
    }
}

/// What the executor of `step` is told: the objective, the results of the
/// steps it depends on, and its task.
fn brief(run: &RunRow, plan: &pb::Plan, step: &pb::PlanStep) -> String {
    let mut brief = format!("Objective: {}\n", run.objective);
    for dependency in &step.depends_on {
        if let Some(done) = plan.steps.iter().find(|other| &other.id == dependency) {
            let result = if done.state() == PlanStepState::Skipped {
                "(skipped)"
            } else {
                done.result.as_str()
            };
            brief.push_str(&format!("Result of step {}: {result}\n", done.id));
        }
    }
    brief.push_str(&format!("\nYour step ({}): {}", step.id, step.description));
    brief
}

/// The steps a replan keeps: those that finished.
fn kept_steps(plan: &pb::Plan) -> Vec<pb::PlanStep> {
    plan.steps
        .iter()
        .filter(|step| {
            matches!(
                step.state(),
                PlanStepState::Succeeded | PlanStepState::Skipped
            )
        })
        .cloned()
        .collect()
}

/// A choice over its limit becomes `abort`, its reason naming the limit.
fn enforce_limits(
    decided: &mut pb::RecoveryDecided,
    step: &pb::PlanStep,
    replans: i32,
    settings: &crate::config::PlanSettings,
) {
    let retries = step.attempts - 1 - step.revisions;
    let over = match decided.action() {
        RecoveryAction::Retry if retries >= settings.max_retries => Some(format!(
            "step {} was retried {retries} time(s), the limit (plan.max_retries = {})",
            step.id, settings.max_retries
        )),
        RecoveryAction::ReviseStep if step.revisions >= settings.max_revisions => Some(format!(
            "step {} was revised {} time(s), the limit (plan.max_revisions = {})",
            step.id, step.revisions, settings.max_revisions
        )),
        RecoveryAction::ReviseStep if decided.revised_description.trim().is_empty() => {
            Some("the model chose revise_step without a revised description".to_owned())
        }
        RecoveryAction::Replan if replans >= settings.max_replans => Some(format!(
            "the plan was made again {replans} time(s), the limit (plan.max_replans = {})",
            settings.max_replans
        )),
        _ => None,
    };
    if let Some(over) = over {
        decided.reason = format!(
            "the model chose {} ({}), but {over}",
            action_name(decided.action()),
            decided.reason
        );
        decided.set_action(RecoveryAction::Abort);
    }
}

fn action_name(action: RecoveryAction) -> &'static str {
    match action {
        RecoveryAction::Retry => "retry",
        RecoveryAction::ReviseStep => "revise_step",
        RecoveryAction::Skip => "skip",
        RecoveryAction::Replan => "replan",
        RecoveryAction::Abort | RecoveryAction::Unspecified => "abort",
    }
}

fn parse_recovery(answer: &str, step_id: &str) -> Result<pb::RecoveryDecided, String> {
    let value = plan::json_object(answer)?;
    let text = |field: &str| {
        value
            .get(field)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let action = match text("action").as_str() {
        "retry" => RecoveryAction::Retry,
        "revise_step" => RecoveryAction::ReviseStep,
        "skip" => RecoveryAction::Skip,
        "replan" => RecoveryAction::Replan,
        "abort" => RecoveryAction::Abort,
        other => {
            return Err(format!(
                "`action` is {other:?}, not retry, revise_step, skip, replan or abort"
            ));
        }
    };
    Ok(pb::RecoveryDecided {
        step_id: step_id.to_owned(),
        action: action.into(),
        reason: text("reason"),
        revised_description: text("revised_description"),
    })
}
