//! Chat Completions answers read back: a one-shot `chat.completion` into a
//! [`Completion`] ([`completion_from_body`]), the `chat.completion.chunk`
//! events of a streamed one into provider events ([`ChunkDecoder`]).
//!
//! A well-formed answer is read through the typed structs of
//! [`super::openai_wire`]; any other (a field of another type, an `error`
//! member) leniently from a JSON value tree, where a missing or mistyped
//! field reads as absent. Both readings agree on every answer (a fuzz test
//! in `super::fuzz_tests`).

use std::collections::HashMap;

use agentmesh_proto::llm::v1::{FinishReason, Message, ToolCall};
use eventsource_stream::Event;
use serde_json::Value;

use crate::completion::{Completion, ProviderEvent, ReportedUsage, assistant_message};
use crate::error::ProviderError;
use crate::providers::http::{SseDecoder, body_json, error_object, event_json};
use crate::providers::openai_wire::{Answer, text};

/// OpenAI finish reason → ours.
pub(crate) fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Unspecified,
    }
}

/// The usage object (`prompt_tokens`, `completion_tokens`, and the cached
/// and reasoning details).
pub(crate) fn usage(value: &Value) -> ReportedUsage {
    let count = |pointer: &str| value.pointer(pointer).and_then(Value::as_u64);
    ReportedUsage {
        input_tokens: count("/prompt_tokens"),
        output_tokens: count("/completion_tokens"),
        cached_input_tokens: count("/prompt_tokens_details/cached_tokens"),
        reasoning_tokens: count("/completion_tokens_details/reasoning_tokens"),
        estimated: false,
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A non-streamed answer's body → [`Completion`]: typed when it is a
/// well-formed completion ([`super::openai_wire`]), read leniently otherwise.
pub(crate) fn completion_from_body(body: &[u8]) -> Result<Completion, ProviderError> {
    match Answer::parse(body) {
        Some(answer) => typed_completion(&answer),
        None => parse_completion(&body_json(body)?),
    }
}

/// The same as [`parse_completion`], from the typed answer.
pub(crate) fn typed_completion(answer: &Answer<'_>) -> Result<Completion, ProviderError> {
    let choice = answer
        .first_choice()
        .ok_or_else(|| ProviderError::Malformed("the response has no choices".to_owned()))?;
    let wire = choice.message.as_ref();
    let mut message = assistant_message();
    message.content = [
        wire.map_or("", |m| text(&m.content)),
        wire.map_or("", |m| text(&m.refusal)),
    ]
    .concat();
    if let Some(calls) = wire.and_then(|m| m.tool_calls.as_ref()) {
        message.tool_calls = calls
            .iter()
            .map(|call| {
                let function = call.function.as_ref();
                ToolCall {
                    id: text(&call.id).to_owned(),
                    name: function.map_or("", |f| text(&f.name)).to_owned(),
                    arguments_json: function.map_or("", |f| text(&f.arguments)).to_owned(),
                }
            })
            .collect();
    }
    Ok(completion(
        message,
        text(&choice.finish_reason),
        answer.usage.as_ref().map(|usage| usage.reported()),
        text(&answer.id),
        text(&answer.model),
    ))
}

/// The completion of an assistant `message` that ended for `reason`.
fn completion(
    message: Message,
    reason: &str,
    usage: Option<ReportedUsage>,
    response_id: &str,
    model: &str,
) -> Completion {
    Completion {
        finish_reason: crate::completion::normalise_finish(finish_reason(reason), &message),
        message,
        provider_finish_reason: reason.to_owned(),
        usage: usage.unwrap_or_default(),
        response_id: response_id.to_owned(),
        model: model.to_owned(),
    }
}

/// A non-streamed `chat.completion` object → [`Completion`].
pub(crate) fn parse_completion(value: &Value) -> Result<Completion, ProviderError> {
    if let Some((kind, message)) = value.get("error").and_then(|_| error_object(value)) {
        return Err(ProviderError::Upstream { kind, message });
    }
    let choice = value
        .pointer("/choices/0")
        .ok_or_else(|| ProviderError::Malformed("the response has no choices".to_owned()))?;
    let mut message = assistant_message();
    message.content = [
        str_at(choice, "/message/content"),
        str_at(choice, "/message/refusal"),
    ]
    .concat();
    if let Some(calls) = choice
        .pointer("/message/tool_calls")
        .and_then(Value::as_array)
    {
        message.tool_calls = calls
            .iter()
            .map(|call| ToolCall {
                id: str_at(call, "/id").to_owned(),
                name: str_at(call, "/function/name").to_owned(),
                arguments_json: str_at(call, "/function/arguments").to_owned(),
            })
            .collect();
    }
    Ok(completion(
        message,
        str_at(choice, "/finish_reason"),
        value.get("usage").map(usage),
        str_at(value, "/id"),
        str_at(value, "/model"),
    ))
}

// === impl ChunkDecoder ===

/// Decodes the `chat.completion.chunk` events of a streamed answer.
#[derive(Debug, Default)]
pub(crate) struct ChunkDecoder {
    metadata_sent: bool,
    finish_reason: Option<String>,
    /// Provider tool-call index → ours (dense, in order of appearance).
    tool_indexes: HashMap<u64, usize>,
    /// Ids of the calls seen, by our index (for servers that omit `index`).
    tool_ids: Vec<String>,
    done: bool,
}

impl ChunkDecoder {
    /// Our index of a tool-call delta with the provider's `index` and `id`.
    fn tool_index(&mut self, index: Option<u64>, id: &str) -> usize {
        if let Some(index) = index {
            let next = self.tool_ids.len();
            let ours = *self.tool_indexes.entry(index).or_insert(next);
            if ours == next {
                self.tool_ids.push(id.to_owned());
            }
            return ours;
        }
        // No index: a new id starts a new call, anything else continues the last.
        match self
            .tool_ids
            .iter()
            .position(|seen| !id.is_empty() && seen == id)
        {
            Some(ours) => ours,
            None if !id.is_empty() || self.tool_ids.is_empty() => {
                self.tool_ids.push(id.to_owned());
                self.tool_ids.len() - 1
            }
            None => self.tool_ids.len() - 1,
        }
    }

    /// The response id and model, from the first chunk that has either.
    fn metadata(&mut self, response_id: &str, model: &str, events: &mut Vec<ProviderEvent>) {
        if !self.metadata_sent && (!response_id.is_empty() || !model.is_empty()) {
            self.metadata_sent = true;
            events.push(ProviderEvent::Metadata {
                response_id: response_id.to_owned(),
                model: model.to_owned(),
            });
        }
    }

    /// The events of a well-formed chunk (the fast path; see
    /// [`super::openai_wire`]), the same as [`Self::value_chunk`]'s.
    fn typed_chunk(&mut self, chunk: &Answer<'_>) -> Vec<ProviderEvent> {
        let mut events = Vec::new();
        self.metadata(text(&chunk.id), text(&chunk.model), &mut events);
        // We ask for one choice (n = 1); anything else is ignored.
        if let Some(choice) = chunk.first_choice() {
            if let Some(delta) = &choice.delta {
                for part in [text(&delta.content), text(&delta.refusal)] {
                    if !part.is_empty() {
                        events.push(ProviderEvent::Text(part.to_owned()));
                    }
                }
                for call in delta.tool_calls.iter().flatten() {
                    let id = text(&call.id);
                    let index = self.tool_index(call.index, id);
                    let function = call.function.as_ref();
                    events.push(ProviderEvent::ToolCallDelta {
                        index,
                        id: id.to_owned(),
                        name: function.map_or("", |f| text(&f.name)).to_owned(),
                        arguments_fragment: function.map_or("", |f| text(&f.arguments)).to_owned(),
                    });
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.clone().into_owned());
            }
        }
        if let Some(reported) = &chunk.usage {
            events.push(ProviderEvent::Usage(reported.reported()));
        }
        events
    }

    /// The events of any other chunk, read leniently from its JSON.
    pub(crate) fn value_chunk(
        &mut self,
        chunk: &Value,
    ) -> Result<Vec<ProviderEvent>, ProviderError> {
        if chunk.get("error").is_some_and(|error| !error.is_null()) {
            let (kind, message) =
                error_object(chunk).unwrap_or_else(|| ("error".to_owned(), chunk.to_string()));
            return Err(ProviderError::Upstream { kind, message });
        }
        let mut events = Vec::new();
        self.metadata(str_at(chunk, "/id"), str_at(chunk, "/model"), &mut events);
        let choices = chunk.get("choices").and_then(Value::as_array);
        // We ask for one choice (n = 1); anything else is ignored.
        if let Some(choice) = choices.and_then(|choices| choices.first()) {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            for text in [str_at(delta, "/content"), str_at(delta, "/refusal")] {
                if !text.is_empty() {
                    events.push(ProviderEvent::Text(text.to_owned()));
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    let id = str_at(call, "/id");
                    let index = self.tool_index(call.get("index").and_then(Value::as_u64), id);
                    events.push(ProviderEvent::ToolCallDelta {
                        index,
                        id: id.to_owned(),
                        name: str_at(call, "/function/name").to_owned(),
                        arguments_fragment: str_at(call, "/function/arguments").to_owned(),
                    });
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_owned());
            }
        }
        if let Some(reported) = chunk.get("usage").filter(|usage| usage.is_object()) {
            events.push(ProviderEvent::Usage(usage(reported)));
        }
        Ok(events)
    }
}

impl SseDecoder for ChunkDecoder {
    fn on_event(&mut self, event: &Event) -> Result<Vec<ProviderEvent>, ProviderError> {
        if event.data.trim() == "[DONE]" {
            self.done = true;
            let provider_finish_reason = self.finish_reason.take().unwrap_or_default();
            return Ok(vec![ProviderEvent::Finished {
                finish_reason: finish_reason(&provider_finish_reason),
                provider_finish_reason,
            }]);
        }
        match Answer::parse(event.data.as_bytes()) {
            Some(chunk) => Ok(self.typed_chunk(&chunk)),
            None => self.value_chunk(&event_json(event)?),
        }
    }

    fn is_complete(&self) -> bool {
        self.done
    }

    fn end_marker(&self) -> &'static str {
        "`data: [DONE]`"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_without_index_are_told_apart_by_id() {
        let mut decoder = ChunkDecoder::default();
        assert_eq!(decoder.tool_index(None, "a"), 0);
        assert_eq!(decoder.tool_index(None, ""), 0);
        assert_eq!(decoder.tool_index(None, "b"), 1);
        assert_eq!(decoder.tool_index(None, "a"), 0);
    }
}
