//! Sub-runs: runs started by a run (strategies `router` and
//! `orchestrator_workers`), each a real run of its own — its id, events,
//! stream, checkpoints, cancel — with `parent_run_id` naming its parent.
//!
//! ```text
//! parent's step ─▶ sub_run(key, agent, objective)
//!   stored (idempotency key `sub-run:<parent>:<key>`: a parent resumed
//!   after a crash finds the sub-run it started instead of a second one)
//!   ─▶ sub_run_started (parent) ─▶ driven in the parent's place
//!   (admission: never queued behind its own parent) ─▶ waited for
//!   ─▶ sub_run_finished (parent) ─▶ its output as the parent's result
//! parent ends ─▶ its unfinished sub-runs are cancelled
//! ```
//!
//! A sub-run inherits its parent's tenant, subject, identity (allow-lists
//! included) and deadline; its step limit is its profile's, at most what
//! its parent has left. Depth is bounded ([`MAX_DEPTH`]).

use std::time::Duration;

use agentmesh_kit::time::now_micros;
use agentmesh_proto::orchestrator::v1::{self as pb, run_event};
use tokio::time::Instant;
use tonic::Status;

use super::maintain::acting_for;
use super::{Engine, lock};
use crate::store::{Created, Limits, RunRow};

/// Sub-runs of sub-runs of … at most this deep below a client's run.
pub(super) const MAX_DEPTH: usize = 3;

/// What a parent asks of a sub-run.
#[derive(Debug)]
pub(super) struct SubRunAsk<'a> {
    /// Unique among the parent's sub-runs, the same when a resumed parent
    /// asks again (e.g. `step-3-call_2`).
    pub(super) key: String,
    pub(super) agent: &'a str,
    pub(super) objective: String,
    /// Model calls the parent has left for it.
    pub(super) max_steps: i32,
    /// The parent's deadline.
    pub(super) deadline: Instant,
}

impl Engine {
    /// Starts the sub-run (or finds the one a resumed parent started),
    /// waits for its end, and returns it as stored.
    pub(super) async fn sub_run(
        &self,
        parent: &RunRow,
        parent_active: &super::ActiveRun,
        ask: SubRunAsk<'_>,
    ) -> Result<RunRow, Status> {
        let depth = self.depth_of(parent).await?;
        if depth >= MAX_DEPTH {
            return Err(Status::failed_precondition(format!(
                "run {} is {depth} sub-runs deep; sub-runs may nest at most {MAX_DEPTH} deep",
                parent.run_id
            )));
        }
        let child = self.child_row(parent, &ask)?;
        let child = self.start_child(child, parent).await?;
        self.emit(
            parent_active,
            run_event::Event::SubRunStarted(pb::SubRunStarted {
                run_id: child.run_id.clone(),
                agent: child.agent.clone(),
                objective: child.objective.clone(),
            }),
        )
        .await;
        let ended = self.wait_for_end(&child.run_id).await?;
        self.emit(
            parent_active,
            run_event::Event::SubRunFinished(pb::SubRunFinished {
                run_id: ended.run_id.clone(),
                agent: ended.agent.clone(),
                state: ended.state.into(),
                output: ended.output.clone(),
                error: ended.error.clone(),
            }),
        )
        .await;
        Ok(ended)
    }

    /// How many parents `run` has.
    async fn depth_of(&self, run: &RunRow) -> Result<usize, Status> {
        let mut depth = 0;
        let mut parent = run.parent_run_id.clone();
        while let Some(id) = parent {
            depth += 1;
            if depth > MAX_DEPTH {
                break;
            }
            parent = self
                .store
                .get_run_any_tenant(&id)
                .await
                .map_err(|err| self.store_failed(&err))?
                .and_then(|row| row.parent_run_id);
        }
        Ok(depth)
    }

    /// The sub-run's row (QUEUED): the parent's owner and deadline, the
    /// asked agent's profile, a session of its own.
    fn child_row(&self, parent: &RunRow, ask: &SubRunAsk<'_>) -> Result<RunRow, Status> {
        let profile = self.config.agents.get(ask.agent).ok_or_else(|| {
            Status::invalid_argument(format!(
                "there is no agent profile {:?} to start a sub-run of",
                ask.agent
            ))
        })?;
        if let Some(identity) = &parent.identity
            && !identity.allow.agents.allows(ask.agent)
        {
            return Err(Status::permission_denied(format!(
                "agent {:?} is not allowed for this tenant or key",
                ask.agent
            )));
        }
        let left = ask.deadline.saturating_duration_since(Instant::now());
        let tree = self.tree_budget(parent);
        let (tokens_left, micros_left) = tree.left();
        if left < Duration::from_millis(10) {
            return Err(Status::deadline_exceeded(
                "no time is left for a sub-run before the parent's deadline",
            ));
        }
        Ok(RunRow {
            run_id: uuid::Uuid::now_v7().to_string(),
            tenant: parent.tenant.clone(),
            subject: parent.subject.clone(),
            agent: ask.agent.to_owned(),
            session_id: uuid::Uuid::now_v7().to_string(),
            objective: ask.objective.clone(),
            state: pb::RunState::Queued,
            idempotency_key: Some(format!("sub-run:{}:{}", parent.run_id, ask.key)),
            model: profile.model.clone(),
            limits: Limits {
                max_steps: profile
                    .max_steps
                    .min(ask.max_steps)
                    .min(tree.calls_left())
                    .max(1),
                max_output_tokens: profile.max_output_tokens,
                timeout_ms: i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1),
                // What the tree has left, as its own budgets (budget.rs).
                max_tokens: if tokens_left > 0 {
                    tokens_left
                } else {
                    profile.max_tokens
                },
                max_cost_micros: if micros_left > 0 {
                    micros_left
                } else {
                    crate::config::usd_to_micros(profile.max_cost_usd)
                },
            },
            labels: parent.labels.clone(),
            create_time: now_micros(),
            start_time: None,
            end_time: None,
            output: String::new(),
            error: None,
            input_tokens: 0,
            output_tokens: 0,
            steps: 0,
            tool_calls: 0,
            last_sequence: 0,
            priority: parent.priority,
            identity: parent.identity.clone(),
            callback: None,
            parent_run_id: Some(parent.run_id.clone()),
        })
    }

    /// Stores the sub-run and drives it in its parent's place; or returns
    /// the one a resumed parent started before.
    async fn start_child(&self, child: RunRow, parent: &RunRow) -> Result<RunRow, Status> {
        let Some(engine) = self.me.upgrade() else {
            return Err(Status::unavailable("the orchestrator is stopping"));
        };
        let Some(active) = self.register(&child, None) else {
            return Err(Status::internal("a new run id is taken"));
        };
        let created = self
            .store
            .create_run(&child, true, &self.owner, self.lease_until())
            .await;
        match created {
            Ok(Created::New(child)) => {
                self.share_budget(parent, &child.run_id);
                tracing::info!(run_id = %child.run_id, parent = %parent.run_id, agent = %child.agent, "sub-run started");
                self.audit_run_started(&child);
                let places = self.admission.inherited(&child.tenant, &child.agent);
                let context = acting_for(child.identity.clone());
                engine.spawn(child.clone(), active, None, context, places, None);
                Ok(child)
            }
            Ok(Created::Existing(existing)) => {
                self.forget(&child.run_id);
                self.share_budget(parent, &existing.run_id);
                Ok(existing)
            }
            Err(err) => {
                self.forget(&child.run_id);
                Err(self.store_failed(&err))
            }
        }
    }

    /// Waits for the run's end (driven here, or by another replica), and
    /// returns it as stored.
    async fn wait_for_end(&self, run_id: &str) -> Result<RunRow, Status> {
        loop {
            if let Some(active) = self.active(run_id) {
                active.ended().await;
            }
            let row = self
                .store
                .get_run_any_tenant(run_id)
                .await
                .map_err(|err| self.store_failed(&err))?
                .ok_or_else(|| Status::internal(format!("sub-run {run_id} is gone")))?;
            if row.is_terminal() {
                return Ok(row);
            }
            // Driven by another replica (or about to be resumed).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cancels `run`'s sub-runs that have not ended (its end is theirs):
    /// recorded for whichever replica drives them, at once here.
    pub(super) async fn cancel_sub_runs(&self, run: &RunRow) {
        // Boxed, as store writes are in `persist`: not part of every run's task.
        let children = match Box::pin(self.store.unfinished_sub_runs(&run.run_id)).await {
            Ok(children) => children,
            Err(err) => {
                tracing::warn!(run_id = %run.run_id, error = %err, "cannot list the run's sub-runs to cancel them");
                return;
            }
        };
        let reason = format!(
            "its parent run {} ended ({})",
            run.run_id,
            run.state.as_str_name()
        );
        for child in children {
            if let Err(err) = Box::pin(self.store.request_cancel(&child, &reason, "")).await {
                tracing::warn!(run_id = %child, error = %err, "cannot record the cancel of a sub-run");
            }
            let local = lock(&self.active).get(&child).cloned();
            if let Some(active) = local {
                active.cancel(reason.clone(), String::new());
            }
        }
    }
}
