//! OpenAI Chat Completions (`POST {base_url}/chat/completions`), spoken by
//! OpenAI and by compatible servers (vLLM, Ollama, llama.cpp, LiteLLM).
//!
//! [`request_body`] maps our request to the wire JSON: messages (assistant
//! `tool_calls`, `tool` messages with `tool_call_id`), `tools`,
//! `tool_choice`, `response_format`, sampling settings and the output limit.
//! OpenAI itself gets `max_completion_tokens` (its reasoning models refuse
//! `max_tokens`); other base URLs get `max_tokens`, which every compatible
//! server understands.
//!
//! Streaming answers are SSE `data:` lines of `chat.completion.chunk`
//! objects ending with `data: [DONE]`: [`ChunkDecoder`] turns text deltas,
//! tool-call deltas (id and name on a call's first chunk, arguments in
//! fragments), the finish reason and the final usage chunk (asked for with
//! `stream_options.include_usage`) into provider events. An `error` object
//! in a data line ends the stream with that error. One-shot answers are
//! mapped by [`completion_from_body`]; both are in `openai_answer`.

use std::sync::Arc;

use agentmesh_proto::llm::v1::{
    GenerateRequest, Message, ResponseFormat, ResponseFormatType, Role, ToolChoiceMode,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use crate::completion::Completion;
use crate::config::{ProviderConfig, ProviderKind};
use crate::error::ProviderError;
use crate::providers::http::{HttpCore, read_body};
use crate::providers::openai_answer::{ChunkDecoder, completion_from_body};
use crate::providers::{EventStream, Provider, ProviderCall};

/// An OpenAI-protocol provider instance.
#[derive(Debug, Clone)]
pub(crate) struct OpenAi {
    core: Arc<HttpCore>,
}

impl OpenAi {
    /// The instance `instance` configured by `config`.
    pub(crate) fn new(instance: &str, config: &ProviderConfig) -> Self {
        Self {
            core: Arc::new(HttpCore::new(instance, config)),
        }
    }
}

/// How the output limit is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenLimitField {
    /// `max_completion_tokens` (OpenAI).
    MaxCompletionTokens,
    /// `max_tokens` (compatible servers).
    MaxTokens,
}

impl TokenLimitField {
    /// The field for a base URL.
    pub(crate) fn for_base_url(base_url: &str) -> Self {
        if base_url.trim_end_matches('/') == ProviderKind::Openai.default_base_url() {
            Self::MaxCompletionTokens
        } else {
            Self::MaxTokens
        }
    }
}

fn headers(key: Option<&str>) -> Result<HeaderMap, ProviderError> {
    let mut headers = HeaderMap::new();
    if let Some(key) = key {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            ProviderError::Setup(
                "the API key contains characters not allowed in an HTTP header".to_owned(),
            )
        })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

impl Provider for OpenAi {
    fn generate(
        &self,
        call: ProviderCall,
    ) -> BoxFuture<'static, Result<Completion, ProviderError>> {
        let core = Arc::clone(&self.core);
        async move {
            let key = core.api_key()?;
            let limit_field = TokenLimitField::for_base_url(core.config().effective_base_url());
            let body = request_body(
                &call.model,
                &call.request,
                core.config().max_output_tokens,
                limit_field,
                false,
            );
            let timing = core.timing(call.caller_deadline);
            let response = core
                .post_json(
                    "chat/completions",
                    headers(key.as_deref())?,
                    &body,
                    key.as_deref(),
                    &timing,
                )
                .await?;
            completion_from_body(&read_body(response, &timing).await?)
        }
        .boxed()
    }

    fn generate_stream(&self, call: ProviderCall) -> EventStream {
        let core = Arc::clone(&self.core);
        async move {
            let key = core.api_key()?;
            let limit_field = TokenLimitField::for_base_url(core.config().effective_base_url());
            let body = request_body(
                &call.model,
                &call.request,
                core.config().max_output_tokens,
                limit_field,
                true,
            );
            let timing = core.timing(call.caller_deadline);
            core.post_stream(
                "chat/completions",
                headers(key.as_deref())?,
                &body,
                key.as_deref(),
                timing,
                ChunkDecoder::default(),
            )
            .await
        }
        .map(|result| match result {
            Ok(events) => events,
            Err(err) => futures::stream::once(async { Err(err) }).boxed(),
        })
        .flatten_stream()
        .boxed()
    }
}

// === request mapping ===

/// The Chat Completions request body for `request` sent to `model`.
/// `default_max_tokens` applies when the request gives no limit (0 = none).
pub(crate) fn request_body(
    model: &str,
    request: &GenerateRequest,
    default_max_tokens: i32,
    limit_field: TokenLimitField,
    stream: bool,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "messages".into(),
        Value::Array(request.messages.iter().map(message_json).collect()),
    );
    insert_tools(&mut body, request);
    if let Some(format) = &request.response_format
        && let Some(value) = response_format_json(format)
    {
        body.insert("response_format".into(), value);
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if let Some(seed) = request.seed {
        body.insert("seed".into(), json!(seed));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    let max_tokens = if request.max_output_tokens > 0 {
        request.max_output_tokens
    } else {
        default_max_tokens
    };
    if max_tokens > 0 {
        let field = match limit_field {
            TokenLimitField::MaxCompletionTokens => "max_completion_tokens",
            TokenLimitField::MaxTokens => "max_tokens",
        };
        body.insert(field.into(), json!(max_tokens));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

/// The tools, the tool choice and `parallel_tool_calls`, when the request
/// offers tools.
fn insert_tools(body: &mut Map<String, Value>, request: &GenerateRequest) {
    if request.tools.is_empty() {
        return;
    }
    let tools = request
        .tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": parameters_schema(&tool.parameters_json),
                }
            })
        })
        .collect();
    body.insert("tools".into(), Value::Array(tools));
    if let Some(choice) = &request.tool_choice {
        let value = match ToolChoiceMode::try_from(choice.mode).unwrap_or_default() {
            ToolChoiceMode::Unspecified | ToolChoiceMode::Auto => json!("auto"),
            ToolChoiceMode::None => json!("none"),
            ToolChoiceMode::Required => json!("required"),
            ToolChoiceMode::Tool => {
                json!({"type": "function", "function": {"name": choice.tool}})
            }
        };
        body.insert("tool_choice".into(), value);
    }
    // OpenAI refuses parallel_tool_calls in a request without tools.
    if let Some(parallel) = request.parallel_tool_calls {
        body.insert("parallel_tool_calls".into(), json!(parallel));
    }
}

/// The `response_format` of a response format, if it sends one.
fn response_format_json(format: &ResponseFormat) -> Option<Value> {
    match ResponseFormatType::try_from(format.r#type).unwrap_or_default() {
        ResponseFormatType::Unspecified | ResponseFormatType::Text => None,
        ResponseFormatType::JsonObject => Some(json!({"type": "json_object"})),
        ResponseFormatType::JsonSchema => {
            let name = if format.schema_name.is_empty() {
                "response"
            } else {
                &format.schema_name
            };
            let schema: Value =
                serde_json::from_str(&format.schema_json).unwrap_or_else(|_| json!({}));
            Some(json!({
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": format.strict}
            }))
        }
    }
}

fn message_json(message: &Message) -> Value {
    let role = Role::try_from(message.role).unwrap_or_default();
    let mut out = Map::new();
    match role {
        Role::Tool => {
            out.insert("role".into(), json!("tool"));
            out.insert("tool_call_id".into(), json!(message.tool_call_id));
            out.insert("content".into(), json!(message.content));
        }
        Role::Assistant => {
            out.insert("role".into(), json!("assistant"));
            // OpenAI wants null, not "", beside tool calls.
            let content = if message.content.is_empty() && !message.tool_calls.is_empty() {
                Value::Null
            } else {
                json!(message.content)
            };
            out.insert("content".into(), content);
            if !message.tool_calls.is_empty() {
                let calls = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments_json},
                        })
                    })
                    .collect();
                out.insert("tool_calls".into(), Value::Array(calls));
            }
        }
        Role::System | Role::User | Role::Unspecified => {
            let name = if role == Role::System {
                "system"
            } else {
                "user"
            };
            out.insert("role".into(), json!(name));
            out.insert("content".into(), json!(message.content));
        }
    }
    if role != Role::Tool && !message.name.is_empty() {
        out.insert("name".into(), json!(message.name));
    }
    Value::Object(out)
}

/// A tool's JSON Schema; empty means "no arguments".
pub(crate) fn parameters_schema(parameters_json: &str) -> Value {
    if parameters_json.trim().is_empty() {
        return json!({"type": "object", "properties": {}});
    }
    serde_json::from_str(parameters_json)
        .unwrap_or_else(|_| json!({"type": "object", "properties": {}}))
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::llm::v1::{FinishReason, ResponseFormat, ToolCall, ToolChoice, ToolSpec};
    use eventsource_stream::Event;

    use super::*;
    use crate::completion::{ProviderEvent, ReportedUsage};
    use crate::providers::http::SseDecoder;
    use crate::providers::openai_answer::parse_completion;

    fn message(role: Role, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            ..Message::default()
        }
    }

    #[test]
    fn a_conversation_with_tools_maps_to_chat_completions() {
        let request = GenerateRequest {
            messages: vec![
                message(Role::System, "Be brief."),
                message(Role::User, "What is 2+2?"),
                Message {
                    role: Role::Assistant.into(),
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "calculator".into(),
                        arguments_json: "{\"expression\":\"2+2\"}".into(),
                    }],
                    ..Message::default()
                },
                Message {
                    role: Role::Tool.into(),
                    content: "{\"result\":4}".into(),
                    tool_call_id: "call_1".into(),
                    name: "calculator".into(),
                    ..Message::default()
                },
            ],
            tools: vec![ToolSpec {
                name: "calculator".into(),
                description: "Evaluates arithmetic.".into(),
                parameters_json:
                    "{\"type\":\"object\",\"properties\":{\"expression\":{\"type\":\"string\"}}}"
                        .into(),
            }],
            tool_choice: Some(ToolChoice {
                mode: ToolChoiceMode::Tool.into(),
                tool: "calculator".into(),
            }),
            response_format: Some(ResponseFormat {
                r#type: ResponseFormatType::JsonSchema.into(),
                schema_json: "{\"type\":\"object\"}".into(),
                schema_name: String::new(),
                strict: true,
            }),
            temperature: Some(0.5),
            top_p: Some(0.9),
            seed: Some(7),
            stop: vec!["END".into()],
            parallel_tool_calls: Some(false),
            ..GenerateRequest::default()
        };
        let body = request_body(
            "gpt-4o-mini",
            &request,
            4096,
            TokenLimitField::MaxCompletionTokens,
            true,
        );
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is 2+2?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"2+2\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"result\":4}"},
                ],
                "tools": [{"type": "function", "function": {
                    "name": "calculator",
                    "description": "Evaluates arithmetic.",
                    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
                }}],
                "tool_choice": {"type": "function", "function": {"name": "calculator"}},
                "parallel_tool_calls": false,
                "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": true}},
                "temperature": 0.5,
                "top_p": 0.9,
                "seed": 7,
                "stop": ["END"],
                "max_completion_tokens": 4096,
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[test]
    fn compatible_servers_get_max_tokens_and_no_tool_settings_without_tools() {
        let request = GenerateRequest {
            messages: vec![message(Role::User, "hi")],
            max_output_tokens: 100,
            parallel_tool_calls: Some(true),
            tool_choice: Some(ToolChoice {
                mode: ToolChoiceMode::None.into(),
                tool: String::new(),
            }),
            ..GenerateRequest::default()
        };
        let field = TokenLimitField::for_base_url("http://127.0.0.1:8000/v1");
        let body = request_body("llama", &request, 4096, field, false);
        assert_eq!(
            body,
            json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100})
        );
        assert_eq!(
            TokenLimitField::for_base_url("https://api.openai.com/v1/"),
            TokenLimitField::MaxCompletionTokens
        );
    }

    fn data(text: &str) -> Event {
        Event {
            event: "message".into(),
            data: text.into(),
            ..Event::default()
        }
    }

    #[test]
    fn chunks_decode_into_events() {
        let mut decoder = ChunkDecoder::default();
        let mut events = Vec::new();
        for line in [
            r#"{"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_x","type":"function","function":{"name":"calculator","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"expr"}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":0}}}"#,
            "[DONE]",
        ] {
            events.extend(decoder.on_event(&data(line)).unwrap());
        }
        assert!(decoder.is_complete());
        assert_eq!(
            events,
            vec![
                ProviderEvent::Metadata {
                    response_id: "chatcmpl-1".into(),
                    model: "gpt-4o-mini-2024-07-18".into()
                },
                ProviderEvent::ToolCallDelta {
                    index: 0,
                    id: "call_x".into(),
                    name: "calculator".into(),
                    arguments_fragment: String::new()
                },
                ProviderEvent::ToolCallDelta {
                    index: 0,
                    id: String::new(),
                    name: String::new(),
                    arguments_fragment: "{\"expr".into()
                },
                ProviderEvent::Usage(ReportedUsage {
                    input_tokens: Some(20),
                    output_tokens: Some(9),
                    cached_input_tokens: Some(4),
                    reasoning_tokens: Some(0),
                    estimated: false
                }),
                ProviderEvent::Finished {
                    finish_reason: FinishReason::ToolCalls,
                    provider_finish_reason: "tool_calls".into()
                },
            ]
        );
    }

    #[test]
    fn an_error_chunk_ends_the_stream() {
        let mut decoder = ChunkDecoder::default();
        let err = decoder
            .on_event(&data(r#"{"error":{"message":"The server had an error","type":"server_error","code":null}}"#))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.to_string().contains("The server had an error"));
        assert!(decoder.on_event(&data("{not json")).is_err());
    }

    /// The recorded stream of the integration tests, fed one byte at a time
    /// (every possible cut) straight into the SSE decoding.
    async fn decode_bytewise(body: &'static [u8]) -> Vec<Result<ProviderEvent, ProviderError>> {
        use crate::providers::http::{Timing, decode_sse};
        let bytes = futures::stream::iter(
            body.iter()
                .map(|byte| Ok::<_, reqwest::Error>(bytes::Bytes::copy_from_slice(&[*byte]))),
        )
        .boxed();
        let timing = Timing::new(
            tokio::time::Instant::now(),
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(300),
            None,
        );
        decode_sse(bytes, ChunkDecoder::default(), timing)
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_recorded_stream_decodes_whatever_the_cuts() {
        let events = decode_bytewise(include_bytes!("../../tests/wire/openai_text.sse")).await;
        let texts: Vec<&str> = events
            .iter()
            .filter_map(|event| match event {
                Ok(ProviderEvent::Text(text)) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["Voilà", ": 17 × 23", " = 391 🙂"]);
        assert!(matches!(
            events.last(),
            Some(Ok(ProviderEvent::Finished {
                finish_reason: FinishReason::Stop,
                ..
            }))
        ));

        let events = decode_bytewise(include_bytes!("../../tests/wire/openai_no_done.sse")).await;
        let last = events.last().unwrap().as_ref().unwrap_err();
        assert_eq!(last.code(), tonic::Code::Unavailable);
        assert!(last.to_string().contains("[DONE]"), "{last}");
    }

    #[test]
    fn a_completion_maps_back() {
        let value = json!({
            "id": "chatcmpl-2", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        });
        let completion = parse_completion(&value).unwrap();
        assert_eq!(completion.message.tool_calls[0].name, "calculator");
        assert_eq!(completion.finish_reason, FinishReason::ToolCalls);
        assert_eq!(completion.provider_finish_reason, "stop");
        assert_eq!(completion.usage.output_tokens, Some(3));
        assert!(parse_completion(&json!({"choices": []})).is_err());
    }
}
