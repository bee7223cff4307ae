//! The alerting service: rules over the audit stream, alert state, silences, and notifications to receivers.
//!
//! The service owns rules over the audit stream, alert state, silences and receivers. [`serve`] binds the gRPC and admin
//! listeners from [`Config`] and hands the service to the kit's
//! [`ServiceHost`], which adds health, reflection, metrics, limits, metadata
//! forwarding and graceful shutdown; `main.rs` only calls it.
//!
//! Every RPC of the contract answers UNIMPLEMENTED with a message saying what
//! is missing until its behaviour is built: a client never gets a fake success.

use std::future::Future;

use agentmesh_audit_client::without_password;
use agentmesh_kit::status::not_built_yet;
use agentmesh_kit::{Listeners, LogConfig, ServeError, ServerConfig, ServiceHost, StartupError};
use agentmesh_proto::alerting::v1::{
    self,
    alerting_service_server::{AlertingService, AlertingServiceServer},
};
use agentmesh_storage::{LazyDatabase, StorageConfig};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

pub use agentmesh_audit_client::AuditConfig;

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "alerting";
/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50055;

/// The service's configuration (section `[alerting]`, environment
/// `AGENTMESH_ALERTING__*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC and admin servers.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Where the service keeps its database.
    pub storage: StorageConfig,
    /// Where audit events go.
    pub audit: AuditConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            log: LogConfig::default(),
            storage: StorageConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

agentmesh_kit::service_config!(
    Config,
    service = SERVICE,
    section = "alerting",
    validate = |config: &Config| {
        config.storage.validate()?;
        config.audit.validate()
    },
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
    let mut effective = config.clone();
    effective.storage.url = effective.storage.url.as_deref().map(without_password);
    let audit = agentmesh_audit_client::start_service::<Config>(
        &config.audit,
        SERVICE,
        host.metrics().registry(),
        &effective,
    )?;
    let limit = config.server.max_message_bytes;
    host.add_service(
        AlertingServiceServer::new(AlertingServiceImpl)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    // WatchAlerts streams run until the client leaves: end them as soon as
    // a shutdown begins so the drain is not held up.
    host.end_on_drain("/agentmesh.alerting.v1.AlertingService/WatchAlerts");
    let database = LazyDatabase::new(config.storage.clone(), SERVICE);
    let result = host
        .serve(
            listeners,
            || async { database.open().await.map_err(StartupError::from) },
            shutdown,
        )
        .await;
    database.close().await;
    // The drain is over: send what is queued, or spool it.
    audit.shutdown().await;
    result
}

/// What every RPC answers until its behaviour is built.
const NOT_BUILT: &str = "alert rules, alerts, silences and receivers are not built yet";

/// The `agentmesh.alerting.v1.AlertingService` handlers.
#[derive(Debug, Clone, Copy)]
struct AlertingServiceImpl;

#[tonic::async_trait]
impl AlertingService for AlertingServiceImpl {
    type WatchAlertsStream = BoxStream<'static, Result<v1::WatchAlertsResponse, Status>>;

    async fn fire_alert(
        &self,
        _request: Request<v1::FireAlertRequest>,
    ) -> Result<Response<v1::FireAlertResponse>, Status> {
        Err(not_built_yet("AlertingService/FireAlert", NOT_BUILT))
    }

    async fn list_alerts(
        &self,
        _request: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        Err(not_built_yet("AlertingService/ListAlerts", NOT_BUILT))
    }

    async fn watch_alerts(
        &self,
        _request: Request<v1::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        Err(not_built_yet("AlertingService/WatchAlerts", NOT_BUILT))
    }

    async fn create_silence(
        &self,
        _request: Request<v1::CreateSilenceRequest>,
    ) -> Result<Response<v1::CreateSilenceResponse>, Status> {
        Err(not_built_yet("AlertingService/CreateSilence", NOT_BUILT))
    }

    async fn list_silences(
        &self,
        _request: Request<v1::ListSilencesRequest>,
    ) -> Result<Response<v1::ListSilencesResponse>, Status> {
        Err(not_built_yet("AlertingService/ListSilences", NOT_BUILT))
    }

    async fn delete_silence(
        &self,
        _request: Request<v1::DeleteSilenceRequest>,
    ) -> Result<Response<v1::DeleteSilenceResponse>, Status> {
        Err(not_built_yet("AlertingService/DeleteSilence", NOT_BUILT))
    }

    async fn list_rules(
        &self,
        _request: Request<v1::ListRulesRequest>,
    ) -> Result<Response<v1::ListRulesResponse>, Status> {
        Err(not_built_yet("AlertingService/ListRules", NOT_BUILT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_settings_are_checked() {
        let mut config = Config::default();
        config.audit.batch_size = 0;
        let err = agentmesh_kit::config::validate(&config).unwrap_err();
        assert_eq!(err.setting, "alerting.audit.batch_size");
    }
}
