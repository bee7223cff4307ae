//! MCP servers as tool sources (`[tool_runner.mcp_servers.NAME]`): their
//! tools are listed and run like any other tool, under a prefix
//! (`NAME_` by default), through the official Rust SDK (`rmcp`), as a client
//! of a child process over stdio or of a streamable HTTP endpoint.
//!
//! ```text
//!  start ─▶ one supervisor task per server (session)
//!            connect (spawn the child / reach the URL) ─▶ initialize ─▶ tools/list
//!              │ ok: the tools (after `include` / `exclude`) go to the registry,
//!              │     which makes them its tools of this server (prefixed, schemas
//!              │     compiled, each with its bulkhead and circuit);
//!              │     `notifications/tools/list_changed` lists them again
//!              │ the connection closes, a ping or a call finds it broken, or an
//!              ▼ attempt fails: the server is down (its tools answer UNAVAILABLE)
//!            wait initial_backoff, doubling up to max_backoff (reset once it
//!            stayed up a while), then start / reach it again
//!
//!  ExecuteTool ─▶ the runner's path (allow-list, schema, timeout, bulkhead,
//!                 circuit, audit, metrics) ─▶ call: tools/call with a
//!                 progress token; `notifications/progress` ─▶ ToolProgress
//! ```
//!
//! Tool names are identifiers (`[A-Za-z0-9_-]`, at most 64 bytes), as the
//! gateway and model providers require of the tools offered to a model:
//! the prefix must be one, and a server's tool whose prefixed name is not
//! is left out (logged), rather than listed and then refused by every
//! model call of an agent allowed all tools.
//!
//! The service serves while its servers start: a server that is down never
//! stops it. Its tools stay listed with what it last said (so a model's
//! tool list does not flap), and a call of one is refused with UNAVAILABLE
//! naming the server, why it is down and when it is tried again; a server
//! that was never up has no tools yet, and a call of a name under its
//! prefix is refused the same way. A call that finds the connection gone
//! fails (EXECUTION_FAILED, counted against the tool's circuit) and has
//! the supervisor reconnect at once.
//!
//! Each server is an optional health component `mcp:NAME`: failing, with
//! the reason, while it is down. Readiness does not depend on it.
//!
//! This module knows servers and connections, not the registry: the
//! registry keeps each server's tools (`registry::mcp`), and is handed each
//! list through the supervisor's [`Listed`] callback.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentmesh_kit::ConfigError;
use agentmesh_kit::health::DependencyCheck;
use rmcp::RoleClient;
use rmcp::handler::client::progress::ProgressDispatcher;
use rmcp::service::Peer;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod call;
pub(crate) mod config;
mod session;

pub(crate) use call::call;
use config::Transport;
pub use config::{HeaderSource, McpServerConfig};

/// A duration as people read it (`1s`, `2m 30s`).
fn human(duration: Duration) -> String {
    humantime_serde::re::humantime::format_duration(duration).to_string()
}

/// One configured MCP server: how to reach it, and whether it is up.
#[derive(Debug)]
pub(crate) struct McpServer {
    pub(crate) name: String,
    /// Put before the server's tool names.
    pub(crate) prefix: String,
    config: McpServerConfig,
    transport: Transport,
    /// The largest tool output accepted (`max_output_bytes`).
    max_output_bytes: usize,
    status: Mutex<Status>,
    /// Routes `notifications/progress` to the call that asked for it.
    progress: ProgressDispatcher,
    /// A call found the connection broken.
    broken: Notify,
}

/// Whether the server is up.
#[derive(Debug, Default)]
struct Status {
    /// The live connection, while up.
    peer: Option<Peer<RoleClient>>,
    /// Why it is down (empty before the first attempt ended).
    reason: String,
    /// When it is started or reached again.
    next_attempt: Option<Instant>,
}

impl McpServer {
    /// A server from its settings (`setting` = `mcp_servers.NAME`),
    /// checked; nothing is started.
    pub(crate) fn new(
        name: &str,
        config: &McpServerConfig,
        max_output_bytes: usize,
        setting: &str,
    ) -> Result<Self, ConfigError> {
        let transport = config.transport(setting)?;
        let prefix = config.prefix_of(name);
        config::check_prefix(&prefix, &format!("{setting}.prefix"))?;
        Ok(Self {
            name: name.to_owned(),
            prefix,
            config: config.clone(),
            transport,
            max_output_bytes,
            status: Mutex::new(Status {
                reason: "not connected yet".to_owned(),
                ..Status::default()
            }),
            progress: ProgressDispatcher::new(),
            broken: Notify::new(),
        })
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live connection, `None` while down.
    pub(crate) fn peer(&self) -> Option<Peer<RoleClient>> {
        self.status().peer.clone()
    }

    fn set_up(&self, peer: Peer<RoleClient>) {
        let mut status = self.status();
        status.peer = Some(peer);
        status.reason.clear();
        status.next_attempt = None;
    }

    /// An attempt to start or reach it begins.
    fn set_connecting(&self) {
        let mut status = self.status();
        status.next_attempt = None;
        if status.reason.is_empty() {
            "connecting".clone_into(&mut status.reason);
        }
    }

    fn set_down(&self, reason: String, next_attempt: Option<Instant>) {
        let mut status = self.status();
        status.peer = None;
        status.reason = reason;
        status.next_attempt = next_attempt;
    }

    /// A call found the connection broken: the supervisor reconnects.
    pub(crate) fn report_broken(&self) {
        self.broken.notify_one();
    }

    /// Why the server is down and how soon it is tried again (`None`:
    /// an attempt is under way); `None` while up.
    pub(crate) fn down(&self) -> Option<(String, Option<Duration>)> {
        let status = self.status();
        if status.peer.is_some() {
            return None;
        }
        let retry_in = status
            .next_attempt
            .map(|at| at.saturating_duration_since(Instant::now()));
        Some((status.reason.clone(), retry_in))
    }

    /// What is done to bring it up: "started" (a child process) or
    /// "reached" (an HTTP server).
    pub(crate) fn comes_back(&self) -> &'static str {
        match &self.transport {
            Transport::Stdio { .. } => "started",
            Transport::Http { .. } => "reached",
        }
    }

    /// Its tools to take, by the server's names (`include`, `exclude`).
    fn wanted(&self, remote: &str) -> bool {
        (self.config.include.is_empty() || self.config.include.iter().any(|name| name == remote))
            && !self.config.exclude.iter().any(|name| name == remote)
    }

    /// The optional health component `mcp:NAME`.
    pub(crate) fn health_check(self: &Arc<Self>) -> DependencyCheck {
        let server = Arc::clone(self);
        DependencyCheck::optional(format!("mcp:{}", self.name), move || {
            let result = match server.down() {
                None => Ok(()),
                Some((reason, Some(retry_in))) => Err(format!(
                    "MCP server `{}` is down: {reason}; next attempt in {}",
                    server.name,
                    human(Duration::from_secs(retry_in.as_secs()))
                )),
                Some((reason, None)) => {
                    Err(format!("MCP server `{}` is not up: {reason}", server.name))
                }
            };
            async move { result }
        })
    }
}

/// Handed each tool list of a server (the tools it wants, see `include`
/// and `exclude`); answers how many tools it took.
pub(crate) type Listed = Arc<dyn Fn(Vec<rmcp::model::Tool>) -> usize + Send + Sync>;

/// The running supervisors; stopped (their servers stopped or
/// disconnected) by [`Supervisors::stop`].
#[derive(Debug)]
pub(crate) struct Supervisors {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Supervisors {
    /// Starts a supervisor for each server, handing its lists to its
    /// `Listed`: the service does not wait for any of them.
    pub(crate) fn start(servers: Vec<(Arc<McpServer>, Listed)>) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for (server, listed) in servers {
            tasks.spawn(session::supervise(server, listed, stop.clone()));
        }
        Self { stop, tasks }
    }

    /// Stops every supervisor, and with it its server (a child process is
    /// killed, an HTTP session dropped).
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
