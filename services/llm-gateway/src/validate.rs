//! Checks a generate request before any provider sees it, so callers get
//! INVALID_ARGUMENT with every offending field named (`messages[2].tool_call_id`)
//! instead of a provider's less specific 400: the model name against a
//! strict grammar ([`check_model`]), tool parameter and response schemas
//! against the JSON Schema meta-schema of their draft, messages, tools and
//! sampling settings.

use std::collections::HashSet;

use agentmesh_kit::text::truncate_chars;
use agentmesh_proto::llm::v1::{
    GenerateRequest, Message, ResponseFormat, ResponseFormatType, Role, ToolChoice, ToolChoiceMode,
};
use tonic::Status;

/// Most stop sequences a request may give (OpenAI's limit, the tightest).
pub(crate) const MAX_STOP_SEQUENCES: usize = 4;
/// Longest tool or schema name.
const MAX_NAME_CHARS: usize = 64;
/// Longest `model` (a route name or `provider/model`).
pub(crate) const MAX_MODEL_BYTES: usize = 256;
/// Longest provider instance name in `provider/model`.
const MAX_PROVIDER_BYTES: usize = 64;
/// How much of a meta-schema error a violation quotes.
const MAX_SCHEMA_ERROR_CHARS: usize = 200;

/// Every field violation of `request`, or `Ok` when there is none.
pub(crate) fn validate_request(request: &GenerateRequest) -> Result<(), Status> {
    let mut violations: Vec<(String, String)> = Vec::new();
    let mut violate = |field: String, description: &str| {
        violations.push((field, description.to_owned()));
    };

    if let Err(problem) = check_model(&request.model) {
        violate("model".into(), &problem);
    }
    if request.messages.is_empty() {
        violate("messages".into(), "at least one message is required");
    }
    for (index, message) in request.messages.iter().enumerate() {
        check_message(index, message, &mut violate);
    }
    check_tools(request, &mut violate);
    if let Some(choice) = &request.tool_choice {
        check_tool_choice(request, choice, &mut violate);
    }
    if let Some(format) = &request.response_format {
        check_response_format(format, &mut violate);
    }
    check_generation(request, &mut violate);
    if request.agent_role.len() > MAX_NAME_CHARS
        || !request
            .agent_role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        violate(
            "agent_role".into(),
            "must be at most 64 characters of `a`-`z` and `_` (e.g. `planner`), or empty",
        );
    }

    if violations.is_empty() {
        Ok(())
    } else {
        Err(agentmesh_kit::status::invalid_argument(violations))
    }
}

/// Tool names (well-formed, unique) and parameter schemas.
fn check_tools(request: &GenerateRequest, violate: &mut impl FnMut(String, &str)) {
    let mut names = HashSet::new();
    for (index, tool) in request.tools.iter().enumerate() {
        let field = |name: &str| format!("tools[{index}].{name}");
        if !is_name(&tool.name) {
            violate(
                field("name"),
                "must be 1-64 characters of letters, digits, `_` and `-`",
            );
        } else if !names.insert(tool.name.as_str()) {
            violate(
                field("name"),
                "another tool of this request has the same name",
            );
        }
        if !tool.parameters_json.trim().is_empty()
            && let Err(problem) = check_schema(&tool.parameters_json)
        {
            // The tool's name when it is a well-formed one (bounded, safe
            // to echo), else its index alone.
            let description = if is_name(&tool.name) {
                format!("tool `{}`: {problem}", tool.name)
            } else {
                problem
            };
            violate(field("parameters_json"), &description);
        }
    }
}

/// The tool choice agrees with the tools offered.
fn check_tool_choice(
    request: &GenerateRequest,
    choice: &ToolChoice,
    violate: &mut impl FnMut(String, &str),
) {
    match ToolChoiceMode::try_from(choice.mode) {
        Err(_) => violate("tool_choice.mode".into(), "unknown tool choice mode"),
        Ok(ToolChoiceMode::Tool) => {
            if choice.tool.is_empty() {
                violate(
                    "tool_choice.tool".into(),
                    "required with TOOL_CHOICE_MODE_TOOL: name one of the request's tools",
                );
            } else if !request.tools.iter().any(|tool| tool.name == choice.tool) {
                violate(
                    "tool_choice.tool".into(),
                    "must name one of the request's tools",
                );
            }
        }
        Ok(mode) => {
            if !choice.tool.is_empty() {
                violate(
                    "tool_choice.tool".into(),
                    "only allowed with TOOL_CHOICE_MODE_TOOL",
                );
            }
            if mode == ToolChoiceMode::Required && request.tools.is_empty() {
                violate(
                    "tool_choice.mode".into(),
                    "TOOL_CHOICE_MODE_REQUIRED needs at least one tool in `tools`",
                );
            }
        }
    }
}

/// A schema is given exactly when the format asks for one.
fn check_response_format(format: &ResponseFormat, violate: &mut impl FnMut(String, &str)) {
    match ResponseFormatType::try_from(format.r#type) {
        Err(_) => violate(
            "response_format.type".into(),
            "unknown response format type",
        ),
        Ok(ResponseFormatType::JsonSchema) => {
            if format.schema_json.trim().is_empty() {
                violate(
                    "response_format.schema_json".into(),
                    "required with RESPONSE_FORMAT_TYPE_JSON_SCHEMA: a JSON Schema as a JSON object",
                );
            } else if let Err(problem) = check_schema(&format.schema_json) {
                violate("response_format.schema_json".into(), &problem);
            }
            if !format.schema_name.is_empty() && !is_name(&format.schema_name) {
                violate(
                    "response_format.schema_name".into(),
                    "must be at most 64 characters of letters, digits, `_` and `-`",
                );
            }
        }
        Ok(_) => {
            if !format.schema_json.is_empty() || !format.schema_name.is_empty() {
                violate(
                    "response_format.schema_json".into(),
                    "a schema is only used with RESPONSE_FORMAT_TYPE_JSON_SCHEMA",
                );
            }
        }
    }
}

/// Sampling parameters, the output limit and stop sequences.
fn check_generation(request: &GenerateRequest, violate: &mut impl FnMut(String, &str)) {
    if let Some(temperature) = request.temperature
        && !(0.0..=2.0).contains(&temperature)
    {
        violate("temperature".into(), "must be between 0.0 and 2.0");
    }
    if let Some(top_p) = request.top_p
        && !(0.0..=1.0).contains(&top_p)
    {
        violate("top_p".into(), "must be between 0.0 and 1.0");
    }
    if request.max_output_tokens < 0 {
        violate(
            "max_output_tokens".into(),
            "must not be negative (0 = the route's default)",
        );
    }
    if request.stop.len() > MAX_STOP_SEQUENCES {
        violate("stop".into(), "at most 4 stop sequences");
    }
    for (index, stop) in request.stop.iter().enumerate() {
        if stop.is_empty() {
            violate(format!("stop[{index}]"), "must not be empty");
        }
    }
}

fn check_message(index: usize, message: &Message, violate: &mut impl FnMut(String, &str)) {
    let field = |name: &str| format!("messages[{index}].{name}");
    let role = Role::try_from(message.role).unwrap_or(Role::Unspecified);
    if role == Role::Unspecified {
        violate(
            field("role"),
            "must be set: ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
        );
        return;
    }
    if role == Role::Tool {
        if message.tool_call_id.is_empty() {
            violate(
                field("tool_call_id"),
                "required for ROLE_TOOL: the id of the tool call this result answers",
            );
        }
    } else if !message.tool_call_id.is_empty() {
        violate(
            field("tool_call_id"),
            "only ROLE_TOOL messages answer a tool call",
        );
    }
    if message.is_error && role != Role::Tool {
        violate(field("is_error"), "only ROLE_TOOL messages can be errors");
    }
    if role == Role::Assistant {
        for (call_index, call) in message.tool_calls.iter().enumerate() {
            if call.id.is_empty() {
                violate(
                    field(&format!("tool_calls[{call_index}].id")),
                    "required: tool results refer to it",
                );
            }
            if call.name.is_empty() {
                violate(field(&format!("tool_calls[{call_index}].name")), "required");
            }
        }
    } else if !message.tool_calls.is_empty() {
        violate(
            field("tool_calls"),
            "only ROLE_ASSISTANT messages carry tool calls",
        );
    }
    // Empty system prompts are harmless (and agents may have none); an empty
    // user turn is a mistake every provider refuses.
    if role == Role::User && message.content.is_empty() {
        violate(field("content"), "must not be empty");
    }
}

fn is_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `text` is a JSON Schema: a JSON object valid against the meta-schema of
/// its draft (`$schema`, 2020-12 when absent). `{"type":"banana"}` is JSON
/// but no schema; a `$schema` naming no bundled draft is refused too (it
/// is never fetched).
fn check_schema(text: &str) -> Result<(), String> {
    let value = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| {
            "must be a JSON Schema as a JSON object, e.g. {\"type\":\"object\",\"properties\":{}}"
                .to_owned()
        })?;
    jsonschema::meta::validate(&value).map_err(|err| {
        let path = err.instance_path().to_string();
        let at = if path.is_empty() {
            String::new()
        } else {
            format!(" at `{}`", truncate_chars(&path, MAX_SCHEMA_ERROR_CHARS))
        };
        format!(
            "is not a valid JSON Schema{at}: {}",
            truncate_chars(&err.to_string(), MAX_SCHEMA_ERROR_CHARS)
        )
    })
}

/// `model` follows the grammar of model names: empty (the default route),
/// a route name, or `provider/model`:
///
/// ```text
/// model    = route | provider "/" name
/// route    = 1*(ALPHA / DIGIT / "_" / "-" / "." / ":")
/// provider = 1*64(ALPHA / DIGIT / "_" / "-")
/// name     = segment *("/" segment)       ; org/model names, as vLLM serves them
/// segment  = 1*(ALPHA / DIGIT / "_" / "-" / "." / ":" / "@" / "+"), not "." or ".."
/// ```
///
/// at most 256 bytes in all. Nothing that reads as a path step (`..`,
/// `.`, an empty segment, `\`) or a control character gets through, so a
/// name never addresses anything but a model.
pub(crate) fn check_model(model: &str) -> Result<(), String> {
    if model.is_empty() {
        return Ok(());
    }
    if model.len() > MAX_MODEL_BYTES {
        return Err(format!("must be at most {MAX_MODEL_BYTES} bytes"));
    }
    let segment_ok = |segment: &str, extra: &[u8]| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b) || extra.contains(&b))
    };
    let Some((provider, name)) = model.split_once('/') else {
        return if segment_ok(model, b".:") {
            Ok(())
        } else {
            Err("must be a route name or provider/model: letters, digits and `_-.:` (no `.` or `..` alone)".to_owned())
        };
    };
    if provider.len() > MAX_PROVIDER_BYTES || !segment_ok(provider, b"") {
        return Err(format!(
            "the provider before `/` must be 1-{MAX_PROVIDER_BYTES} letters, digits, `_` and `-`"
        ));
    }
    if !name.split('/').all(|segment| segment_ok(segment, b".:@+")) {
        return Err("the model after `provider/` must be `/`-separated parts of letters, digits and `_-.:@+`, none empty, `.` or `..`".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::llm::v1::{ResponseFormat, ToolCall, ToolChoice, ToolSpec};
    use tonic_types::StatusExt;

    use super::*;

    fn user(text: &str) -> Message {
        Message {
            role: Role::User.into(),
            content: text.into(),
            ..Message::default()
        }
    }

    fn fields(status: &Status) -> Vec<String> {
        status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|violation| violation.field)
            .collect()
    }

    #[test]
    fn a_plain_request_is_valid() {
        let request = GenerateRequest {
            messages: vec![user("hi")],
            tools: vec![ToolSpec {
                name: "calculator".into(),
                parameters_json: String::new(),
                ..ToolSpec::default()
            }],
            temperature: Some(0.0),
            ..GenerateRequest::default()
        };
        validate_request(&request).unwrap();
    }

    #[test]
    fn every_violation_is_named() {
        let request = GenerateRequest {
            messages: vec![
                user("hi"),
                Message {
                    role: Role::Assistant.into(),
                    tool_calls: vec![ToolCall {
                        id: String::new(),
                        name: "calc".into(),
                        arguments_json: "{".into(),
                    }],
                    ..Message::default()
                },
                Message {
                    role: Role::Tool.into(),
                    content: "{}".into(),
                    ..Message::default()
                },
                Message::default(),
            ],
            tools: vec![
                ToolSpec {
                    name: "calc".into(),
                    parameters_json: "not json".into(),
                    ..ToolSpec::default()
                },
                ToolSpec {
                    name: "calc".into(),
                    ..ToolSpec::default()
                },
                ToolSpec {
                    name: "bad name!".into(),
                    ..ToolSpec::default()
                },
            ],
            tool_choice: Some(ToolChoice {
                mode: ToolChoiceMode::Tool.into(),
                tool: "missing".into(),
            }),
            response_format: Some(ResponseFormat {
                r#type: ResponseFormatType::JsonSchema.into(),
                schema_json: "[]".into(),
                ..ResponseFormat::default()
            }),
            temperature: Some(2.5),
            top_p: Some(-0.1),
            max_output_tokens: -1,
            stop: vec![
                "a".into(),
                String::new(),
                "c".into(),
                "d".into(),
                "e".into(),
            ],
            ..GenerateRequest::default()
        };
        let status = validate_request(&request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            fields(&status),
            [
                "messages[1].tool_calls[0].id",
                "messages[2].tool_call_id",
                "messages[3].role",
                "tools[0].parameters_json",
                "tools[1].name",
                "tools[2].name",
                "tool_choice.tool",
                "response_format.schema_json",
                "temperature",
                "top_p",
                // The first ten are named; the rest (max_output_tokens,
                // stop, stop[1]) are counted.
                "…",
            ]
        );
    }

    #[test]
    fn model_names_follow_the_grammar() {
        for good in [
            "",
            "default",
            "fast-v2.1",
            "scripted/demo",
            "openai/gpt-4o-mini",
            "vllm/meta-llama/Llama-3.1-8B-Instruct",
            "bedrock/anthropic.claude-3:0",
        ] {
            check_model(good).unwrap_or_else(|err| panic!("{good}: {err}"));
        }
        let long = format!("scripted/{}", "a".repeat(MAX_MODEL_BYTES));
        for bad in [
            "scripted/../../x",
            "scripted/..",
            "scripted/./x",
            "scripted/a//b",
            "scripted/",
            "/x",
            "..",
            "scripted\\x",
            "scripted/a\\b",
            "scripted/a b",
            "scripted/a\nb",
            "scr ipted/x",
            "scripted/é",
            long.as_str(),
        ] {
            assert!(check_model(bad).is_err(), "{bad:?} was accepted");
        }
        let request = GenerateRequest {
            model: "scripted/../../x".into(),
            messages: vec![user("hi")],
            ..GenerateRequest::default()
        };
        let status = validate_request(&request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(fields(&status), ["model"]);
    }

    #[test]
    fn tool_schemas_must_be_json_schemas() {
        let tool = |name: &str, schema: &str| ToolSpec {
            name: name.into(),
            parameters_json: schema.into(),
            ..ToolSpec::default()
        };
        let request = GenerateRequest {
            messages: vec![user("hi")],
            tools: vec![
                tool(
                    "fine",
                    r#"{"type":"object","properties":{"x":{"type":"string"}}}"#,
                ),
                tool("banana", r#"{"type":"banana"}"#),
                tool(
                    "deep",
                    r#"{"type":"object","properties":{"x":{"minLength":-1}}}"#,
                ),
                tool(
                    "remote",
                    r#"{"$schema":"http://example.invalid/meta","type":"object"}"#,
                ),
            ],
            ..GenerateRequest::default()
        };
        let status = validate_request(&request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let violations = status.get_details_bad_request().unwrap().field_violations;
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "tools[1].parameters_json",
                "tools[2].parameters_json",
                "tools[3].parameters_json",
            ]
        );
        assert!(
            violations[0].description.contains("tool `banana`"),
            "{violations:?}"
        );
        assert!(
            violations[0]
                .description
                .contains("not a valid JSON Schema"),
            "{violations:?}"
        );
        assert!(
            violations[1]
                .description
                .contains("/properties/x/minLength"),
            "{violations:?}"
        );

        let format = GenerateRequest {
            messages: vec![user("hi")],
            response_format: Some(ResponseFormat {
                r#type: ResponseFormatType::JsonSchema.into(),
                schema_json: r#"{"type":"banana"}"#.into(),
                ..ResponseFormat::default()
            }),
            ..GenerateRequest::default()
        };
        let status = validate_request(&format).unwrap_err();
        assert_eq!(fields_of(&status), ["response_format.schema_json"]);
    }

    fn fields_of(status: &Status) -> Vec<String> {
        fields(status)
    }

    #[test]
    fn no_messages_is_invalid() {
        let status = validate_request(&GenerateRequest::default()).unwrap_err();
        assert_eq!(fields(&status), ["messages"]);
    }
}
