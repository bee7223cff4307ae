//! `evaluator_optimizer`: answer, have the answer judged against the
//! profile's criteria, revise with the feedback, until it passes or
//! `max_rounds`.
//!
//! ```text
//! round n: generator tool loop over the conversation (streamed)
//!          ─▶ evaluator's verdict ─▶ `evaluation` event        stored
//!          passed ─▶ the answer; else the feedback joins the
//!          conversation and round n+1 begins
//! after max_rounds: the last answer (its `evaluation` says it failed)
//! ```
//!
//! The conversation and the number of rounds done live in the checkpoint,
//! so a resumed run starts over the round in flight only.

use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use tonic::Status;

use super::{Tally, Work, stop_if_released, user};
use crate::engine::Engine;
use crate::engine::persist::apply;
use crate::engine::step::StepContext;
use crate::store::{Checkpoint, RunRow};

impl Engine {
    /// Runs `evaluator_optimizer` from `checkpoint` to its answer,
    /// counting in `tally`.
    pub(super) async fn evaluator_optimizer(
        &self,
        run: &mut RunRow,
        cx: &StepContext<'_>,
        tally: &Tally,
        checkpoint: &mut Checkpoint,
    ) -> Result<String, Status> {
        let settings = &cx.profile.evaluator;
        let view = run.clone();
        // What a run resumed past its last round answers (its rounds cut
        // by a smaller `max_rounds` since): its last answer.
        let mut last = checkpoint
            .messages
            .iter()
            .rev()
            .find(|message| message.role() == agentmesh_proto::llm::v1::Role::Assistant)
            .map(|message| message.content.clone())
            .unwrap_or_default();
        for round in checkpoint.rounds + 1..=settings.max_rounds {
            stop_if_released(cx.active).await;
            let label = format!("round {round}");
            let id_prefix = format!("r{round}.");
            let work = Work {
                role: "generator",
                id_prefix: &id_prefix,
                label: &label,
                max_turns: settings.max_turns_per_round,
            };
            let Some(answer) = self
                .work(&view, cx, tally, &mut checkpoint.messages, &work)
                .await?
            else {
                return Err(Status::resource_exhausted(format!(
                    "round {round} gave no answer within {} model calls \
                     (evaluator.max_turns_per_round)",
                    settings.max_turns_per_round
                )));
            };
            let request = format!(
                "Objective: {}\nCriteria: {}\nAnswer: {answer}",
                run.objective, settings.criteria
            );
            let verdict = self
                .judge(
                    &view,
                    cx,
                    tally,
                    ("evaluator", &cx.prompts.evaluator),
                    request,
                )
                .await?;
            self.emit(
                cx.active,
                run_event::Event::Evaluation(pb::Evaluation {
                    round,
                    verdict: Some(verdict.clone()),
                }),
            )
            .await;
            checkpoint.rounds = round;
            tally.copy_to(checkpoint);
            if verdict.passed || round == settings.max_rounds {
                // Stored with the run's end.
                return Ok(answer);
            }
            checkpoint.messages.push(user(format!(
                "Feedback on your answer: {}\nRevise your answer to address it.",
                verdict.feedback
            )));
            apply(run, checkpoint);
            self.flush(run, cx.active, Some(checkpoint)).await;
            last = answer;
        }
        Ok(last)
    }
}
