//! `Generate`: one complete answer. The attempt loop ([`attempt_loop`])
//! follows the call's plan — retries with backoff, fallbacks along the
//! route, each attempt bounded by the caller's deadline and settled with the
//! target's circuit — and the answer is priced, recorded (audit event and
//! metrics, through the call's record) and mapped to the response.

use std::sync::Arc;
use std::time::Instant as StdInstant;

use agentmesh_proto::llm::v1::GenerateResponse;
use tonic::Status;
use tracing::Instrument as _;

use crate::audit::{CallEnd, LlmCallRecord};
use crate::call::{Prepared, log_retry, reported_model, within_caller_deadline};
use crate::completion::Completion;
use crate::gateway::{Gateway, Resolved};
use crate::resilience::{Next, settle_permit};

/// Answers a prepared call. Dropped with the caller's request, `record`
/// records the call as abandoned.
pub(crate) async fn generate(
    gateway: &Gateway,
    mut record: LlmCallRecord,
    mut prepared: Prepared,
) -> Result<GenerateResponse, Status> {
    let started = StdInstant::now();
    let (resolved, completion) = match attempt_loop(&mut prepared, &mut record).await {
        Ok(answer) => answer,
        Err(status) => {
            record.failed(&status, &CallEnd::default());
            return Err(status);
        }
    };
    Ok(respond(
        gateway,
        record,
        &mut prepared,
        resolved,
        completion,
        started,
    ))
}

/// The attempts of one call over its plan: the first completion, with the
/// target that gave it, or the final status once the plan gives up.
async fn attempt_loop(
    prepared: &mut Prepared,
    record: &mut LlmCallRecord,
) -> Result<(Resolved, Completion), Status> {
    let deadline = prepared.caller_deadline;
    loop {
        let permit = match prepared.plan.admit() {
            Ok(permit) => permit,
            Err((Next::Fallback, _)) => continue,
            Err((_, err)) => return Err(prepared.final_status(err)),
        };
        let resolved = prepared.resolved.at(prepared.plan.target());
        record.resolved(&resolved);
        let result = within_caller_deadline(
            deadline,
            resolved
                .provider
                .provider
                .generate(prepared.call())
                .instrument(record.span().clone()),
        )
        .await
        .and_then(|result| result);
        match result {
            Ok(completion) => {
                settle_permit(permit, Ok(()));
                return Ok((resolved, completion));
            }
            Err(err) => {
                settle_permit(permit, Err(&err));
                match prepared.plan.after_failure(&err) {
                    Next::Retry(delay) => {
                        log_retry(&resolved, &err, "retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Next::Fallback => log_retry(&resolved, &err, "falling back"),
                    Next::GiveUp => return Err(prepared.final_status(err)),
                }
            }
        }
    }
}

/// The response to a call `resolved` answered with `completion`: priced,
/// its tokens settled with the rate limits, and its end recorded.
fn respond(
    gateway: &Gateway,
    mut record: LlmCallRecord,
    prepared: &mut Prepared,
    resolved: Resolved,
    completion: Completion,
    started: StdInstant,
) -> GenerateResponse {
    let request = Arc::clone(&prepared.request);
    let usage = gateway.priced(
        &resolved,
        &completion.model,
        completion.final_usage(&request),
    );
    record.attempts(prepared.plan.attempts());
    record.succeeded(&CallEnd {
        completion: Some(&completion),
        usage: Some(&usage),
        finish_reason: Some(completion.finish_reason),
    });
    prepared.charges.settle(Prepared::used_tokens(&usage));
    tracing::info!(
        route = %resolved.route,
        provider = %resolved.instance,
        model = %resolved.model,
        finish_reason = ?completion.finish_reason,
        input_tokens = usage.input_tokens,
        output_tokens = usage.output_tokens,
        attempts = prepared.plan.attempts(),
        took = ?started.elapsed(),
        run_id = %request.run_id,
        "generated"
    );
    GenerateResponse {
        finish_reason: completion.finish_reason.into(),
        usage: Some(usage),
        provider: resolved.instance.clone(),
        model: reported_model(&completion, &resolved),
        route: resolved.route,
        response_id: completion.response_id,
        attempts: i32::try_from(prepared.plan.attempts()).unwrap_or(i32::MAX),
        provider_finish_reason: completion.provider_finish_reason,
        message: Some(completion.message),
    }
}
