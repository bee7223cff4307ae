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
use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_kit::status::invalid_argument;
use agentmesh_kit::{ConfigError, RequestContext};
use agentmesh_proto::llm::v1::{
    self, FinishReason, GenerateRequest, GenerateResponse, GenerateStreamRequest,
    GenerateStreamResponse, ListModelsRequest, ListModelsResponse, Model, ModelTarget,
    StreamFinished, StreamReset, TextDelta, ToolCallDelta, Usage, generate_stream_response::Event,
    llm_gateway_service_server::LlmGatewayService,
};
use agentmesh_resilience::{CircuitBreaker, CircuitState};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::audit::{CallEnd, KeyRegistry, LlmCallRecord};
use crate::completion::{Assembler, Completion, ProviderEvent};
use crate::config::{Config, FailureClass, Price, join_names, price_of, split_target};
use crate::error::ProviderError;
use crate::metrics::GatewayMetrics;
use crate::providers::{ProviderCall, ProviderInstance};
use crate::resilience::{
    Charges, Circuits, Limits, Next, Plan, RetryPolicy, Target, settle_permit,
};
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
    circuits: Circuits,
    retry: RetryPolicy,
    limits: Arc<Limits>,
}

#[derive(Debug, Clone)]
struct Route {
    /// The targets in fallback order, with their circuits; never empty.
    chain: Arc<[Target]>,
    fallback_on: Arc<[FailureClass]>,
    description: String,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The route name; empty when addressed as `provider/model`.
    pub route: String,
    /// The provider instance name (of the target being tried).
    pub instance: String,
    /// The provider's model name (of the target being tried).
    pub model: String,
    /// The instance.
    pub provider: ProviderInstance,
    /// Every target of the route, in fallback order.
    pub chain: Arc<[Target]>,
    /// The failure classes that hand over to the next target.
    pub fallback_on: Arc<[FailureClass]>,
}

impl Resolved {
    /// This resolution, at `target` of its chain.
    pub fn at(&self, target: &Target) -> Self {
        Self {
            instance: target.instance.clone(),
            model: target.model.clone(),
            provider: target.provider.clone(),
            ..self.clone()
        }
    }
}

impl Gateway {
    /// Builds routes and provider instances from a configuration that passed
    /// [`Config::validate`]; fails on a rules file that cannot be loaded.
    /// Circuit changes and refusals are reported nowhere (see [`Self::build`]).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Self::build(
            config,
            ResilienceReporter::without_metrics(AuditClient::disabled(crate::SERVICE)),
        )
    }

    /// As [`Self::from_config`], reporting circuit changes, retries and
    /// rate-limit refusals to `reporter`.
    pub fn build(config: &Config, reporter: ResilienceReporter) -> Result<Self, ConfigError> {
        let providers = crate::providers::build_all(&config.providers)?;
        let mut routes = BTreeMap::new();
        let circuits = Circuits::new(config.circuit_breaker.clone(), reporter.clone());
        for (name, route) in &config.routes {
            let mut chain = Vec::new();
            for (field, target) in route.chain() {
                let (instance, model) = split_target(target).ok_or_else(|| {
                    ConfigError::new(
                        format!("routes.{name}.{field}"),
                        format!("`{target}` is not `provider/model`"),
                    )
                })?;
                let provider = providers.get(instance).cloned().ok_or_else(|| {
                    ConfigError::new(
                        format!("routes.{name}.{field}"),
                        format!("provider `{instance}` is not configured"),
                    )
                })?;
                chain.push(Target {
                    // Made now, so their state shows before the first call.
                    circuit: circuits.of(instance, model, true),
                    instance: instance.to_owned(),
                    model: model.to_owned(),
                    provider,
                });
            }
            routes.insert(
                name.clone(),
                Route {
                    chain: chain.into(),
                    fallback_on: route.fallback_on.clone().into(),
                    description: route.description.clone(),
                },
            );
        }
        Ok(Self {
            default_route: config.default_route.clone(),
            routes,
            providers,
            prices: config.prices.clone(),
            circuits,
            retry: RetryPolicy::new(&config.retry, reporter.clone()),
            limits: Arc::new(Limits::new(config, reporter)),
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
        let (route, chain, fallback_on) = if let Some(route) = self.routes.get(requested) {
            (
                requested.to_owned(),
                Arc::clone(&route.chain),
                Arc::clone(&route.fallback_on),
            )
        } else if let Some((instance, model)) = split_target(requested) {
            let Some(provider) = self.providers.get(instance) else {
                return Err(Status::not_found(format!(
                    "provider `{instance}` (from model `{requested}`) is not configured; configured providers: {}",
                    join_names(self.providers.keys())
                )));
            };
            if model.is_empty() {
                return Err(invalid_argument([(
                    "model",
                    format!("`{requested}` names no model after `{instance}/`"),
                )]));
            }
            let target = Target {
                circuit: self.circuits.of(instance, model, false),
                instance: instance.to_owned(),
                model: model.to_owned(),
                provider: provider.clone(),
            };
            (String::new(), Arc::from([target]), Arc::from([]))
        } else {
            return Err(Status::not_found(format!(
                "model route `{requested}` is not configured; routes: {}; or address a provider directly as `provider/model` with provider one of: {}",
                join_names(self.routes.keys()),
                join_names(self.providers.keys())
            )));
        };
        let first = chain
            .first()
            .cloned()
            .ok_or_else(|| Status::internal(format!("route `{route}` has no target")))?;
        Ok(Resolved {
            route,
            instance: first.instance,
            model: first.model,
            provider: first.provider,
            chain,
            fallback_on,
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
        let targets: Vec<ModelTarget> = route
            .chain
            .iter()
            .map(|target| {
                let (instance_name, model) = (&target.instance, &target.model);
                let instance = Some(&target.provider);
                let price = price_of(&self.prices, instance_name, model);
                let state = target
                    .circuit
                    .as_ref()
                    .map_or(CircuitState::Closed, CircuitBreaker::state);
                let circuit_state = match state {
                    CircuitState::Closed => v1::CircuitState::Closed,
                    CircuitState::Open => v1::CircuitState::Open,
                    CircuitState::HalfOpen => v1::CircuitState::HalfOpen,
                };
                ModelTarget {
                    provider: instance_name.clone(),
                    provider_kind: instance
                        .map(|instance| instance.config.kind.as_str().to_owned())
                        .unwrap_or_default(),
                    model: model.clone(),
                    circuit_state: circuit_state.into(),
                    supports_tools: true,
                    context_window_tokens: 0,
                    input_usd_per_million_tokens: price.map(|price| price.input_per_million_usd),
                    output_usd_per_million_tokens: price.map(|price| price.output_per_million_usd),
                }
            })
            .collect();
        let available = targets.iter().any(|target| {
            target.circuit_state != v1::CircuitState::Open as i32
                && self
                    .providers
                    .get(&target.provider)
                    .is_some_and(|instance| instance.config.key_available())
        });
        Model {
            name: name.to_owned(),
            description: route.description.clone(),
            targets,
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

    /// Validates and resolves a request, applies the rate limits, and
    /// captures the caller's deadline (the task-local context is gone once a
    /// stream is being polled).
    fn prepare(
        &self,
        request: GenerateRequest,
        record: &mut LlmCallRecord,
        method: &str,
    ) -> Result<Prepared, Status> {
        validate_request(&request)?;
        let resolved = self.gateway.resolve(&request.model)?;
        record.resolved(&resolved);
        for target in resolved.chain.iter() {
            self.keys.register(&self.audit, &target.provider.config);
        }
        let context = RequestContext::current();
        let tenant = context
            .as_ref()
            .and_then(|context| context.header("x-agentmesh-tenant"))
            .filter(|tenant| !tenant.is_empty())
            .unwrap_or("-")
            .to_owned();
        let route_key = if resolved.route.is_empty() {
            format!("{}/{}", resolved.instance, resolved.model)
        } else {
            resolved.route.clone()
        };
        let charges = self
            .gateway
            .limits
            .admit(&tenant, &route_key, &request, method)?;
        let caller_deadline = context
            .and_then(|context| context.deadline())
            .map(|deadline| tokio::time::Instant::from_std(deadline.min(far_future())));
        let plan = Plan::new(
            Arc::clone(&resolved.chain),
            Arc::clone(&resolved.fallback_on),
            &self.gateway.retry,
            caller_deadline,
        );
        Ok(Prepared {
            resolved,
            request: Arc::new(request),
            caller_deadline,
            plan,
            charges,
        })
    }
}

/// A call that passed its checks and limits, with its plan of attempts.
struct Prepared {
    resolved: Resolved,
    request: Arc<GenerateRequest>,
    caller_deadline: Option<tokio::time::Instant>,
    plan: Plan,
    charges: Charges,
}

impl Prepared {
    /// The provider call for the plan's current target.
    fn call(&self) -> ProviderCall {
        ProviderCall {
            model: self.plan.target().model.clone(),
            request: Arc::clone(&self.request),
            caller_deadline: self.caller_deadline,
        }
    }

    /// The status a call that failed for good ends with: the last error's,
    /// saying how many attempts were made and why retrying stopped.
    fn final_status(&self, err: ProviderError) -> Status {
        let resolved = self.resolved.at(self.plan.target());
        let attempts = self.plan.attempts();
        let status = log_failure(&resolved, err);
        if attempts <= 1 && self.plan.stopped().is_none() {
            return status;
        }
        let mut message = format!("{} (after {attempts} attempts", status.message());
        if let Some(why) = self.plan.stopped() {
            message.push_str("; no further retry: ");
            message.push_str(why);
        }
        message.push(')');
        Status::with_details(status.code(), message, status.details().to_vec().into())
    }

    /// Tokens used, for the token limits.
    fn used_tokens(usage: &Usage) -> u64 {
        u64::try_from(usage.input_tokens.max(0)).unwrap_or(0)
            + u64::try_from(usage.output_tokens.max(0)).unwrap_or(0)
    }
}

/// Adds `more` to `total`: the tokens, and the cost while every part with
/// tokens has one (a part without a price makes the sum's cost unknown).
fn add_usage(total: &mut Usage, more: &Usage) {
    let priced = |usage: &Usage| {
        usage.estimated_cost_usd.is_some() || (usage.input_tokens == 0 && usage.output_tokens == 0)
    };
    total.estimated_cost_usd = if priced(total) && priced(more) {
        match (total.estimated_cost_usd, more.estimated_cost_usd) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        }
    } else {
        None
    };
    total.input_tokens = total.input_tokens.saturating_add(more.input_tokens);
    total.output_tokens = total.output_tokens.saturating_add(more.output_tokens);
    total.total_tokens = total.total_tokens.saturating_add(more.total_tokens);
    total.cached_input_tokens = total
        .cached_input_tokens
        .saturating_add(more.cached_input_tokens);
    total.reasoning_tokens = total.reasoning_tokens.saturating_add(more.reasoning_tokens);
    total.tokens_estimated |= more.tokens_estimated;
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
        let mut prepared = match self.prepare(request, &mut record, GENERATE) {
            Ok(prepared) => prepared,
            Err(status) => {
                record.failed(&status, &CallEnd::default());
                return Err(status);
            }
        };
        let started = StdInstant::now();
        let deadline = prepared.caller_deadline;
        let (resolved, completion) = loop {
            let permit = match prepared.plan.admit() {
                Ok(permit) => permit,
                Err((Next::Fallback(_), _)) => continue,
                Err((_, err)) => {
                    let status = prepared.final_status(err);
                    record.failed(&status, &CallEnd::default());
                    return Err(status);
                }
            };
            let resolved = prepared.resolved.at(prepared.plan.target());
            record.resolved(&resolved);
            let result = within_caller_deadline(
                deadline,
                resolved
                    .provider
                    .provider
                    .generate(prepared.call())
                    .instrument(record.span().clone()),
            )
            .await
            .and_then(|result| result);
            match result {
                Ok(completion) => {
                    settle_permit(permit, Ok(()));
                    break (resolved, completion);
                }
                Err(err) => {
                    settle_permit(permit, Err(&err));
                    match prepared.plan.after_failure(&err) {
                        Next::Retry(delay) => {
                            log_retry(&resolved, &err, "retrying");
                            tokio::time::sleep(delay).await;
                        }
                        Next::Fallback(_) => log_retry(&resolved, &err, "falling back"),
                        Next::GiveUp => {
                            let status = prepared.final_status(err);
                            record.failed(&status, &CallEnd::default());
                            return Err(status);
                        }
                    }
                }
            }
        };
        let request = Arc::clone(&prepared.request);
        let usage = self.gateway.priced(
            &resolved,
            &completion.model,
            completion.final_usage(&request),
        );
        record.attempts(prepared.plan.attempts());
        record.succeeded(&CallEnd {
            completion: Some(&completion),
            usage: Some(&usage),
            finish_reason: Some(completion.finish_reason),
        });
        prepared.charges.settle(Prepared::used_tokens(&usage));
        tracing::info!(
            route = %resolved.route,
            provider = %resolved.instance,
            model = %resolved.model,
            finish_reason = ?completion.finish_reason,
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            attempts = prepared.plan.attempts(),
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
            attempts: i32::try_from(prepared.plan.attempts()).unwrap_or(i32::MAX),
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
        let prepared = match self.prepare(request, &mut record, GENERATE_STREAM) {
            Ok(prepared) => prepared,
            Err(status) => {
                record.failed(&status, &CallEnd::default());
                return Err(status);
            }
        };
        let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER);
        let span = record.span().clone();
        let relay = Relay {
            gateway: Arc::clone(&self.gateway),
            prepared,
            record: Some(record),
            sender,
            spent: Usage::default(),
            output_sent: false,
            started: StdInstant::now(),
        };
        tokio::spawn(relay.run().instrument(span));
        // Wait for the first message, so a call that fails before any
        // output (no key, refused connection, HTTP error, after every
        // retry and fallback) fails as a whole, with its status at once.
        let first = match receiver.recv().await {
            Some(Ok(first)) => first,
            Some(Err(status)) => return Err(status),
            None => {
                return Err(Status::internal(
                    "the stream ended before its first message",
                ));
            }
        };
        let rest = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        });
        Ok(Response::new(
            futures::stream::once(async move { Ok(first) })
                .chain(rest)
                .boxed(),
        ))
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

fn log_retry(resolved: &Resolved, err: &ProviderError, action: &str) {
    tracing::info!(
        route = %resolved.route,
        provider = %resolved.instance,
        model = %resolved.model,
        error = %err,
        "provider attempt failed; {action}"
    );
}

/// Method names, as rate-limit events report them.
const GENERATE: &str = "/agentmesh.llm.v1.LlmGatewayService/Generate";
const GENERATE_STREAM: &str = "/agentmesh.llm.v1.LlmGatewayService/GenerateStream";

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

/// Messages the relay may run ahead of a slow caller.
const STREAM_BUFFER: usize = 32;

/// One streamed call: attempts over its plan, relaying each attempt's
/// events to the caller as they arrive, with a `reset` between an attempt
/// that sent output and the next, and exactly one `finished` at the end.
/// Runs as its own task; the caller's side is the channel's receiver.
struct Relay {
    gateway: Arc<Gateway>,
    prepared: Prepared,
    /// The call's audit record, until its end is recorded.
    record: Option<LlmCallRecord>,
    sender: mpsc::Sender<Result<GenerateStreamResponse, Status>>,
    /// Usage of abandoned attempts.
    spent: Usage,
    /// Whether any delta reached the caller (in any attempt).
    output_sent: bool,
    started: StdInstant,
}

/// How one attempt ended.
enum AttemptEnd {
    /// The answer is complete and `finished` was sent.
    Finished,
    /// The attempt failed; whether it had sent output, and its assembler.
    Failed(ProviderError, bool, Box<Assembler>),
    /// The caller went away.
    Gone(Box<Assembler>),
}

impl Relay {
    async fn run(mut self) {
        loop {
            let permit = match self.prepared.plan.admit() {
                Ok(permit) => permit,
                Err((Next::Fallback(_), _)) => continue,
                Err((_, err)) => {
                    self.give_up(err, &Assembler::default()).await;
                    return;
                }
            };
            let resolved = self.prepared.resolved.at(self.prepared.plan.target());
            if let Some(record) = self.record.as_mut() {
                record.resolved(&resolved);
            }
            match self.attempt(&resolved).await {
                AttemptEnd::Finished => {
                    settle_permit(permit, Ok(()));
                    return;
                }
                AttemptEnd::Gone(assembler) => {
                    drop(permit);
                    self.abandoned(&resolved, &assembler);
                    return;
                }
                AttemptEnd::Failed(err, sent, assembler) => {
                    settle_permit(permit, Err(&err));
                    let next = self.prepared.plan.after_failure(&err);
                    if matches!(next, Next::GiveUp) {
                        self.give_up(err, &assembler).await;
                        return;
                    }
                    let attempt_usage = self.usage_of(&resolved, &assembler, false);
                    add_usage(&mut self.spent, &attempt_usage);
                    let action = match next {
                        Next::Retry(_) => "retrying",
                        _ => "falling back",
                    };
                    log_retry(&resolved, &err, action);
                    if sent {
                        // The caller has part of an answer that will not be
                        // finished: tell it to discard it.
                        let next_target = self.prepared.plan.target().name();
                        let reason = format!(
                            "{}/{}: {err}; {action} to {next_target}",
                            resolved.instance, resolved.model
                        );
                        let cause = err.clone().into_status(&resolved.instance, &resolved.model);
                        let reset = GenerateStreamResponse {
                            event: Some(Event::Reset(StreamReset {
                                reason,
                                cause: Some(agentmesh_kit::status::to_rpc_status(&cause)),
                                abandoned_provider: resolved.instance.clone(),
                                abandoned_model: resolved.model.clone(),
                                abandoned_usage: Some(attempt_usage),
                                next_attempt: i32::try_from(self.prepared.plan.attempts() + 1)
                                    .unwrap_or(i32::MAX),
                            })),
                        };
                        tracing::debug!(reason = %err, "stream reset sent");
                        if self.sender.send(Ok(reset)).await.is_err() {
                            self.abandoned(&resolved, &Assembler::default());
                            return;
                        }
                    }
                    if let Next::Retry(delay) = next {
                        tokio::select! {
                            () = self.sender.closed() => {
                                self.abandoned(&resolved, &Assembler::default());
                                return;
                            }
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }

    /// One attempt at `resolved`: its events relayed until it finishes,
    /// fails or the caller goes away.
    async fn attempt(&mut self, resolved: &Resolved) -> AttemptEnd {
        let mut events = resolved
            .provider
            .provider
            .generate_stream(self.prepared.call());
        let mut assembler = Assembler::default();
        let mut sent = false;
        let deadline = self.prepared.caller_deadline;
        loop {
            let next = tokio::select! {
                biased;
                () = self.sender.closed() => return AttemptEnd::Gone(Box::new(assembler)),
                next = within_caller_deadline(deadline, events.next()) => next,
            };
            let event = match next {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(err))) | Err(err) => {
                    return AttemptEnd::Failed(err, sent, Box::new(assembler));
                }
                Ok(None) => {
                    let err = ProviderError::Broken(
                        "the provider's stream ended without finishing the answer".to_owned(),
                    );
                    return AttemptEnd::Failed(err, sent, Box::new(assembler));
                }
            };
            assembler.push(&event);
            if assembler.output_started()
                && let Some(record) = self.record.as_mut()
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
                    let finished = self.finished(resolved, &assembler, None, None);
                    let _ = self.sender.send(Ok(finished)).await;
                    return AttemptEnd::Finished;
                }
                ProviderEvent::Text(_)
                | ProviderEvent::Metadata { .. }
                | ProviderEvent::Usage(_) => {
                    continue;
                }
            };
            if self
                .sender
                .send(Ok(GenerateStreamResponse { event: Some(out) }))
                .await
                .is_err()
            {
                return AttemptEnd::Gone(Box::new(assembler));
            }
            sent = true;
            self.output_sent = true;
        }
    }

    /// The call failed for good: `finished` with FINISH_REASON_ERROR first
    /// when output was sent, then the status.
    async fn give_up(&mut self, err: ProviderError, assembler: &Assembler) {
        let status = self.prepared.final_status(err);
        let resolved = self.prepared.resolved.at(self.prepared.plan.target());
        if self.output_sent {
            let finished = self.finished(
                &resolved,
                assembler,
                Some(FinishReason::Error),
                Some(&status),
            );
            let _ = self.sender.send(Ok(finished)).await;
        } else if let Some(record) = self.record.take() {
            let mut usage = self.spent;
            add_usage(&mut usage, &self.usage_of(&resolved, assembler, false));
            self.settle(&usage);
            record.failed(&status, &CallEnd::default());
        }
        let _ = self.sender.send(Err(status)).await;
    }

    /// The caller went away mid-answer: record what arrived, and its usage.
    fn abandoned(&mut self, resolved: &Resolved, assembler: &Assembler) {
        let mut usage = self.spent;
        add_usage(&mut usage, &self.usage_of(resolved, assembler, false));
        self.settle(&usage);
        let completion = assembler.output_started().then(|| assembler.completion());
        if let Some(mut record) = self.record.take() {
            record.attempts(self.prepared.plan.attempts());
            record.abandoned(&CallEnd {
                completion,
                usage: Some(&usage),
                finish_reason: None,
            });
        }
    }

    fn settle(&mut self, usage: &Usage) {
        self.prepared.charges.settle(Prepared::used_tokens(usage));
    }

    /// An attempt's usage so far (`complete` false) or final, with its cost.
    fn usage_of(&self, resolved: &Resolved, assembler: &Assembler, complete: bool) -> Usage {
        let completion = assembler.completion();
        let usage = if complete {
            completion.final_usage(&self.prepared.request)
        } else if assembler.output_started() {
            completion.usage_so_far(&self.prepared.request)
        } else {
            // Nothing came back: nothing was generated or billed.
            Usage::default()
        };
        self.gateway.priced(resolved, &completion.model, usage)
    }

    /// The `finished` message, and the end of the call's record: a success,
    /// or with `failure`, the status the stream ends with next. Its usage
    /// is the whole call's: abandoned attempts and this one.
    fn finished(
        &mut self,
        resolved: &Resolved,
        assembler: &Assembler,
        override_reason: Option<FinishReason>,
        failure: Option<&Status>,
    ) -> GenerateStreamResponse {
        let mut usage = self.spent;
        add_usage(
            &mut usage,
            &self.usage_of(resolved, assembler, override_reason.is_none()),
        );
        self.settle(&usage);
        let completion = assembler.completion();
        let finish_reason = override_reason.unwrap_or(completion.finish_reason);
        let attempts = self.prepared.plan.attempts();
        if let Some(mut record) = self.record.take() {
            record.attempts(attempts);
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
                route = %resolved.route,
                provider = %resolved.instance,
                model = %resolved.model,
                finish_reason = ?finish_reason,
                input_tokens = usage.input_tokens,
                output_tokens = usage.output_tokens,
                attempts,
                took = ?self.started.elapsed(),
                run_id = %self.prepared.request.run_id,
                "streamed"
            );
        }
        GenerateStreamResponse {
            event: Some(Event::Finished(StreamFinished {
                message: Some(completion.message.clone()),
                finish_reason: finish_reason.into(),
                usage: Some(usage),
                provider: resolved.instance.clone(),
                model: reported_model(completion, resolved),
                route: resolved.route.clone(),
                response_id: completion.response_id.clone(),
                attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                provider_finish_reason: completion.provider_finish_reason.clone(),
            })),
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
