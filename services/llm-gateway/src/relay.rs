//! `GenerateStream`: the relay task. Each attempt's provider events are
//! relayed to the caller as they arrive; an attempt that fails after it sent
//! output is followed by a `reset` (discard what came, the next attempt
//! starts over) before the next attempt; the stream ends with exactly one
//! `finished` — FINISH_REASON_ERROR then the error status when the call
//! failed for good after output was sent — or, when nothing was sent, with
//! the error status alone.
//!
//! ```text
//! start ─▶ spawn Relay::run ──▶ channel (STREAM_BUFFER) ──▶ caller
//!          (attempt loop: attempt ─▶ reset? ─▶ backoff ─▶ attempt …)
//!        ◀─ first message awaited, so a call failing before any output
//!           fails as a whole
//! ```
//!
//! The usage of abandoned attempts is kept and added to the final usage;
//! the call's record ends once, whichever way the stream ends (a caller
//! that goes away ends it as abandoned).

use std::sync::Arc;
use std::time::Instant as StdInstant;

use agentmesh_proto::llm::v1::{
    FinishReason, GenerateStreamResponse, StreamFinished, StreamReset, TextDelta, ToolCallDelta,
    Usage, generate_stream_response::Event,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument as _;

use crate::audit::{CallEnd, LlmCallRecord};
use crate::call::{Prepared, add_usage, log_retry, reported_model, within_caller_deadline};
use crate::completion::{Assembler, ProviderEvent};
use crate::error::ProviderError;
use crate::gateway::{Gateway, Resolved};
use crate::resilience::{Next, settle_permit};

/// The stream a GenerateStream call answers with.
pub(crate) type ResponseStream = BoxStream<'static, Result<GenerateStreamResponse, Status>>;

/// Messages the relay may run ahead of a slow caller.
const STREAM_BUFFER: usize = 32;

/// Starts relaying a prepared call, and answers once its first message is
/// there: a call that fails before any output (no key, refused connection,
/// HTTP error, after every retry and fallback) fails as a whole, with its
/// status at once.
pub(crate) async fn start(
    gateway: Arc<Gateway>,
    record: LlmCallRecord,
    prepared: Prepared,
) -> Result<ResponseStream, Status> {
    let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER);
    let span = record.span().clone();
    let relay = Relay {
        gateway,
        prepared,
        record: Some(record),
        sender,
        spent: Usage::default(),
        output_sent: false,
        started: StdInstant::now(),
    };
    tokio::spawn(relay.run().instrument(span));
    let first = match receiver.recv().await {
        Some(Ok(first)) => first,
        Some(Err(status)) => return Err(status),
        None => {
            return Err(Status::internal(
                "the stream ended before its first message",
            ));
        }
    };
    let rest = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|message| (message, receiver))
    });
    Ok(futures::stream::once(async move { Ok(first) })
        .chain(rest)
        .boxed())
}

/// One streamed call: attempts over its plan, relaying each attempt's
/// events to the caller as they arrive, with a `reset` between an attempt
/// that sent output and the next, and exactly one `finished` at the end.
/// Runs as its own task; the caller's side is the channel's receiver.
struct Relay {
    gateway: Arc<Gateway>,
    prepared: Prepared,
    /// The call's audit record, until its end is recorded.
    record: Option<LlmCallRecord>,
    sender: mpsc::Sender<Result<GenerateStreamResponse, Status>>,
    /// Usage of abandoned attempts.
    spent: Usage,
    /// Whether any delta reached the caller (in any attempt).
    output_sent: bool,
    started: StdInstant,
}

/// How one attempt ended.
enum AttemptEnd {
    /// The answer is complete and `finished` was sent.
    Finished,
    /// The attempt failed; whether it had sent output, and its assembler.
    Failed(ProviderError, bool, Box<Assembler>),
    /// The caller went away.
    Gone(Box<Assembler>),
}

impl Relay {
    async fn run(mut self) {
        loop {
            let permit = match self.prepared.plan.admit() {
                Ok(permit) => permit,
                Err((Next::Fallback, _)) => continue,
                Err((_, err)) => {
                    self.give_up(err, &Assembler::default()).await;
                    return;
                }
            };
            let resolved = self.prepared.resolved.at(self.prepared.plan.target());
            if let Some(record) = self.record.as_mut() {
                record.resolved(&resolved);
            }
            match self.attempt(&resolved).await {
                AttemptEnd::Finished => {
                    settle_permit(permit, Ok(()));
                    return;
                }
                AttemptEnd::Gone(assembler) => {
                    drop(permit);
                    self.abandoned(&resolved, &assembler);
                    return;
                }
                AttemptEnd::Failed(err, sent, assembler) => {
                    settle_permit(permit, Err(&err));
                    let next = self.prepared.plan.after_failure(&err);
                    if matches!(next, Next::GiveUp) {
                        self.give_up(err, &assembler).await;
                        return;
                    }
                    let attempt_usage = self.usage_of(&resolved, &assembler, false);
                    add_usage(&mut self.spent, &attempt_usage);
                    let action = match next {
                        Next::Retry(_) => "retrying",
                        _ => "falling back",
                    };
                    log_retry(&resolved, &err, action);
                    if sent {
                        // The caller has part of an answer that will not be
                        // finished: tell it to discard it.
                        let next_target = self.prepared.plan.target().name();
                        let reason = format!(
                            "{}/{}: {err}; {action} to {next_target}",
                            resolved.instance, resolved.model
                        );
                        let cause = err.clone().into_status(&resolved.instance, &resolved.model);
                        let reset = GenerateStreamResponse {
                            event: Some(Event::Reset(StreamReset {
                                reason,
                                cause: Some(agentmesh_kit::status::to_rpc_status(&cause)),
                                abandoned_provider: resolved.instance.clone(),
                                abandoned_model: resolved.model.clone(),
                                abandoned_usage: Some(attempt_usage),
                                next_attempt: i32::try_from(self.prepared.plan.attempts() + 1)
                                    .unwrap_or(i32::MAX),
                            })),
                        };
                        tracing::debug!(reason = %err, "stream reset sent");
                        if self.sender.send(Ok(reset)).await.is_err() {
                            self.abandoned(&resolved, &Assembler::default());
                            return;
                        }
                    }
                    if let Next::Retry(delay) = next {
                        tokio::select! {
                            () = self.sender.closed() => {
                                self.abandoned(&resolved, &Assembler::default());
                                return;
                            }
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }

    /// One attempt at `resolved`: its events relayed until it finishes,
    /// fails or the caller goes away.
    async fn attempt(&mut self, resolved: &Resolved) -> AttemptEnd {
        let mut events = resolved
            .provider
            .provider
            .generate_stream(self.prepared.call());
        let mut assembler = Assembler::default();
        let mut sent = false;
        let deadline = self.prepared.caller_deadline;
        loop {
            let next = tokio::select! {
                biased;
                () = self.sender.closed() => return AttemptEnd::Gone(Box::new(assembler)),
                next = within_caller_deadline(deadline, events.next()) => next,
            };
            let event = match next {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(err))) | Err(err) => {
                    return AttemptEnd::Failed(err, sent, Box::new(assembler));
                }
                Ok(None) => {
                    let err = ProviderError::Broken(
                        "the provider's stream ended without finishing the answer".to_owned(),
                    );
                    return AttemptEnd::Failed(err, sent, Box::new(assembler));
                }
            };
            assembler.push(&event);
            if assembler.output_started()
                && let Some(record) = self.record.as_mut()
            {
                record.first_token();
            }
            let out = match event {
                ProviderEvent::Text(text) if !text.is_empty() => {
                    Event::TextDelta(TextDelta { text })
                }
                ProviderEvent::ToolCallDelta {
                    index,
                    id,
                    name,
                    arguments_fragment,
                } => Event::ToolCallDelta(ToolCallDelta {
                    index: i32::try_from(index).unwrap_or(i32::MAX),
                    id,
                    name,
                    arguments_json_delta: arguments_fragment,
                }),
                ProviderEvent::Finished { .. } => {
                    let finished = self.finished(resolved, &assembler, None, None);
                    let _ = self.sender.send(Ok(finished)).await;
                    return AttemptEnd::Finished;
                }
                ProviderEvent::Text(_)
                | ProviderEvent::Metadata { .. }
                | ProviderEvent::Usage(_) => {
                    continue;
                }
            };
            if self
                .sender
                .send(Ok(GenerateStreamResponse { event: Some(out) }))
                .await
                .is_err()
            {
                return AttemptEnd::Gone(Box::new(assembler));
            }
            sent = true;
            self.output_sent = true;
        }
    }

    /// The call failed for good: `finished` with FINISH_REASON_ERROR first
    /// when output was sent, then the status.
    async fn give_up(&mut self, err: ProviderError, assembler: &Assembler) {
        let status = self.prepared.final_status(err);
        let resolved = self.prepared.resolved.at(self.prepared.plan.target());
        if self.output_sent {
            let finished = self.finished(
                &resolved,
                assembler,
                Some(FinishReason::Error),
                Some(&status),
            );
            let _ = self.sender.send(Ok(finished)).await;
        } else if let Some(record) = self.record.take() {
            let mut usage = self.spent;
            add_usage(&mut usage, &self.usage_of(&resolved, assembler, false));
            self.settle(&usage);
            record.failed(&status, &CallEnd::default());
        }
        let _ = self.sender.send(Err(status)).await;
    }

    /// The caller went away mid-answer: record what arrived, and its usage.
    fn abandoned(&mut self, resolved: &Resolved, assembler: &Assembler) {
        let mut usage = self.spent;
        add_usage(&mut usage, &self.usage_of(resolved, assembler, false));
        self.settle(&usage);
        let completion = assembler.output_started().then(|| assembler.completion());
        if let Some(mut record) = self.record.take() {
            record.attempts(self.prepared.plan.attempts());
            record.abandoned(&CallEnd {
                completion,
                usage: Some(&usage),
                finish_reason: None,
            });
        }
    }

    fn settle(&mut self, usage: &Usage) {
        self.prepared.charges.settle(Prepared::used_tokens(usage));
    }

    /// An attempt's usage so far (`complete` false) or final, with its cost.
    fn usage_of(&self, resolved: &Resolved, assembler: &Assembler, complete: bool) -> Usage {
        let completion = assembler.completion();
        let usage = if complete {
            completion.final_usage(&self.prepared.request)
        } else if assembler.output_started() {
            completion.usage_so_far(&self.prepared.request)
        } else {
            // Nothing came back: nothing was generated or billed.
            Usage::default()
        };
        self.gateway.priced(resolved, &completion.model, usage)
    }

    /// The `finished` message, and the end of the call's record: a success,
    /// or with `failure`, the status the stream ends with next. Its usage
    /// is the whole call's: abandoned attempts and this one.
    fn finished(
        &mut self,
        resolved: &Resolved,
        assembler: &Assembler,
        override_reason: Option<FinishReason>,
        failure: Option<&Status>,
    ) -> GenerateStreamResponse {
        let mut usage = self.spent;
        add_usage(
            &mut usage,
            &self.usage_of(resolved, assembler, override_reason.is_none()),
        );
        self.settle(&usage);
        let completion = assembler.completion();
        let finish_reason = override_reason.unwrap_or(completion.finish_reason);
        let attempts = self.prepared.plan.attempts();
        if let Some(mut record) = self.record.take() {
            record.attempts(attempts);
            let end = CallEnd {
                completion: Some(completion),
                usage: Some(&usage),
                finish_reason: Some(finish_reason),
            };
            match failure {
                Some(status) => record.failed(status, &end),
                None => record.succeeded(&end),
            }
        }
        if override_reason.is_none() {
            tracing::info!(
                route = %resolved.route,
                provider = %resolved.instance,
                model = %resolved.model,
                finish_reason = ?finish_reason,
                input_tokens = usage.input_tokens,
                output_tokens = usage.output_tokens,
                attempts,
                took = ?self.started.elapsed(),
                run_id = %self.prepared.request.run_id,
                "streamed"
            );
        }
        GenerateStreamResponse {
            event: Some(Event::Finished(StreamFinished {
                message: Some(completion.message.clone()),
                finish_reason: finish_reason.into(),
                usage: Some(usage),
                provider: resolved.instance.clone(),
                model: reported_model(completion, resolved),
                route: resolved.route.clone(),
                response_id: completion.response_id.clone(),
                attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                provider_finish_reason: completion.provider_finish_reason.clone(),
            })),
        }
    }
}
