//! Plans as `plan_execute` holds them: the JSON the planner answers with,
//! its checks, and which steps are ready to run.
//!
//! ```text
//! planner's JSON ─▶ parse: the JSON Schema (PLAN_SCHEMA), then ids, sizes,
//!                   unknown dependencies and cycles ─▶ pb::Plan (PENDING)
//! pb::Plan ─▶ ready: PENDING steps whose dependencies all SUCCEEDED or
//!             were SKIPPED, in plan order
//! ```
//!
//! The schema is strict-mode friendly (every property required, no
//! additional ones) so a provider that enforces schemas can use it as it
//! is; what a schema cannot say (unique ids, known dependencies, no
//! cycles) is checked here, and a plan that fails is sent back to the
//! planner once with the reason.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use agentmesh_proto::orchestrator::v1::{self as pb, PlanStepState};
use serde::Deserialize;

/// The JSON Schema of a plan, given to the planner as its answer format.
pub(super) const PLAN_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "steps": {
      "type": "array",
      "items": {
        "type": "object",
        "properties": {
          "id": {"type": "string"},
          "description": {"type": "string"},
          "depends_on": {"type": "array", "items": {"type": "string"}},
          "tools": {"type": "array", "items": {"type": "string"}},
          "success_criteria": {"type": "string"}
        },
        "required": ["id", "description", "depends_on", "tools", "success_criteria"],
        "additionalProperties": false
      }
    }
  },
  "required": ["steps"],
  "additionalProperties": false
}"#;

/// Longest step id.
const MAX_ID_BYTES: usize = 32;
/// Longest step description or criteria.
const MAX_TEXT_BYTES: usize = 4096;

static VALIDATOR: LazyLock<Option<jsonschema::Validator>> = LazyLock::new(|| {
    serde_json::from_str(PLAN_SCHEMA)
        .ok()
        .and_then(|schema| jsonschema::options().build(&schema).ok())
});

#[derive(Debug, Deserialize)]
struct Draft {
    steps: Vec<DraftStep>,
}

#[derive(Debug, Deserialize)]
struct DraftStep {
    id: String,
    description: String,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    success_criteria: String,
}

/// The JSON object in a model's answer: the whole answer, or the part
/// between its first `{` and last `}` (models wrap JSON in prose or code
/// fences).
pub(super) fn json_object(answer: &str) -> Result<serde_json::Value, String> {
    let trimmed = answer.trim();
    let candidate = match (trimmed.find('{'), trimmed.rfind('}')) {
        (Some(start), Some(end)) if start < end => trimmed.get(start..=end).unwrap_or(trimmed),
        _ => trimmed,
    };
    serde_json::from_str(candidate).map_err(|err| format!("the answer is not a JSON object: {err}"))
}

/// The steps of the planner's `answer`, checked: at most `max_steps`,
/// none of them an id of `kept` (finished steps a replan keeps, which new
/// steps may depend on). The error says what to fix.
pub(super) fn parse_steps(
    answer: &str,
    max_steps: usize,
    kept: &[pb::PlanStep],
) -> Result<Vec<pb::PlanStep>, String> {
    let value = json_object(answer)?;
    if let Some(validator) = VALIDATOR.as_ref()
        && let Err(error) = validator.validate(&value)
    {
        let at = error.instance_path().as_str();
        let at = if at.is_empty() { "/" } else { at };
        return Err(format!(
            "the plan does not match its schema at {at}: {error}"
        ));
    }
    let draft: Draft =
        serde_json::from_value(value).map_err(|err| format!("the plan is malformed: {err}"))?;
    // A replan's answer may list the finished steps again: they are kept
    // as they are.
    let kept_ids: HashSet<&str> = kept.iter().map(|step| step.id.as_str()).collect();
    let steps: Vec<pb::PlanStep> = draft
        .steps
        .into_iter()
        .filter(|step| !kept_ids.contains(step.id.as_str()))
        .map(|step| pb::PlanStep {
            id: step.id,
            description: step.description,
            depends_on: step.depends_on,
            tools: step.tools,
            success_criteria: step.success_criteria,
            state: PlanStepState::Pending.into(),
            ..pb::PlanStep::default()
        })
        .collect();
    if steps.is_empty() {
        return Err("the plan has no step left to run".to_owned());
    }
    if kept.len() + steps.len() > max_steps {
        return Err(format!(
            "the plan has {} steps; at most {max_steps} are allowed",
            kept.len() + steps.len()
        ));
    }
    check_steps(kept, &steps)?;
    Ok(steps)
}

/// Ids well-formed and unique, texts bounded, dependencies known, no
/// cycle.
fn check_steps(kept: &[pb::PlanStep], steps: &[pb::PlanStep]) -> Result<(), String> {
    let mut ids = HashSet::new();
    for step in kept {
        ids.insert(step.id.as_str());
    }
    for step in steps {
        if step.id.is_empty()
            || step.id.len() > MAX_ID_BYTES
            || !step
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(format!(
                "step id {:?} must be 1-{MAX_ID_BYTES} letters, digits, `_`, `-` or `.`",
                step.id
            ));
        }
        if !ids.insert(step.id.as_str()) {
            return Err(format!("two steps have the id {:?}", step.id));
        }
        if step.description.trim().is_empty() {
            return Err(format!("step {} has no description", step.id));
        }
        if step.description.len() > MAX_TEXT_BYTES || step.success_criteria.len() > MAX_TEXT_BYTES {
            return Err(format!(
                "step {}'s description or criteria exceed {MAX_TEXT_BYTES} bytes",
                step.id
            ));
        }
    }
    for step in steps {
        for dependency in &step.depends_on {
            if dependency == &step.id {
                return Err(format!("step {} depends on itself", step.id));
            }
            if !ids.contains(dependency.as_str()) {
                return Err(format!(
                    "step {} depends on {dependency:?}, which is not a step of the plan",
                    step.id
                ));
            }
        }
    }
    if let Some(id) = cycle(steps) {
        return Err(format!(
            "the dependencies form a cycle through step {id}; a step may only depend on steps that can finish before it"
        ));
    }
    Ok(())
}

/// A step on a dependency cycle, if there is one (Kahn's algorithm: what
/// cannot be ordered is on or behind a cycle).
fn cycle(steps: &[pb::PlanStep]) -> Option<&str> {
    let known: HashSet<&str> = steps.iter().map(|step| step.id.as_str()).collect();
    let mut waiting: HashMap<&str, usize> = steps
        .iter()
        .map(|step| {
            let internal = step
                .depends_on
                .iter()
                .filter(|dependency| known.contains(dependency.as_str()))
                .count();
            (step.id.as_str(), internal)
        })
        .collect();
    let mut ready: Vec<&str> = waiting
        .iter()
        .filter(|(_, count)| **count == 0)
        .map(|(id, _)| *id)
        .collect();
    let mut ordered = 0;
    while let Some(done) = ready.pop() {
        ordered += 1;
        for step in steps {
            if step.depends_on.iter().any(|dependency| dependency == done)
                && let Some(count) = waiting.get_mut(step.id.as_str())
            {
                *count -= 1;
                if *count == 0 {
                    ready.push(step.id.as_str());
                }
            }
        }
    }
    if ordered == steps.len() {
        return None;
    }
    steps
        .iter()
        .find(|step| {
            waiting
                .get(step.id.as_str())
                .is_some_and(|count| *count > 0)
        })
        .map(|step| step.id.as_str())
}

/// Whether a step's state lets the steps depending on it run.
fn settled(state: PlanStepState) -> bool {
    matches!(state, PlanStepState::Succeeded | PlanStepState::Skipped)
}

/// The ids of PENDING steps whose dependencies are all settled, in plan
/// order, at most `room`.
pub(super) fn ready(plan: &pb::Plan, room: usize) -> Vec<String> {
    let states: HashMap<&str, PlanStepState> = plan
        .steps
        .iter()
        .map(|step| (step.id.as_str(), step.state()))
        .collect();
    plan.steps
        .iter()
        .filter(|step| step.state() == PlanStepState::Pending)
        .filter(|step| {
            step.depends_on
                .iter()
                .all(|dependency| states.get(dependency.as_str()).is_some_and(|s| settled(*s)))
        })
        .take(room)
        .map(|step| step.id.clone())
        .collect()
}

/// Whether every step is settled (the plan is done).
pub(super) fn finished(plan: &pb::Plan) -> bool {
    plan.steps.iter().all(|step| settled(step.state()))
}

/// A plan resumed from a checkpoint: steps that were RUNNING when it was
/// stored start over.
pub(super) fn resumed(mut plan: pb::Plan) -> pb::Plan {
    for step in &mut plan.steps {
        if step.state() == PlanStepState::Running {
            step.set_state(PlanStepState::Pending);
        }
    }
    plan
}

/// The step with `id`.
pub(super) fn step_mut<'p>(plan: &'p mut pb::Plan, id: &str) -> Option<&'p mut pb::PlanStep> {
    plan.steps.iter_mut().find(|step| step.id == id)
}

/// The plan as text for a prompt: each step, its state and result.
pub(super) fn describe(plan: &pb::Plan) -> String {
    plan.steps
        .iter()
        .map(|step| {
            let state = step
                .state()
                .as_str_name()
                .trim_start_matches("PLAN_STEP_STATE_");
            let mut line = format!("- {} [{state}]: {}", step.id, step.description);
            if !step.depends_on.is_empty() {
                line.push_str(&format!(" (after {})", step.depends_on.join(", ")));
            }
            if !step.result.is_empty() {
                line.push_str(&format!("\n  result: {}", step.result));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
