//! Gateway answers in the OpenAI API's shapes: a `chat.completion`, the
//! `chat.completion.chunk`s of a stream, usage, and the model list.

use agentmesh_proto::llm::v1::{FinishReason, Message, Model, Usage};
use serde_json::{Value, json};

/// What every chunk and completion of one answer repeats.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
}

impl Answer {
    /// An answer to a request for `model`, made now.
    pub(crate) fn new(model: &str) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
            model: model.to_owned(),
        }
    }

    /// A non-streamed completion.
    pub(crate) fn completion(
        &self,
        message: Option<&Message>,
        finish: i32,
        usage: Option<&Usage>,
    ) -> Value {
        let content = message
            .map(|message| message.content.as_str())
            .unwrap_or("");
        let mut reply = json!({
            "role": "assistant",
            "content": if content.is_empty() && message.is_some_and(|m| !m.tool_calls.is_empty()) {
                Value::Null
            } else {
                Value::from(content)
            },
            "refusal": Value::Null,
        });
        if let Some(message) = message
            && !message.tool_calls.is_empty()
        {
            crate::fields::set(
                &mut reply,
                "tool_calls",
                message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments_json},
                        })
                    })
                    .collect(),
            );
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": reply,
                "finish_reason": finish_reason(finish),
                "logprobs": Value::Null,
            }],
            "usage": usage.map_or(Value::Null, usage_json),
            "system_fingerprint": Value::Null,
        })
    }

    /// A stream chunk with one choice's `delta` (and its finish reason).
    pub(crate) fn chunk(&self, delta: Value, finish: Option<&str>, with_usage: bool) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": [{
                "index": 0,
                "delta": delta,
                "finish_reason": finish,
                "logprobs": Value::Null,
            }],
        });
        // With include_usage, every chunk says `usage: null` but the last.
        if with_usage {
            crate::fields::set(&mut chunk, "usage", Value::Null);
        }
        chunk
    }

    /// The last chunk of a stream with include_usage: no choices, the usage.
    pub(crate) fn usage_chunk(&self, usage: Option<&Usage>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": [],
            "usage": usage.map_or(Value::Null, usage_json),
        })
    }
}

/// OpenAI's name of a finish reason.
pub(crate) fn finish_reason(finish: i32) -> &'static str {
    match FinishReason::try_from(finish) {
        Ok(FinishReason::Length) => "length",
        Ok(FinishReason::ToolCalls) => "tool_calls",
        Ok(FinishReason::ContentFilter) => "content_filter",
        _ => "stop",
    }
}

/// Usage as OpenAI counts it.
pub(crate) fn usage_json(usage: &Usage) -> Value {
    let total = if usage.total_tokens > 0 {
        usage.total_tokens
    } else {
        usage.input_tokens.saturating_add(usage.output_tokens)
    };
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    })
}

/// A gateway route as an OpenAI model object.
pub(crate) fn model_json(model: &Model) -> Value {
    json!({
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": "agentmesh",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::llm::v1::ToolCall;

    #[test]
    fn a_tool_call_completion_has_null_content_and_function_calls() {
        let answer = Answer::new("default");
        let message = Message {
            tool_calls: vec![ToolCall {
                id: "c1".to_owned(),
                name: "calculator".to_owned(),
                arguments_json: "{}".to_owned(),
            }],
            ..Message::default()
        };
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 4,
            ..Usage::default()
        };
        let json = answer.completion(Some(&message), FinishReason::ToolCalls as i32, Some(&usage));
        assert_eq!(json["object"], "chat.completion");
        assert!(json["choices"][0]["message"]["content"].is_null());
        assert_eq!(
            json["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "calculator"
        );
        assert_eq!(json["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(json["usage"]["total_tokens"], 7);
    }

    #[test]
    fn chunks_carry_usage_null_only_when_asked() {
        let answer = Answer::new("default");
        assert!(answer.chunk(json!({}), None, false).get("usage").is_none());
        assert!(answer.chunk(json!({}), None, true)["usage"].is_null());
        assert_eq!(answer.usage_chunk(None)["choices"], json!([]));
    }
}
