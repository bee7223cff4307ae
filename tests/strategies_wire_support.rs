//! A mock OpenAI Chat Completions upstream for `strategies_wire.rs`.
//!
//! ```text
//! gateway (openai provider) ─POST /v1/chat/completions─▶ MockOpenAi
//!   check: a well-formed OpenAI request, nothing of agentmesh's own
//!   pick: the fixture a model would answer with, by what it sees
//!         (response_format's schema name, the step it is told, the last
//!         message, the system prompt)
//!   answer: the fixture's chunks as SSE (`stream: true`; the usage chunk
//!           only with `stream_options.include_usage`), or assembled into
//!           one `chat.completion`
//! ```
//!
//! Every request is recorded with the fixture it got; a request OpenAI
//! would refuse is answered 400 the way OpenAI does, and what is wrong with
//! it is kept for the test to show.
//!
//! Also the mesh's side of it: the gateway's `openai` provider pointed at
//! the upstream, alone ([`GatewayAlone`]) or in a mesh ([`openai_at`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agentmesh_kit::{Listeners, ServeError};
use agentmesh_llm_gateway::{AuditConfig, ProviderConfig, ProviderKind, RouteConfig};
use agentmesh_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The top-level fields of a Chat Completions request.
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "n",
    "user",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "metadata",
    "store",
    "service_tier",
    "reasoning_effort",
    "modalities",
    "audio",
    "prediction",
];

/// The fields a message may have.
const MESSAGE_FIELDS: &[&str] = &["role", "content", "name", "tool_calls", "tool_call_id"];

/// A request the upstream received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The `authorization` header.
    pub(crate) authorization: String,
    pub(crate) body: Value,
    /// The fixture it was answered with (empty when refused).
    pub(crate) fixture: String,
}

#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<Seen>>,
    problems: Mutex<Vec<String>>,
}

/// The mock upstream on a loopback port; it stops when dropped.
#[derive(Debug)]
pub(crate) struct MockOpenAi {
    addr: SocketAddr,
    dir: PathBuf,
    recorder: Arc<Recorder>,
    task: JoinHandle<()>,
}

impl Drop for MockOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockOpenAi {
    /// Serves the fixtures of `dir` (`<name>.sse`).
    pub(crate) async fn start(dir: PathBuf) -> Self {
        let recorder = Arc::new(Recorder::default());
        let state = (Arc::clone(&recorder), dir.clone());
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
                let (recorder, dir) = state.clone();
                async move { answer(&recorder, &dir, &headers, &body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            dir,
            recorder,
            task,
        }
    }

    /// `http://addr` plus `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests so far, in order of arrival.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.recorder.seen.lock().unwrap().clone()
    }

    /// What was wrong with the requests so far.
    pub(crate) fn problems(&self) -> Vec<String> {
        self.recorder.problems.lock().unwrap().clone()
    }

    /// The chunks of the fixture `name`.
    pub(crate) fn chunks(&self, name: &str) -> Vec<Value> {
        chunks(&self.dir, name).unwrap()
    }
}

fn answer(
    recorder: &Recorder,
    dir: &Path,
    headers: &http::HeaderMap,
    body: &[u8],
) -> axum::response::Response {
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = match serde_json::from_slice(body) {
        Ok(body) => body,
        Err(err) => return refuse(recorder, format!("the body is not JSON: {err}"), None),
    };
    let mut problems = Vec::new();
    check_request(&body, &mut problems);
    if !problems.is_empty() {
        return refuse(recorder, problems.join("; "), Some(body));
    }
    let picked = pick(&body).and_then(|name| Ok((chunks(dir, &name)?, name)));
    let (chunks, fixture) = match picked {
        Ok(picked) => picked,
        Err(problem) => return refuse(recorder, problem, Some(body)),
    };
    let stream = body["stream"] == json!(true);
    let include_usage = body.pointer("/stream_options/include_usage") == Some(&json!(true));
    recorder.seen.lock().unwrap().push(Seen {
        authorization,
        body,
        fixture,
    });
    if stream {
        sse(chunks, include_usage)
    } else {
        json_response(http::StatusCode::OK, &assemble(&chunks))
    }
}

/// OpenAI's answer to a request it refuses; the problem is kept.
fn refuse(recorder: &Recorder, problem: String, body: Option<Value>) -> axum::response::Response {
    recorder.problems.lock().unwrap().push(problem.clone());
    if let Some(body) = body {
        recorder.seen.lock().unwrap().push(Seen {
            authorization: String::new(),
            body,
            fixture: String::new(),
        });
    }
    let error = json!({"error": {"message": problem, "type": "invalid_request_error", "param": null, "code": null}});
    json_response(http::StatusCode::BAD_REQUEST, &error)
}

fn json_response(status: http::StatusCode, body: &Value) -> axum::response::Response {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap()
}

/// The fixture's chunks as an event stream, one write per event.
fn sse(chunks: Vec<Value>, include_usage: bool) -> axum::response::Response {
    let mut events: Vec<String> = chunks
        .into_iter()
        .filter_map(|mut chunk| {
            if !include_usage {
                // Without include_usage there is no usage chunk and no
                // `usage` field at all.
                if chunk["choices"] == json!([]) {
                    return None;
                }
                chunk.as_object_mut()?.remove("usage");
            }
            Some(format!("data: {chunk}\n\n"))
        })
        .collect();
    events.push("data: [DONE]\n\n".to_owned());
    let body = axum::body::Body::from_stream(futures::stream::iter(
        events.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap()
}

/// The `chat.completion` the chunks of a stream add up to.
fn assemble(chunks: &[Value]) -> Value {
    let first = chunks.first().unwrap_or(&Value::Null);
    let mut content = String::new();
    let mut calls: BTreeMap<u64, Value> = BTreeMap::new();
    let mut finish_reason = Value::Null;
    let mut usage = Value::Null;
    for chunk in chunks {
        if chunk["usage"].is_object() {
            usage = chunk["usage"].clone();
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        content.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap();
            let entry = calls.entry(index).or_insert_with(|| {
                json!({"id": call["id"], "type": "function",
                       "function": {"name": call["function"]["name"], "arguments": ""}})
            });
            let arguments = format!(
                "{}{}",
                entry["function"]["arguments"].as_str().unwrap(),
                call["function"]["arguments"].as_str().unwrap_or_default()
            );
            entry["function"]["arguments"] = json!(arguments);
        }
        if !choice["finish_reason"].is_null() {
            finish_reason = choice["finish_reason"].clone();
        }
    }
    let mut message =
        json!({"role": "assistant", "content": null, "refusal": null, "annotations": []});
    if calls.is_empty() {
        message["content"] = json!(content);
    } else {
        message["tool_calls"] = json!(calls.into_values().collect::<Vec<_>>());
    }
    json!({
        "id": first["id"], "object": "chat.completion", "created": first["created"],
        "model": first["model"],
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": usage, "service_tier": first["service_tier"],
        "system_fingerprint": first["system_fingerprint"],
    })
}

/// The chunks of `<dir>/<name>.sse`, up to `data: [DONE]`.
fn chunks(dir: &Path, name: &str) -> Result<Vec<Value>, String> {
    let path = dir.join(format!("{name}.sse"));
    let text = std::fs::read_to_string(&path)
        .map_err(|err| format!("no fixture {}: {err}", path.display()))?;
    let mut chunks = Vec::new();
    for data in text.lines().filter_map(|line| line.strip_prefix("data: ")) {
        if data == "[DONE]" {
            return Ok(chunks);
        }
        chunks.push(serde_json::from_str(data).map_err(|err| format!("{name}: {err}"))?);
    }
    Err(format!("{name} does not end with data: [DONE]"))
}

// === what a model sees ===

/// The fixture a model answers `body` with, judged by what it is shown.
fn pick(body: &Value) -> Result<String, String> {
    if let Some(name) = body
        .pointer("/response_format/json_schema/name")
        .and_then(Value::as_str)
    {
        return match name {
            "plan" => Ok("planner".to_owned()),
            "verdict" => Ok("validator".to_owned()),
            other => Err(format!("no fixture answers the schema {other:?}")),
        };
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let text_of = |role: &str| {
        messages
            .iter()
            .filter(|message| message["role"] == role)
            .filter_map(|message| message["content"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    // The executor is told its step as "Your step (s1): …".
    let step = text_of("user")
        .split_once("Your step (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(id, _)| id.to_owned());
    let last = messages.last().map(|message| message["role"].clone());
    match (last.as_ref().and_then(Value::as_str), step) {
        (Some("tool"), Some(step)) => Ok(format!("executor_{step}_answer")),
        (Some("user"), Some(step)) => Ok(format!("executor_{step}_call")),
        (Some("user"), None) if text_of("system").contains("final answer") => {
            Ok("synthesizer".to_owned())
        }
        _ => Err(format!(
            "no fixture answers this conversation: {}",
            body["messages"]
        )),
    }
}

// === what OpenAI accepts ===

/// What OpenAI would refuse in `body`, added to `problems`.
fn check_request(body: &Value, problems: &mut Vec<String>) {
    let Some(fields) = body.as_object() else {
        problems.push("the body is not an object".to_owned());
        return;
    };
    for field in fields.keys() {
        if !REQUEST_FIELDS.contains(&field.as_str()) {
            problems.push(format!("unrecognized request argument supplied: {field}"));
        }
    }
    if body["model"].as_str().is_none_or(str::is_empty) {
        problems.push("`model` is missing".to_owned());
    }
    check_messages(&body["messages"], problems);
    check_tools(body, problems);
    if let Some(format) = body.get("response_format") {
        check_response_format(format, problems);
    }
    if body.get("stream_options").is_some() && body["stream"] != json!(true) {
        problems.push("`stream_options` is only allowed with `stream: true`".to_owned());
    }
    if let Some(temperature) = body.get("temperature")
        && !temperature
            .as_f64()
            .is_some_and(|t| (0.0..=2.0).contains(&t))
    {
        problems.push(format!("`temperature` {temperature} is not 0 to 2"));
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        if let Some(limit) = body.get(field)
            && limit.as_u64().is_none_or(|limit| limit == 0)
        {
            problems.push(format!("`{field}` {limit} is not a positive integer"));
        }
    }
}

fn check_messages(messages: &Value, problems: &mut Vec<String>) {
    let Some(messages) = messages.as_array().filter(|m| !m.is_empty()) else {
        problems.push("`messages` must be a non-empty array".to_owned());
        return;
    };
    let mut call_ids = Vec::new();
    for (at, message) in messages.iter().enumerate() {
        let mut problem = |text: String| problems.push(format!("messages[{at}]: {text}"));
        for field in message.as_object().into_iter().flat_map(|m| m.keys()) {
            if !MESSAGE_FIELDS.contains(&field.as_str()) {
                problem(format!("unknown field {field:?}"));
            }
        }
        let calls = message["tool_calls"].as_array();
        match message["role"].as_str().unwrap_or_default() {
            "system" | "developer" | "user" if message["content"].is_string() => {}
            "assistant" if message["content"].is_string() || calls.is_some() => {
                for call in calls.into_iter().flatten() {
                    let arguments = call["function"]["arguments"].as_str().unwrap_or("");
                    if call["type"] != "function"
                        || call["id"].as_str().is_none_or(str::is_empty)
                        || !valid_name(&call["function"]["name"])
                        || serde_json::from_str::<Value>(arguments).is_err()
                    {
                        problem(format!("malformed tool call {call}"));
                    }
                    call_ids.push(call["id"].clone());
                }
            }
            "tool" if message["content"].is_string() => {
                if !call_ids.contains(&message["tool_call_id"]) {
                    problem("a tool message must answer a preceding tool call".to_owned());
                }
            }
            _ => problem(format!("a message OpenAI does not take: {message}")),
        }
    }
}

fn check_tools(body: &Value, problems: &mut Vec<String>) {
    let Some(tools) = body.get("tools") else {
        for field in ["tool_choice", "parallel_tool_calls"] {
            if body.get(field).is_some() {
                problems.push(format!("`{field}` is only allowed when `tools` are given"));
            }
        }
        return;
    };
    for tool in tools.as_array().into_iter().flatten() {
        let function = &tool["function"];
        if tool["type"] != "function"
            || !valid_name(&function["name"])
            || !function["description"].is_string()
            || function["parameters"]["type"] != "object"
        {
            problems.push(format!("a tool not in OpenAI's function format: {tool}"));
        }
    }
}

fn check_response_format(format: &Value, problems: &mut Vec<String>) {
    match format["type"].as_str() {
        Some("text" | "json_object") => {}
        Some("json_schema") => {
            let spec = &format["json_schema"];
            if !valid_name(&spec["name"]) {
                problems.push(format!("response_format.json_schema.name {}", spec["name"]));
            }
            if spec["strict"] == json!(true) {
                strict_schema(&spec["schema"], "schema", problems);
                if spec["schema"]["type"] != "object" {
                    problems.push("a strict schema's root must be an object".to_owned());
                }
            }
        }
        _ => problems.push(format!("response_format {format}")),
    }
}

/// Strict structured outputs: every object lists all its properties as
/// required and allows no others.
fn strict_schema(schema: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(properties) = schema["properties"].as_object() {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if properties
            .keys()
            .any(|key| !required.contains(&key.as_str()))
        {
            problems.push(format!("{at}: strict mode needs every property required"));
        }
        if schema["additionalProperties"] != json!(false) {
            problems.push(format!(
                "{at}: strict mode needs additionalProperties: false"
            ));
        }
        for (key, property) in properties {
            strict_schema(property, &format!("{at}.{key}"), problems);
        }
    }
    if schema.get("items").is_some() {
        strict_schema(&schema["items"], &format!("{at}[]"), problems);
    }
}

/// A function or schema name OpenAI takes: 1-64 of `[A-Za-z0-9_-]`.
fn valid_name(name: &Value) -> bool {
    name.as_str().is_some_and(|name| {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

// === the mesh's side ===

/// The repository's root.
pub(crate) fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The prompt the role ships with, from its file.
pub(crate) fn prompt(role: &str) -> String {
    let path = repository().join(format!("services/orchestrator/prompts/{role}.md"));
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// An environment variable set in this process, and its value, as the API
/// key: a test cannot set one (that needs `unsafe`), so the key the
/// upstream must receive is a variable the test runner sets anyway.
pub(crate) fn present_env_var() -> (String, String) {
    let plausible = |value: &str| {
        !value.is_empty() && value.len() < 200 && value.bytes().all(|b| b.is_ascii_graphic())
    };
    std::iter::once("CARGO_PKG_NAME".to_owned())
        .chain(std::env::vars().map(|(name, _)| name))
        .find_map(|name| {
            let value = std::env::var(&name).ok()?;
            (!name.is_empty() && plausible(&value)).then_some((name, value))
        })
        .unwrap()
}

/// The gateway's `openai` provider at `upstream` (its key in `key_env`),
/// and the route `gpt` to its `gpt-4o-mini`.
pub(crate) fn openai_at(
    gateway: &mut agentmesh_llm_gateway::Config,
    upstream: &MockOpenAi,
    key_env: &str,
) {
    gateway.providers.insert(
        "openai".to_owned(),
        ProviderConfig {
            base_url: upstream.url("/v1"),
            api_key_env: key_env.to_owned(),
            ..ProviderConfig::new(ProviderKind::Openai)
        },
    );
    gateway.routes.insert(
        "gpt".to_owned(),
        RouteConfig::new("openai/gpt-4o-mini", "gpt-4o-mini"),
    );
}

/// A gateway alone on a loopback port, its `openai` provider the upstream.
pub(crate) struct GatewayAlone {
    pub(crate) client: LlmGatewayServiceClient<Channel>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl GatewayAlone {
    pub(crate) async fn start(upstream: &MockOpenAi) -> Self {
        let mut config = agentmesh_llm_gateway::Config {
            server: agentmesh_tests::test_server_config(),
            audit: AuditConfig::disabled(),
            ..Default::default()
        };
        openai_at(&mut config, upstream, &present_env_var().0);
        let listeners = Listeners::bind(&config.server).await.unwrap();
        let addr = listeners.grpc_addr().unwrap();
        let stop = CancellationToken::new();
        let served = agentmesh_llm_gateway::serve_with_listeners(
            config,
            listeners,
            stop.clone().cancelled_owned(),
        );
        let task = tokio::spawn(served);
        agentmesh_tests::wait_serving(agentmesh_tests::channel(addr), "").await;
        Self {
            client: LlmGatewayServiceClient::new(agentmesh_tests::channel(addr)),
            stop,
            task,
        }
    }

    /// Stops the gateway and waits for it.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}
