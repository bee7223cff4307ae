//! `stream: true`: `GenerateStream` relayed as OpenAI `chat.completion.chunk`
//! events as they arrive — the role first, then text and tool call
//! argument deltas, the finish reason, the usage chunk when
//! `stream_options.include_usage` asks, and `data: [DONE]`.
//!
//! The gateway's `reset` (a provider's stream broke and the gateway
//! restarted the answer on a retry or fallback) has no OpenAI equivalent,
//! and splicing two answers would hand the client text that no model
//! wrote. So: a reset before anything of the answer was sent is invisible
//! (the retry's answer is the one relayed); a reset after text or tool call
//! deltas went out ends the stream with an error event (`data: {"error":
//! …}`, no `[DONE]`), which the OpenAI SDKs raise as an `APIError`; the
//! client retries the whole request. A failure before the first event is an
//! ordinary HTTP error (429 with `retry-after`, 404 for an unknown model…).

use std::convert::Infallible;

use agentmesh_proto::llm::v1::{
    GenerateStreamRequest, GenerateStreamResponse, generate_stream_response,
};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::response::{Answer, finish_reason};
use crate::caller::Caller;
use crate::error::openai_error;
use crate::state::Edge;

/// Starts the stream; answers its first failure as an HTTP error.
pub(super) async fn relay(
    edge: &Edge,
    caller: &Caller,
    request: GenerateStreamRequest,
    answer: Answer,
    include_usage: bool,
) -> Response {
    let mut client = edge.peers.gateway.clone();
    let mut stream = match client.generate_stream(caller.request(request, None)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return openai_error(&status),
    };
    // The first event decides between an HTTP error and a stream.
    let first = match stream.message().await {
        Ok(first) => first,
        Err(status) => return openai_error(&status),
    };
    let (sender, receiver) = mpsc::channel::<Event>(32);
    let ended = edge.streams_end.clone();
    tokio::spawn(async move {
        let mut relay = Relay {
            answer,
            include_usage,
            sender,
            sent_answer: false,
        };
        if !relay
            .send(relay.answer.chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                include_usage,
            ))
            .await
        {
            return;
        }
        let mut next = first;
        loop {
            let Some(event) = next else {
                relay
                    .fail("the model's stream ended without an answer", "stream_ended")
                    .await;
                return;
            };
            match relay.forward(event).await {
                Step::Continue => {}
                Step::Done => return,
            }
            next = tokio::select! {
                next = stream.message() => match next {
                    Ok(next) => next,
                    Err(status) => {
                        relay.fail(status.message(), "upstream_error").await;
                        return;
                    }
                },
                () = ended.cancelled() => {
                    relay.fail("the edge is shutting down; retry the request", "shutting_down").await;
                    return;
                }
            };
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(receiver);
    Sse::new(futures::StreamExt::map(events, Ok::<_, Infallible>)).into_response()
}

/// Whether the relay goes on.
enum Step {
    Continue,
    Done,
}

/// One stream's relay state.
struct Relay {
    answer: Answer,
    include_usage: bool,
    sender: mpsc::Sender<Event>,
    /// Whether text or a tool call went out (a reset now cannot be hidden).
    sent_answer: bool,
}

impl Relay {
    /// Sends a data event; false once the client has gone.
    async fn send(&self, data: Value) -> bool {
        self.sender
            .send(Event::default().data(data.to_string()))
            .await
            .is_ok()
    }

    /// Ends the stream with an error event.
    async fn fail(&self, message: &str, code: &str) {
        let _ = self
            .send(json!({"error": {"message": message, "type": "server_error", "param": Value::Null, "code": code}}))
            .await;
    }

    async fn forward(&mut self, event: GenerateStreamResponse) -> Step {
        use generate_stream_response::Event as Kind;
        let delta = match event.event {
            Some(Kind::TextDelta(text)) => json!({"content": text.text}),
            Some(Kind::ToolCallDelta(call)) => {
                let mut function = json!({"arguments": call.arguments_json_delta});
                if !call.name.is_empty() {
                    crate::fields::set(&mut function, "name", json!(call.name));
                }
                let mut delta = json!({"index": call.index, "function": function});
                if !call.id.is_empty() {
                    crate::fields::set(&mut delta, "id", json!(call.id));
                    crate::fields::set(&mut delta, "type", json!("function"));
                }
                json!({"tool_calls": [delta]})
            }
            Some(Kind::Reset(reset)) => {
                if self.sent_answer {
                    self.fail(
                        &format!(
                            "the model's stream broke after part of the answer was sent ({}); retry the request",
                            reset.reason
                        ),
                        "stream_reset",
                    )
                    .await;
                    return Step::Done;
                }
                return Step::Continue;
            }
            Some(Kind::Finished(finished)) => {
                let last = self.answer.chunk(
                    json!({}),
                    Some(finish_reason(finished.finish_reason)),
                    self.include_usage,
                );
                if !self.send(last).await {
                    return Step::Done;
                }
                if self.include_usage
                    && !self
                        .send(self.answer.usage_chunk(finished.usage.as_ref()))
                        .await
                {
                    return Step::Done;
                }
                let _ = self.sender.send(Event::default().data("[DONE]")).await;
                return Step::Done;
            }
            None => return Step::Continue,
        };
        self.sent_answer = true;
        if self
            .send(self.answer.chunk(delta, None, self.include_usage))
            .await
        {
            Step::Continue
        } else {
            Step::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::llm::v1::{StreamReset, TextDelta};

    fn relay() -> (Relay, mpsc::Receiver<Event>) {
        let (sender, receiver) = mpsc::channel(8);
        (
            Relay {
                answer: Answer::new("m"),
                include_usage: false,
                sender,
                sent_answer: false,
            },
            receiver,
        )
    }

    fn event(kind: generate_stream_response::Event) -> GenerateStreamResponse {
        GenerateStreamResponse { event: Some(kind) }
    }

    fn reset() -> GenerateStreamResponse {
        event(generate_stream_response::Event::Reset(StreamReset {
            reason: "provider stream broke".to_owned(),
            ..StreamReset::default()
        }))
    }

    #[tokio::test]
    async fn a_reset_before_any_text_is_invisible() {
        let (mut relay, mut receiver) = relay();
        assert!(matches!(relay.forward(reset()).await, Step::Continue));
        drop(relay);
        assert!(receiver.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_reset_after_text_ends_the_stream_with_an_error() {
        let (mut relay, mut receiver) = relay();
        let text = event(generate_stream_response::Event::TextDelta(TextDelta {
            text: "Hel".to_owned(),
        }));
        assert!(matches!(relay.forward(text).await, Step::Continue));
        assert!(matches!(relay.forward(reset()).await, Step::Done));
        drop(relay);
        let mut count = 0;
        while receiver.recv().await.is_some() {
            count += 1;
        }
        // The text chunk, then the error event: never a second answer.
        assert_eq!(count, 2);
    }
}
