//! The tool runner service: a registry of tools that agents may call, and their validated, sandboxed execution.
//!
//! The service owns the tool registry (built-in, command and MCP tools), argument validation and sandboxing. [`serve`] binds the gRPC and admin
//! listeners from [`Config`] and hands the service to the kit's
//! [`ServiceHost`], which adds health, reflection, metrics, limits, metadata
//! forwarding and graceful shutdown; `main.rs` only calls it.
//!
//! Every RPC of the contract answers UNIMPLEMENTED with a message saying what
//! is missing until its behaviour is built: a client never gets a fake success.

use std::future::Future;

use agentmesh_kit::status::not_built_yet;
use agentmesh_kit::{Listeners, LogConfig, ServeError, ServerConfig, ServiceHost, StartupError};
use agentmesh_proto::tools::v1::{
    self,
    tool_runner_service_server::{ToolRunnerService, ToolRunnerServiceServer},
};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "tool-runner";
/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50053;

/// The service's configuration (section `[tool_runner]`, environment
/// `AGENTMESH_TOOL_RUNNER__*`).
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

agentmesh_kit::service_config!(Config, service = SERVICE, section = "tool_runner");

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
        ToolRunnerServiceServer::new(ToolRunnerServiceImpl)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    host.serve(listeners, || async { Ok::<(), StartupError>(()) }, shutdown)
        .await
}

/// What every RPC answers until its behaviour is built.
const NOT_BUILT: &str = "the tool registry and tool execution are not built yet";

/// The `agentmesh.tools.v1.ToolRunnerService` handlers.
#[derive(Debug, Clone, Copy)]
struct ToolRunnerServiceImpl;

#[tonic::async_trait]
impl ToolRunnerService for ToolRunnerServiceImpl {
    type ExecuteToolStreamStream =
        BoxStream<'static, Result<v1::ExecuteToolStreamResponse, Status>>;

    async fn list_tools(
        &self,
        _request: Request<v1::ListToolsRequest>,
    ) -> Result<Response<v1::ListToolsResponse>, Status> {
        Err(not_built_yet("ToolRunnerService/ListTools", NOT_BUILT))
    }

    async fn execute_tool(
        &self,
        _request: Request<v1::ExecuteToolRequest>,
    ) -> Result<Response<v1::ExecuteToolResponse>, Status> {
        Err(not_built_yet("ToolRunnerService/ExecuteTool", NOT_BUILT))
    }

    async fn execute_tool_stream(
        &self,
        _request: Request<v1::ExecuteToolStreamRequest>,
    ) -> Result<Response<Self::ExecuteToolStreamStream>, Status> {
        Err(not_built_yet(
            "ToolRunnerService/ExecuteToolStream",
            NOT_BUILT,
        ))
    }
}
