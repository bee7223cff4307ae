//! The orchestrator service: runs agents by looping over the LLM gateway and the tool runner, and streams their progress to clients.
//!
//! The service owns runs, their events and checkpoints, agent profiles and sessions. [`serve`] binds the gRPC and admin
//! listeners from [`Config`] and hands the service to the kit's
//! [`ServiceHost`], which adds health, reflection, metrics, limits, metadata
//! forwarding and graceful shutdown; `main.rs` only calls it.
//!
//! Every RPC of the contract answers UNIMPLEMENTED with a message saying what
//! is missing until its behaviour is built: a client never gets a fake success.

use std::future::Future;

use agentmesh_kit::status::not_built_yet;
use agentmesh_kit::{Listeners, LogConfig, ServeError, ServerConfig, ServiceHost, StartupError};
use agentmesh_proto::orchestrator::v1::{
    self,
    orchestrator_service_server::{OrchestratorService, OrchestratorServiceServer},
};
use agentmesh_storage::{LazyDatabase, StorageConfig};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "orchestrator";
/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50051;

/// The service's configuration (section `[orchestrator]`, environment
/// `AGENTMESH_ORCHESTRATOR__*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC and admin servers.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Where the service keeps its database.
    pub storage: StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            log: LogConfig::default(),
            storage: StorageConfig::default(),
        }
    }
}

agentmesh_kit::service_config!(
    Config,
    service = SERVICE,
    section = "orchestrator",
    validate = |config: &Config| config.storage.validate(),
);

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
        OrchestratorServiceServer::new(OrchestratorServiceImpl)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    let database = LazyDatabase::new(config.storage.clone(), SERVICE);
    let result = host
        .serve(
            listeners,
            || async { database.open().await.map_err(StartupError::from) },
            shutdown,
        )
        .await;
    database.close().await;
    result
}

/// What every RPC answers until its behaviour is built.
const NOT_BUILT: &str = "running agents (the loop over the LLM gateway and the tool runner, with runs, events and checkpoints) is not built yet";

/// The `agentmesh.orchestrator.v1.OrchestratorService` handlers.
#[derive(Debug, Clone, Copy)]
struct OrchestratorServiceImpl;

#[tonic::async_trait]
impl OrchestratorService for OrchestratorServiceImpl {
    type StreamRunStream = BoxStream<'static, Result<v1::StreamRunResponse, Status>>;
    type RunStream = BoxStream<'static, Result<v1::RunResponse, Status>>;

    async fn start_run(
        &self,
        _request: Request<v1::StartRunRequest>,
    ) -> Result<Response<v1::StartRunResponse>, Status> {
        Err(not_built_yet("OrchestratorService/StartRun", NOT_BUILT))
    }

    async fn stream_run(
        &self,
        _request: Request<v1::StreamRunRequest>,
    ) -> Result<Response<Self::StreamRunStream>, Status> {
        Err(not_built_yet("OrchestratorService/StreamRun", NOT_BUILT))
    }

    async fn run(
        &self,
        _request: Request<v1::RunRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        Err(not_built_yet("OrchestratorService/Run", NOT_BUILT))
    }

    async fn get_run(
        &self,
        _request: Request<v1::GetRunRequest>,
    ) -> Result<Response<v1::GetRunResponse>, Status> {
        Err(not_built_yet("OrchestratorService/GetRun", NOT_BUILT))
    }

    async fn list_runs(
        &self,
        _request: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        Err(not_built_yet("OrchestratorService/ListRuns", NOT_BUILT))
    }

    async fn cancel_run(
        &self,
        _request: Request<v1::CancelRunRequest>,
    ) -> Result<Response<v1::CancelRunResponse>, Status> {
        Err(not_built_yet("OrchestratorService/CancelRun", NOT_BUILT))
    }

    async fn list_agents(
        &self,
        _request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        Err(not_built_yet("OrchestratorService/ListAgents", NOT_BUILT))
    }

    async fn get_agent(
        &self,
        _request: Request<v1::GetAgentRequest>,
    ) -> Result<Response<v1::GetAgentResponse>, Status> {
        Err(not_built_yet("OrchestratorService/GetAgent", NOT_BUILT))
    }
}
