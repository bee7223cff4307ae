//! The Anthropic Messages API (`POST {base_url}/v1/messages`, headers
//! `x-api-key` and `anthropic-version: 2023-06-01`).
//!
//! [`request_body`] maps our request: system messages are joined into the
//! top-level `system`; assistant tool calls become `tool_use` blocks (our
//! `arguments_json` parsed into the `input` object); tool results become
//! `tool_result` blocks in a `user` message (with `is_error`); consecutive
//! messages of the same Anthropic role are merged, as the API wants turns to
//! alternate. `max_tokens` is required: the request's, else the instance's
//! default. Anthropic cannot enforce a JSON answer, so a JSON response format
//! becomes an instruction in the system prompt (with the schema).
//!
//! Streaming answers are typed SSE events: [`EventDecoder`] follows
//! `message_start` (id, model, input tokens), `content_block_start` (text or
//! `tool_use` with id and name), `content_block_delta` (`text_delta`,
//! `input_json_delta`), `message_delta` (stop reason, output tokens) and
//! `message_stop`; `ping` is skipped and `error` ends the stream. Content
//! block indexes count all blocks; tool calls get their own 0-based indexes.

use std::collections::HashMap;
use std::sync::Arc;

use agentmesh_proto::llm::v1::{
    FinishReason, GenerateRequest, Message, ResponseFormatType, Role, ToolCall, ToolChoiceMode,
};
use eventsource_stream::Event;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::completion::{Completion, ProviderEvent, ReportedUsage, assistant_message};
use crate::config::ProviderConfig;
use crate::error::ProviderError;
use crate::providers::http::{HttpCore, SseDecoder, error_object, event_json, read_json};
use crate::providers::openai::parameters_schema;
use crate::providers::{EventStream, Provider, ProviderCall};

/// The API version this adapter speaks.
pub(crate) const API_VERSION: &str = "2023-06-01";

/// An Anthropic-protocol provider instance.
#[derive(Debug, Clone)]
pub(crate) struct Anthropic {
    core: Arc<HttpCore>,
}

impl Anthropic {
    /// The instance `instance` configured by `config`.
    pub(crate) fn new(instance: &str, config: &ProviderConfig) -> Self {
        Self {
            core: Arc::new(HttpCore::new(instance, config)),
        }
    }
}

fn headers(key: Option<&str>) -> Result<HeaderMap, ProviderError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("anthropic-version"),
        HeaderValue::from_static(API_VERSION),
    );
    if let Some(key) = key {
        let mut value = HeaderValue::from_str(key).map_err(|_| {
            ProviderError::Setup(
                "the API key contains characters not allowed in an HTTP header".to_owned(),
            )
        })?;
        value.set_sensitive(true);
        headers.insert(HeaderName::from_static("x-api-key"), value);
    }
    Ok(headers)
}

impl Provider for Anthropic {
    fn generate(
        &self,
        call: ProviderCall,
    ) -> BoxFuture<'static, Result<Completion, ProviderError>> {
        let core = Arc::clone(&self.core);
        async move {
            let key = core.api_key()?;
            let body = request_body(
                &call.model,
                &call.request,
                core.config().max_output_tokens,
                false,
            );
            let timing = core.timing(call.caller_deadline);
            let response = core
                .post_json(
                    "v1/messages",
                    headers(key.as_deref())?,
                    &body,
                    key.as_deref(),
                    &timing,
                )
                .await?;
            let value = read_json(response, &timing).await?;
            parse_message(&value)
        }
        .boxed()
    }

    fn generate_stream(&self, call: ProviderCall) -> EventStream {
        let core = Arc::clone(&self.core);
        async move {
            let key = core.api_key()?;
            let body = request_body(
                &call.model,
                &call.request,
                core.config().max_output_tokens,
                true,
            );
            let timing = core.timing(call.caller_deadline);
            core.post_stream(
                "v1/messages",
                headers(key.as_deref())?,
                &body,
                key.as_deref(),
                timing,
                EventDecoder::default(),
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

/// The Messages API request body for `request` sent to `model`.
pub(crate) fn request_body(
    model: &str,
    request: &GenerateRequest,
    default_max_tokens: i32,
    stream: bool,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let max_tokens = if request.max_output_tokens > 0 {
        request.max_output_tokens
    } else {
        default_max_tokens
    };
    body.insert("max_tokens".into(), json!(max_tokens));

    let mut system: Vec<String> = request
        .messages
        .iter()
        .filter(|message| message.role == i32::from(Role::System) && !message.content.is_empty())
        .map(|message| message.content.clone())
        .collect();
    if let Some(instruction) = response_format_instruction(request) {
        system.push(instruction);
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert(
        "messages".into(),
        Value::Array(messages_json(&request.messages)),
    );

    insert_tools(&mut body, request);
    if let Some(temperature) = request.temperature {
        // Anthropic's range is 0-1, ours (OpenAI's) 0-2: clamp rather than fail.
        body.insert("temperature".into(), json!(temperature.min(1.0)));
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Value::Object(body)
}

/// The tools and the tool choice, when the request offers tools.
fn insert_tools(body: &mut Map<String, Value>, request: &GenerateRequest) {
    if request.tools.is_empty() {
        return;
    }
    let tool_choice =
        ToolChoiceMode::try_from(request.tool_choice.as_ref().map_or(0, |choice| choice.mode))
            .unwrap_or_default();
    let tools = request
        .tools
        .iter()
        .map(|tool| {
            let mut spec = Map::new();
            spec.insert("name".into(), json!(tool.name));
            if !tool.description.is_empty() {
                spec.insert("description".into(), json!(tool.description));
            }
            spec.insert(
                "input_schema".into(),
                parameters_schema(&tool.parameters_json),
            );
            Value::Object(spec)
        })
        .collect();
    body.insert("tools".into(), Value::Array(tools));
    let mut choice = match tool_choice {
        ToolChoiceMode::Unspecified | ToolChoiceMode::Auto => json!({"type": "auto"}),
        ToolChoiceMode::None => json!({"type": "none"}),
        ToolChoiceMode::Required => json!({"type": "any"}),
        ToolChoiceMode::Tool => json!({
            "type": "tool",
            "name": request.tool_choice.as_ref().map_or("", |choice| choice.tool.as_str()),
        }),
    };
    let explicit = request.tool_choice.is_some();
    if request.parallel_tool_calls == Some(false) && tool_choice != ToolChoiceMode::None {
        if let Some(object) = choice.as_object_mut() {
            object.insert("disable_parallel_tool_use".into(), json!(true));
        }
        body.insert("tool_choice".into(), choice);
    } else if explicit {
        body.insert("tool_choice".into(), choice);
    }
}

fn response_format_instruction(request: &GenerateRequest) -> Option<String> {
    let format = request.response_format.as_ref()?;
    match ResponseFormatType::try_from(format.r#type).unwrap_or_default() {
        ResponseFormatType::Unspecified | ResponseFormatType::Text => None,
        ResponseFormatType::JsonObject => Some(
            "Answer with one JSON object and nothing else: no prose, no code fences.".to_owned(),
        ),
        ResponseFormatType::JsonSchema => Some(format!(
            "Answer with one JSON object and nothing else: no prose, no code fences. \
             It must conform to this JSON Schema:\n{}",
            format.schema_json
        )),
    }
}

/// Non-system messages as Anthropic turns, consecutive same-role turns merged.
fn messages_json(messages: &[Message]) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        let role = Role::try_from(message.role).unwrap_or_default();
        let (turn_role, blocks) = match role {
            Role::System => continue,
            Role::User | Role::Unspecified => ("user", text_block(&message.content)),
            Role::Tool => {
                let mut block = Map::new();
                block.insert("type".into(), json!("tool_result"));
                block.insert("tool_use_id".into(), json!(message.tool_call_id));
                block.insert("content".into(), json!(message.content));
                if message.is_error {
                    block.insert("is_error".into(), json!(true));
                }
                ("user", vec![Value::Object(block)])
            }
            Role::Assistant => {
                let mut blocks = text_block(&message.content);
                blocks.extend(message.tool_calls.iter().map(|call| {
                    json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": tool_input(&call.arguments_json),
                    })
                }));
                ("assistant", blocks)
            }
        };
        match turns.last_mut() {
            Some((last_role, last_blocks)) if *last_role == turn_role => {
                last_blocks.extend(blocks);
            }
            _ => turns.push((turn_role, blocks)),
        }
    }
    turns
        .into_iter()
        .filter(|(_, blocks)| !blocks.is_empty())
        .map(|(role, blocks)| json!({"role": role, "content": blocks}))
        .collect()
}

/// Anthropic refuses empty text blocks.
fn text_block(text: &str) -> Vec<Value> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "text", "text": text})]
    }
}

/// A tool call's `input` object. Arguments a model produced that are not a
/// JSON object are kept, wrapped, so the model still sees what it sent.
pub(crate) fn tool_input(arguments_json: &str) -> Value {
    if arguments_json.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments_json) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!({"_unparsed_arguments": arguments_json}),
    }
}

// === response mapping ===

/// Anthropic stop reason → ours.
pub(crate) fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" | "pause_turn" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Unspecified,
    }
}

/// Anthropic's `input_tokens` excludes tokens read from or written to the
/// prompt cache; ours includes them.
pub(crate) fn usage(value: &Value) -> ReportedUsage {
    let count = |name: &str| value.get(name).and_then(Value::as_u64);
    let cache_read = count("cache_read_input_tokens");
    let cache_write = count("cache_creation_input_tokens");
    ReportedUsage {
        input_tokens: count("input_tokens").map(|input| {
            input
                .saturating_add(cache_read.unwrap_or(0))
                .saturating_add(cache_write.unwrap_or(0))
        }),
        output_tokens: count("output_tokens"),
        cached_input_tokens: cache_read,
        reasoning_tokens: None,
        estimated: false,
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A non-streamed message object → [`Completion`].
pub(crate) fn parse_message(value: &Value) -> Result<Completion, ProviderError> {
    if str_at(value, "/type") == "error" {
        let (kind, message) =
            error_object(value).unwrap_or_else(|| ("error".to_owned(), value.to_string()));
        return Err(ProviderError::Upstream { kind, message });
    }
    let blocks = value
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Malformed("the message has no content array".to_owned()))?;
    let mut message = assistant_message();
    for block in blocks {
        match str_at(block, "/type") {
            "text" => message.content.push_str(str_at(block, "/text")),
            "tool_use" => message.tool_calls.push(ToolCall {
                id: str_at(block, "/id").to_owned(),
                name: str_at(block, "/name").to_owned(),
                arguments_json: block
                    .get("input")
                    .map_or_else(|| "{}".to_owned(), Value::to_string),
            }),
            // Thinking blocks are hidden reasoning, not part of the answer.
            _ => {}
        }
    }
    let provider_finish_reason = str_at(value, "/stop_reason").to_owned();
    let reason =
        crate::completion::normalise_finish(finish_reason(&provider_finish_reason), &message);
    Ok(Completion {
        message,
        finish_reason: reason,
        provider_finish_reason,
        usage: value.get("usage").map(usage).unwrap_or_default(),
        response_id: str_at(value, "/id").to_owned(),
        model: str_at(value, "/model").to_owned(),
    })
}

// === impl EventDecoder ===

/// A tool_use block being streamed.
#[derive(Debug)]
struct OpenToolBlock {
    tool_index: usize,
    got_input: bool,
}

/// Decodes the typed events of a streamed message.
#[derive(Debug, Default)]
pub(crate) struct EventDecoder {
    /// Content block index → the tool call it streams.
    tool_blocks: HashMap<u64, OpenToolBlock>,
    tool_calls: usize,
    stop_reason: String,
    done: bool,
}

impl EventDecoder {
    /// A content block opens: text may come with it; a tool_use block
    /// starts a tool call.
    fn block_start(&mut self, data: &Value, events: &mut Vec<ProviderEvent>) {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        let block = data.get("content_block").unwrap_or(&Value::Null);
        match str_at(block, "/type") {
            "text" => {
                let text = str_at(block, "/text");
                if !text.is_empty() {
                    events.push(ProviderEvent::Text(text.to_owned()));
                }
            }
            "tool_use" => {
                let tool_index = self.tool_calls;
                self.tool_calls += 1;
                self.tool_blocks.insert(
                    index,
                    OpenToolBlock {
                        tool_index,
                        got_input: false,
                    },
                );
                events.push(ProviderEvent::ToolCallDelta {
                    index: tool_index,
                    id: str_at(block, "/id").to_owned(),
                    name: str_at(block, "/name").to_owned(),
                    arguments_fragment: String::new(),
                });
            }
            _ => {}
        }
    }

    /// A piece of a content block: text, or a fragment of a tool call's
    /// input.
    fn block_delta(
        &mut self,
        data: &Value,
        events: &mut Vec<ProviderEvent>,
    ) -> Result<(), ProviderError> {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        let delta = data.get("delta").unwrap_or(&Value::Null);
        match str_at(delta, "/type") {
            "text_delta" => {
                let text = str_at(delta, "/text");
                if !text.is_empty() {
                    events.push(ProviderEvent::Text(text.to_owned()));
                }
            }
            "input_json_delta" => {
                let fragment = str_at(delta, "/partial_json");
                let Some(block) = self.tool_blocks.get_mut(&index) else {
                    return Err(ProviderError::Malformed(format!(
                        "input_json_delta for content block {index}, which is not a tool_use block"
                    )));
                };
                if !fragment.is_empty() {
                    block.got_input = true;
                    events.push(ProviderEvent::ToolCallDelta {
                        index: block.tool_index,
                        id: String::new(),
                        name: String::new(),
                        arguments_fragment: fragment.to_owned(),
                    });
                }
            }
            // Thinking and signatures are hidden reasoning.
            _ => {}
        }
        Ok(())
    }

    /// A content block closes.
    fn block_stop(&mut self, data: &Value, events: &mut Vec<ProviderEvent>) {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        if let Some(block) = self.tool_blocks.remove(&index)
            && !block.got_input
        {
            // A call without arguments streams no input; its
            // arguments are still a JSON object.
            events.push(ProviderEvent::ToolCallDelta {
                index: block.tool_index,
                id: String::new(),
                name: String::new(),
                arguments_fragment: "{}".to_owned(),
            });
        }
    }
}

impl SseDecoder for EventDecoder {
    fn on_event(&mut self, event: &Event) -> Result<Vec<ProviderEvent>, ProviderError> {
        let data = event_json(event)?;
        // The data's `type` is authoritative; the SSE event name repeats it.
        let kind = match str_at(&data, "/type") {
            "" => event.event.as_str(),
            kind => kind,
        };
        let mut events = Vec::new();
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                events.push(ProviderEvent::Metadata {
                    response_id: str_at(message, "/id").to_owned(),
                    model: str_at(message, "/model").to_owned(),
                });
                if let Some(reported) = message.get("usage") {
                    events.push(ProviderEvent::Usage(usage(reported)));
                }
            }
            "content_block_start" => self.block_start(&data, &mut events),
            "content_block_delta" => self.block_delta(&data, &mut events)?,
            "content_block_stop" => self.block_stop(&data, &mut events),
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    reason.clone_into(&mut self.stop_reason);
                }
                if let Some(reported) = data.get("usage") {
                    events.push(ProviderEvent::Usage(usage(reported)));
                }
            }
            "message_stop" => {
                self.done = true;
                events.push(ProviderEvent::Finished {
                    finish_reason: finish_reason(&self.stop_reason),
                    provider_finish_reason: std::mem::take(&mut self.stop_reason),
                });
            }
            "error" => {
                let (kind, message) =
                    error_object(&data).unwrap_or_else(|| ("error".to_owned(), data.to_string()));
                return Err(ProviderError::Upstream { kind, message });
            }
            // `ping`, and event types added after this adapter was written.
            _ => {}
        }
        Ok(events)
    }

    fn is_complete(&self) -> bool {
        self.done
    }

    fn end_marker(&self) -> &'static str {
        "`message_stop`"
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::llm::v1::{ResponseFormat, ToolChoice, ToolSpec};

    use super::*;

    fn message(role: Role, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            ..Message::default()
        }
    }

    #[test]
    fn a_conversation_with_tools_maps_to_messages() {
        let request = GenerateRequest {
            messages: vec![
                message(Role::System, "Be brief."),
                message(Role::System, "Use tools."),
                message(Role::User, "What is 2+2 and the time?"),
                Message {
                    role: Role::Assistant.into(),
                    content: "Let me check.".into(),
                    tool_calls: vec![
                        ToolCall {
                            id: "toolu_1".into(),
                            name: "calculator".into(),
                            arguments_json: "{\"expression\":\"2+2\"}".into(),
                        },
                        ToolCall {
                            id: "toolu_2".into(),
                            name: "current_time".into(),
                            arguments_json: String::new(),
                        },
                    ],
                    ..Message::default()
                },
                Message {
                    role: Role::Tool.into(),
                    content: "{\"result\":4}".into(),
                    tool_call_id: "toolu_1".into(),
                    ..Message::default()
                },
                Message {
                    role: Role::Tool.into(),
                    content: "unknown timezone".into(),
                    tool_call_id: "toolu_2".into(),
                    is_error: true,
                    ..Message::default()
                },
            ],
            tools: vec![ToolSpec {
                name: "calculator".into(),
                description: "Evaluates arithmetic.".into(),
                parameters_json: String::new(),
            }],
            tool_choice: Some(ToolChoice {
                mode: ToolChoiceMode::Required.into(),
                tool: String::new(),
            }),
            temperature: Some(1.5),
            stop: vec!["END".into()],
            parallel_tool_calls: Some(false),
            ..GenerateRequest::default()
        };
        let body = request_body("claude-sonnet-4", &request, 4096, true);
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4",
                "max_tokens": 4096,
                "system": "Be brief.\n\nUse tools.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "What is 2+2 and the time?"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_1", "name": "calculator", "input": {"expression": "2+2"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "current_time", "input": {}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "{\"result\":4}"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "unknown timezone", "is_error": true},
                    ]},
                ],
                "tools": [{"name": "calculator", "description": "Evaluates arithmetic.", "input_schema": {"type": "object", "properties": {}}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "temperature": 1.0,
                "stop_sequences": ["END"],
                "stream": true,
            })
        );
    }

    #[test]
    fn json_formats_become_instructions() {
        let request = GenerateRequest {
            messages: vec![message(Role::User, "hi")],
            response_format: Some(ResponseFormat {
                r#type: ResponseFormatType::JsonSchema.into(),
                schema_json: "{\"type\":\"object\"}".into(),
                ..ResponseFormat::default()
            }),
            max_output_tokens: 10,
            ..GenerateRequest::default()
        };
        let body = request_body("m", &request, 4096, false);
        assert_eq!(body["max_tokens"], 10);
        assert!(
            body["system"]
                .as_str()
                .unwrap()
                .contains("{\"type\":\"object\"}")
        );
        assert!(body.get("tool_choice").is_none());
    }

    #[test]
    fn invalid_arguments_are_kept_wrapped() {
        assert_eq!(tool_input("{\"a\":1}"), json!({"a": 1}));
        assert_eq!(tool_input(""), json!({}));
        assert_eq!(tool_input("[1"), json!({"_unparsed_arguments": "[1"}));
    }

    fn event(kind: &str, data: &str) -> Event {
        Event {
            event: kind.into(),
            data: data.into(),
            ..Event::default()
        }
    }

    #[test]
    fn events_decode_with_tool_indexes_among_tool_calls() {
        let mut decoder = EventDecoder::default();
        let mut events = Vec::new();
        for (kind, data) in [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"usage":{"input_tokens":30,"cache_read_input_tokens":10,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"current_time","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":12}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ] {
            events.extend(decoder.on_event(&event(kind, data)).unwrap());
        }
        assert!(decoder.is_complete());
        assert_eq!(
            events,
            vec![
                ProviderEvent::Metadata {
                    response_id: "msg_1".into(),
                    model: "claude-sonnet-4-20250514".into()
                },
                ProviderEvent::Usage(ReportedUsage {
                    input_tokens: Some(40),
                    output_tokens: Some(1),
                    cached_input_tokens: Some(10),
                    reasoning_tokens: None,
                    estimated: false
                }),
                ProviderEvent::Text("Hi".into()),
                ProviderEvent::ToolCallDelta {
                    index: 0,
                    id: "toolu_1".into(),
                    name: "current_time".into(),
                    arguments_fragment: String::new()
                },
                ProviderEvent::ToolCallDelta {
                    index: 0,
                    id: String::new(),
                    name: String::new(),
                    arguments_fragment: "{}".into()
                },
                ProviderEvent::Usage(ReportedUsage {
                    output_tokens: Some(12),
                    ..ReportedUsage::default()
                }),
                ProviderEvent::Finished {
                    finish_reason: FinishReason::ToolCalls,
                    provider_finish_reason: "tool_use".into()
                },
            ]
        );
    }

    #[test]
    fn an_error_event_ends_the_stream() {
        let mut decoder = EventDecoder::default();
        let err = decoder
            .on_event(&event(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(err.to_string(), "overloaded_error: Overloaded");
    }

    #[test]
    fn a_message_maps_back() {
        let value = json!({
            "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
            "content": [{"type": "text", "text": "Sure."}, {"type": "tool_use", "id": "toolu_9", "name": "calculator", "input": {"expression": "1+1"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 11, "output_tokens": 7}
        });
        let completion = parse_message(&value).unwrap();
        assert_eq!(completion.message.content, "Sure.");
        assert_eq!(
            completion.message.tool_calls[0].arguments_json,
            "{\"expression\":\"1+1\"}"
        );
        assert_eq!(completion.finish_reason, FinishReason::ToolCalls);
        assert_eq!(completion.usage.input_tokens, Some(11));
    }
}
