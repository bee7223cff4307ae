//! The lines `agentmesh run` shows for the events of strategies other than
//! the tool loop: the plan and its steps, recovery choices, evaluations,
//! sub-runs.

use agentmesh_proto::orchestrator::v1::{self as pb, run_event::Event};

/// The line for a strategy event; `None` for any other event.
pub(super) fn strategy_line(event: &pb::RunEvent) -> Option<String> {
    Some(match event.event.as_ref()? {
        Event::PlanCreated(created) => format!(
            "▤ plan:\n{}",
            plan_lines(created.plan.as_ref().unwrap_or(&pb::Plan::default()))
        ),
        Event::PlanUpdated(updated) => format!(
            "▤ plan updated ({}):\n{}",
            updated.reason,
            plan_lines(updated.plan.as_ref().unwrap_or(&pb::Plan::default()))
        ),
        Event::PlanStepStarted(started) => {
            let attempt = if started.attempt > 1 {
                format!(" (attempt {})", started.attempt)
            } else {
                String::new()
            };
            format!(
                "▷ step {}{attempt}: {}",
                started.step_id, started.description
            )
        }
        Event::PlanStepFinished(finished) => {
            let verdict = finished.verdict.clone().unwrap_or_default();
            let mark = if verdict.passed { "✓" } else { "✗" };
            format!(
                "{mark} step {}: {}{}",
                finished.step_id,
                one_line(&finished.result),
                if verdict.passed {
                    String::new()
                } else {
                    format!(" — {}", verdict.feedback)
                }
            )
        }
        Event::RecoveryDecided(decided) => format!(
            "↻ step {}: {} — {}",
            decided.step_id,
            decided
                .action()
                .as_str_name()
                .trim_start_matches("RECOVERY_ACTION_")
                .to_lowercase(),
            decided.reason
        ),
        Event::Evaluation(evaluation) => {
            let verdict = evaluation.verdict.clone().unwrap_or_default();
            format!(
                "{} round {}: {}",
                if verdict.passed { "✓" } else { "✗" },
                evaluation.round,
                verdict.feedback
            )
        }
        Event::SubRunStarted(started) => format!(
            "⇉ sub-run {} · agent {}: {}",
            started.run_id, started.agent, started.objective
        ),
        Event::SubRunFinished(finished) => sub_run_finished(finished),
        _ => return None,
    })
}

/// `⇇ sub-run <id> succeeded: <output>` (or its error).
fn sub_run_finished(finished: &pb::SubRunFinished) -> String {
    let outcome = if finished.output.is_empty() {
        finished
            .error
            .as_ref()
            .map(|error| error.message.clone())
            .unwrap_or_default()
    } else {
        one_line(&finished.output)
    };
    format!(
        "⇇ sub-run {} {}: {outcome}",
        finished.run_id,
        finished
            .state()
            .as_str_name()
            .trim_start_matches("RUN_STATE_")
            .to_lowercase()
    )
}

/// A plan as indented lines: `  s2 (after s1): description`.
fn plan_lines(plan: &pb::Plan) -> String {
    plan.steps
        .iter()
        .map(|step| {
            let after = if step.depends_on.is_empty() {
                String::new()
            } else {
                format!(" (after {})", step.depends_on.join(", "))
            };
            format!("  {}{after}: {}", step.id, step.description)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Text on one line (a step's result may span several).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_shows_each_step_with_its_dependencies() {
        let plan = pb::Plan {
            steps: vec![
                pb::PlanStep {
                    id: "s1".into(),
                    description: "compute 17 * 23".into(),
                    ..Default::default()
                },
                pb::PlanStep {
                    id: "s3".into(),
                    description: "add".into(),
                    depends_on: vec!["s1".into(), "s2".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let event = pb::RunEvent {
            event: Some(Event::PlanCreated(pb::PlanCreated { plan: Some(plan) })),
            ..Default::default()
        };
        assert_eq!(
            strategy_line(&event).as_deref(),
            Some("▤ plan:\n  s1: compute 17 * 23\n  s3 (after s1, s2): add")
        );
        let finished = pb::RunEvent {
            event: Some(Event::PlanStepFinished(pb::PlanStepFinished {
                step_id: "s1".into(),
                result: "391\n".into(),
                verdict: Some(pb::Verdict {
                    passed: true,
                    feedback: String::new(),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(strategy_line(&finished).as_deref(), Some("✓ step s1: 391"));
    }
}
