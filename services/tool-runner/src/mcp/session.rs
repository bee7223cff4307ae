//! One server's supervisor: connects (starts the child process or reaches
//! the URL), performs the MCP handshake, lists the tools, then watches the
//! connection — list changes, pings, calls that found it broken — and
//! starts over with exponential backoff when it ends.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_kit::text::truncate_bytes;
use process_wrap::tokio::{CommandWrap, KillOnDrop, ProcessGroup};
use rmcp::handler::client::progress::ProgressDispatcher;
use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientRequest, Implementation, PingRequest,
    ProgressNotificationParam,
};
use rmcp::service::{NotificationContext, Peer, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt as _};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::ChildStderr;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::Transport;
use super::{Listed, McpServer, human};

/// A connection that stayed up this long was healthy: the next failure
/// waits `initial_backoff` again.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How often a connection is checked with `ping`.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// The longest stderr line of a child logged.
const MAX_STDERR_LINE: usize = 2048;

/// The client side of one connection: progress goes to the waiting call,
/// a list change to the supervisor.
#[derive(Debug, Clone)]
struct Handler {
    progress: ProgressDispatcher,
    list_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.handle_notification(params).await;
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("agentmesh-tool-runner", env!("CARGO_PKG_VERSION")),
        )
    }
}

type Running = RunningService<RoleClient, Handler>;

/// Keeps `server` connected until `stop`: each attempt, then the wait.
pub(super) async fn supervise(server: Arc<McpServer>, listed: Listed, stop: CancellationToken) {
    let list_changed = Arc::new(Notify::new());
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        server.set_connecting();
        let reason = tokio::select! {
            () = stop.cancelled() => return,
            reason = connected(&server, &listed, &list_changed) => reason,
        };
        if started.elapsed() >= STABLE_AFTER {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let delay = backoff(&server, failures);
        server.set_down(reason.clone(), Some(Instant::now() + delay));
        tracing::warn!(
            server = %server.name,
            reason = %reason,
            retry_in = %human(delay),
            failures,
            "MCP server down; its tools are unavailable until it is back"
        );
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// `initial_backoff` doubled for each failure in a row after the first, up
/// to `max_backoff`.
fn backoff(server: &McpServer, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    server
        .config
        .initial_backoff
        .saturating_mul(1_u32 << doublings)
        .min(server.config.max_backoff)
}

/// One connection, from the attempt to its end; the answer is why it ended.
async fn connected(server: &Arc<McpServer>, listed: &Listed, list_changed: &Arc<Notify>) -> String {
    let limit = server.config.connect_timeout;
    let running = match tokio::time::timeout(limit, connect(server, list_changed)).await {
        Ok(Ok(running)) => running,
        Ok(Err(reason)) => return reason,
        Err(_) => {
            return format!("no MCP handshake within connect_timeout ({})", human(limit));
        }
    };
    let peer = running.peer().clone();
    let tools = match tokio::time::timeout(limit, list(server, &peer, listed)).await {
        Ok(Ok(tools)) => tools,
        Ok(Err(reason)) => return reason,
        Err(_) => {
            return format!(
                "tools/list not answered within connect_timeout ({})",
                human(limit)
            );
        }
    };
    server.set_up(peer.clone());
    // A call may have found the last connection broken after it ended: that
    // report is not about this one.
    let _ = futures::FutureExt::now_or_never(server.broken.notified());
    tracing::info!(server = %server.name, tools, "MCP server connected");
    watch(server, running, &peer, listed, list_changed).await
}

/// Watches a live connection until it ends: list changes, pings and calls
/// that found it broken.
async fn watch(
    server: &Arc<McpServer>,
    running: Running,
    peer: &Peer<RoleClient>,
    listed: &Listed,
    list_changed: &Arc<Notify>,
) -> String {
    let closed = running.waiting();
    tokio::pin!(closed);
    let mut pings =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tokio::select! {
            quit = &mut closed => {
                return match quit {
                    Ok(reason) => format!("the connection closed ({reason:?}); the server exited or dropped it"),
                    Err(err) => format!("the connection's task failed: {err}"),
                };
            }
            () = list_changed.notified() => {
                match list(server, peer, listed).await {
                    Ok(tools) => tracing::info!(server = %server.name, tools, "MCP server's tools listed again (list_changed)"),
                    Err(reason) => return reason,
                }
            }
            () = server.broken.notified() => {
                return "a call could not reach it".to_owned();
            }
            _ = pings.tick() => {
                let ping = ClientRequest::PingRequest(PingRequest::default());
                match tokio::time::timeout(server.config.connect_timeout, peer.send_request(ping)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return format!("ping failed: {err}"),
                    Err(_) => return "ping not answered within connect_timeout".to_owned(),
                }
            }
        }
    }
}

/// Starts or reaches the server and performs the handshake.
async fn connect(server: &McpServer, list_changed: &Arc<Notify>) -> Result<Running, String> {
    let handler = Handler {
        progress: server.progress.clone(),
        list_changed: Arc::clone(list_changed),
    };
    match &server.transport {
        Transport::Stdio {
            program,
            args,
            env,
            cwd,
        } => {
            let mut command = tokio::process::Command::new(program);
            command.args(args).env_clear().envs(env.iter().cloned());
            if let Some(cwd) = cwd {
                command.current_dir(cwd);
            }
            let mut command = CommandWrap::from(command);
            // Its own process group, killed whole when the server is
            // dropped: a launcher's (`npx`'s) children go with it.
            command.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
            let (transport, stderr) = TokioChildProcess::builder(command)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|err| format!("cannot start `{program}`: {err}"))?;
            if let Some(stderr) = stderr {
                tokio::spawn(log_stderr(server.name.clone(), stderr));
            }
            handler
                .serve(transport)
                .await
                .map_err(|err| format!("MCP handshake failed: {err}"))
        }
        Transport::Http { url, headers } => {
            let client = http_client()?;
            let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .custom_headers(headers.iter().cloned().collect());
            let transport = StreamableHttpClientTransport::with_client(client, config);
            handler
                .serve(transport)
                .await
                .map_err(|err| format!("MCP handshake with {url} failed: {err}"))
        }
    }
}

/// The HTTP client of a streamable HTTP server: TCP_NODELAY (small
/// streamed messages), rustls on ring, and no redirects, which would carry
/// the configured headers (secrets) to another place.
fn http_client() -> Result<reqwest::Client, String> {
    // Building a client without a crypto provider installed would panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("agentmesh-tool-runner/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| format!("cannot build the HTTP client: {err}"))
}

/// Logs a child's stderr, line by line, until it closes.
async fn log_stderr(server: String, stderr: ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(server = %server, line = %truncate_bytes(&line, MAX_STDERR_LINE), "MCP server stderr");
    }
}

/// Lists the server's tools (those it wants) and hands them to `listed`.
async fn list(
    server: &McpServer,
    peer: &Peer<RoleClient>,
    listed: &Listed,
) -> Result<usize, String> {
    let tools = peer
        .list_all_tools()
        .await
        .map_err(|err| format!("tools/list failed: {err}"))?;
    let wanted = tools
        .into_iter()
        .filter(|tool| server.wanted(tool.name.as_ref()))
        .collect();
    Ok(listed(wanted))
}
