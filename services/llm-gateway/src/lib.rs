//! The LLM gateway service: one provider-neutral chat API
//! (`agentmesh.llm.v1.LlmGatewayService`) in front of model providers —
//! OpenAI and compatible servers, Anthropic, and a scripted stand-in for
//! tests and the offline demo.
//!
//! # Data flow
//!
//! ```text
//! Generate / GenerateStream
//!   └─ validate ─ resolve model (route name, or provider/model)
//!        └─ Provider (openai | anthropic | scripted)
//!             request  → provider wire JSON  → POST (pooled HTTP client)
//!             response ← SSE events / JSON  ← ProviderEvent / Completion
//!        └─ relay deltas as they arrive ─ `finished` with the assembled
//!           message, finish reason and usage (estimated when not reported)
//! ```
//!
//! # Layout
//!
//! * [`config`]: [`Config`] — provider instances (kind, base URL, key
//!   variable, timeouts), routes and prices, checked at start.
//! * [`service`]: the gRPC handlers, model resolution, ListModels, and the
//!   stream relay (a stream that breaks after output ends with `finished`
//!   FINISH_REASON_ERROR, then the error status).
//! * [`validate`]: request checks, INVALID_ARGUMENT with field violations.
//! * [`providers`]: the [`providers::Provider`] trait and one module per wire
//!   protocol; [`providers::http`] holds the shared HTTP client, timeouts and
//!   SSE decoding.
//! * [`completion`]: provider events, their assembly, usage estimates.
//! * [`error`]: provider failures and the gRPC status each becomes.
//! * [`audit`]: the LLM_CALL audit event of every call, and provider keys
//!   registered as secrets to redact.
//!
//! [`serve`] binds the listeners from [`Config`]; [`serve_with_listeners`]
//! takes bound ones (tests bind port 0). Both hand the service to the kit's
//! [`ServiceHost`] (health, reflection, metrics, limits, metadata forwarding,
//! graceful shutdown); `main.rs` only calls [`serve`].
//!
//! Not yet here: retries, fallbacks, circuit breakers, rate limits and the
//! gateway's own metrics (`attempts` is always 1).

pub mod audit;
pub mod completion;
pub mod config;
pub mod error;
pub mod providers;
pub mod service;
pub mod validate;

use std::future::Future;
use std::sync::Arc;

use agentmesh_kit::{Listeners, ServeError, ServiceHost, StartupError};
use agentmesh_proto::llm::v1::llm_gateway_service_server::LlmGatewayServiceServer;

pub use agentmesh_audit_client::AuditConfig;
pub use config::{Config, DEFAULT_PORT, Price, ProviderConfig, ProviderKind, RouteConfig};
pub use service::{Gateway, LlmGatewayServiceImpl};

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
    let gateway = Gateway::from_config(&config).map_err(|err| {
        refused(format!(
            "invalid setting `llm_gateway.{}`: {}",
            err.setting, err.message
        ))
    })?;
    let mut host = ServiceHost::new(SERVICE, &config.server);
    // The configuration names the environment variables holding the API
    // keys, never the keys: it is recorded as it is.
    let audit = agentmesh_audit_client::start_service::<Config>(
        &config.audit,
        SERVICE,
        host.metrics().registry(),
        &config,
    )?;
    let limit = config.server.max_message_bytes;
    host.add_service(
        LlmGatewayServiceServer::new(LlmGatewayServiceImpl::with_audit(
            Arc::new(gateway),
            audit.clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
    );
    let result = host
        .serve(listeners, || async { Ok::<(), StartupError>(()) }, shutdown)
        .await;
    // The drain is over: send what is queued, or spool it.
    audit.shutdown().await;
    result
}

fn refused(err: impl ToString) -> ServeError {
    ServeError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        err.to_string(),
    ))
}
