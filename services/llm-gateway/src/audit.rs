//! How the gateway records its calls in the audit log: one LLM_CALL event per
//! `Generate` or `GenerateStream` call, emitted when the call ends, however
//! it ends.
//!
//! An [`LlmCallRecord`] is made when a call arrives, while the request's
//! context (tenant, subject, request and trace ids) is current; the handler
//! or the stream relay fills it in as the call goes and finishes it once
//! (success or failure). A call that ends otherwise — the caller went away,
//! so tonic dropped the handler or the stream — is recorded by the record's
//! `Drop` as cancelled.
//!
//! Provider API keys are registered with the audit producer as secrets
//! ([`KeyRegistry`]) so that they are redacted wherever they might appear in
//! an event.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentmesh_audit_client::{AuditClient, code_name, duration};
use agentmesh_kit::telemetry;
use agentmesh_proto::audit::v1::{
    AuditEvent, EventType, LlmCallDetails, Outcome, audit_event::Details,
};
use agentmesh_proto::llm::v1::{FinishReason, GenerateRequest, Message, Role, Usage};
use serde::Serialize;
use tonic::Status;
use tracing::field::Empty;

use crate::completion::Completion;
use crate::config::ProviderConfig;
use crate::gateway::Resolved;
use crate::metrics::{CallOutcome, CallSeries, GatewayMetrics};
use agentmesh_kit::text::prefix_within;

/// Longest run id or model name recorded (longer ones are cut).
const MAX_AUDITED_ID: usize = 128;

// === impl LlmCallRecord ===

/// The LLM_CALL audit event of one call, emitted exactly once.
#[derive(Debug)]
pub(crate) struct LlmCallRecord {
    audit: AuditClient,
    event: Option<AuditEvent>,
    started: Instant,
    first_token: Option<Duration>,
    /// The call's `chat {model}` span (GenAI semantic conventions), open
    /// until the call's end is recorded.
    span: tracing::Span,
    /// Where the call's end is counted, once metrics are attached.
    metrics: Option<Arc<GatewayMetrics>>,
    /// The call's series, once it is resolved.
    series: Option<Arc<CallSeries>>,
}

/// How a call ended, as far as its record is concerned.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CallEnd<'a> {
    /// The answer (or what arrived of it).
    pub completion: Option<&'a Completion>,
    /// Token counts and cost.
    pub usage: Option<&'a Usage>,
    /// Why generation stopped.
    pub finish_reason: Option<FinishReason>,
}

impl LlmCallRecord {
    /// The record of a call of `request`, made while its context is current.
    pub(crate) fn new(audit: &AuditClient, request: &GenerateRequest, streaming: bool) -> Self {
        let span = tracing::info_span!(
            target: "agentmesh::llm",
            "chat",
            otel.name = %format_args!("chat {}", request.model),
            otel.kind = "client",
            otel.status_code = Empty,
            error.type = Empty,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = Empty,
            gen_ai.request.model = %request.model,
            gen_ai.response.model = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            gen_ai.response.time_to_first_chunk = Empty,
            agentmesh.route = Empty,
            agentmesh.streaming = streaming,
            span_id = Empty,
        );
        telemetry::record_ids(&span);
        if telemetry::enabled() && telemetry::capture_content() {
            telemetry::set_text(&span, "gen_ai.input.messages", prompt_text(request));
        }
        // Made inside the span, so the event names it as its origin.
        let mut event = span.in_scope(|| audit.event(EventType::LlmCall));
        event.run_id = cut(&request.run_id);
        event.details = Some(Details::LlmCall(LlmCallDetails {
            streaming,
            attempts: 1,
            prompt: Some(audit.capture(&prompt_text(request))),
            ..LlmCallDetails::default()
        }));
        Self {
            audit: audit.clone(),
            event: Some(event),
            started: Instant::now(),
            first_token: None,
            span,
            metrics: None,
            series: None,
        }
    }

    /// Also records the call's end in `metrics` (the GenAI metrics).
    pub(crate) fn with_metrics(mut self, metrics: Option<Arc<GatewayMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The call's span, for the work done on its behalf.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The call was resolved to a provider instance and model.
    pub(crate) fn resolved(&mut self, resolved: &Resolved) {
        if let Some(details) = self.details() {
            details.provider.clone_from(&resolved.instance);
            details.model = cut(&resolved.model);
            details.route.clone_from(&resolved.route);
        }
        if let Some(metrics) = &self.metrics {
            self.series = Some(metrics.series(resolved));
        }
        // Named by the model the call resolved to (a route name or an
        // empty request names none).
        telemetry::rename(&self.span, format!("chat {}", resolved.model));
        self.span
            .record(
                "gen_ai.provider.name",
                resolved.provider.config.kind.semconv_name(),
            )
            .record("gen_ai.request.model", resolved.model.as_str())
            .record("agentmesh.route", resolved.route.as_str());
    }

    /// The number of upstream attempts the call made (retries and
    /// fallbacks included).
    pub(crate) fn attempts(&mut self, attempts: u32) {
        if let Some(details) = self.details() {
            details.attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        }
    }

    /// Output started arriving (streams): the time to the first token.
    pub(crate) fn first_token(&mut self) {
        if self.first_token.is_none() {
            let elapsed = self.started.elapsed();
            self.first_token = Some(elapsed);
            self.span
                .record("gen_ai.response.time_to_first_chunk", elapsed.as_secs_f64());
        }
    }

    /// The call answered.
    pub(crate) fn succeeded(mut self, end: &CallEnd<'_>) {
        self.emit(end, None);
    }

    /// The call failed with `status` (after what `end` says arrived); its
    /// finish reason is ERROR unless `end` says otherwise.
    pub(crate) fn failed(mut self, status: &Status, end: &CallEnd<'_>) {
        let end = CallEnd {
            finish_reason: end.finish_reason.or(Some(FinishReason::Error)),
            ..*end
        };
        self.emit(&end, Some((status.code(), status.message().to_owned())));
    }

    /// The call ended without an answer or an error: the caller went away
    /// (or stopped reading), so the provider call was abandoned.
    pub(crate) fn abandoned(mut self, end: &CallEnd<'_>) {
        self.abandon(end);
    }

    fn abandon(&mut self, end: &CallEnd<'_>) {
        self.emit(
            end,
            Some((
                tonic::Code::Cancelled,
                "the caller went away before the answer was complete".to_owned(),
            )),
        );
    }

    fn details(&mut self) -> Option<&mut LlmCallDetails> {
        match self.event.as_mut()?.details.as_mut()? {
            Details::LlmCall(details) => Some(details),
            _ => None,
        }
    }

    fn emit(&mut self, end: &CallEnd<'_>, failure: Option<(tonic::Code, String)>) {
        let latency = self.started.elapsed();
        let first_token = self.first_token;
        let audit = self.audit.clone();
        let Some(mut event) = self.event.take() else {
            return;
        };
        if let Some(Details::LlmCall(details)) = event.details.as_mut() {
            details.latency = Some(duration(latency));
            details.time_to_first_token = first_token.map(duration);
            if let Some(completion) = end.completion {
                if !completion.model.is_empty() {
                    details.model = cut(&completion.model);
                }
                details.completion = Some(audit.capture(&completion_text(&completion.message)));
            }
            if let Some(usage) = end.usage {
                details.input_tokens = i64::from(usage.input_tokens);
                details.output_tokens = i64::from(usage.output_tokens);
                details.tokens_estimated = usage.tokens_estimated;
                details.estimated_cost_usd = usage.estimated_cost_usd;
            }
            if let Some(reason) = end.finish_reason {
                details.finish_reason = finish_reason_name(reason).to_owned();
            }
            if let Some((code, _)) = &failure {
                code_name(*code).clone_into(&mut details.error_code);
            }
        }
        self.finish_span(&event, end, failure.as_ref().map(|(code, _)| *code));
        self.record_metrics(
            latency,
            first_token,
            end,
            failure.as_ref().map(|(code, _)| *code),
        );
        if let Some((_, message)) = failure {
            event.outcome = Outcome::Failure.into();
            event.reason = message;
        }
        audit.emit(event);
    }
}

impl LlmCallRecord {
    /// Counts the call's end in the GenAI metrics, if attached.
    fn record_metrics(
        &self,
        latency: Duration,
        first_token: Option<Duration>,
        end: &CallEnd<'_>,
        failure: Option<tonic::Code>,
    ) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let series = self.series.clone().unwrap_or_else(|| metrics.unresolved());
        series.record(&CallOutcome {
            duration: latency,
            first_token,
            tokens: end
                .usage
                .map(|usage| (usage.input_tokens, usage.output_tokens)),
            cost_usd: end.usage.and_then(|usage| usage.estimated_cost_usd),
            error_type: failure.map(code_name),
        });
    }

    /// Puts what the call's end says on its span (which ends with the record).
    fn finish_span(&self, event: &AuditEvent, end: &CallEnd<'_>, failure: Option<tonic::Code>) {
        let span = &self.span;
        if let Some(Details::LlmCall(details)) = event.details.as_ref() {
            span.record("gen_ai.response.model", details.model.as_str());
            if end.usage.is_some() {
                span.record("gen_ai.usage.input_tokens", details.input_tokens);
                span.record("gen_ai.usage.output_tokens", details.output_tokens);
            }
            if !details.finish_reason.is_empty() {
                telemetry::set_texts(
                    span,
                    "gen_ai.response.finish_reasons",
                    vec![details.finish_reason.clone()],
                );
            }
        }
        if telemetry::enabled()
            && telemetry::capture_content()
            && let Some(completion) = end.completion
        {
            telemetry::set_text(
                span,
                "gen_ai.output.messages",
                completion_text(&completion.message),
            );
        }
        if let Some(code) = failure {
            span.record("otel.status_code", "error");
            span.record("error.type", code_name(code));
        }
    }
}

impl Drop for LlmCallRecord {
    fn drop(&mut self) {
        // Only when the call was dropped before its end was recorded.
        self.abandon(&CallEnd::default());
    }
}

/// A finish reason as audit events spell it: the enum name without its
/// prefix (e.g. `TOOL_CALLS`); empty when not known.
pub(crate) fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Unspecified => "",
        reason => reason
            .as_str_name()
            .strip_prefix("FINISH_REASON_")
            .unwrap_or(reason.as_str_name()),
    }
}

fn cut(text: &str) -> String {
    prefix_within(text, MAX_AUDITED_ID).to_owned()
}

/// The prompt as captured: the messages and tool specs sent, as JSON.
pub(crate) fn prompt_text(request: &GenerateRequest) -> String {
    let prompt = CapturedPrompt {
        messages: request.messages.iter().map(CapturedMessage::of).collect(),
        tools: request
            .tools
            .iter()
            .map(|tool| CapturedTool {
                description: &tool.description,
                name: &tool.name,
                parameters_json: &tool.parameters_json,
            })
            .collect(),
    };
    captured_json(&prompt)
}

/// The answer as captured: its text and tool calls, as JSON.
pub(crate) fn completion_text(message: &Message) -> String {
    captured_json(&CapturedMessage::of(message))
}

/// Serialises borrowed structs straight to text (no `Value` tree on the
/// call's path). Their members are in alphabetical order, as a
/// `serde_json::Map` writes them, so a prompt's text (and its SHA-256 in
/// the audit log) is what it has always been.
fn captured_json(value: &impl Serialize) -> String {
    // Strings and vectors of them cannot fail to serialise.
    serde_json::to_string(value).unwrap_or_default()
}

#[derive(Serialize)]
struct CapturedPrompt<'a> {
    messages: Vec<CapturedMessage<'a>>,
    tools: Vec<CapturedTool<'a>>,
}

#[derive(Serialize)]
struct CapturedTool<'a> {
    description: &'a str,
    name: &'a str,
    parameters_json: &'a str,
}

#[derive(Serialize)]
struct CapturedMessage<'a> {
    content: &'a str,
    role: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    tool_call_id: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CapturedCall<'a>>,
}

#[derive(Serialize)]
struct CapturedCall<'a> {
    arguments_json: &'a str,
    id: &'a str,
    name: &'a str,
}

impl<'a> CapturedMessage<'a> {
    fn of(message: &'a Message) -> Self {
        Self {
            content: &message.content,
            role: role_name(Role::try_from(message.role).unwrap_or(Role::Unspecified)),
            tool_call_id: &message.tool_call_id,
            tool_calls: message
                .tool_calls
                .iter()
                .map(|call| CapturedCall {
                    arguments_json: &call.arguments_json,
                    id: &call.id,
                    name: &call.name,
                })
                .collect(),
        }
    }
}

/// A role as captured: the enum name without its prefix, in lower case.
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Unspecified => "unspecified",
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

// === impl KeyRegistry ===

/// Registers each provider API key the gateway reads with the audit
/// producer as a secret, once per value (keys are read at each call, so a
/// rotated key is registered when first seen).
#[derive(Debug, Default)]
pub(crate) struct KeyRegistry {
    /// A hash of the value last registered, per environment variable.
    seen: Mutex<HashMap<String, u64>>,
}

impl KeyRegistry {
    /// Registers the key `provider` reads, if it has one and it is set.
    pub(crate) fn register(&self, audit: &AuditClient, provider: &ProviderConfig) {
        let env = &provider.api_key_env;
        if env.is_empty() {
            return;
        }
        let Ok(key) = std::env::var(env) else {
            return;
        };
        if key.is_empty() {
            return;
        }
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let fingerprint = hasher.finish();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.get(env) != Some(&fingerprint) {
            audit.add_secret(&key);
            seen.insert(env.clone(), fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::llm::v1::{ToolCall, ToolSpec};
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn finish_reasons_lose_their_prefix() {
        assert_eq!(finish_reason_name(FinishReason::Stop), "STOP");
        assert_eq!(finish_reason_name(FinishReason::ToolCalls), "TOOL_CALLS");
        assert_eq!(finish_reason_name(FinishReason::Error), "ERROR");
        assert_eq!(finish_reason_name(FinishReason::Unspecified), "");
    }

    #[test]
    fn the_prompt_is_captured_as_json_with_messages_and_tools() {
        let request = GenerateRequest {
            messages: vec![
                Message {
                    role: Role::User.into(),
                    content: "What is 2+2?".into(),
                    ..Message::default()
                },
                Message {
                    role: Role::Assistant.into(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "calculator".into(),
                        arguments_json: "{\"expression\":\"2+2\"}".into(),
                    }],
                    ..Message::default()
                },
            ],
            tools: vec![ToolSpec {
                name: "calculator".into(),
                description: "arithmetic".into(),
                parameters_json: "{}".into(),
            }],
            ..GenerateRequest::default()
        };
        let prompt: Value = serde_json::from_str(&prompt_text(&request)).unwrap();
        assert_eq!(prompt["messages"][0]["role"], "user");
        assert_eq!(prompt["messages"][0]["content"], "What is 2+2?");
        assert_eq!(prompt["messages"][1]["tool_calls"][0]["name"], "calculator");
        assert_eq!(prompt["tools"][0]["name"], "calculator");
    }

    /// The text as it was built before, through a `Value` tree.
    fn message_value(message: &Message) -> Value {
        let role = Role::try_from(message.role).unwrap_or(Role::Unspecified);
        let mut value = serde_json::Map::new();
        let role = role.as_str_name().strip_prefix("ROLE_").unwrap_or_default();
        value.insert("role".into(), json!(role.to_ascii_lowercase()));
        value.insert("content".into(), json!(message.content));
        if !message.tool_calls.is_empty() {
            let calls = message
                .tool_calls
                .iter()
                .map(|call| json!({"id": call.id, "name": call.name, "arguments_json": call.arguments_json}))
                .collect();
            value.insert("tool_calls".into(), Value::Array(calls));
        }
        if !message.tool_call_id.is_empty() {
            value.insert("tool_call_id".into(), json!(message.tool_call_id));
        }
        Value::Object(value)
    }

    #[test]
    fn captured_text_is_byte_for_byte_the_value_trees() {
        let roles = [
            Role::Unspecified,
            Role::System,
            Role::User,
            Role::Assistant,
            Role::Tool,
        ];
        let messages: Vec<Message> = roles
            .iter()
            .enumerate()
            .map(|(i, role)| Message {
                role: (*role).into(),
                content: format!("say \"{i}\" é\n"),
                tool_call_id: if i % 2 == 0 {
                    String::new()
                } else {
                    format!("c{i}")
                },
                tool_calls: (0..i % 3)
                    .map(|n| ToolCall {
                        id: format!("t{n}"),
                        name: "calc".into(),
                        arguments_json: "{\"x\":1}".into(),
                    })
                    .collect(),
                ..Message::default()
            })
            .collect();
        let request = GenerateRequest {
            messages: messages.clone(),
            tools: vec![ToolSpec {
                name: "calc".into(),
                description: "d \"q\"".into(),
                parameters_json: "{}".into(),
            }],
            ..GenerateRequest::default()
        };
        let want = json!({
            "messages": messages.iter().map(message_value).collect::<Vec<_>>(),
            "tools": [{"name": "calc", "description": "d \"q\"", "parameters_json": "{}"}],
        })
        .to_string();
        assert_eq!(prompt_text(&request), want);
        for message in &messages {
            assert_eq!(completion_text(message), message_value(message).to_string());
        }
    }

    #[test]
    fn long_ids_are_cut_at_a_character_boundary() {
        assert_eq!(cut("run-1"), "run-1");
        let long = "é".repeat(100);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_AUDITED_ID);
        assert!(long.starts_with(&cut));
    }
}
