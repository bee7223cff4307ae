//! The audit service: the append-only, tamper-evident record of what every service did.
//!
//! The service owns the append-only, tamper-evident event log, its queries, exports and reports. [`serve`] binds the gRPC and admin
//! listeners from [`Config`] and hands the service to the kit's
//! [`ServiceHost`], which adds health, reflection, metrics, limits, metadata
//! forwarding and graceful shutdown; `main.rs` only calls it.
//!
//! Every RPC of the contract answers UNIMPLEMENTED with a message saying what
//! is missing until its behaviour is built: a client never gets a fake success.

use std::future::Future;

use agentmesh_kit::status::not_built_yet;
use agentmesh_kit::{Listeners, LogConfig, ServeError, ServerConfig, ServiceHost, StartupError};
use agentmesh_proto::audit::v1::{
    self,
    audit_service_server::{AuditService, AuditServiceServer},
};
use agentmesh_storage::{LazyDatabase, StorageConfig};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "audit";
/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50054;

/// The service's configuration (section `[audit]`, environment
/// `AGENTMESH_AUDIT__*`).
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
    section = "audit",
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
        AuditServiceServer::new(AuditServiceImpl)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    // Subscribe streams run until the client leaves: end them as soon as
    // a shutdown begins so the drain is not held up.
    host.end_on_drain("/agentmesh.audit.v1.AuditService/Subscribe");
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
const NOT_BUILT: &str = "the audit log (storage, hash chain, queries and exports) is not built yet";

/// The `agentmesh.audit.v1.AuditService` handlers.
#[derive(Debug, Clone, Copy)]
struct AuditServiceImpl;

#[tonic::async_trait]
impl AuditService for AuditServiceImpl {
    type SubscribeStream = BoxStream<'static, Result<v1::SubscribeResponse, Status>>;
    type ExportStream = BoxStream<'static, Result<v1::ExportResponse, Status>>;

    async fn record(
        &self,
        _request: Request<v1::RecordRequest>,
    ) -> Result<Response<v1::RecordResponse>, Status> {
        Err(not_built_yet("AuditService/Record", NOT_BUILT))
    }

    async fn query(
        &self,
        _request: Request<v1::QueryRequest>,
    ) -> Result<Response<v1::QueryResponse>, Status> {
        Err(not_built_yet("AuditService/Query", NOT_BUILT))
    }

    async fn subscribe(
        &self,
        _request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(not_built_yet("AuditService/Subscribe", NOT_BUILT))
    }

    async fn export(
        &self,
        _request: Request<v1::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        Err(not_built_yet("AuditService/Export", NOT_BUILT))
    }

    async fn report(
        &self,
        _request: Request<v1::ReportRequest>,
    ) -> Result<Response<v1::ReportResponse>, Status> {
        Err(not_built_yet("AuditService/Report", NOT_BUILT))
    }

    async fn verify_chain(
        &self,
        _request: Request<v1::VerifyChainRequest>,
    ) -> Result<Response<v1::VerifyChainResponse>, Status> {
        Err(not_built_yet("AuditService/VerifyChain", NOT_BUILT))
    }
}
