//! The LLM gateway service: one provider-neutral chat API
//! (`agentmesh.llm.v1.LlmGatewayService`) in front of model providers —
//! OpenAI and compatible servers, Anthropic, and a scripted stand-in for
//! tests and the offline demo — with retries, fallbacks along a route,
//! circuit breakers per target, rate limits per tenant and route, and
//! token and cost accounting.
//!
//! # Data flow
//!
//! ```text
//! Generate / GenerateStream                                   (service)
//!   └─ LLM_CALL record opened (audit; metrics at its end)     (audit, metrics)
//!   └─ validate ─ resolve `model` to a route's chain ─ rate limits
//!      ─ the call's attempt loop          (validate, gateway, limits, call)
//!   └─ the shared attempt loop (agentmesh-resilience): retry with backoff,
//!      fall back along the chain, skip open circuits          (unary | relay)
//!        └─ Provider (openai | anthropic | scripted)          (providers)
//!             request  → provider wire JSON  → POST (pooled HTTP client)
//!             response ← SSE events / JSON  ← ProviderEvent / Completion
//!   └─ Generate: the completion, priced ─ GenerateStream: deltas relayed as
//!      they arrive, a `reset` before a new attempt once output was sent,
//!      one `finished` with the message, finish reason and usage (estimated
//!      when not reported) ─ the record ends, once
//! ```
//!
//! # Layout
//!
//! * `service`: the tonic trait; opens each call's record, prepares it and
//!   hands it to `unary` or `relay` (ListModels to the gateway).
//! * `gateway`: the state built from [`Config`] — provider instances,
//!   routes and their chains of targets, prices — resolution of a request's
//!   `model` to a `Resolved` target, and ListModels.
//! * `call`: the prepared call (validated, resolved, admitted by the rate
//!   limits, with the caller's deadline) and its attempt loop, and what both
//!   call paths share: retries and fallbacks counted and logged, the final
//!   status, usage across attempts.
//! * `unary`: `Generate`: what one attempt of the shared attempt loop is
//!   (a completion), and the response.
//! * `relay`: `GenerateStream`'s relay task, run by the shared attempt loop,
//!   with resets between attempts; a stream that breaks after output ends
//!   with `finished` FINISH_REASON_ERROR, then the error status.
//! * `budget`: token and cost budgets per tenant and API key per UTC day
//!   or month, checked before a call and charged after it, the spend in the
//!   service's database (SQLite, or PostgreSQL shared by replicas).
//! * `resilience`: what a provider failure means to the attempt loop
//!   (retry, fall back, count against the circuit), circuit breakers of
//!   targets; the mechanisms themselves, and the attempt loop, are in
//!   `agentmesh-resilience`.
//! * `limits`: the rate limits per tenant and route, in memory or shared by
//!   replicas through PostgreSQL (`limits::store`: GCRA rows leased from in
//!   batches), with the status and event of a refusal.
//! * `schema`: the migrations of the gateway's databases.
//! * `validate`: request checks, INVALID_ARGUMENT with field violations.
//! * `providers`: the `Provider` trait and one module per wire protocol;
//!   `providers::http` holds the shared HTTP client, timeouts and SSE
//!   decoding.
//! * `scripted_rules`: the scripted provider's rules file (format, checks,
//!   compiled rules), shared by the configuration checks and the provider.
//! * `completion`: provider events, their assembly, usage estimates.
//! * `error`: provider failures and the gRPC status each becomes.
//! * `audit`: the LLM_CALL audit event of every call, and provider keys
//!   registered as secrets to redact.
//! * `metrics`: the GenAI metrics (tokens, durations, time to first token,
//!   time per output token) and the estimated cost, recorded where the
//!   LLM_CALL event is.
//! * `config`: [`Config`] — providers, routes, prices, rate limits —
//!   checked at start, naming the setting that is wrong.
//! * `text`: cutting text without splitting a UTF-8 character.
//!
//! The modules form layers, none reaching back up: `text`,
//! `scripted_rules`, `completion`, `error` and `validate` at the bottom;
//! `config`, `schema`; `providers`; `resilience`, `limits`; `budget`; `gateway`;
//! `metrics`, then `audit`;
//! `call`; `unary` and `relay`; `service` on top.
//!
//! # Library surface
//!
//! [`serve`] binds the listeners from [`Config`]; [`serve_with_listeners`]
//! takes bound ones (tests bind port 0). Both hand the service to the kit's
//! [`ServiceHost`] (health, reflection, metrics, limits, metadata forwarding,
//! graceful shutdown); `main.rs` only calls [`serve`]. Tests that call the
//! service in process build it with [`Gateway::from_config`] and
//! [`LlmGatewayServiceImpl::new`]. Everything else is private to the crate.
//!
//! Health: ready (SERVING) while at least one route leads to a usable
//! provider (the `providers` check); the audit service is reported but
//! optional.

mod allowed;
mod audit;
mod budget;
mod call;
mod completion;
mod config;
mod error;
mod gateway;
mod limits;
mod metrics;
mod providers;
mod relay;
mod resilience;
mod schema;
mod scripted_rules;
mod service;
mod unary;
mod validate;

use std::future::Future;
use std::sync::Arc;

use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_kit::auth::{Scope, ScopeTable};
use agentmesh_kit::health::DependencyCheck;
use agentmesh_kit::{Listeners, ServeError, ServiceHost, StartupError};
use agentmesh_proto::llm::v1::llm_gateway_service_server::LlmGatewayServiceServer;

pub use agentmesh_audit_client::AuditConfig;
pub use config::{
    BudgetConfig, BudgetPeriod, BudgetScope, Config, DEFAULT_PORT, FailureClass, Price,
    ProviderConfig, ProviderKind, RateLimitsConfig, RouteConfig, SharedLimitsConfig,
};
pub use error::{ERROR_DOMAIN, provider_reason};
pub use gateway::Gateway;
pub use limits::RateLimitStore;
pub use service::LlmGatewayServiceImpl;

/// The scope each RPC needs (`agentmesh auth scopes` prints every
/// service's table). A new RPC must be added here: the access matrix test
/// fails for a method no table lists.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "agentmesh.llm.v1.LlmGatewayService",
    methods: &[
        ("Generate", Scope::LlmGenerate),
        ("GenerateStream", Scope::LlmGenerate),
        ("ListModels", Scope::LlmGenerate),
    ],
};

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "llm-gateway";

agentmesh_kit::service_config!(
    Config,
    service = SERVICE,
    section = "llm_gateway",
    validate = |config: &Config| config.validate()
);

/// Serves on the configured ports until `shutdown` resolves, then drains.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let listeners = Listeners::bind(&config.server).await?;
    serve_with_listeners(config, listeners, shutdown).await
}

/// Serves on listeners bound by the caller (tests bind port 0).
///
/// The configuration is checked first (it may have been built in code rather
/// than loaded); an invalid one, or a scripted rules file that cannot be
/// loaded, is refused with a message naming the setting.
pub async fn serve_with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    agentmesh_kit::config::validate(&config).map_err(refused)?;
    if !providers::http::install_tls_crypto() {
        tracing::warn!("no TLS crypto provider: calls to https providers will fail");
    }
    let mut host = ServiceHost::for_config(&config, &[SCOPES])?;
    let audit =
        agentmesh_audit_client::start_service::<Config>(&config.audit, &host, &effective(&config))?;
    let reporter = ResilienceReporter::new(audit.clone(), host.metrics().registry());
    let gateway = Arc::new(Gateway::build(&config, reporter).map_err(|err| {
        refused(format!(
            "invalid setting `llm_gateway.{}`: {}",
            err.setting, err.message
        ))
    })?);
    let metrics = Arc::new(metrics::GatewayMetrics::new(
        host.metrics().registry(),
        &config,
    )?);
    let limit = config.server.max_message_bytes;
    host.add_service(
        LlmGatewayServiceServer::new(
            LlmGatewayServiceImpl::with_audit(Arc::clone(&gateway), audit.clone())
                .with_metrics(metrics)
                .with_access(allowed::RouteAccess::new(Arc::clone(host.access()))),
        )
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
    );
    host.add_check(providers_check(&config))
        .add_check(audit.health_check());
    let stores = Stores::of(&gateway, &mut host);
    let result = host.serve(listeners, || stores.open(), shutdown).await;
    stores.close().await;
    // The drain is over: send what is queued, or spool it.
    audit.shutdown().await;
    result
}

/// The configuration as recorded: it names the environment variables
/// holding the API keys, never the keys, and database URLs go without their
/// passwords.
fn effective(config: &Config) -> Config {
    let mut effective = config.clone();
    effective.storage.url = effective
        .storage
        .url
        .as_deref()
        .map(agentmesh_audit_client::without_password);
    effective.shared_limits.url =
        agentmesh_audit_client::without_password(&effective.shared_limits.url);
    effective
}

/// The databases the gateway opens at start and closes after the drain.
struct Stores {
    /// The budgets' spend, only when budgets are configured: opened (and
    /// migrated) at start, required for readiness.
    spend: Option<agentmesh_storage::LazyDatabase>,
    /// The shared limits' database: opened (and migrated) at start when it
    /// answers, never required (without it the limits are local, 1/N),
    /// swept of idle rows while the gateway runs.
    limits: Option<RateLimitStore>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

impl Stores {
    /// The stores of `gateway`, their readiness checks added to `host`.
    fn of(gateway: &Gateway, host: &mut ServiceHost) -> Self {
        let spend = gateway.budgets().database().cloned();
        if let Some(database) = &spend {
            host.add_check(database.health_check());
        }
        let limits = gateway.limits().store().cloned();
        if let Some(store) = &limits {
            host.add_check(store.health_check());
        }
        let sweeper = limits
            .clone()
            .map(|store| tokio::spawn(store.keep_sweeping()));
        Self {
            spend,
            limits,
            sweeper,
        }
    }

    /// Opens them during start-up: the spend database must open; the
    /// limits' may not (a warning, and local limits until it does).
    async fn open(&self) -> Result<(), StartupError> {
        if let Some(database) = &self.spend {
            database.open().await.map_err(StartupError::from)?;
        }
        if let Some(store) = &self.limits
            && let Err(err) = store.open().await
        {
            tracing::warn!(
                error = %err,
                "the shared rate-limit database cannot be opened: rate limits are local (1/N) until it can"
            );
        }
        Ok(())
    }

    async fn close(self) {
        if let Some(sweeper) = self.sweeper {
            sweeper.abort();
        }
        if let Some(database) = &self.spend {
            database.close().await;
        }
        if let Some(store) = &self.limits {
            store.close().await;
        }
    }
}

/// The required readiness check `providers`: at least one route leads to a
/// usable provider instance (its API key is in the environment, if it needs
/// one; the scripted provider always is). Keys are read at each request, so
/// they are looked for at each check too.
fn providers_check(config: &Config) -> DependencyCheck {
    let config = Arc::new(config.clone());
    DependencyCheck::required("providers", move || {
        let result = usable_route(&config);
        async move { result }
    })
}

/// `Ok` when some route's provider is usable, else what each one lacks.
fn usable_route(config: &Config) -> Result<(), String> {
    let mut missing = Vec::new();
    for (name, route) in &config.routes {
        for (_, target) in route.chain() {
            let Some((instance, _)) = config::split_target(target) else {
                missing.push(format!("route `{name}`: `{target}` is not provider/model"));
                continue;
            };
            let Some(provider) = config.providers.get(instance) else {
                missing.push(format!(
                    "route `{name}`: provider `{instance}` is not configured"
                ));
                continue;
            };
            if provider.kind == ProviderKind::Scripted {
                return Ok(());
            }
            if provider.effective_base_url().is_empty() {
                missing.push(format!(
                    "route `{name}`: provider `{instance}` has no base_url"
                ));
            } else if !provider.key_available() {
                missing.push(format!(
                    "route `{name}`: provider `{instance}` needs its API key in ${}",
                    provider.api_key_env
                ));
            } else {
                return Ok(());
            }
        }
    }
    if missing.is_empty() {
        return Err("no route is configured".to_owned());
    }
    Err(format!("no usable route: {}", missing.join("; ")))
}

fn refused(err: impl ToString) -> ServeError {
    ServeError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        err.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_to_the_scripted_provider_is_always_usable() {
        usable_route(&Config::default()).unwrap();
    }

    #[test]
    fn routes_to_providers_without_keys_are_not_usable_and_named() {
        let mut config = Config::default();
        let variable = "AGENTMESH_TEST_KEY_THAT_IS_NEVER_SET";
        for provider in config.providers.values_mut() {
            if provider.kind == ProviderKind::Openai {
                provider.api_key_env = variable.to_owned();
            }
        }
        config.routes = [(
            "default".to_owned(),
            RouteConfig::new("openai/gpt-4o-mini", "a real model"),
        )]
        .into();
        let reason = usable_route(&config).unwrap_err();
        assert!(reason.contains("route `default`"), "{reason}");
        assert!(reason.contains(&format!("${variable}")), "{reason}");

        config.providers.get_mut("openai").unwrap().api_key_env = String::new();
        usable_route(&config).unwrap();
    }
}
