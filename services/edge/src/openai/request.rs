//! An OpenAI chat completion request as a gateway `GenerateRequest`: the
//! model name is the gateway's route (or `provider/model`), messages,
//! tools, `tool_choice`, `response_format`, `max_tokens` /
//! `max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`,
//! `parallel_tool_calls`. What the gateway cannot do (`n` > 1, images,
//! `logprobs`) is refused naming the parameter, never ignored into a
//! different answer; the gateway checks the values themselves (ranges,
//! schemas) and names the field it refuses.

use agentmesh_proto::llm::v1::{
    GenerateRequest, Message, ResponseFormat, ResponseFormatType, Role, ToolCall, ToolChoice,
    ToolChoiceMode, ToolSpec,
};
use serde::Deserialize;
use serde_json::Value;

/// A parameter the facade refuses: which, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadParam {
    pub(crate) param: Option<String>,
    pub(crate) message: String,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> BadParam {
    BadParam {
        param: Some(param.into()),
        message: message.into(),
    }
}

/// The body of `POST /v1/chat/completions`, as far as the facade reads
/// it (parameters it does not know are ignored, as OpenAI-compatible
/// servers do, so newer SDKs keep working).
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    pub(crate) stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    tools: Option<Vec<ToolDefinition>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    pub(crate) user: Option<String>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    logprobs: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<AssistantToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AssistantToolCall {
    id: String,
    function: FunctionCall,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct ToolDefinition {
    #[serde(rename = "type")]
    kind: String,
    function: FunctionDefinition,
}

#[derive(Debug, Deserialize)]
struct FunctionDefinition {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

impl ChatRequest {
    /// Whether the last streamed chunk carries the usage.
    pub(crate) fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|options| options.include_usage)
    }

    /// The gateway request.
    pub(crate) fn to_generate(&self) -> Result<GenerateRequest, BadParam> {
        if self.model.trim().is_empty() {
            return Err(bad(
                "model",
                "`model` is required: a route name from GET /v1/models",
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(bad("n", "only n = 1 is supported"));
        }
        if self.logprobs == Some(true) {
            return Err(bad("logprobs", "logprobs are not supported"));
        }
        if self.messages.is_empty() {
            return Err(bad("messages", "`messages` must hold at least one message"));
        }
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(index, message)| message.to_gateway(index))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = self
            .tools
            .iter()
            .flatten()
            .enumerate()
            .map(|(index, tool)| tool.to_gateway(index))
            .collect::<Result<Vec<_>, _>>()?;
        let max_output_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => 0,
            Some(value) => i32::try_from(value)
                .ok()
                .filter(|value| *value > 0)
                .ok_or_else(|| {
                    let param = if self.max_completion_tokens.is_some() {
                        "max_completion_tokens"
                    } else {
                        "max_tokens"
                    };
                    bad(
                        param,
                        format!("`{param}` must be a positive whole number, not {value}"),
                    )
                })?,
        };
        Ok(GenerateRequest {
            model: self.model.clone(),
            messages,
            tools,
            tool_choice: self.tool_choice.as_ref().map(tool_choice).transpose()?,
            response_format: self
                .response_format
                .as_ref()
                .map(response_format)
                .transpose()?,
            temperature: self.temperature,
            max_output_tokens,
            stop: self
                .stop
                .as_ref()
                .map(stop)
                .transpose()?
                .unwrap_or_default(),
            top_p: self.top_p,
            seed: self.seed,
            parallel_tool_calls: self.parallel_tool_calls,
            ..GenerateRequest::default()
        })
    }
}

impl ChatMessage {
    fn to_gateway(&self, index: usize) -> Result<Message, BadParam> {
        let at = |field: &str| format!("messages[{index}].{field}");
        let role = match self.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(bad(
                    at("role"),
                    format!(
                        "role `{other}` is not one of system, developer, user, assistant, tool"
                    ),
                ));
            }
        };
        let content = match &self.content {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                text_of_parts(parts).map_err(|message| bad(at("content"), message))?
            }
            Some(_) => {
                return Err(bad(
                    at("content"),
                    "content must be a string or an array of text parts",
                ));
            }
        };
        if role == Role::Tool && self.tool_call_id.as_deref().is_none_or(str::is_empty) {
            return Err(bad(
                at("tool_call_id"),
                "a tool message needs the tool_call_id it answers",
            ));
        }
        let tool_calls = self
            .tool_calls
            .iter()
            .flatten()
            .map(|call| ToolCall {
                id: call.id.clone(),
                name: call.function.name.clone(),
                arguments_json: call.function.arguments.clone(),
            })
            .collect();
        Ok(Message {
            role: role as i32,
            content,
            tool_calls,
            tool_call_id: self.tool_call_id.clone().unwrap_or_default(),
            name: self.name.clone().unwrap_or_default(),
            ..Message::default()
        })
    }
}

/// The text of content parts; other kinds (images, audio, files) are
/// refused, not dropped.
fn text_of_parts(parts: &[Value]) -> Result<String, String> {
    let mut text = String::new();
    for part in parts {
        match (
            part.get("type").and_then(Value::as_str),
            part.get("text").and_then(Value::as_str),
        ) {
            (Some("text"), Some(part)) => text.push_str(part),
            (kind, _) => {
                return Err(format!(
                    "content part of type `{}` is not supported: only text parts are",
                    kind.unwrap_or("?")
                ));
            }
        }
    }
    Ok(text)
}

impl ToolDefinition {
    fn to_gateway(&self, index: usize) -> Result<ToolSpec, BadParam> {
        if self.kind != "function" {
            return Err(bad(
                format!("tools[{index}].type"),
                format!(
                    "tool type `{}` is not supported: only `function` is",
                    self.kind
                ),
            ));
        }
        let parameters = self
            .function
            .parameters
            .clone()
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
        Ok(ToolSpec {
            name: self.function.name.clone(),
            description: self.function.description.clone().unwrap_or_default(),
            parameters_json: parameters.to_string(),
        })
    }
}

fn tool_choice(value: &Value) -> Result<ToolChoice, BadParam> {
    let mode = |mode: ToolChoiceMode| ToolChoice {
        mode: mode as i32,
        tool: String::new(),
    };
    match value {
        Value::String(choice) => match choice.as_str() {
            "auto" => Ok(mode(ToolChoiceMode::Auto)),
            "none" => Ok(mode(ToolChoiceMode::None)),
            "required" => Ok(mode(ToolChoiceMode::Required)),
            other => Err(bad(
                "tool_choice",
                format!("`{other}` is not auto, none or required"),
            )),
        },
        Value::Object(_) => value
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|name| ToolChoice {
                mode: ToolChoiceMode::Tool as i32,
                tool: name.to_owned(),
            })
            .ok_or_else(|| {
                bad(
                    "tool_choice",
                    "name the tool as {\"type\": \"function\", \"function\": {\"name\": …}}",
                )
            }),
        _ => Err(bad("tool_choice", "must be a string or an object")),
    }
}

fn response_format(value: &Value) -> Result<ResponseFormat, BadParam> {
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    let format = |kind: ResponseFormatType| ResponseFormat {
        r#type: kind as i32,
        ..ResponseFormat::default()
    };
    match kind {
        "text" => Ok(format(ResponseFormatType::Text)),
        "json_object" => Ok(format(ResponseFormatType::JsonObject)),
        "json_schema" => {
            let spec = value.get("json_schema").ok_or_else(|| {
                bad(
                    "response_format.json_schema",
                    "json_schema is required with type json_schema",
                )
            })?;
            let schema = spec.get("schema").ok_or_else(|| {
                bad(
                    "response_format.json_schema.schema",
                    "the schema is required",
                )
            })?;
            Ok(ResponseFormat {
                r#type: ResponseFormatType::JsonSchema as i32,
                schema_json: schema.to_string(),
                schema_name: spec
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                strict: spec.get("strict").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        other => Err(bad(
            "response_format.type",
            format!("`{other}` is not text, json_object or json_schema"),
        )),
    }
}

fn stop(value: &Value) -> Result<Vec<String>, BadParam> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(stop) => Ok(vec![stop.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("stop", "stop must be a string or an array of strings"))
            })
            .collect(),
        _ => Err(bad("stop", "stop must be a string or an array of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: Value) -> ChatRequest {
        match serde_json::from_value(body) {
            Ok(request) => request,
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn a_full_request_maps_field_by_field() {
        let request = parsed(serde_json::json!({
            "model": "default",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "2+2"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"2+2\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "4"}
            ],
            "tools": [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "calculator"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": true}},
            "max_tokens": 10, "max_completion_tokens": 20, "temperature": 0.5,
            "stop": "END", "user": "u1", "stream": true, "stream_options": {"include_usage": true}
        }));
        assert!(request.include_usage());
        let generate = match request.to_generate() {
            Ok(generate) => generate,
            Err(err) => panic!("{err:?}"),
        };
        assert_eq!(generate.messages.len(), 4);
        assert_eq!(generate.messages[0].role, Role::System as i32);
        assert_eq!(generate.messages[1].content, "2+2");
        assert_eq!(generate.messages[2].tool_calls[0].name, "calculator");
        assert_eq!(generate.messages[3].tool_call_id, "c1");
        assert_eq!(generate.max_output_tokens, 20);
        assert_eq!(generate.stop, vec!["END".to_owned()]);
        assert_eq!(
            generate.tool_choice.map(|c| c.tool),
            Some("calculator".to_owned())
        );
        assert_eq!(generate.response_format.map(|f| f.strict), Some(true));
    }

    #[test]
    fn what_the_gateway_cannot_do_is_refused_by_name() {
        let param = |body: Value| parsed(body).to_generate().err().and_then(|err| err.param);
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2})
            ),
            Some("n".to_owned())
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "messages": []})),
            Some("messages".to_owned())
        );
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
            ),
            Some("messages[0].content".to_owned())
        );
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})
            ),
            Some("messages[0].tool_call_id".to_owned())
        );
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1})
            ),
            Some("max_tokens".to_owned())
        );
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 3})
            ),
            Some("stop".to_owned())
        );
        assert_eq!(
            param(serde_json::json!({"model": "", "messages": [{"role": "user", "content": "x"}]})),
            Some("model".to_owned())
        );
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web", "function": {"name": "x"}}]})
            ),
            Some("tools[0].type".to_owned())
        );
    }
}
