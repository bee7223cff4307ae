//! What the handlers share: the clients of the services the edge fronts,
//! the mapping read from the contract, and the drain's signal.

use std::sync::Arc;

use agentmesh_kit::ServeError;
use agentmesh_kit::client::{Clients, MeshChannel};
use agentmesh_kit::health::Health;
use agentmesh_proto::alerting::v1::alerting_service_client::AlertingServiceClient;
use agentmesh_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use agentmesh_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;
use agentmesh_proto::tools::v1::tool_runner_service_client::ToolRunnerServiceClient;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::bindings::Transcoder;
use crate::protojson::EventRenderer;

/// Clients of the services the edge fronts.
#[derive(Debug, Clone)]
pub(crate) struct Peers {
    pub(crate) orchestrator: OrchestratorServiceClient<MeshChannel>,
    pub(crate) gateway: LlmGatewayServiceClient<MeshChannel>,
    pub(crate) tools: ToolRunnerServiceClient<MeshChannel>,
    pub(crate) alerting: AlertingServiceClient<MeshChannel>,
    /// The channels of the services with REST bindings, for calls made
    /// from descriptors: orchestrator, audit, alerting.
    orchestrator_channel: MeshChannel,
    audit_channel: MeshChannel,
    alerting_channel: MeshChannel,
}

impl Peers {
    /// Lazily-connecting channels to the configured services (the edge
    /// starts before they are up).
    pub(crate) fn connect(clients: &Clients, config: &Config) -> Result<Self, ServeError> {
        let limit = config.server.max_message_bytes;
        let orchestrator_channel = clients.channel(&config.orchestrator_url)?;
        let alerting_channel = clients.channel(&config.alerting_url)?;
        Ok(Self {
            orchestrator: OrchestratorServiceClient::new(orchestrator_channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            gateway: LlmGatewayServiceClient::new(clients.channel(&config.llm_gateway_url)?)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            tools: ToolRunnerServiceClient::new(clients.channel(&config.tool_runner_url)?)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            alerting: AlertingServiceClient::new(alerting_channel.clone()),
            orchestrator_channel,
            audit_channel: clients.channel(&config.audit_url)?,
            alerting_channel,
        })
    }

    /// The channel to the service named `service` (a full gRPC service
    /// name of `crate::bindings::SERVICES`), with its short name for errors.
    pub(crate) fn channel_of(&self, service: &str) -> Option<(&'static str, MeshChannel)> {
        match service {
            crate::bindings::ORCHESTRATOR => {
                Some(("orchestrator", self.orchestrator_channel.clone()))
            }
            crate::bindings::AUDIT => Some(("audit", self.audit_channel.clone())),
            crate::bindings::ALERTING => Some(("alerting", self.alerting_channel.clone())),
            _ => None,
        }
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub(crate) config: Arc<Config>,
    pub(crate) peers: Peers,
    pub(crate) transcoder: Arc<Transcoder>,
    /// Renders run events as JSON.
    pub(crate) renderer: Arc<EventRenderer>,
    /// The OpenAPI document, built once.
    pub(crate) openapi: Arc<serde_json::Value>,
    /// Cancelled when the edge drains: event streams end.
    pub(crate) streams_end: CancellationToken,
    /// The edge's own health (the first entry of `/v1/health`).
    pub(crate) health: Health,
    /// The console's sessions.
    pub(crate) sessions: Arc<crate::sessions::Sessions>,
}
