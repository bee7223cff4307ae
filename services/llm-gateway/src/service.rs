//! The `agentmesh.llm.v1.LlmGatewayService` handlers.
//!
//! A call is validated ([`crate::validate`]), its `model` resolved to a
//! provider instance and model ([`Gateway::resolve`]), and handed to that
//! instance's [`Provider`](crate::providers::Provider). `Generate` maps the
//! [`Completion`] to a response; `GenerateStream` relays each provider event
//! as it arrives (`relay`) and ends with `finished`. A stream that fails
//! after output was sent ends with `finished` (FINISH_REASON_ERROR, the usage
//! so far) and then the error status; one that fails before any output ends
//! with the error status alone.
//!
//! Every call's usage carries its estimated cost when the model has a price
//! ([`crate::config::Price`]), and every call ends with one LLM_CALL audit
//! event ([`crate::audit`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use agentmesh_audit_client::AuditClient;
use agentmesh_kit::status::invalid_argument;
use agentmesh_kit::{ConfigError, RequestContext};
use agentmesh_proto::llm::v1::{
    self, FinishReason, GenerateRequest, GenerateResponse, GenerateStreamRequest,
    GenerateStreamResponse, ListModelsRequest, ListModelsResponse, Model, ModelTarget,
    StreamFinished, TextDelta, ToolCallDelta, Usage, generate_stream_response::Event,
    llm_gateway_service_server::LlmGatewayService,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::audit::{CallEnd, KeyRegistry, LlmCallRecord};
use crate::completion::{Assembler, Completion, ProviderEvent};
use crate::config::{Config, Price, join_names, price_of, split_target};
use crate::error::ProviderError;
use crate::metrics::GatewayMetrics;
use crate::providers::{EventStream, ProviderCall, ProviderInstance};
use crate::validate::validate_request;

/// ListModels page size when the request gives 0.
const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest ListModels page.
const MAX_PAGE_SIZE: usize = 1000;
/// Prefix of page tokens, so a token from another listing is recognised.
const PAGE_TOKEN_PREFIX: &str = "routes-after:";

/// Routes and provider instances: everything a call needs.
#[derive(Debug)]
pub struct Gateway {
    default_route: String,
    routes: BTreeMap<String, Route>,
    providers: BTreeMap<String, ProviderInstance>,
    prices: BTreeMap<String, Price>,
}

#[derive(Debug, Clone)]
struct Route {
    instance: String,
    model: String,
    description: String,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The route name; empty when addressed as `provider/model`.
    pub route: String,
    /// The provider instance name.
    pub instance: String,
    /// The provider's model name.
    pub model: String,
    /// The instance.
    pub provider: ProviderInstance,
}

impl Gateway {
    /// Builds routes and provider instances from a configuration that passed
    /// [`Config::validate`]; fails on a rules file that cannot be loaded.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let providers = crate::providers::build_all(&config.providers)?;
        let mut routes = BTreeMap::new();
        for (name, route) in &config.routes {
            let (instance, model) = split_target(&route.target).ok_or_else(|| {
                ConfigError::new(
                    format!("routes.{name}.target"),
                    format!("`{}` is not `provider/model`", route.target),
                )
            })?;
            routes.insert(
                name.clone(),
                Route {
                    instance: instance.to_owned(),
                    model: model.to_owned(),
                    description: route.description.clone(),
                },
            );
        }
        Ok(Self {
            default_route: config.default_route.clone(),
            routes,
            providers,
            prices: config.prices.clone(),
        })
    }

    /// The provider instances.
    pub fn providers(&self) -> impl Iterator<Item = &ProviderInstance> {
        self.providers.values()
    }

    /// The price of a call resolved to `resolved`: by the model requested,
    /// else by the model the provider reported.
    pub fn price(&self, resolved: &Resolved, reported_model: &str) -> Option<Price> {
        price_of(&self.prices, &resolved.instance, &resolved.model)
            .or_else(|| price_of(&self.prices, &resolved.instance, reported_model))
    }

    /// `usage` with its estimated cost (absent when the model has no price).
    fn priced(&self, resolved: &Resolved, reported_model: &str, mut usage: Usage) -> Usage {
        usage.estimated_cost_usd = self
            .price(resolved, reported_model)
            .map(|price| price.cost_usd(usage.input_tokens, usage.output_tokens));
        usage
    }

    /// Resolves a request's `model`: empty = the default route; a route name;
    /// or `instance/model`.
    pub fn resolve(&self, requested: &str) -> Result<Resolved, Status> {
        let requested = if requested.is_empty() {
            self.default_route.as_str()
        } else {
            requested
        };
        let (route, instance, model) = if let Some(route) = self.routes.get(requested) {
            (
                requested.to_owned(),
                route.instance.clone(),
                route.model.clone(),
            )
        } else if let Some((instance, model)) = split_target(requested) {
            if !self.providers.contains_key(instance) {
                return Err(Status::not_found(format!(
                    "provider `{instance}` (from model `{requested}`) is not configured; configured providers: {}",
                    join_names(self.providers.keys())
                )));
            }
            if model.is_empty() {
                return Err(invalid_argument([(
                    "model",
                    format!("`{requested}` names no model after `{instance}/`"),
                )]));
            }
            (String::new(), instance.to_owned(), model.to_owned())
        } else {
            return Err(Status::not_found(format!(
                "model route `{requested}` is not configured; routes: {}; or address a provider directly as `provider/model` with provider one of: {}",
                join_names(self.routes.keys()),
                join_names(self.providers.keys())
            )));
        };
        let provider = self.providers.get(&instance).cloned().ok_or_else(|| {
            Status::internal(format!(
                "route `{route}` names provider `{instance}`, which is not built"
            ))
        })?;
        Ok(Resolved {
            route,
            instance,
            model,
            provider,
        })
    }

    fn list_models(&self, request: &ListModelsRequest) -> Result<ListModelsResponse, Status> {
        let page_size = match usize::try_from(request.page_size) {
            Err(_) => {
                return Err(invalid_argument([(
                    "page_size",
                    "must not be negative (0 = the default of 50)",
                )]));
            }
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(&request.page_token).ok_or_else(|| {
                invalid_argument([(
                    "page_token",
                    "is not a page token of ListModels: pass a next_page_token unchanged",
                )])
            })?)
        };
        let remaining: Vec<(&String, &Route)> = match &after {
            Some(after) => self
                .routes
                .range::<String, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .collect(),
            None => self.routes.iter().collect(),
        };
        let models = remaining
            .iter()
            .take(page_size)
            .map(|(name, route)| self.model(name, route))
            .collect::<Vec<_>>();
        let next_page_token = if remaining.len() > page_size {
            models
                .last()
                .map(|model| encode_page_token(&model.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListModelsResponse {
            models,
            next_page_token,
        })
    }

    fn model(&self, name: &str, route: &Route) -> Model {
        let instance = self.providers.get(&route.instance);
        let available = instance.is_some_and(|instance| instance.config.key_available());
        let price = price_of(&self.prices, &route.instance, &route.model);
        Model {
            name: name.to_owned(),
            description: route.description.clone(),
            targets: vec![ModelTarget {
                provider: route.instance.clone(),
                provider_kind: instance
                    .map(|instance| instance.config.kind.as_str().to_owned())
                    .unwrap_or_default(),
                model: route.model.clone(),
                circuit_state: v1::CircuitState::Unspecified.into(),
                supports_tools: true,
                context_window_tokens: 0,
                input_usd_per_million_tokens: price.map(|price| price.input_per_million_usd),
                output_usd_per_million_tokens: price.map(|price| price.output_per_million_usd),
            }],
            is_default: name == self.default_route,
            available,
        }
    }
}

fn encode_page_token(last_name: &str) -> String {
    let hex: String = last_name
        .bytes()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{PAGE_TOKEN_PREFIX}{hex}")
}

fn decode_page_token(token: &str) -> Option<String> {
    let hex = token.strip_prefix(PAGE_TOKEN_PREFIX)?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| {
            hex.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

// === the gRPC service ===

/// The gRPC service over a [`Gateway`].
#[derive(Debug, Clone)]
pub struct LlmGatewayServiceImpl {
    gateway: Arc<Gateway>,
    audit: AuditClient,
    keys: Arc<KeyRegistry>,
    metrics: Option<Arc<GatewayMetrics>>,
}

impl LlmGatewayServiceImpl {
    /// Serves `gateway`, with auditing off.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self::with_audit(gateway, AuditClient::disabled(crate::SERVICE))
    }

    /// Serves `gateway`, recording every call in `audit`. The provider API
    /// keys set now are registered as secrets at once; keys are read at
    /// each call, and one that changes is registered when first read.
    pub fn with_audit(gateway: Arc<Gateway>, audit: AuditClient) -> Self {
        let keys = Arc::new(KeyRegistry::default());
        for instance in gateway.providers() {
            keys.register(&audit, &instance.config);
        }
        Self {
            gateway,
            audit,
            keys,
            metrics: None,
        }
    }

    /// Also records every call in `metrics` (the GenAI metrics).
    pub fn with_metrics(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Validates and resolves a request, and captures the caller's deadline
    /// (the task-local context is gone once a stream is being polled).
    fn prepare(
        &self,
        request: GenerateRequest,
        record: &mut LlmCallRecord,
    ) -> Result<(Resolved, ProviderCall), Status> {
        validate_request(&request)?;
        let resolved = self.gateway.resolve(&request.model)?;
        record.resolved(&resolved);
        self.keys.register(&self.audit, &resolved.provider.config);
        let caller_deadline = RequestContext::current()
            .and_then(|context| context.deadline())
            .map(|deadline| tokio::time::Instant::from_std(deadline.min(far_future())));
        let call = ProviderCall {
            model: resolved.model.clone(),
            request: Arc::new(request),
            caller_deadline,
        };
        Ok((resolved, call))
    }
}

/// A deadline a year away stands for "none" where an `Instant` is needed
/// (tokio's timers cannot represent arbitrarily far instants).
fn far_future() -> StdInstant {
    StdInstant::now() + std::time::Duration::from_secs(365 * 24 * 3600)
}

#[tonic::async_trait]
impl LlmGatewayService for LlmGatewayServiceImpl {
    type GenerateStreamStream = BoxStream<'static, Result<GenerateStreamResponse, Status>>;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let request = request.into_inner();
        // Dropped with this future when the caller goes away: then it
        // records the call as abandoned.
        let mut record =
            LlmCallRecord::new(&self.audit, &request, false).with_metrics(self.metrics.clone());
        let (resolved, call) = match self.prepare(request, &mut record) {
            Ok(prepared) => prepared,
            Err(status) => {
                record.failed(&status, &CallEnd::default());
                return Err(status);
            }
        };
        let started = StdInstant::now();
        let request = Arc::clone(&call.request);
        let deadline = call.caller_deadline;
        let completion = match within_caller_deadline(
            deadline,
            resolved
                .provider
                .provider
                .generate(call)
                .instrument(record.span().clone()),
        )
        .await
        .and_then(|result| result)
        {
            Ok(completion) => completion,
            Err(err) => {
                let status = log_failure(&resolved, err);
                record.failed(&status, &CallEnd::default());
                return Err(status);
            }
        };
        let usage = self.gateway.priced(
            &resolved,
            &completion.model,
            completion.final_usage(&request),
        );
        record.succeeded(&CallEnd {
            completion: Some(&completion),
            usage: Some(&usage),
            finish_reason: Some(completion.finish_reason),
        });
        tracing::info!(
            route = %resolved.route,
            provider = %resolved.instance,
            model = %resolved.model,
            finish_reason = ?completion.finish_reason,
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            took = ?started.elapsed(),
            run_id = %request.run_id,
            "generated"
        );
        Ok(Response::new(GenerateResponse {
            finish_reason: completion.finish_reason.into(),
            usage: Some(usage),
            provider: resolved.instance.clone(),
            model: reported_model(&completion, &resolved),
            route: resolved.route,
            response_id: completion.response_id,
            attempts: 1,
            provider_finish_reason: completion.provider_finish_reason,
            message: Some(completion.message),
        }))
    }

    async fn generate_stream(
        &self,
        request: Request<GenerateStreamRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let request = into_generate_request(request.into_inner());
        // Goes with the stream; dropped before its end is recorded (the
        // caller went away), it records the call as abandoned.
        let mut record =
            LlmCallRecord::new(&self.audit, &request, true).with_metrics(self.metrics.clone());
        let (resolved, call) = match self.prepare(request, &mut record) {
            Ok(prepared) => prepared,
            Err(status) => {
                record.failed(&status, &CallEnd::default());
                return Err(status);
            }
        };
        let request = Arc::clone(&call.request);
        let deadline = call.caller_deadline;
        let mut events = resolved.provider.provider.generate_stream(call);
        // Wait for the first event, so a call that fails before any output
        // (no key, refused connection, HTTP error) fails as a whole, with
        // its status at once rather than after an empty stream.
        let first =
            match within_caller_deadline(deadline, events.next().instrument(record.span().clone()))
                .await
            {
                Err(err) | Ok(Some(Err(err))) => {
                    let status = log_failure(&resolved, err);
                    record.failed(&status, &CallEnd::default());
                    return Err(status);
                }
                Ok(first) => first,
            };
        Ok(Response::new(relay(
            Arc::clone(&self.gateway),
            resolved,
            request,
            deadline,
            first,
            events,
            record,
        )))
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        self.gateway
            .list_models(request.get_ref())
            .map(Response::new)
    }
}

/// Runs `future` until the caller's deadline, if it gave one. Providers
/// check the deadline themselves; this bounds any provider that does not.
async fn within_caller_deadline<F: Future>(
    deadline: Option<tokio::time::Instant>,
    future: F,
) -> Result<F::Output, ProviderError> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future)
            .await
            .map_err(|_| {
                ProviderError::Timeout(
                    "the caller's deadline passed before the provider finished".to_owned(),
                )
            }),
        None => Ok(future.await),
    }
}

fn log_failure(resolved: &Resolved, err: ProviderError) -> Status {
    let status = err.into_status(&resolved.instance, &resolved.model);
    tracing::warn!(
        route = %resolved.route,
        provider = %resolved.instance,
        model = %resolved.model,
        code = ?status.code(),
        error = %status.message(),
        "provider call failed"
    );
    status
}

fn reported_model(completion: &Completion, resolved: &Resolved) -> String {
    if completion.model.is_empty() {
        resolved.model.clone()
    } else {
        completion.model.clone()
    }
}

/// The two request messages are wire-compatible; handle one shape.
pub fn into_generate_request(request: GenerateStreamRequest) -> GenerateRequest {
    GenerateRequest {
        model: request.model,
        messages: request.messages,
        tools: request.tools,
        tool_choice: request.tool_choice,
        response_format: request.response_format,
        temperature: request.temperature,
        max_output_tokens: request.max_output_tokens,
        stop: request.stop,
        top_p: request.top_p,
        seed: request.seed,
        parallel_tool_calls: request.parallel_tool_calls,
        run_id: request.run_id,
    }
}

// === relay ===

struct RelayState {
    gateway: Arc<Gateway>,
    resolved: Resolved,
    request: Arc<GenerateRequest>,
    caller_deadline: Option<tokio::time::Instant>,
    pending_first: Option<Result<ProviderEvent, ProviderError>>,
    events: EventStream,
    assembler: Assembler,
    /// A status to end with, after the `finished` just sent.
    then_fail: Option<Status>,
    done: bool,
    started: StdInstant,
    /// The call's audit record, until its end is recorded.
    record: Option<LlmCallRecord>,
}

/// Relays provider events to the caller as they arrive, then `finished`.
fn relay(
    gateway: Arc<Gateway>,
    resolved: Resolved,
    request: Arc<GenerateRequest>,
    caller_deadline: Option<tokio::time::Instant>,
    first: Option<Result<ProviderEvent, ProviderError>>,
    events: EventStream,
    record: LlmCallRecord,
) -> BoxStream<'static, Result<GenerateStreamResponse, Status>> {
    let state = RelayState {
        gateway,
        resolved,
        request,
        caller_deadline,
        pending_first: first,
        events,
        assembler: Assembler::default(),
        then_fail: None,
        done: false,
        started: StdInstant::now(),
        record: Some(record),
    };
    futures::stream::unfold(state, |mut state| async move {
        if let Some(status) = state.then_fail.take() {
            state.done = true;
            return Some((Err(status), state));
        }
        if state.done {
            return None;
        }
        loop {
            let next = match state.pending_first.take() {
                Some(first) => Some(first),
                None => {
                    match within_caller_deadline(state.caller_deadline, state.events.next()).await {
                        Ok(next) => next,
                        Err(err) => Some(Err(err)),
                    }
                }
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(err)) => return Some(state.fail(err)),
                None => {
                    return Some(state.fail(ProviderError::Broken(
                        "the provider's stream ended without finishing the answer".to_owned(),
                    )));
                }
            };
            state.assembler.push(&event);
            if state.assembler.output_started()
                && let Some(record) = state.record.as_mut()
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
                    state.done = true;
                    let finished = state.finished(None, None);
                    return Some((Ok(finished), state));
                }
                ProviderEvent::Text(_)
                | ProviderEvent::Metadata { .. }
                | ProviderEvent::Usage(_) => {
                    continue;
                }
            };
            return Some((Ok(GenerateStreamResponse { event: Some(out) }), state));
        }
    })
    .boxed()
}

impl RelayState {
    /// The stream failed: `finished` with FINISH_REASON_ERROR first when
    /// output was sent, then the status.
    fn fail(mut self, err: ProviderError) -> (Result<GenerateStreamResponse, Status>, Self) {
        let status = log_failure(&self.resolved, err);
        if self.assembler.output_started() {
            let finished = self.finished(Some(FinishReason::Error), Some(&status));
            self.then_fail = Some(status);
            (Ok(finished), self)
        } else {
            if let Some(record) = self.record.take() {
                record.failed(&status, &CallEnd::default());
            }
            self.done = true;
            (Err(status), self)
        }
    }

    /// Usage so far (`complete` false) or final, with its cost.
    fn usage(&self, complete: bool) -> Usage {
        let completion = self.assembler.completion();
        let usage = if complete {
            completion.final_usage(&self.request)
        } else {
            completion.usage_so_far(&self.request)
        };
        self.gateway
            .priced(&self.resolved, &completion.model, usage)
    }

    /// The `finished` message, and the end of the call's record: a success,
    /// or with `failure`, the status the stream ends with next.
    fn finished(
        &mut self,
        override_reason: Option<FinishReason>,
        failure: Option<&Status>,
    ) -> GenerateStreamResponse {
        let usage = self.usage(override_reason.is_none());
        let completion = self.assembler.completion();
        let finish_reason = override_reason.unwrap_or(completion.finish_reason);
        if let Some(record) = self.record.take() {
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
            tracing::info!(
                route = %self.resolved.route,
                provider = %self.resolved.instance,
                model = %self.resolved.model,
                finish_reason = ?finish_reason,
                input_tokens = usage.input_tokens,
                output_tokens = usage.output_tokens,
                took = ?self.started.elapsed(),
                run_id = %self.request.run_id,
                "streamed"
            );
        }
        GenerateStreamResponse {
            event: Some(Event::Finished(StreamFinished {
                message: Some(completion.message.clone()),
                finish_reason: finish_reason.into(),
                usage: Some(usage),
                provider: self.resolved.instance.clone(),
                model: reported_model(completion, &self.resolved),
                route: self.resolved.route.clone(),
                response_id: completion.response_id.clone(),
                attempts: 1,
                provider_finish_reason: completion.provider_finish_reason.clone(),
            })),
        }
    }
}

impl Drop for RelayState {
    /// The stream was dropped before its end was recorded: the caller went
    /// away mid-answer. Record what arrived, and its usage so far.
    fn drop(&mut self) {
        if self.record.is_some() {
            let usage = self.usage(false);
            let completion = self
                .assembler
                .output_started()
                .then(|| self.assembler.completion());
            if let Some(record) = self.record.take() {
                record.abandoned(&CallEnd {
                    completion,
                    usage: Some(&usage),
                    finish_reason: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    fn gateway(routes: usize) -> Gateway {
        let mut config = Config::default();
        for index in 0..routes {
            config.routes.insert(
                format!("r{index:02}"),
                RouteConfig::new("scripted/demo", ""),
            );
        }
        Gateway::from_config(&config).unwrap()
    }

    #[test]
    fn models_resolve_by_route_or_directly() {
        let gateway = gateway(0);
        let resolved = gateway.resolve("").unwrap();
        assert_eq!(
            (
                resolved.route.as_str(),
                resolved.instance.as_str(),
                resolved.model.as_str()
            ),
            ("default", "scripted", "demo")
        );
        let resolved = gateway.resolve("openai/gpt-4o-mini").unwrap();
        assert_eq!(
            (
                resolved.route.as_str(),
                resolved.instance.as_str(),
                resolved.model.as_str()
            ),
            ("", "openai", "gpt-4o-mini")
        );
        let err = gateway.resolve("nope/x").unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(
            err.message().contains("anthropic, openai, scripted"),
            "{}",
            err.message()
        );
        let err = gateway.resolve("gpt-5").unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains("default, fast"), "{}", err.message());
        assert_eq!(
            gateway.resolve("openai/").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn list_models_pages_in_name_order() {
        let gateway = gateway(5);
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let page = gateway
                .list_models(&ListModelsRequest {
                    page_size: 3,
                    page_token: token.clone(),
                })
                .unwrap();
            assert!(page.models.len() <= 3);
            names.extend(page.models.into_iter().map(|model| model.name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(
            names,
            ["default", "fast", "r00", "r01", "r02", "r03", "r04"]
        );

        let err = gateway
            .list_models(&ListModelsRequest {
                page_size: -1,
                page_token: String::new(),
            })
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = gateway
            .list_models(&ListModelsRequest {
                page_size: 0,
                page_token: "garbage".into(),
            })
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            decode_page_token(&encode_page_token("é/x")).as_deref(),
            Some("é/x")
        );
    }
}
