//! The edge: the mesh for clients that do not speak gRPC, and the web
//! console. It holds no state of its own but MCP sessions (a console
//! session is sealed in its cookie); every request becomes calls to the
//! other services through the kit's channels, carrying the caller's
//! `authorization`, request id, trace context and a deadline.
//!
//! # Layout
//!
//! ```text
//! host ──▶ app (routes; Propagation, observe, secure headers and the
//!            │   console's guard on every request)
//!            ├─▶ openai      /v1/chat/completions, /v1/models ──▶ LlmGatewayService
//!            │     ├ request (OpenAI → GenerateRequest), response (→ OpenAI JSON)
//!            │     └ stream  (GenerateStream → chat.completion.chunk SSE)
//!            ├─▶ transcode   every `google.api.http` route of the
//!            │     │         orchestrator, audit and alerting services,
//!            │     │         read from the descriptors
//!            │     ├ template (path templates)
//!            │     └ codec    (calls made from descriptors)
//!            ├─▶ events      run events as SSE (StreamRun, Run)
//!            ├─▶ ws          run events over a WebSocket
//!            ├─▶ mcp         /mcp: the tools and run_agent as an MCP server
//!            │               (rmcp, streamable HTTP)
//!            ├─▶ health      /v1/health: every service's deep health
//!            ├─▶ access      who may reach /mcp and /v1/health
//!            ├─▶ console     the web console at /, and its sign-in
//!            │               (sessions: sealed in the cookie)
//!            └─▶ openapi     /openapi.json from the same bindings
//! state (what the handlers share), caller (the credential each call
//! carries), protojson (proto3 JSON ⇄ messages), error (gRPC status →
//! HTTP, in the REST mapping's and OpenAI's shapes), metrics (HTTP
//! requests), fields (setting keys on JSON objects)
//! ```
//!
//! # Data flow
//!
//! * A request passes the kit's propagation layer (request id, trace
//!   context) and `observe` (its span, `agentmesh_http_server_*`), then
//!   reaches its handler, which builds the gRPC request, puts the caller's
//!   `authorization` on it ([`caller`]) and calls the service. The edge
//!   verifies no credential itself and presents none of its own: the
//!   service the call reaches authenticates and authorizes it exactly as
//!   it does a gRPC call, so an HTTP route can never allow more than the
//!   RPC behind it.
//! * Answers go back as JSON in the proto3 JSON mapping (proto field names,
//!   every field present) or as Server-Sent Events; a gRPC error becomes
//!   the HTTP status of its code with google.rpc.Status as JSON (the
//!   OpenAI routes: OpenAI's error shape), `Retry-After` from RetryInfo.
//! * Health (`/readyz` on the admin port): SERVING while the orchestrator
//!   and the LLM gateway answer theirs (the tool runner is reported).
//!   Shutdown: NOT_SERVING, `drain_delay` still accepting, then event
//!   streams end (clients resume from their last event id elsewhere) and
//!   the calls left get the rest of the grace period.
//!
//! [`serve`] is the whole service; `main.rs` only calls it.

mod access;
mod app;
mod bindings;
mod caller;
mod config;
mod console;
mod error;
mod events;
mod fields;
mod health;
mod host;
mod mcp;
mod metrics;
mod openai;
mod openapi;
mod protojson;
mod sessions;
mod state;
mod transcode;
mod transcode_codec;
mod ws;

use std::future::Future;

use agentmesh_kit::{Listeners, ServeError};

pub use config::{Config, ConsoleConfig, DEFAULT_PORT, McpConfig};

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "edge";

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
    host::serve(config, listeners, shutdown).await
}
