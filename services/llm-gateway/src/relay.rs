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
//!          (AttemptLoop::run(Relay): attempt ─▶ between: usage kept, reset?
//!           ─▶ wait: backoff, cut short when the caller goes ─▶ attempt …)
//!        ◀─ first message awaited, so a call failing before any output
//!           fails as a whole
//! ```
//!
//! [`Relay`] is what the shared attempt loop runs: an attempt relays one
//! provider stream; a failure reads as the unary path's (a caller that went
//! away stops the loop and counts against no circuit); between attempts it
//! keeps the failed attempt's usage and sends the reset. The usage of
//! abandoned attempts is added to the final usage; the call's record ends
//! once, whichever way the stream ends (a caller that goes away ends it as
//! abandoned).

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant as StdInstant;

use agentmesh_proto::llm::v1::{
    FinishReason, GenerateStreamResponse, StreamFinished, StreamReset, TextDelta, ToolCallDelta,
    Usage, generate_stream_response::Event,
};
use agentmesh_resilience::{
    Attempt, AttemptEvent, AttemptLoop, Attempts, CircuitOpen, Next, Verdict,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument as _;

use crate::audit::{CallEnd, LlmCallRecord};
use crate::call::{Prepared, add_usage, reported_model, within_caller_deadline};
use crate::completion::{Assembler, ProviderEvent};
use crate::error::ProviderError;
use crate::gateway::{Gateway, Resolved};
use crate::resilience::{circuit_failure, verdict};

/// The stream a GenerateStream call answers with.
pub(crate) type ResponseStream = BoxStream<'static, Result<GenerateStreamResponse, Status>>;

/// Messages the relay may run ahead of a slow caller. They cross the
/// channel boxed ([`Message`]).
const STREAM_BUFFER: usize = 32;

/// A message to the caller as it crosses the channel: boxed, because
/// tokio's channel takes its buffer 32 slots at a time, and a message
/// inline is about 280 bytes, so every open stream held 9 KiB of slots.
type Message = Box<Result<GenerateStreamResponse, Status>>;

/// Starts relaying a prepared call, and answers once its first message is
/// there: a call that fails before any output (no key, refused connection,
/// HTTP error, after every retry and fallback) fails as a whole, with its
/// status at once.
pub(crate) async fn start(
    gateway: Arc<Gateway>,
    record: LlmCallRecord,
    prepared: Prepared,
    attempt_loop: AttemptLoop,
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
        latest_target: 0,
        started: StdInstant::now(),
    };
    tokio::spawn(relay.run(attempt_loop).instrument(span));
    let first = match receiver.recv().await.map(|message| *message) {
        Some(Ok(first)) => first,
        Some(Err(status)) => return Err(status),
        None => {
            return Err(Status::internal(
                "the stream ended before its first message",
            ));
        }
    };
    let rest = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|message| (*message, receiver))
    });
    Ok(futures::stream::once(async move { Ok(first) })
        .chain(rest)
        .boxed())
}

/// One streamed call: attempts over its chain, relaying each attempt's
/// events to the caller as they arrive, with a `reset` between an attempt
/// that sent output and the next, and exactly one `finished` at the end.
/// Runs as its own task; the caller's side is the channel's receiver.
struct Relay {
    gateway: Arc<Gateway>,
    prepared: Prepared,
    /// The call's audit record, until its end is recorded.
    record: Option<LlmCallRecord>,
    sender: mpsc::Sender<Message>,
    /// Usage of abandoned attempts.
    spent: Usage,
    /// Whether any delta reached the caller (in any attempt).
    output_sent: bool,
    /// The target of the latest attempt: where a caller that goes away
    /// leaves the call.
    latest_target: usize,
    started: StdInstant,
}

/// Why an attempt, or the wait after it, ended the relay's turn.
enum RelayFailure {
    /// The attempt failed: the provider's failure, whether the attempt had
    /// sent output, and what it assembled.
    Failed(ProviderError, bool, Box<Assembler>),
    /// The caller went away, with what the attempt at the latest target
    /// had assembled by then.
    Gone(Box<Assembler>),
}

impl Relay {
    /// Runs the call's attempt loop and ends the stream by how it ended.
    async fn run(mut self, attempt_loop: AttemptLoop) {
        let ended = attempt_loop.run(&mut self).await;
        let summary = ended.summary();
        match ended.result {
            // `finished` went out with the attempt.
            Ok(()) => {}
            Err(RelayFailure::Gone(assembler)) => self.abandoned(&assembler, ended.attempts),
            Err(RelayFailure::Failed(err, _, assembler)) => {
                self.give_up(err, &assembler, ended.target, ended.attempts, summary)
                    .await;
            }
        }
    }

    /// The stream reset that tells the caller to discard the output of the
    /// attempt at `failed`, before the loop's next step.
    fn reset(
        &self,
        failed: &Resolved,
        err: &ProviderError,
        next: &Next<'_, RelayFailure>,
        abandoned_usage: Usage,
    ) -> GenerateStreamResponse {
        let action = if next.wait.is_some() {
            "retrying"
        } else {
            "falling back"
        };
        let next_target = self.prepared.at(next.target).target_name();
        let reason = format!("{}: {err}; {action} to {next_target}", failed.target_name());
        let cause = err
            .clone()
            .into_status(&failed.route, &failed.instance, &failed.model);
        GenerateStreamResponse {
            event: Some(Event::Reset(StreamReset {
                reason,
                cause: Some(agentmesh_kit::status::to_rpc_status(&cause)),
                abandoned_provider: failed.instance.clone(),
                abandoned_model: failed.model.clone(),
                abandoned_usage: Some(abandoned_usage),
                next_attempt: i32::try_from(next.attempt).unwrap_or(i32::MAX),
            })),
        }
    }

    /// Attempt `number` at `resolved`: its events relayed until it
    /// finishes (`finished` sent), fails or the caller goes away.
    async fn relay(&mut self, resolved: &Resolved, number: u32) -> Result<(), RelayFailure> {
        let mut events = resolved
            .provider
            .provider
            .generate_stream(self.prepared.call(resolved));
        let mut assembler = Assembler::default();
        let mut sent = false;
        let deadline = self.prepared.caller_deadline;
        loop {
            let next = tokio::select! {
                biased;
                () = self.sender.closed() => return Err(RelayFailure::Gone(Box::new(assembler))),
                next = within_caller_deadline(deadline, events.next()) => next,
            };
            let event = match next {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(err))) | Err(err) => {
                    return Err(RelayFailure::Failed(err, sent, Box::new(assembler)));
                }
                Ok(None) => {
                    let err = ProviderError::Broken(
                        "the provider's stream ended without finishing the answer".to_owned(),
                    );
                    return Err(RelayFailure::Failed(err, sent, Box::new(assembler)));
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
                    let finished = self.finished(resolved, &assembler, number, None);
                    // The spend is written before the caller has its answer.
                    self.prepared.spend.recorded().await;
                    let _ = self.sender.send(Box::new(Ok(finished))).await;
                    return Ok(());
                }
                ProviderEvent::Text(_)
                | ProviderEvent::Metadata { .. }
                | ProviderEvent::Usage(_) => {
                    continue;
                }
            };
            if self
                .sender
                .send(Box::new(Ok(GenerateStreamResponse { event: Some(out) })))
                .await
                .is_err()
            {
                return Err(RelayFailure::Gone(Box::new(assembler)));
            }
            sent = true;
            self.output_sent = true;
        }
    }

    /// The call failed for good at `target` after `attempts` attempts:
    /// `finished` with FINISH_REASON_ERROR first when output was sent, then
    /// the status.
    async fn give_up(
        &mut self,
        err: ProviderError,
        assembler: &Assembler,
        target: usize,
        attempts: u32,
        summary: Option<String>,
    ) {
        let status = self.prepared.final_status(err, target, summary);
        let resolved = self.prepared.at(target);
        if self.output_sent {
            let finished = self.finished(&resolved, assembler, attempts, Some(&status));
            let _ = self.sender.send(Box::new(Ok(finished))).await;
        } else if let Some(record) = self.record.take() {
            let mut usage = self.spent;
            add_usage(&mut usage, &self.usage_of(&resolved, assembler, false));
            self.settle(&usage);
            record.failed(&status, &CallEnd::default());
        }
        self.prepared.spend.recorded().await;
        let _ = self.sender.send(Box::new(Err(status))).await;
    }

    /// The caller went away mid-answer, after `attempts` attempts: record
    /// what arrived from the latest target, and the call's usage.
    fn abandoned(&mut self, assembler: &Assembler, attempts: u32) {
        let resolved = self.prepared.at(self.latest_target);
        let mut usage = self.spent;
        add_usage(&mut usage, &self.usage_of(&resolved, assembler, false));
        self.settle(&usage);
        let completion = assembler.output_started().then(|| assembler.completion());
        if let Some(mut record) = self.record.take() {
            record.attempts(attempts);
            record.abandoned(&CallEnd {
                completion,
                usage: Some(&usage),
                finish_reason: None,
            });
        }
    }

    fn settle(&mut self, usage: &Usage) {
        self.prepared.settle(usage);
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

    /// The `finished` message after `attempts` attempts, and the end of
    /// the call's record: a success, or with `failure` (FINISH_REASON_ERROR),
    /// the status the stream ends with next. Its usage is the whole call's:
    /// abandoned attempts and this one.
    fn finished(
        &mut self,
        resolved: &Resolved,
        assembler: &Assembler,
        attempts: u32,
        failure: Option<&Status>,
    ) -> GenerateStreamResponse {
        let override_reason = failure.map(|_| FinishReason::Error);
        let mut usage = self.spent;
        add_usage(
            &mut usage,
            &self.usage_of(resolved, assembler, override_reason.is_none()),
        );
        self.settle(&usage);
        let completion = assembler.completion();
        let finish_reason = override_reason.unwrap_or(completion.finish_reason);
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
            crate::call::log_success(
                &self.gateway,
                resolved,
                (finish_reason, &usage),
                (attempts, self.started.elapsed()),
                &self.prepared.request.run_id,
                "streamed",
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

// === impl Attempts for Relay ===

impl Attempts for Relay {
    /// `finished` went out with the attempt.
    type Output = ();
    type Error = RelayFailure;

    async fn attempt(&mut self, attempt: Attempt<'_, RelayFailure>) -> Result<(), RelayFailure> {
        self.latest_target = attempt.target;
        let resolved = self.prepared.at(attempt.target);
        if let Some(record) = self.record.as_mut() {
            record.resolved(&resolved);
        }
        self.relay(&resolved, attempt.number).await
    }

    fn classify(&self, failure: &RelayFailure) -> Verdict {
        match failure {
            RelayFailure::Failed(err, ..) => verdict(err, &self.prepared.resolved.fallback_on),
            // Nobody is left to answer.
            RelayFailure::Gone(_) => Verdict::stop("caller_gone"),
        }
    }

    fn circuit_failure(&self, failure: &RelayFailure) -> Option<String> {
        match failure {
            RelayFailure::Failed(err, ..) => circuit_failure(err),
            RelayFailure::Gone(_) => None,
        }
    }

    fn refused(&mut self, open: CircuitOpen, _previous: Option<RelayFailure>) -> RelayFailure {
        RelayFailure::Failed(
            ProviderError::CircuitOpen {
                message: open.to_string(),
                retry_in: open.retry_in,
            },
            false,
            Box::default(),
        )
    }

    /// Keeps the usage of a failed attempt, and once output went out tells
    /// the caller to discard it before the next attempt.
    async fn between(&mut self, next: Next<'_, RelayFailure>) -> Result<(), RelayFailure> {
        let RelayFailure::Failed(err, sent, assembler) = next.failure else {
            return Ok(());
        };
        if !next.attempted {
            // A circuit refused: nothing was generated or sent.
            return Ok(());
        }
        let failed = self.prepared.at(next.from);
        let attempt_usage = self.usage_of(&failed, assembler, false);
        add_usage(&mut self.spent, &attempt_usage);
        if !*sent {
            return Ok(());
        }
        // The caller has part of an answer that will not be finished: tell
        // it to discard it.
        let reset = self.reset(&failed, err, &next, attempt_usage);
        tracing::debug!(reason = %err, "stream reset sent");
        if self.sender.send(Box::new(Ok(reset))).await.is_err() {
            return Err(RelayFailure::Gone(Box::default()));
        }
        Ok(())
    }

    /// The backoff, cut short when the caller goes away.
    async fn wait(&mut self, delay: Duration) -> Result<(), RelayFailure> {
        tokio::select! {
            () = self.sender.closed() => Err(RelayFailure::Gone(Box::default())),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    fn observe(&mut self, event: AttemptEvent<'_, RelayFailure>) {
        self.prepared
            .observe(self.gateway.reporter(), &event, |failure| match failure {
                RelayFailure::Failed(err, ..) => Some(err),
                RelayFailure::Gone(_) => None,
            });
    }
}
