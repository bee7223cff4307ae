//! The gateway's configuration: provider instances, model routes, and the
//! checks that stop the service at start when a setting cannot work.
//!
//! A *provider instance* is a named connection to one provider protocol
//! (`openai`, `anthropic` or `scripted`) with its base URL, key and timeouts;
//! several instances may speak the same protocol (OpenAI itself and a local
//! vLLM, say). A *route* is a name callers use as `GenerateRequest.model`
//! that resolves to `instance/model`. Callers may also address
//! `instance/model` directly.
//!
//! *Prices* turn token counts into an estimated cost in US dollars, shown in
//! every response's `usage.estimated_cost_usd`, in ListModels and in the
//! LLM_CALL audit events:
//!
//! ```toml
//! [llm_gateway.prices."gpt-4o-mini"]          # this model on any provider
//! input_per_million_usd = 0.15
//! output_per_million_usd = 0.60
//!
//! [llm_gateway.prices."vllm/meta-llama/Llama-3.1-8B-Instruct"]   # one instance's model
//! input_per_million_usd = 0
//! output_per_million_usd = 0
//! ```
//!
//! A call is priced by `instance/model` first, then by the bare model name
//! (the model as requested, then as the provider reported it); with no price
//! the cost is absent, not zero. Prices for `gpt-4o-mini`, `gpt-4o`,
//! `claude-sonnet-4-5` and `claude-haiku-4-5` are built in; a file adds to
//! them or overrides them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use agentmesh_audit_client::AuditConfig;
use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use agentmesh_resilience::{CircuitConfig, Limit, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::providers::scripted::RuleSet;

/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50052;

/// The service's configuration (section `[llm_gateway]`, environment
/// `AGENTMESH_LLM_GATEWAY__*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC and admin servers.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Route used when a request's `model` is empty.
    pub default_route: String,
    /// Provider instances by name (the `provider` of `provider/model`).
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Model routes by name.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Prices per million tokens, keyed by `provider/model` (a provider
    /// instance and the provider's model name) or by a bare model name (that
    /// model on any provider); see the module docs.
    pub prices: BTreeMap<String, Price>,
    /// Where audit events go.
    pub audit: AuditConfig,
    /// Retries of a failed provider call (per target), with backoff and a
    /// budget shared by every call (fallbacks count against it too).
    pub retry: RetryConfig,
    /// The circuit breaker of every provider target (`provider/model`).
    pub circuit_breaker: CircuitConfig,
    /// Rate limits per tenant and per route, on requests and tokens.
    pub rate_limits: RateLimitsConfig,
}

/// Rate limits on requests and tokens (input + output) per minute; 0 = none.
///
/// ```toml
/// [llm_gateway.rate_limits.tenant]            # every tenant, each on its own
/// requests_per_minute = 600
/// tokens_per_minute = 2000000
/// [llm_gateway.rate_limits.tenants.acme]      # one tenant's own limit
/// requests_per_minute = 6000
/// [llm_gateway.rate_limits.routes.default]    # one route, all tenants together
/// tokens_per_minute = 10000000
/// ```
///
/// The state is in this process's memory: with N replicas behind a load
/// balancer, a key may get up to N times its limit. Divide the limits by the
/// replica count, or keep one replica's share in mind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// The limit of each tenant without its own entry in `tenants`.
    pub tenant: Limit,
    /// Limits of named tenants (the `x-agentmesh-tenant` value; `-` for calls
    /// without a tenant).
    pub tenants: BTreeMap<String, Limit>,
    /// The limit of each route without its own entry in `routes` (calls
    /// addressed as `provider/model` count under that name).
    pub route: Limit,
    /// Limits of named routes.
    pub routes: BTreeMap<String, Limit>,
}

/// Why a provider call failed, as retries, fallbacks and circuit breakers
/// see it. `fallback_on` of a route lists the classes that hand a call over
/// to the route's next target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// No connection could be made (refused, DNS, TLS). Retried.
    Connect,
    /// HTTP 5xx, 408, 409, or an overloaded/server error in the stream. Retried.
    ServerError,
    /// HTTP 429 or a rate-limit error from the provider. Retried after its
    /// `retry-after`.
    RateLimited,
    /// The provider's first-token or whole-call timeout passed. Retried.
    Timeout,
    /// The stream broke or was malformed. Retried.
    Broken,
    /// The target's circuit is open (no call was made).
    CircuitOpen,
    /// The target cannot be called: its API key is not set, or no TLS.
    Unconfigured,
    /// HTTP 400/413/422: the request itself is wrong. Never retried.
    InvalidRequest,
    /// HTTP 401/403. Never retried.
    PermissionDenied,
    /// HTTP 404: the provider does not know the model. Never retried.
    NotFound,
}

impl FailureClass {
    /// The name used in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ServerError => "server_error",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::Broken => "broken",
            Self::CircuitOpen => "circuit_open",
            Self::Unconfigured => "unconfigured",
            Self::InvalidRequest => "invalid_request",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
        }
    }

    /// Whether another attempt at the same target may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Connect | Self::ServerError | Self::RateLimited | Self::Timeout | Self::Broken
        )
    }

    /// Whether the failure says the target is unhealthy (and counts against
    /// its circuit). A 429 is the provider protecting our quota, not a sick
    /// target: it is retried after its delay but does not open the circuit.
    pub fn counts_against_circuit(self) -> bool {
        matches!(
            self,
            Self::Connect | Self::ServerError | Self::Timeout | Self::Broken
        )
    }
}

/// The classes that hand a call to the next target by default: every
/// failure of the target rather than of the request.
pub fn default_fallback_on() -> Vec<FailureClass> {
    vec![
        FailureClass::Connect,
        FailureClass::ServerError,
        FailureClass::RateLimited,
        FailureClass::Timeout,
        FailureClass::Broken,
        FailureClass::CircuitOpen,
        FailureClass::Unconfigured,
    ]
}

impl Default for Config {
    fn default() -> Self {
        let providers = BTreeMap::from([
            (
                "scripted".to_owned(),
                ProviderConfig::new(ProviderKind::Scripted),
            ),
            (
                "openai".to_owned(),
                ProviderConfig {
                    api_key_env: "OPENAI_API_KEY".to_owned(),
                    ..ProviderConfig::new(ProviderKind::Openai)
                },
            ),
            (
                "anthropic".to_owned(),
                ProviderConfig {
                    api_key_env: "ANTHROPIC_API_KEY".to_owned(),
                    ..ProviderConfig::new(ProviderKind::Anthropic)
                },
            ),
        ]);
        let routes = BTreeMap::from([
            (
                "default".to_owned(),
                RouteConfig::new(
                    "scripted/demo",
                    "The scripted demo model (offline, deterministic)",
                ),
            ),
            (
                "fast".to_owned(),
                RouteConfig::new(
                    "scripted/demo",
                    "A quick model for small steps; the scripted demo model until configured",
                ),
            ),
        ]);
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            log: LogConfig::default(),
            default_route: "default".to_owned(),
            providers,
            routes,
            prices: default_prices(),
            audit: AuditConfig::default(),
            retry: RetryConfig::default(),
            circuit_breaker: CircuitConfig::default(),
            rate_limits: RateLimitsConfig::default(),
        }
    }
}

/// The built-in prices (US dollars per million tokens, list prices).
fn default_prices() -> BTreeMap<String, Price> {
    [
        ("gpt-4o-mini", 0.15, 0.60),
        ("gpt-4o", 2.50, 10.00),
        ("claude-sonnet-4-5", 3.00, 15.00),
        ("claude-haiku-4-5", 1.00, 5.00),
    ]
    .into_iter()
    .map(|(model, input, output)| (model.to_owned(), Price::new(input, output)))
    .collect()
}

/// What a model's tokens cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// US dollars per million input (prompt) tokens.
    pub input_per_million_usd: f64,
    /// US dollars per million output (generated) tokens.
    pub output_per_million_usd: f64,
}

impl Price {
    /// A price per million input and output tokens.
    pub fn new(input_per_million_usd: f64, output_per_million_usd: f64) -> Self {
        Self {
            input_per_million_usd,
            output_per_million_usd,
        }
    }

    /// The cost in US dollars of a call with these token counts.
    pub fn cost_usd(&self, input_tokens: i32, output_tokens: i32) -> f64 {
        f64::from(input_tokens.max(0)) * self.input_per_million_usd / 1e6
            + f64::from(output_tokens.max(0)) * self.output_per_million_usd / 1e6
    }
}

/// The price of `model` on provider instance `instance`: by
/// `instance/model`, else by the bare model name.
pub fn price_of(prices: &BTreeMap<String, Price>, instance: &str, model: &str) -> Option<Price> {
    if model.is_empty() {
        return None;
    }
    prices
        .get(&format!("{instance}/{model}"))
        .or_else(|| prices.get(model))
        .copied()
}

/// The wire protocol a provider instance speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions, also spoken by vLLM, Ollama, llama.cpp, LiteLLM.
    Openai,
    /// The Anthropic Messages API.
    Anthropic,
    /// The deterministic stand-in driven by a rules file.
    Scripted,
}

impl ProviderKind {
    /// The `gen_ai.provider.name` of the OpenTelemetry GenAI conventions.
    pub fn semconv_name(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Scripted => "agentmesh.scripted",
        }
    }
}

impl ProviderKind {
    /// The name used in configuration and in `ModelTarget.provider_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Scripted => "scripted",
        }
    }

    /// The base URL used when `base_url` is empty.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::Openai => "https://api.openai.com/v1",
            Self::Anthropic => "https://api.anthropic.com",
            Self::Scripted => "",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of one provider instance.
///
/// `kind` is required in a file; every other field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The protocol: `openai`, `anthropic` or `scripted`.
    pub kind: ProviderKind,
    /// Base URL of the API; empty = the kind's default
    /// (`https://api.openai.com/v1`, `https://api.anthropic.com`).
    #[serde(default)]
    pub base_url: String,
    /// Name of the environment variable holding the API key, read at each
    /// request; empty = send no key (fine for local OpenAI-compatible servers).
    #[serde(default)]
    pub api_key_env: String,
    /// Time allowed to open a connection.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed until a streamed answer's response headers and first
    /// event. (A one-shot answer's headers come only when it is complete, so
    /// `request_timeout` bounds those.)
    #[serde(default = "defaults::first_token_timeout", with = "humantime_serde")]
    pub first_token_timeout: Duration,
    /// Time allowed for the whole call, or the whole stream.
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Output token limit sent when a request gives 0. Anthropic requires a
    /// limit; for `openai` 0 here means "send none" (the model's own limit).
    #[serde(default = "defaults::max_output_tokens")]
    pub max_output_tokens: i32,
    /// `scripted` only: the rules file (TOML); empty = the built-in demo rules.
    #[serde(default)]
    pub rules_file: String,
    /// `scripted` only: delay between streamed pieces, overriding the rules
    /// file's and every rule's pace (e.g. `0s` in tests).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub pace: Option<Duration>,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn first_token_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn request_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn max_output_tokens() -> i32 {
        4096
    }
}

impl ProviderConfig {
    /// An instance of `kind` with every other setting at its default.
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            base_url: String::new(),
            api_key_env: String::new(),
            connect_timeout: defaults::connect_timeout(),
            first_token_timeout: defaults::first_token_timeout(),
            request_timeout: defaults::request_timeout(),
            max_output_tokens: defaults::max_output_tokens(),
            rules_file: String::new(),
            pace: None,
        }
    }

    /// The base URL requests go to: as configured, or the kind's default.
    pub fn effective_base_url(&self) -> &str {
        if self.base_url.is_empty() {
            self.kind.default_base_url()
        } else {
            &self.base_url
        }
    }

    /// Whether the API key this instance needs is present in the environment
    /// (always true when it needs none).
    pub fn key_available(&self) -> bool {
        self.api_key_env.is_empty()
            || std::env::var_os(&self.api_key_env).is_some_and(|value| !value.is_empty())
    }
}

impl Default for ProviderConfig {
    /// An OpenAI-protocol instance with every other setting at its default.
    fn default() -> Self {
        Self::new(ProviderKind::Openai)
    }
}

/// A model route: its first target and the fallbacks after it.
///
/// ```toml
/// [llm_gateway.routes.default]
/// target = "openai/gpt-4o-mini"
/// fallbacks = ["anthropic/claude-haiku-4-5", "scripted/demo"]
/// fallback_on = ["connect", "server_error", "rate_limited", "timeout", "broken", "circuit_open"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// `provider_instance/model`, e.g. `openai/gpt-4o-mini`: tried first.
    pub target: String,
    /// Further `provider_instance/model` targets, in order: a target that
    /// fails (after its retries) with a class in `fallback_on`, or whose
    /// circuit is open, hands the call to the next.
    pub fallbacks: Vec<String>,
    /// The failure classes that trigger a fallback (see [`FailureClass`]);
    /// by default every failure of the target rather than of the request.
    pub fallback_on: Vec<FailureClass>,
    /// Free text shown by ListModels.
    pub description: String,
}

impl RouteConfig {
    /// A route to `target` (`instance/model`).
    pub fn new(target: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            fallbacks: Vec::new(),
            fallback_on: default_fallback_on(),
            description: description.into(),
        }
    }

    /// Adds fallback targets.
    pub fn with_fallbacks<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        targets: I,
    ) -> Self {
        self.fallbacks.extend(targets.into_iter().map(Into::into));
        self
    }

    /// The targets in order, each with the name of its setting.
    pub fn chain(&self) -> impl Iterator<Item = (String, &str)> {
        std::iter::once(("target".to_owned(), self.target.as_str())).chain(
            self.fallbacks
                .iter()
                .enumerate()
                .map(|(index, target)| (format!("fallbacks[{index}]"), target.as_str())),
        )
    }
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self::new("", "")
    }
}

/// Splits `instance/model` at the first `/` (model names may contain more,
/// e.g. `vllm/meta-llama/Llama-3.1-8B-Instruct`).
pub fn split_target(target: &str) -> Option<(&str, &str)> {
    target.split_once('/')
}

// === validation ===

impl Config {
    /// Checks providers and routes; errors name the setting relative to the
    /// `llm_gateway` section (the kit adds the section).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, provider) in &self.providers {
            validate_provider(name, provider)?;
        }
        for (name, route) in &self.routes {
            if name.is_empty() {
                return Err(ConfigError::new("routes", "a route name must not be empty"));
            }
            for (field, target) in route.chain() {
                self.validate_target(name, &field, target)?;
            }
        }
        for (key, price) in &self.prices {
            validate_price(key, price)?;
        }
        self.audit.validate()?;
        self.retry
            .validate()
            .map_err(|(field, message)| ConfigError::new(format!("retry.{field}"), message))?;
        self.circuit_breaker
            .validate()
            .map_err(|(field, message)| {
                ConfigError::new(format!("circuit_breaker.{field}"), message)
            })?;
        if !self.routes.contains_key(&self.default_route) {
            return Err(ConfigError::new(
                "default_route",
                format!(
                    "route `{}` is not configured; configured routes: {}",
                    self.default_route,
                    join_names(self.routes.keys())
                ),
            ));
        }
        Ok(())
    }

    fn validate_target(&self, name: &str, field: &str, target: &str) -> Result<(), ConfigError> {
        let setting = format!("routes.{name}.{field}");
        {
            let route = RouteConfig::new(target, "");
            let Some((instance, model)) = split_target(&route.target) else {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "`{}` is not `provider/model` (e.g. `openai/gpt-4o-mini`)",
                        route.target
                    ),
                ));
            };
            if !self.providers.contains_key(instance) {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "provider `{instance}` is not configured; configured providers: {}",
                        join_names(self.providers.keys())
                    ),
                ));
            }
            if model.is_empty() {
                return Err(ConfigError::new(
                    setting,
                    format!("`{}` names no model after `{instance}/`", route.target),
                ));
            }
        }
        Ok(())
    }
}

fn validate_price(key: &str, price: &Price) -> Result<(), ConfigError> {
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
        return Err(ConfigError::new(
            format!("prices.{key}"),
            "a price is keyed by `provider/model` or by a model name, e.g. `openai/gpt-4o` or `gpt-4o`",
        ));
    }
    for (field, value) in [
        ("input_per_million_usd", price.input_per_million_usd),
        ("output_per_million_usd", price.output_per_million_usd),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(ConfigError::new(
                format!("prices.{key}.{field}"),
                format!(
                    "{value} is not a price: use a non-negative number of US dollars per million tokens"
                ),
            ));
        }
    }
    Ok(())
}

fn validate_provider(name: &str, provider: &ProviderConfig) -> Result<(), ConfigError> {
    let setting = |key: &str| format!("providers.{name}.{key}");
    if name.is_empty() || name.contains('/') {
        return Err(ConfigError::new(
            format!("providers.{name}"),
            "a provider name must be non-empty and must not contain `/` (it is the first part of `provider/model`)",
        ));
    }
    for (key, value) in [
        ("connect_timeout", provider.connect_timeout),
        ("first_token_timeout", provider.first_token_timeout),
        ("request_timeout", provider.request_timeout),
    ] {
        if value.is_zero() {
            return Err(ConfigError::new(setting(key), "must be longer than 0s"));
        }
    }
    if provider.max_output_tokens < 0 {
        return Err(ConfigError::new(
            setting("max_output_tokens"),
            "must not be negative",
        ));
    }
    if provider.api_key_env.contains(['=', '\0']) {
        return Err(ConfigError::new(
            setting("api_key_env"),
            "must be the name of an environment variable (no `=`), not a key",
        ));
    }
    match provider.kind {
        ProviderKind::Openai | ProviderKind::Anthropic => {
            if provider.kind == ProviderKind::Anthropic && provider.max_output_tokens == 0 {
                return Err(ConfigError::new(
                    setting("max_output_tokens"),
                    "the Anthropic API requires an output token limit: use a positive number",
                ));
            }
            check_base_url(provider.effective_base_url())
                .map_err(|message| ConfigError::new(setting("base_url"), message))?;
            if !provider.rules_file.is_empty() {
                return Err(ConfigError::new(
                    setting("rules_file"),
                    format!(
                        "is used by `scripted` providers only, and this one is `{}`",
                        provider.kind
                    ),
                ));
            }
            if provider.pace.is_some() {
                return Err(ConfigError::new(
                    setting("pace"),
                    format!(
                        "is used by `scripted` providers only, and this one is `{}`",
                        provider.kind
                    ),
                ));
            }
        }
        ProviderKind::Scripted => {
            RuleSet::load(&provider.rules_file)
                .map_err(|err| ConfigError::new(setting("rules_file"), err.to_string()))?;
        }
    }
    Ok(())
}

/// Accepts absolute `http` and `https` URLs with a host.
fn check_base_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("`{url}` is not a URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}` must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

pub(crate) fn join_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_route_to_the_scripted_demo() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.routes["default"].target, "scripted/demo");
        assert_eq!(config.providers["openai"].api_key_env, "OPENAI_API_KEY");
        assert_eq!(
            config.providers["anthropic"].effective_base_url(),
            "https://api.anthropic.com"
        );
    }

    #[test]
    fn a_route_to_an_unknown_provider_names_the_setting() {
        let mut config = Config::default();
        config
            .routes
            .insert("fast".into(), RouteConfig::new("nope/model", ""));
        let err = config.validate().unwrap_err();
        assert_eq!(err.setting, "routes.fast.target");
        assert!(err.message.contains("anthropic, openai, scripted"), "{err}");

        config
            .routes
            .insert("fast".into(), RouteConfig::new("openai/", ""));
        assert_eq!(config.validate().unwrap_err().setting, "routes.fast.target");
        config
            .routes
            .insert("fast".into(), RouteConfig::new("gpt-4o", ""));
        assert_eq!(config.validate().unwrap_err().setting, "routes.fast.target");
    }

    #[test]
    fn the_default_route_must_exist() {
        let config = Config {
            default_route: "missing".into(),
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "default_route");
    }

    #[test]
    fn base_urls_must_be_http() {
        let mut config = Config::default();
        for bad in ["ftp://example.com", "not a url", "http://"] {
            config.providers.insert(
                "openai".into(),
                ProviderConfig {
                    base_url: bad.into(),
                    ..ProviderConfig::new(ProviderKind::Openai)
                },
            );
            let err = config.validate().unwrap_err();
            assert_eq!(err.setting, "providers.openai.base_url", "{bad}: {err}");
        }
    }

    #[test]
    fn a_file_needs_only_the_kind_of_a_new_provider() {
        let text = r#"
            default_route = "local"
            [providers.vllm]
            kind = "openai"
            base_url = "http://127.0.0.1:8000/v1"
            first_token_timeout = "2s"
            [routes.local]
            target = "vllm/meta-llama/Llama-3.1-8B-Instruct"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let vllm = &config.providers["vllm"];
        assert_eq!(vllm.first_token_timeout, Duration::from_secs(2));
        assert_eq!(vllm.request_timeout, Duration::from_secs(300));
        assert_eq!(
            split_target(&config.routes["local"].target),
            Some(("vllm", "meta-llama/Llama-3.1-8B-Instruct"))
        );

        let missing_kind = "[providers.x]\nbase_url = \"http://h\"\n";
        assert!(toml::from_str::<Config>(missing_kind).is_err());
    }

    #[test]
    fn scripted_settings_on_other_kinds_are_refused() {
        let mut config = Config::default();
        config.providers.insert(
            "openai".into(),
            ProviderConfig {
                pace: Some(Duration::ZERO),
                ..ProviderConfig::new(ProviderKind::Openai)
            },
        );
        assert_eq!(
            config.validate().unwrap_err().setting,
            "providers.openai.pace"
        );
    }

    #[test]
    fn cost_is_tokens_times_the_price_per_million() {
        let price = Price::new(0.15, 0.60);
        let cost = price.cost_usd(1_000_000, 500_000);
        assert!((cost - 0.45).abs() < 1e-12, "{cost}");
        let cost = price.cost_usd(1200, 300);
        assert!(
            (cost - (1200.0 * 0.15 + 300.0 * 0.60) / 1e6).abs() < 1e-15,
            "{cost}"
        );
        assert!(price.cost_usd(0, 0).abs() < f64::EPSILON);
        assert!(Price::new(0.0, 0.0).cost_usd(10, 10).abs() < f64::EPSILON);
    }

    #[test]
    fn prices_are_found_by_instance_and_model_then_by_model() {
        let mut prices = default_prices();
        assert_eq!(
            price_of(&prices, "openai", "gpt-4o-mini"),
            Some(Price::new(0.15, 0.60))
        );
        assert_eq!(
            price_of(&prices, "azure", "gpt-4o"),
            Some(Price::new(2.50, 10.00))
        );
        assert_eq!(
            price_of(&prices, "anthropic", "claude-sonnet-4-5"),
            Some(Price::new(3.00, 15.00))
        );
        assert_eq!(
            price_of(&prices, "anthropic", "claude-haiku-4-5"),
            Some(Price::new(1.00, 5.00))
        );
        assert_eq!(price_of(&prices, "scripted", "demo"), None);
        assert_eq!(price_of(&prices, "openai", ""), None);
        prices.insert("azure/gpt-4o".into(), Price::new(3.0, 12.0));
        assert_eq!(
            price_of(&prices, "azure", "gpt-4o"),
            Some(Price::new(3.0, 12.0))
        );
        assert_eq!(
            price_of(&prices, "openai", "gpt-4o"),
            Some(Price::new(2.50, 10.00))
        );
        prices.insert(
            "vllm/meta-llama/Llama-3.1-8B-Instruct".into(),
            Price::new(0.0, 0.0),
        );
        assert_eq!(
            price_of(&prices, "vllm", "meta-llama/Llama-3.1-8B-Instruct"),
            Some(Price::new(0.0, 0.0))
        );
    }

    #[test]
    fn prices_must_be_non_negative_and_finite() {
        for (value, field) in [
            (-0.01, "input_per_million_usd"),
            (f64::NAN, "input_per_million_usd"),
            (f64::INFINITY, "input_per_million_usd"),
        ] {
            let mut config = Config::default();
            config
                .prices
                .insert("gpt-4o".into(), Price::new(value, 1.0));
            let err = config.validate().unwrap_err();
            assert_eq!(err.setting, format!("prices.gpt-4o.{field}"), "{value}");
        }
        let mut config = Config::default();
        config
            .prices
            .insert("openai/gpt-4o".into(), Price::new(1.0, -1.0));
        assert_eq!(
            config.validate().unwrap_err().setting,
            "prices.openai/gpt-4o.output_per_million_usd"
        );
        for key in ["", "/gpt-4o", "openai/"] {
            let mut config = Config::default();
            config.prices.insert(key.into(), Price::new(1.0, 1.0));
            assert_eq!(
                config.validate().unwrap_err().setting,
                format!("prices.{key}"),
                "{key:?}"
            );
        }
        let mut config = Config::default();
        config.prices.insert("free".into(), Price::new(0.0, 0.0));
        config.validate().unwrap();
    }

    #[test]
    fn prices_in_a_file_add_to_the_built_in_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "[llm_gateway.prices.\"openai/gpt-4.1\"]\ninput_per_million_usd = 2.0\noutput_per_million_usd = 8.0\n",
        )
        .unwrap();
        let config: Config =
            agentmesh_kit::config::load(Some(&path), &agentmesh_kit::config::Overrides::default())
                .unwrap();
        assert_eq!(config.prices["openai/gpt-4.1"], Price::new(2.0, 8.0));
        assert_eq!(config.prices["gpt-4o-mini"], Price::new(0.15, 0.60));

        std::fs::write(
            &path,
            "[llm_gateway.prices.x]\ninput_per_million_usd = 1.0\n",
        )
        .unwrap();
        let err = agentmesh_kit::config::load::<Config>(
            Some(&path),
            &agentmesh_kit::config::Overrides::default(),
        )
        .unwrap_err();
        assert!(err.setting.starts_with("llm_gateway.prices"), "{err}");
    }

    #[test]
    fn the_configuration_round_trips_through_toml() {
        let config = Config::default();
        let text = toml::to_string_pretty(&config).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
    }
}
