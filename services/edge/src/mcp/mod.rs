//! The mesh as an MCP server (protocol 2025-06-18, streamable HTTP at
//! `/mcp`, served by the official Rust SDK `rmcp`): the tool runner's tools
//! — each listed with its JSON Schema and called through `ExecuteToolStream`,
//! so validation, timeouts, bulkheads, circuits, audit and metrics apply as
//! to any caller — and one more, `run_agent`, which runs an agent on an
//! objective and answers with the run's output, sending the run's progress
//! as MCP progress notifications (`handler`, `run_agent`).
//!
//! Identity is the caller's, as everywhere on the edge: every MCP HTTP
//! request's `authorization` goes with the calls its messages cause. A
//! request whose credential the mesh refuses is answered 401 / 403 before
//! the MCP layer sees it (`crate::access`: the tool runner's answer to a one-item
//! `ListTools`, remembered a few seconds per credential), so a client that
//! may not use the tools cannot open a session either.
//!
//! Sessions (`mcp-session-id`) live in this edge replica's memory and close
//! after `edge.mcp.session_idle_timeout`: behind several replicas, MCP
//! clients need session affinity on that header, or `edge.mcp.stateless`
//! (every request answered on its own; no notifications between requests).

mod handler;
mod run_agent;

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::state::Edge;

/// The `/mcp` service: rmcp's streamable HTTP transport over
/// [`handler::MeshTools`], ending its sessions when the edge drains.
pub(crate) fn service(
    edge: &Edge,
) -> StreamableHttpService<handler::MeshTools, LocalSessionManager> {
    let settings = &edge.config.mcp;
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(settings.session_idle_timeout);
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(!settings.stateless)
        .with_cancellation_token(edge.streams_end.child_token())
        .with_max_request_body_bytes(edge.config.server.max_message_bytes)
        .with_sse_keep_alive(Some(edge.config.stream_heartbeat));
    // DNS rebinding guard: a loopback edge answers loopback names only;
    // one serving the network answers any Host (credentials guard it) unless
    // `edge.mcp.allowed_hosts` names them.
    config = if !settings.allowed_hosts.is_empty() {
        config.with_allowed_hosts(settings.allowed_hosts.clone())
    } else if edge.config.server.host.is_loopback() {
        config.with_allowed_hosts(["localhost", "127.0.0.1", "::1"])
    } else {
        config.disable_allowed_hosts()
    };
    let tools = handler::MeshTools::new(edge.clone());
    StreamableHttpService::new(move || Ok(tools.clone()), Arc::new(sessions), config)
}
