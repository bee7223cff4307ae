//! The edge's routes and what every request passes on its way to them.
//!
//! ```text
//! request ─▶ Propagation (request id, trace context, deadline: the kit's)
//!         ─▶ observe (a span per request; agentmesh_http_server_* metrics)
//!         ─▶ secure_headers (CSP & co. on every answer)
//!         ─▶ guard (DNS rebinding, cross-origin changes, console session)
//!         ─▶ /v1/chat/completions, /v1/models      openai
//!            /v1/runs/{run_id}/events (SSE)       events
//!            /v1/runs/{run_id}/ws (WebSocket)     ws
//!            /openapi.json                        openapi
//!            /v1/health (the mesh's deep health)  health, behind access
//!            /mcp (MCP, streamable HTTP)           mcp, behind access
//!            /, /runs…, /console/…                console
//!            every other `google.api.http` route  transcode (fallback)
//! ```

use std::sync::Arc;
use std::time::Instant;

use agentmesh_kit::ServeError;
use agentmesh_kit::health::Health;
use agentmesh_kit::propagation::PropagationLayer;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::bindings::Transcoder;
use crate::metrics::HttpMetrics;
use crate::protojson::EventRenderer;
use crate::state::{Edge, Peers};

/// What the handlers share: the mapping read from the contract, the
/// console's session key, the peers.
fn shared(
    config: &Config,
    peers: Peers,
    health: Health,
    streams_end: CancellationToken,
) -> Result<Edge, ServeError> {
    let contract = |err: String| {
        ServeError::Io(std::io::Error::other(format!(
            "the HTTP mapping of the contract cannot be read: {err}"
        )))
    };
    let pool = prost_reflect::DescriptorPool::decode(agentmesh_proto::FILE_DESCRIPTOR_SET)
        .map_err(|err| contract(err.to_string()))?;
    let transcoder = Transcoder::of_services(&pool).map_err(contract)?;
    let renderer = EventRenderer::new(&pool).map_err(contract)?;
    Ok(Edge {
        config: Arc::new(config.clone()),
        peers,
        openapi: Arc::new(crate::openapi::build(&transcoder)),
        transcoder: Arc::new(transcoder),
        renderer: Arc::new(renderer),
        streams_end,
        health,
        sessions: Arc::new(
            crate::sessions::Sessions::from_key_file(
                config.console.session_ttl,
                &config.console.session_key_file,
            )
            .map_err(|err| {
                ServeError::Setting(agentmesh_kit::ConfigError::new(
                    "edge.console.session_key_file",
                    err,
                ))
            })?,
        ),
    })
}

/// The edge's routes, with the layers every request passes.
pub(crate) fn router(
    config: &Config,
    peers: Peers,
    registry: &prometheus::Registry,
    health: Health,
    streams_end: CancellationToken,
) -> Result<Router, ServeError> {
    let edge = shared(config, peers, health, streams_end)?;
    let gated = |probe| {
        axum::middleware::from_fn_with_state(
            crate::access::Gate::new(&edge, probe),
            crate::access::verify,
        )
    };
    let metrics = HttpMetrics::register(registry)?;
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(crate::openai::chat_completions),
        )
        .route("/v1/models", get(crate::openai::list_models))
        .route("/v1/models/{model}", get(crate::openai::retrieve_model))
        .route("/v1/runs/{run_id}/events", get(crate::events::run_events))
        .route("/v1/runs/{run_id}/ws", get(crate::ws::run_socket))
        .route("/openapi.json", get(crate::openapi::document))
        .route(
            "/v1/health",
            get(crate::health::mesh_health).layer(gated(crate::access::Probe::ListRules)),
        )
        .fallback(crate::transcode::handle);
    let router = if config.console.enabled {
        router.merge(crate::console::routes())
    } else {
        router
    };
    let router = if config.mcp.enabled {
        router.route_service(
            "/mcp",
            tower::ServiceBuilder::new()
                .layer(gated(crate::access::Probe::ListTools))
                .service(crate::mcp::service(&edge)),
        )
    } else {
        router
    };
    let router = router
        .with_state(edge.clone())
        .layer(axum::middleware::from_fn_with_state(
            edge,
            crate::console::guard,
        ))
        .layer(axum::middleware::from_fn(crate::console::secure_headers))
        .layer(axum::extract::DefaultBodyLimit::max(
            config.server.max_message_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(metrics, observe))
        .layer(PropagationLayer);
    Ok(router)
}

/// A span around each request (its parent the caller's trace context, so
/// the calls the request makes join the caller's trace), and the request
/// counted and timed by route.
async fn observe(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let context = request
        .extensions()
        .get::<agentmesh_kit::RequestContext>()
        .cloned();
    let request_id = context
        .as_ref()
        .and_then(agentmesh_kit::RequestContext::request_id)
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!(
        target: "agentmesh::http",
        "http.server",
        otel.name = %format_args!("{method} {}", matched.as_deref().unwrap_or("/v1")),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if agentmesh_kit::telemetry::enabled() {
        agentmesh_kit::telemetry::extract_within(
            &span,
            request.headers(),
            &agentmesh_kit::telemetry::service_context(crate::SERVICE),
        );
        agentmesh_kit::telemetry::record_ids(&span);
    }
    let started = Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    // Routes read from the contract are matched by the fallback, which
    // names its template on the response.
    let route = matched
        .or_else(|| {
            response
                .extensions()
                .get::<crate::transcode::RouteLabel>()
                .map(|label| label.0.clone())
        })
        .unwrap_or_else(|| "unmatched".to_owned());
    span.record("http.route", route.as_str());
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    metrics.observe(&method, &route, status, started.elapsed());
    response
}
