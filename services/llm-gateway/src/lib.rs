//! The LLM gateway service: one API over model providers, with routes, streaming, and token and cost accounting.
//!
//! The service owns providers, model routes, retries and fallbacks, token and cost accounting. [`serve`] binds the gRPC and admin
//! listeners from [`Config`] and hands the service to the kit's
//! [`ServiceHost`], which adds health, reflection, metrics, limits, metadata
//! forwarding and graceful shutdown; `main.rs` only calls it.
//!
//! Every RPC of the contract answers UNIMPLEMENTED with a message saying what
//! is missing until its behaviour is built: a client never gets a fake success.

use std::future::Future;

use agentmesh_kit::status::not_built_yet;
use agentmesh_kit::{Listeners, LogConfig, ServeError, ServerConfig, ServiceHost, StartupError};
use agentmesh_proto::llm::v1::{
    self,
    llm_gateway_service_server::{LlmGatewayService, LlmGatewayServiceServer},
};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "llm-gateway";
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            log: LogConfig::default(),
        }
    }
}

agentmesh_kit::service_config!(Config, service = SERVICE, section = "llm_gateway");

/// Serves on the configured ports until `shutdown` resolves, then drains.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let listeners = Listeners::bind(&config.server).await?;
    serve_with_listeners(config, listeners, shutdown).await
}

/// Serves on listeners bound by the caller (tests bind port 0).
pub async fn serve_with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut host = ServiceHost::new(SERVICE, &config.server);
    let limit = config.server.max_message_bytes;
    host.add_service(
        LlmGatewayServiceServer::new(LlmGatewayServiceImpl)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    host.serve(listeners, || async { Ok::<(), StartupError>(()) }, shutdown)
        .await
}

/// What every RPC answers until its behaviour is built.
const NOT_BUILT: &str = "model providers and routes are not built yet";

/// The `agentmesh.llm.v1.LlmGatewayService` handlers.
#[derive(Debug, Clone, Copy)]
struct LlmGatewayServiceImpl;

#[tonic::async_trait]
impl LlmGatewayService for LlmGatewayServiceImpl {
    type GenerateStreamStream = BoxStream<'static, Result<v1::GenerateStreamResponse, Status>>;

    async fn generate(
        &self,
        _request: Request<v1::GenerateRequest>,
    ) -> Result<Response<v1::GenerateResponse>, Status> {
        Err(not_built_yet("LlmGatewayService/Generate", NOT_BUILT))
    }

    async fn generate_stream(
        &self,
        _request: Request<v1::GenerateStreamRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        Err(not_built_yet("LlmGatewayService/GenerateStream", NOT_BUILT))
    }

    async fn list_models(
        &self,
        _request: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        Err(not_built_yet("LlmGatewayService/ListModels", NOT_BUILT))
    }
}
