//! `Generate`: one complete answer. The call's attempt loop (the shared
//! `AttemptLoop`: retries with backoff, fallbacks along the route, each
//! attempt asked of and settled with the target's circuit) runs
//! [`UnaryAttempts`]: each attempt one provider completion bounded by the
//! caller's deadline. The answer is priced, recorded (audit event and
//! metrics, through the call's record) and mapped to the response.
//!
//! ```text
//! generate ─▶ AttemptLoop::run(UnaryAttempts) ─▶ Ok: respond (priced, recorded, settled)
//!                                             └▶ Err: final status, recorded as failed
//! ```

use std::sync::Arc;
use std::time::Instant as StdInstant;

use agentmesh_proto::llm::v1::GenerateResponse;
use agentmesh_resilience::{Attempt, AttemptEvent, AttemptLoop, Attempts, CircuitOpen, Verdict};
use tonic::Status;
use tracing::Instrument as _;

use crate::audit::{CallEnd, LlmCallRecord};
use crate::call::{Prepared, reported_model, within_caller_deadline};
use crate::completion::Completion;
use crate::error::ProviderError;
use crate::gateway::{Gateway, Resolved};
use crate::resilience::{circuit_failure, verdict};

/// Answers a prepared call by running its attempt loop. Dropped with the
/// caller's request, `record` records the call as abandoned.
pub(crate) async fn generate(
    gateway: &Gateway,
    mut record: LlmCallRecord,
    mut prepared: Prepared,
    attempt_loop: AttemptLoop,
) -> Result<GenerateResponse, Status> {
    let started = StdInstant::now();
    let mut attempts = UnaryAttempts {
        gateway,
        prepared: &prepared,
        record: &mut record,
    };
    let ended = attempt_loop.run(&mut attempts).await;
    let summary = ended.summary();
    let (resolved, completion) = match ended.result {
        Ok(answer) => answer,
        Err(err) => {
            let status = prepared.final_status(err, ended.target, summary);
            record.failed(&status, &CallEnd::default());
            return Err(status);
        }
    };
    let response = respond(
        gateway,
        record,
        &mut prepared,
        (resolved, completion),
        ended.attempts,
        started,
    );
    // The spend is written before the caller can make its next call.
    prepared.spend.recorded().await;
    Ok(response)
}

/// The attempts of one call as the attempt loop sees them: a completion
/// from the chain's target, bounded by the caller's deadline.
struct UnaryAttempts<'a> {
    gateway: &'a Gateway,
    prepared: &'a Prepared,
    record: &'a mut LlmCallRecord,
}

impl Attempts for UnaryAttempts<'_> {
    /// The completion, with the target that gave it.
    type Output = (Resolved, Completion);
    type Error = ProviderError;

    async fn attempt(
        &mut self,
        attempt: Attempt<'_, ProviderError>,
    ) -> Result<(Resolved, Completion), ProviderError> {
        let resolved = self.prepared.at(attempt.target);
        self.record.resolved(&resolved);
        let completion = within_caller_deadline(
            self.prepared.caller_deadline,
            resolved
                .provider
                .provider
                .generate(self.prepared.call(&resolved))
                .instrument(self.record.span().clone()),
        )
        .await
        .and_then(|result| result)?;
        Ok((resolved, completion))
    }

    fn classify(&self, err: &ProviderError) -> Verdict {
        verdict(err, &self.prepared.resolved.fallback_on)
    }

    fn circuit_failure(&self, err: &ProviderError) -> Option<String> {
        circuit_failure(err)
    }

    fn refused(&mut self, open: CircuitOpen, _previous: Option<ProviderError>) -> ProviderError {
        ProviderError::CircuitOpen {
            message: open.to_string(),
            retry_in: open.retry_in,
        }
    }

    fn observe(&mut self, event: AttemptEvent<'_, ProviderError>) {
        self.prepared
            .observe(self.gateway.reporter(), &event, |err| Some(err));
    }
}

/// The response to a call `resolved` answered with `completion`: priced,
/// its tokens settled with the rate limits, and its end recorded.
fn respond(
    gateway: &Gateway,
    mut record: LlmCallRecord,
    prepared: &mut Prepared,
    (resolved, completion): (Resolved, Completion),
    attempts: u32,
    started: StdInstant,
) -> GenerateResponse {
    let request = Arc::clone(&prepared.request);
    let usage = gateway.priced(
        &resolved,
        &completion.model,
        completion.final_usage(&request),
    );
    record.attempts(attempts);
    record.succeeded(&CallEnd {
        completion: Some(&completion),
        usage: Some(&usage),
        finish_reason: Some(completion.finish_reason),
    });
    prepared.settle(&usage);
    crate::call::log_success(
        gateway,
        &resolved,
        (completion.finish_reason, &usage),
        (attempts, started.elapsed()),
        &request.run_id,
        "generated",
    );
    GenerateResponse {
        finish_reason: completion.finish_reason.into(),
        usage: Some(usage),
        provider: resolved.instance.clone(),
        model: reported_model(&completion, &resolved),
        route: resolved.route,
        response_id: completion.response_id,
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        provider_finish_reason: completion.provider_finish_reason,
        message: Some(completion.message),
    }
}
