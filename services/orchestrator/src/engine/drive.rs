//! A run's task, from QUEUED to its end.
//!
//! ```text
//! drive ─ wait_for_places: its place (admission, fair across tenants)   QUEUED
//!       │   (or a cancel, the caller's deadline, max_queue_wait)
//!       ├ begin: RUN_STARTED stored, or "step restarted" after a resume  RUNNING
//!       ├ run_until_end: run_steps under the run's deadline, or a cancel
//!       │   └ run_steps — THE STRATEGY: the loop over steps
//!       │       └ Engine::step (step.rs): model call, tools, checkpoint
//!       └ finish: terminal event, stored (persist.rs), then published;
//!                 audit event and metrics by the instance that stored it
//! ```
//!
//! **Where a strategy plugs in.** [`Engine::run_steps`] is the only place
//! that decides what the next step is and when the run has its answer; it
//! receives everything a step needs ([`StepContext`]) and the checkpoint it
//! carries from step to step. Today's strategy asks the model, runs the
//! tools it called, and repeats until an answer without tool calls or the
//! step limit. Another strategy (plan, then execute the plan's steps) is
//! another loop over [`Engine::step`] with the same inputs and output (the
//! final answer or the run's failure); waiting, deadlines, cancels,
//! storing and the end of the run stay here, shared.
//!
//! Deadlines: the run's own timeout (less the time it already ran on an
//! instance that stopped), or its caller's deadline (`Run`) if sooner,
//! bounds the whole loop; a call cut by the caller's deadline ends the run
//! with DEADLINE_EXCEEDED naming the caller's deadline.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_kit::time::now_micros;
use agentmesh_proto::llm::v1 as llm;
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use tokio::time::Instant;
use tonic::Status;

use super::active::ActiveRun;
use super::audit_events::RunEndAudit;
use super::memory_tools;
use super::persist::apply;
use super::step::{StepContext, progress};
use super::strategy;
use super::{Engine, Resume, lock, mark_failed};
use crate::admission::Places;
use crate::config::{AgentProfile, Strategy};
use crate::metrics::RunEnd;
use crate::store::{self, Checkpoint, RunRow};

/// How close to the caller's deadline a failed call counts as cut by it
/// (a peer's or the client's own timer may fire a hair before ours:
/// `grpc-timeout` values are truncated to their unit).
const DEADLINE_SLACK: Duration = Duration::from_millis(5);

/// Attempts at storing a run's first event before leaving the run to be
/// driven again (about 6 s).
const FIRST_EVENT_ATTEMPTS: u32 = 8;

/// How a run's loop ended.
#[derive(Debug)]
pub(super) enum Ending {
    Finished(String),
    Failed(Status),
    Cancelled(String),
}

/// How a queued run's wait for its place ended.
enum Wait {
    Admitted,
    Cancelled,
    CallerDeadline,
    /// Waited `max_queue_wait`.
    TooLong,
    /// Released: another replica drives it.
    Released,
}

/// The clocks a running run's deadline is computed from.
struct Clock {
    /// When the run was created here (or picked up after a resume).
    queued_at: Instant,
    /// When this instance started driving it (after the wait).
    started: Instant,
    /// How long it already ran on an instance that stopped.
    elapsed_before: Duration,
    /// The caller's deadline, for a run started by `Run`.
    caller_deadline: Option<Instant>,
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

/// The run's time limit, from its stored `timeout_ms`.
fn run_timeout(run: &RunRow) -> Duration {
    Duration::from_millis(u64::try_from(run.limits.timeout_ms).unwrap_or(0))
}

impl Engine {
    /// Drives `run` from QUEUED to its stored end (see the module's doc),
    /// then forgets it. Kept whole: the run's life cycle — wait, begin,
    /// steps, then its end or its release — reads best in one place.
    pub(super) async fn drive(
        self: Arc<Self>,
        mut run: RunRow,
        active: Arc<ActiveRun>,
        resume: Option<Resume>,
        mut places: Places,
        caller_deadline: Option<Instant>,
    ) {
        let run_id = run.run_id.clone();
        let queued = self.metrics.queued();
        let queued_at = Instant::now();
        let wait = self
            .wait_for_places(&active, &mut places, caller_deadline)
            .await;
        drop(queued);
        let profile = self
            .config
            .agents
            .get(&run.agent)
            .cloned()
            .unwrap_or_default();
        // What the loop carries from step to step, stored after each one.
        let Resume {
            checkpoint: resumed,
            abandoned,
        } = resume.unwrap_or_default();
        let mut checkpoint = match resumed {
            Some(checkpoint) => checkpoint,
            None => self.first_checkpoint(&run, &profile).await,
        };
        let started = Instant::now();
        let mut running = None;
        // `None`: not ended here — released (handed over at shutdown, or its
        // claim taken by another replica, which drives it from its last
        // checkpoint).
        let ending = match wait {
            Wait::Released => None,
            Wait::Cancelled => Some(Ending::Cancelled(active.cancel_reason())),
            Wait::CallerDeadline => Some(Ending::Failed(caller_deadline_passed(
                queued_at.elapsed(),
                true,
            ))),
            Wait::TooLong => Some(Ending::Failed(places.timed_out())),
            Wait::Admitted => {
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
                self.begin(&mut run, &active, &checkpoint, abandoned).await;
                let clock = Clock {
                    queued_at,
                    started,
                    elapsed_before,
                    caller_deadline,
                };
                if active.is_released() {
                    None
                } else {
                    self.run_until_end(&mut run, &active, &profile, &mut checkpoint, &clock)
                        .await
                }
            }
        };
        // Give back the place: the run has stopped working.
        drop(places);
        if let Some(Ending::Failed(status)) = &ending {
            mark_failed(&tracing::Span::current(), status);
        }
        match ending {
            Some(ending) => {
                self.finish(&mut run, &active, checkpoint, ending, started.elapsed())
                    .await;
                if matches!(
                    profile.strategy,
                    Strategy::Router | Strategy::OrchestratorWorkers
                ) {
                    self.cancel_sub_runs(&run).await;
                }
            }
            None => self.hand_off(&run, &active).await,
        }
        drop(running);
        self.drop_budget(&run_id);
        lock(&self.active).remove(&run_id);
        active.mark_ended();
    }

    /// Waits for the run's place (QUEUED), unless cancelled, out of the
    /// caller's time or of `max_queue_wait` meanwhile; leaving drops the
    /// run's turn.
    async fn wait_for_places(
        &self,
        active: &ActiveRun,
        places: &mut Places,
        caller_deadline: Option<Instant>,
    ) -> Wait {
        let too_long = places.deadline();
        tokio::select! {
            biased;
            () = active.released() => Wait::Released,
            () = places.acquire() => Wait::Admitted,
            () = active.cancelled() => Wait::Cancelled,
            () = until(caller_deadline) => Wait::CallerDeadline,
            () = until(too_long) => Wait::TooLong,
        }
    }

    /// Marks a run that starts now RUNNING (RUN_STARTED, stored before it
    /// goes out), or tells the followers of a resumed run that its step
    /// restarts, naming the sequence numbers its previous driver abandoned.
    /// A run whose first event cannot be stored is released (the
    /// maintenance drives it again).
    async fn begin(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        checkpoint: &Checkpoint,
        abandoned: Option<std::ops::RangeInclusive<i32>>,
    ) {
        if run.start_time.is_none() {
            run.start_time = Some(now_micros());
            run.state = pb::RunState::Running;
            active.set_state(run.state);
            let started = active.reserve(run_event::Event::RunStarted(pb::RunStarted {
                agent: run.agent.clone(),
                model: run.model.clone(),
                session_id: run.session_id.clone(),
                limits: run.to_proto().limits,
                objective: run.objective.clone(),
            }));
            let mut delay = Duration::from_millis(50);
            for attempt in 1..=FIRST_EVENT_ATTEMPTS {
                if self
                    .flush_with(run, active, Some(checkpoint), Some(&started))
                    .await
                {
                    active.publish_stored(started);
                    return;
                }
                if active.is_released() || attempt == FIRST_EVENT_ATTEMPTS {
                    break;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            tracing::warn!(run_id = %run.run_id, "could not store the run's start; leaving it to be driven again");
            active.release();
        } else {
            // Resumed after the instance that drove it stopped.
            let step = checkpoint.step + 1;
            let (first, last) = abandoned
                .as_ref()
                .map_or((0, 0), |range| (*range.start(), *range.end()));
            let message = if abandoned.is_some() {
                format!(
                    "step {step} restarted: the run resumed from its checkpoint after the \
                     instance driving it stopped; events {first} to {last} were abandoned"
                )
            } else {
                format!(
                    "step {step} restarted: the run resumed from its checkpoint after the \
                     instance driving it stopped"
                )
            };
            self.emit(
                active,
                run_event::Event::Progress(pb::Progress {
                    step_restarted: true,
                    abandoned_first_sequence: first,
                    abandoned_last_sequence: last,
                    ..progress(run, step, message)
                }),
            )
            .await;
        }
    }

    /// Runs the steps until an ending: an answer, a failure, the run's
    /// timeout or its caller's deadline, or a cancel; `None` when the run
    /// is released.
    async fn run_until_end(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        profile: &AgentProfile,
        checkpoint: &mut Checkpoint,
        clock: &Clock,
    ) -> Option<Ending> {
        let timeout = run_timeout(run);
        // The run's own timeout (less what it ran before a resume), or its
        // caller's deadline if sooner.
        let own_deadline = clock.started + timeout.saturating_sub(clock.elapsed_before);
        let by_caller = clock
            .caller_deadline
            .is_some_and(|caller| caller <= own_deadline);
        let deadline = clock
            .caller_deadline
            .map_or(own_deadline, |caller| caller.min(own_deadline));
        let run_id = run.run_id.clone();
        let work = self.run_steps(run, active, profile, checkpoint, deadline);
        let ending = tokio::select! {
            biased;
            () = active.released() => return None,
            () = active.cancelled() => Ending::Cancelled(active.cancel_reason()),
            result = tokio::time::timeout_at(deadline, work) => match result {
                Ok(Ok(output)) => Ending::Finished(output),
                Ok(Err(status)) if by_caller && Instant::now() + DEADLINE_SLACK >= deadline => {
                    // A peer answered DEADLINE_EXCEEDED (or its call was
                    // not made) just as the caller's time ran out.
                    tracing::debug!(run_id = %run_id, error = %status, "a call failed at the caller's deadline");
                    Ending::Failed(caller_deadline_passed(clock.queued_at.elapsed(), false))
                }
                Ok(Err(status)) => Ending::Failed(status),
                Err(_) if by_caller => {
                    Ending::Failed(caller_deadline_passed(clock.queued_at.elapsed(), false))
                }
                Err(_) => Ending::Failed(Status::deadline_exceeded(format!(
                    "the run exceeded its timeout of {timeout:?}"
                ))),
            },
        };
        Some(ending)
    }

    /// The run's strategy (see the module's doc and [`super::strategy`]),
    /// given what every step needs.
    async fn run_steps(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        profile: &AgentProfile,
        checkpoint: &mut Checkpoint,
        deadline: Instant,
    ) -> Result<String, Status> {
        // Only the tools the run's end user may use are offered (a run
        // stored before identities were is not restricted).
        let allowed = run
            .identity
            .as_ref()
            .map(|identity| identity.allow.tools.clone())
            .unwrap_or_default();
        let mut specs = self.peers.tool_specs(profile, &allowed, deadline).await?;
        if profile.memory.enabled {
            specs.extend(
                memory_tools::specs()
                    .into_iter()
                    .filter(|spec| allowed.allows(&spec.name)),
            );
        }
        specs.extend(strategy::delegate_spec(profile));
        let prompts = self.prompts_of(&run.agent);
        let cx = StepContext {
            active,
            profile,
            specs: &specs,
            deadline,
            series: Arc::clone(self.metrics.agent(&run.agent)),
            prompts: &prompts,
            sub_runs: std::sync::atomic::AtomicUsize::new(0),
        };
        self.run_strategy(run, &cx, checkpoint).await
    }

    /// The conversation a new run starts with: the profile's system prompt,
    /// the session's history, the objective.
    pub(super) async fn first_checkpoint(
        &self,
        run: &RunRow,
        profile: &AgentProfile,
    ) -> Checkpoint {
        let mut messages = Vec::new();
        let history = match self.store.session_history(&run.session_id).await {
            Ok(history) => history,
            Err(err) => {
                tracing::warn!(run_id = %run.run_id, error = %err, "cannot read the session's history; starting without it");
                Vec::new()
            }
        };
        let recalled = self.auto_recall(run, profile).await;
        if history.first().map(|m| m.role()) != Some(llm::Role::System)
            && (!profile.system_prompt.is_empty() || recalled.is_some())
        {
            let content = match &recalled {
                Some(notes) if profile.system_prompt.is_empty() => notes.clone(),
                Some(notes) => format!("{}\n\n{notes}", profile.system_prompt),
                None => profile.system_prompt.clone(),
            };
            messages.push(llm::Message {
                role: llm::Role::System.into(),
                content,
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

    /// Records the run's end: the terminal event, the row, the final
    /// checkpoint (the session's history for the next run); then, if this
    /// instance stored it, the audit event and the metrics; then the
    /// terminal event goes to the followers.
    async fn finish(
        &self,
        run: &mut RunRow,
        active: &ActiveRun,
        checkpoint: Checkpoint,
        ending: Ending,
        duration: Duration,
    ) {
        apply(run, &checkpoint);
        let audit = RunEndAudit::of(&ending, &active.cancelled_by());
        let event = terminal_event(run, active, ending, duration);
        run.end_time = Some(now_micros());
        active.set_state(run.state);
        let terminal = active.reserve(event);
        // Recorded once, by the instance that stored the end; when storing
        // failed, the instance that resumes the run records its end, and
        // the end is not sent (it never happened as far as the store knows).
        if self.store_end(run, active, &checkpoint, &terminal).await {
            self.audit_run_end(run, audit);
            if let Some(end) = RunEnd::of(run.state) {
                let start = run.start_time.unwrap_or(run.create_time);
                let took = Duration::from_micros(
                    u64::try_from(now_micros().saturating_sub(start)).unwrap_or(0),
                );
                self.metrics.agent(&run.agent).finished(end, took);
            }
            active.publish_stored(terminal);
        }
    }
}

/// Sets the run row's final state (and output or error) for `ending`, and
/// returns the terminal event that says so.
fn terminal_event(
    run: &mut RunRow,
    active: &ActiveRun,
    ending: Ending,
    duration: Duration,
) -> run_event::Event {
    let usage = Some(store::usage(run.input_tokens, run.output_tokens));
    let duration = prost_types::Duration::try_from(duration).ok();
    match ending {
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
                cancelled_by: active.cancelled_by(),
                usage,
                steps: run.steps,
            })
        }
    }
}
