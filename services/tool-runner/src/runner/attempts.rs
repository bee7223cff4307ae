//! One call's attempts as the shared attempt loop
//! (`agentmesh_resilience::attempt`) sees them: a single target (the tool,
//! guarded by its circuit), an attempt that runs the tool until the call's
//! deadline, and the tool's rules for what is retried and what counts
//! against its circuit (see `resilience`).
//!
//! ```text
//! AttemptLoop ──attempt──▶ ToolAttempts::attempt ─▶ progress (for a retry) ─▶ run the tool
//!             ──classify─▶ resilience::retry_reason (idempotent tools only)
//!             ──circuit──▶ resilience::health_failure (a timeout only when
//!                          the tool's own limit, not the caller's, bound it)
//!             ──observe──▶ retries counted, retries and a spent budget logged
//! ```

use std::time::Duration;

use agentmesh_kit::text::truncate_bytes;
use agentmesh_proto::tools::v1::execute_tool_stream_response::Event;
use agentmesh_proto::tools::v1::{ExecuteToolStreamResponse, ToolErrorKind, ToolProgress};
use agentmesh_resilience::{Attempt, AttemptEvent, Attempts, CircuitOpen, NoRetry, Verdict};
use serde_json::Value;

use super::{Call, ToolRunner};
use crate::builtin::{self, BuiltinContext};
use crate::command::EventSender;
use crate::command::RunEnv;
use crate::config::format_duration;
use crate::metrics::Outcome;
use crate::outcome::{ToolFailure, ToolOutcome};
use crate::pipeline::PipelineCall;
use crate::registry::Implementation;
use crate::resilience;

/// How much of a failed attempt's message a retry's progress quotes.
const MAX_QUOTED_FAILURE: usize = 200;

/// The attempts of one admitted call.
pub(super) struct ToolAttempts<'a> {
    pub(super) runner: &'a ToolRunner,
    pub(super) call: &'a Call,
    /// Where a streaming caller gets progress and output.
    pub(super) events: Option<&'a EventSender>,
    /// How long the call waited for a place (it counts against its timeout).
    pub(super) waited: Duration,
}

impl Attempts for ToolAttempts<'_> {
    type Output = Value;
    type Error = ToolFailure;

    async fn attempt(&mut self, attempt: Attempt<'_, ToolFailure>) -> ToolOutcome {
        if let Some(failed) = attempt.after {
            progress(
                self.events,
                format!(
                    "attempt {} failed ({}); retrying, attempt {} of {}",
                    attempt.number.saturating_sub(1),
                    truncate_bytes(&failed.message, MAX_QUOTED_FAILURE),
                    attempt.number,
                    self.runner.retries.config().max_attempts
                ),
            )
            .await;
        }
        self.runner
            .attempt(self.call, self.events, self.waited)
            .await
    }

    fn classify(&self, failure: &ToolFailure) -> Verdict {
        match resilience::retry_reason(self.call.tool(), failure) {
            Some(reason) => Verdict::retry(reason),
            None => Verdict::stop(failure.kind.as_str_name()),
        }
    }

    fn circuit_failure(&self, failure: &ToolFailure) -> Option<String> {
        // A timeout is the tool's only when its own limit bound the call:
        // when the caller's deadline or requested timeout was shorter, the
        // caller's time ran out, not the tool's.
        let own_limit = self.call.tool().timeout.min(self.runner.max_timeout);
        if failure.kind == ToolErrorKind::Timeout && self.call.timeout < own_limit {
            return None;
        }
        resilience::health_failure(self.call.tool(), failure)
    }

    /// Runs that failed while this call waited to retry (its own or
    /// others') opened the circuit: then the failure before is the answer.
    fn refused(&mut self, open: CircuitOpen, previous: Option<ToolFailure>) -> ToolFailure {
        // The first attempt runs on the leave taken at admission, so a
        // refusal always follows a failure.
        previous.unwrap_or_else(|| ToolFailure::failed(open.to_string()))
    }

    fn observe(&mut self, event: AttemptEvent<'_, ToolFailure>) {
        let tool = self.call.tool();
        match event {
            // Counted once the retry is under way: after the backoff, with
            // the circuit's leave.
            AttemptEvent::Attempting {
                retry: Some(reason),
                ..
            } => {
                if let Some(reporter) = &self.runner.reporter {
                    reporter.retried(tool.target(), reason);
                }
            }
            AttemptEvent::Retrying {
                attempt,
                reason,
                delay,
                failure,
                ..
            } => tracing::info!(
                tool = tool.name(),
                call_id = %self.call.call_id,
                attempt,
                reason,
                delay_ms = delay.as_millis(),
                error = %failure.message,
                "tool attempt failed; retrying"
            ),
            AttemptEvent::NotRetrying {
                why: NoRetry::Budget,
                ..
            } => tracing::info!(tool = tool.name(), "retry budget spent; not retrying"),
            _ => {}
        }
    }
}

impl ToolRunner {
    /// One attempt, until the call's deadline; counted in the metrics as one
    /// execution.
    async fn attempt(
        &self,
        call: &Call,
        events: Option<&EventSender>,
        waited: Duration,
    ) -> ToolOutcome {
        // Dropped with this future when the caller goes away: then it counts
        // the execution as cancelled.
        let execution = self
            .metrics
            .as_ref()
            .map(|metrics| metrics.start(call.tool.name()));
        let deadline = tokio::time::Instant::from_std(call.deadline);
        let outcome = match tokio::time::timeout_at(deadline, self.run(call, events)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ToolFailure::timeout(timeout_message(call.timeout, waited))),
        };
        if let Some(execution) = execution {
            execution.finish(match &outcome {
                Ok(_) => Outcome::Ok,
                Err(failure) => Outcome::of_failure(failure.kind),
            });
        }
        outcome
    }

    async fn run(&self, call: &Call, events: Option<&EventSender>) -> ToolOutcome {
        let tool = &call.tool;
        tool.check_arguments(&call.arguments)?;
        let workspace_dir = call.workspace_dir.clone();
        let host = self.sandbox.as_deref();
        match &tool.implementation {
            Implementation::Builtin(builtin) => {
                let context = BuiltinContext {
                    workspace_dir,
                    limits: self.file_limits,
                    owner: host.and_then(crate::sandbox::SandboxHost::user),
                    http: self.http.clone(),
                };
                builtin::run(*builtin, call.arguments.clone(), &context).await
            }
            Implementation::Pipeline(pipeline) => {
                // Only the service runs a pipeline, and it always gives its
                // steps a way to call their tools.
                let Some(steps) = &call.steps else {
                    return Err(ToolFailure::failed(format!(
                        "pipeline `{}` cannot call its steps' tools here",
                        tool.name()
                    )));
                };
                let context = PipelineCall {
                    steps: &**steps,
                    call_id: &call.call_id,
                    deadline: call.deadline,
                    events,
                };
                pipeline.run(&call.arguments, context).await
            }
            Implementation::Mcp(mcp) => {
                crate::mcp::call(&mcp.server, &mcp.remote, &call.arguments, events).await
            }
            Implementation::Command(command) => {
                let env = RunEnv {
                    workspace_dir: &workspace_dir,
                    host,
                    file_size_cap: call.file_size_cap,
                };
                let output = command.run(&call.arguments, env, events).await?;
                tool.check_output(&output)?;
                Ok(output)
            }
        }
    }
}

/// Why an attempt was stopped: the call's timeout, and the part of it spent
/// waiting for a place, if any.
fn timeout_message(timeout: Duration, waited: Duration) -> String {
    let waited = Duration::from_millis(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
    if waited.is_zero() {
        format!("timed out after {}", format_duration(timeout))
    } else {
        format!(
            "timed out after {} (of which {} waiting for a place)",
            format_duration(timeout),
            format_duration(waited)
        )
    }
}

/// Tells a streaming caller what happens (a retry), as progress.
async fn progress(events: Option<&EventSender>, message: String) {
    if let Some(events) = events {
        // The receiver is gone only when the client left; the caller
        // notices and stops the call.
        let _ = events
            .send(Ok(ExecuteToolStreamResponse {
                event: Some(Event::Progress(ToolProgress {
                    percent: None,
                    message,
                })),
            }))
            .await;
    }
}
