//! The `agentmesh.llm.v1.LlmGatewayService` handlers: each call gets its
//! LLM_CALL record ([`crate::audit`]) and is prepared
//! ([`Prepared`]: validated, resolved, within the rate limits), then handed
//! to its path — [`crate::unary`] for `Generate`, [`crate::relay`] for
//! `GenerateStream` — or, for `ListModels`, answered by the [`Gateway`].
//!
//! Every call's usage carries its estimated cost when the model has a price
//! ([`crate::config::Price`]), and every call ends with one LLM_CALL audit
//! event.

use std::sync::Arc;

use agentmesh_audit_client::AuditClient;
use agentmesh_proto::llm::v1::{
    GenerateRequest, GenerateResponse, GenerateStreamRequest, ListModelsRequest,
    ListModelsResponse, llm_gateway_service_server::LlmGatewayService,
};
use agentmesh_resilience::AttemptLoop;
use tonic::{Request, Response, Status};

use crate::allowed::RouteAccess;
use crate::audit::{CallEnd, KeyRegistry, LlmCallRecord};
use crate::call::{Admission, Prepared};
use crate::gateway::Gateway;
use crate::metrics::GatewayMetrics;
use crate::relay::ResponseStream;

/// Method names, as rate-limit events report them.
const GENERATE: &str = "/agentmesh.llm.v1.LlmGatewayService/Generate";
const GENERATE_STREAM: &str = "/agentmesh.llm.v1.LlmGatewayService/GenerateStream";

/// The gRPC service over a [`Gateway`].
#[derive(Debug, Clone)]
pub struct LlmGatewayServiceImpl {
    gateway: Arc<Gateway>,
    audit: AuditClient,
    keys: Arc<KeyRegistry>,
    metrics: Option<Arc<GatewayMetrics>>,
    routes: RouteAccess,
}

impl LlmGatewayServiceImpl {
    /// Serves `gateway`, with auditing off.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self::with_audit(gateway, AuditClient::disabled(crate::SERVICE))
    }

    /// Serves `gateway`, recording every call in `audit`. The provider API
    /// keys set now are registered as secrets at once; keys are read at
    /// each call, and one that changes is registered when first read.
    pub(crate) fn with_audit(gateway: Arc<Gateway>, audit: AuditClient) -> Self {
        let keys = Arc::new(KeyRegistry::default());
        for instance in gateway.providers() {
            keys.register(&audit, &instance.config);
        }
        Self {
            gateway,
            audit,
            keys,
            metrics: None,
            routes: RouteAccess::default(),
        }
    }

    /// Also records every call in `metrics` (the GenAI metrics).
    pub(crate) fn with_metrics(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks every call's route against the caller's allow-list, refusals
    /// recorded through `routes`.
    pub(crate) fn with_access(mut self, routes: RouteAccess) -> Self {
        self.routes = routes;
        self
    }

    /// The call's record, the prepared call and its attempt loop; a call
    /// refused here is recorded as failed.
    async fn admit(
        &self,
        request: GenerateRequest,
        streaming: bool,
        method: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(LlmCallRecord, Prepared, AttemptLoop), Status> {
        let mut record =
            LlmCallRecord::new(&self.audit, &request, streaming).with_metrics(self.metrics.clone());
        match Prepared::new(
            &self.gateway,
            &self.keys,
            &self.audit,
            request,
            &mut record,
            &Admission {
                method,
                peer,
                routes: &self.routes,
            },
        )
        .await
        {
            Ok((prepared, attempt_loop)) => Ok((record, prepared, attempt_loop)),
            Err(status) => {
                record.failed(&status, &CallEnd::default());
                Err(status)
            }
        }
    }
}

impl LlmGatewayServiceImpl {
    /// Admits a prepared call by its payer's budgets, before any provider
    /// is called; a refused call is recorded as failed.
    async fn within_budgets(
        &self,
        record: LlmCallRecord,
        prepared: &mut Prepared,
        method: &str,
    ) -> Result<LlmCallRecord, Status> {
        match self.gateway.budgets().admit(&prepared.payer, method).await {
            Ok(spend) => {
                prepared.spend = spend;
                Ok(record)
            }
            Err(status) => {
                record.failed(&status, &CallEnd::default());
                Err(status)
            }
        }
    }
}

#[tonic::async_trait]
impl LlmGatewayService for LlmGatewayServiceImpl {
    type GenerateStreamStream = ResponseStream;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        // The record is dropped with this future when the caller goes
        // away: then it records the call as abandoned.
        let peer = request.remote_addr();
        let (record, mut prepared, attempt_loop) = self
            .admit(request.into_inner(), false, GENERATE, peer)
            .await?;
        let record = self.within_budgets(record, &mut prepared, GENERATE).await?;
        crate::unary::generate(&self.gateway, record, prepared, attempt_loop)
            .await
            .map(Response::new)
    }

    async fn generate_stream(
        &self,
        request: Request<GenerateStreamRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let peer = request.remote_addr();
        let request = into_generate_request(request.into_inner());
        // The record goes with the stream; dropped before its end is
        // recorded (the caller went away), it records the call as abandoned.
        let (record, mut prepared, attempt_loop) =
            self.admit(request, true, GENERATE_STREAM, peer).await?;
        let record = self
            .within_budgets(record, &mut prepared, GENERATE_STREAM)
            .await?;
        crate::relay::start(Arc::clone(&self.gateway), record, prepared, attempt_loop)
            .await
            .map(Response::new)
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        // Only the routes the caller may call.
        let identity = agentmesh_kit::RequestContext::from_request(&request)
            .and_then(|context| context.identity().cloned());
        self.gateway
            .list_models(request.get_ref(), |route| {
                RouteAccess::allows(identity.as_ref(), route)
            })
            .map(Response::new)
    }
}

/// The two request messages are wire-compatible; handle one shape.
fn into_generate_request(request: GenerateStreamRequest) -> GenerateRequest {
    GenerateRequest {
        model: request.model,
        messages: request.messages,
        tools: request.tools,
        tool_choice: request.tool_choice,
        response_format: request.response_format,
        temperature: request.temperature,
        max_output_tokens: request.max_output_tokens,
        stop: request.stop,
        top_p: request.top_p,
        seed: request.seed,
        parallel_tool_calls: request.parallel_tool_calls,
        run_id: request.run_id,
        agent_role: request.agent_role,
    }
}
