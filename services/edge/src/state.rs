//! What the handlers share: the clients of the services the edge fronts,
//! the mapping read from the contract, and the drain's signal.

use std::sync::Arc;

use agentmesh_kit::ServeError;
use agentmesh_kit::client::{Clients, MeshChannel};
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
    /// The orchestrator's channel, for calls made from descriptors.
    pub(crate) orchestrator_channel: MeshChannel,
}

impl Peers {
    /// Lazily-connecting channels to the configured services (the edge
    /// starts before they are up).
    pub(crate) fn connect(clients: &Clients, config: &Config) -> Result<Self, ServeError> {
        let limit = config.server.max_message_bytes;
        let orchestrator_channel = clients.channel(&config.orchestrator_url)?;
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
            orchestrator_channel,
        })
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
}
