//! Helpers for the cross-service tests: start any service in-process on
//! ephemeral loopback ports, or run the real binaries and learn their ports
//! from their logs; query health and reflection through real tonic clients.

#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail loudly"
)]

pub mod contract;
mod up;

pub use up::{interrupt, spawn_up};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use agentmesh_auth::config::AuthConfig;
use agentmesh_kit::{Listeners, ServeError, ServerConfig};
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The five services: name, fully-qualified gRPC service name.
pub const SERVICES: [(&str, &str); 5] = [
    (
        "orchestrator",
        "agentmesh.orchestrator.v1.OrchestratorService",
    ),
    ("llm-gateway", "agentmesh.llm.v1.LlmGatewayService"),
    ("tool-runner", "agentmesh.tools.v1.ToolRunnerService"),
    ("audit", "agentmesh.audit.v1.AuditService"),
    ("alerting", "agentmesh.alerting.v1.AlertingService"),
];

/// Server settings for a test: loopback, ephemeral ports, short grace.
pub fn test_server_config() -> ServerConfig {
    ServerConfig {
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        admin_port: Some(0),
        grace_period: Duration::from_secs(5),
        ..ServerConfig::default()
    }
}

/// A service running in this process; stops (and waits) when dropped via
/// [`InProcess::stop`].
#[derive(Debug)]
pub struct InProcess {
    /// gRPC address.
    pub grpc: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    _data: tempfile::TempDir,
}

impl InProcess {
    /// Starts the service `name` with defaults, loopback ephemeral ports and a
    /// fresh data directory; auditing is off (no audit service to reach, no
    /// spool). The orchestrator comes with an LLM gateway and a tool runner
    /// of its own: its readiness depends on them.
    pub async fn start(name: &str) -> Self {
        Self::start_with_auth(name, AuthConfig::default()).await
    }

    /// [`Self::start`], the service (not the orchestrator's own gateway and
    /// tool runner) checking callers as `auth` says.
    pub async fn start_with_auth(name: &str, auth: AuthConfig) -> Self {
        let data = tempfile::tempdir().unwrap();
        let server = test_server_config();
        let listeners = Listeners::bind(&server).await.unwrap();
        let grpc = listeners.grpc_addr().unwrap();
        let admin = listeners.admin_addr().unwrap();
        let stop = CancellationToken::new();
        let served = Self::serve(name, listeners, &stop, data.path(), auth).await;
        let task = tokio::spawn(served);
        Self {
            grpc,
            admin,
            stop,
            task,
            _data: data,
        }
    }

    /// The service `name`'s `serve` future on `listeners`, until `stop`.
    async fn serve(
        name: &str,
        listeners: Listeners,
        stop: &CancellationToken,
        data_dir: &Path,
        auth: AuthConfig,
    ) -> BoxFuture<'static, Result<(), ServeError>> {
        let server = test_server_config();
        let shutdown = stop.clone().cancelled_owned();
        let data_dir = data_dir.to_path_buf();
        match name {
            "orchestrator" => {
                let peers = Peers::start(stop, &data_dir).await;
                let mut config = agentmesh_orchestrator::Config {
                    server,
                    llm_gateway_url: format!("http://{}", peers.gateway),
                    tool_runner_url: format!("http://{}", peers.tool_runner),
                    audit: agentmesh_orchestrator::AuditConfig::disabled(),
                    auth,
                    ..Default::default()
                };
                config.storage.data_dir = data_dir;
                let orchestrator =
                    agentmesh_orchestrator::serve_with_listeners(config, listeners, shutdown);
                Box::pin(async move {
                    let (orchestrator, peers) = tokio::join!(orchestrator, peers.served);
                    orchestrator.and(peers)
                })
            }
            "llm-gateway" => {
                let config = agentmesh_llm_gateway::Config {
                    server,
                    audit: agentmesh_llm_gateway::AuditConfig::disabled(),
                    auth,
                    ..Default::default()
                };
                Box::pin(agentmesh_llm_gateway::serve_with_listeners(
                    config, listeners, shutdown,
                ))
            }
            "tool-runner" => {
                let config = agentmesh_tool_runner::Config {
                    server,
                    audit: agentmesh_tool_runner::AuditConfig::disabled(),
                    auth,
                    ..Default::default()
                };
                Box::pin(agentmesh_tool_runner::serve_with_listeners(
                    config, listeners, shutdown,
                ))
            }
            "audit" => {
                let mut config = agentmesh_audit::Config {
                    server,
                    auth,
                    ..Default::default()
                };
                config.storage.data_dir = data_dir;
                Box::pin(agentmesh_audit::serve_with_listeners(
                    config, listeners, shutdown,
                ))
            }
            "alerting" => {
                // Rules and receivers come from TOML, so the config is
                // adjusted field by field rather than built.
                let mut config = agentmesh_alerting::Config::default();
                config.server = server;
                config.audit = agentmesh_alerting::AuditConfig::disabled();
                config.auth = auth;
                config.storage.data_dir = data_dir;
                // No audit service here: a port nothing listens on.
                config.source.url = "http://127.0.0.1:9".to_owned();
                Box::pin(agentmesh_alerting::serve_with_listeners(
                    config, listeners, shutdown,
                ))
            }
            other => panic!("no service called {other}"),
        }
    }

    /// A channel to the service.
    pub fn channel(&self) -> Channel {
        channel(self.grpc)
    }

    /// Shuts the service down and returns how `serve` ended.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.stop.cancel();
        self.task.await.expect("the service task panicked")
    }
}

/// An LLM gateway and a tool runner serving beside an orchestrator until
/// `stop`, auditing off.
struct Peers {
    gateway: SocketAddr,
    tool_runner: SocketAddr,
    /// Both servers; the first failure, if any.
    served: BoxFuture<'static, Result<(), ServeError>>,
}

impl Peers {
    async fn start(stop: &CancellationToken, data_dir: &Path) -> Self {
        let gateway = agentmesh_llm_gateway::Config {
            server: test_server_config(),
            audit: agentmesh_llm_gateway::AuditConfig::disabled(),
            ..Default::default()
        };
        let gateway_listeners = Listeners::bind(&gateway.server).await.unwrap();
        let gateway_addr = gateway_listeners.grpc_addr().unwrap();
        let mut tools = agentmesh_tool_runner::Config {
            server: test_server_config(),
            audit: agentmesh_tool_runner::AuditConfig::disabled(),
            ..Default::default()
        };
        tools.workspaces_dir = data_dir.join("workspaces");
        let tools_listeners = Listeners::bind(&tools.server).await.unwrap();
        let tools_addr = tools_listeners.grpc_addr().unwrap();
        let gateway_served = agentmesh_llm_gateway::serve_with_listeners(
            gateway,
            gateway_listeners,
            stop.clone().cancelled_owned(),
        );
        let tools_served = agentmesh_tool_runner::serve_with_listeners(
            tools,
            tools_listeners,
            stop.clone().cancelled_owned(),
        );
        Self {
            gateway: gateway_addr,
            tool_runner: tools_addr,
            served: Box::pin(async move {
                let (gateway, tools) = tokio::join!(gateway_served, tools_served);
                gateway.and(tools)
            }),
        }
    }
}

/// A base port with ten free loopback ports (five gRPC at `base..base+5`,
/// five admin at `base+1000..`), for the binaries `agentmesh up` starts on
/// fixed ports. Candidates are `first + ((pid seed + i * step) % span) * 2`:
/// each test file passes its own numbers, so files running in parallel
/// probe different ports.
pub fn free_base_port(first: u16, step: u16, span: u16) -> u16 {
    let seed = u16::try_from(std::process::id() % 2000).unwrap_or(0);
    (0..200u16)
        .map(|i| first + ((seed + i * step) % span) * 2)
        .find(|base| {
            (0..5).all(|i| {
                [base + i, base + i + 1000]
                    .iter()
                    .all(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
            })
        })
        .expect("ten free loopback ports")
}

/// A loopback port nothing listens on now, for a process that must keep
/// its port across restarts (its address is advertised or balanced to).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A lazily-connecting channel to `addr`.
pub fn channel(addr: SocketAddr) -> Channel {
    agentmesh_kit::client::plain_channel(&format!("http://{addr}")).unwrap()
}

/// The health status of `service` ("" = overall).
pub async fn health_status(
    channel: Channel,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// Waits until `service` reports SERVING.
pub async fn wait_serving(channel: Channel, service: &str) {
    agentmesh_testkit::eventually(
        &format!("{service:?} to report SERVING"),
        Duration::from_secs(20),
        || {
            let channel = channel.clone();
            async move {
                matches!(
                    health_status(channel, service).await,
                    Ok(ServingStatus::Serving)
                )
                .then_some(())
            }
        },
    )
    .await;
}

/// The services that reflection (v1) lists.
pub async fn reflected_services(channel: Channel) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// GETs `path` from an admin server with a plain HTTP/1.1 request.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

// === real binaries ===

/// The path of a binary of this workspace, built next to the test binary
/// (or in `AGENTMESH_BIN_DIR`, as the Python tests read it).
pub fn binary(name: &str) -> PathBuf {
    let path = match std::env::var_os("AGENTMESH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/<test> → target/<profile>/<name>
            exe.parent().and_then(Path::parent).unwrap().join(name)
        }
    };
    assert!(
        path.is_file(),
        "{} is not built; run the tests through `make test` (cargo builds the workspace binaries first)",
        path.display()
    );
    path
}

/// A service binary running as a child process.
#[derive(Debug)]
pub struct RunningBinary {
    /// The process.
    pub child: Child,
    /// Its gRPC address, read from its "listening" log line.
    pub grpc: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    /// Every stderr line so far (logs), shared with the reader task.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The task reading stderr into `log`; it ends at the pipe's end.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl RunningBinary {
    /// Starts `binary` with `args` (ports 0 on loopback unless the args say
    /// otherwise), logging JSON, in `dir`; waits for its listening line.
    pub async fn start(
        binary_name: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        dir: &Path,
    ) -> Self {
        let mut command = Command::new(binary(binary_name));
        command.args(["--host", "127.0.0.1", "--admin-port", "0"]);
        if !args.contains(&"--port") {
            command.args(["--port", "0"]);
        }
        command
            .args(args)
            .envs(envs.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addrs_tx, addrs_rx) = tokio::sync::oneshot::channel();
        let reader = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut addrs_tx = Some(addrs_tx);
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                        && let (Some(grpc), Some(admin)) =
                            (json["grpc"].as_str(), json["admin"].as_str())
                        && let (Ok(grpc), Ok(admin)) = (grpc.parse(), admin.parse())
                        && let Some(tx) = addrs_tx.take()
                    {
                        let _ = tx.send((grpc, admin));
                    }
                    log.lock().unwrap().push(line);
                }
            })
        };
        let (grpc, admin) = tokio::time::timeout(Duration::from_secs(30), addrs_rx)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{binary_name} did not log its listening addresses: {:?}",
                    log.lock().unwrap()
                )
            })
            .unwrap_or_else(|_| {
                panic!(
                    "{binary_name} exited before listening: {:?}",
                    log.lock().unwrap()
                )
            });
        Self {
            child,
            grpc,
            admin,
            log,
            reader: Some(reader),
        }
    }

    /// Waits (up to `limit`) for the process to exit, then for every line it
    /// wrote to be read: the process's exit does not mean the reader task has
    /// seen the pipe's last lines yet.
    pub async fn exit_and_log(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let exit = within("the process's exit", limit, self.child.wait())
            .await
            .unwrap();
        if let Some(reader) = self.reader.take() {
            within("the end of its log", limit, reader).await.unwrap();
        }
        (exit, self.log.lock().unwrap().join("\n"))
    }

    /// Sends a signal (e.g. "TERM") to the process.
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process is running").to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }
}

pub use agentmesh_testkit::within;

/// The three services of an agent run, in this process, wired together: the
/// gateway (scripted provider), the tool runner and the orchestrator.
#[derive(Debug)]
pub struct RunMesh {
    /// Where the orchestrator listens.
    pub orchestrator: SocketAddr,
    /// The orchestrator's admin server (`/metrics`).
    pub orchestrator_admin: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

impl RunMesh {
    /// The three services of a run, auditing off; `rules` replaces the demo
    /// rules; `tweak` adjusts the orchestrator's configuration.
    pub async fn start(
        rules: Option<&str>,
        tweak: impl FnOnce(&mut agentmesh_orchestrator::Config),
    ) -> Self {
        Self::start_with(rules, |_| {}, tweak).await
    }

    /// [`RunMesh::start`], with `tweak_gateway` adjusting the gateway's
    /// configuration too (providers, routes) before it starts.
    pub async fn start_with(
        rules: Option<&str>,
        tweak_gateway: impl FnOnce(&mut agentmesh_llm_gateway::Config),
        tweak: impl FnOnce(&mut agentmesh_orchestrator::Config),
    ) -> Self {
        Self::start_with_tools(rules, tweak_gateway, |_| {}, tweak).await
    }

    /// [`RunMesh::start_with`], with `tweak_tools` adjusting the tool
    /// runner's configuration too (command tools, pipelines).
    pub async fn start_with_tools(
        rules: Option<&str>,
        tweak_gateway: impl FnOnce(&mut agentmesh_llm_gateway::Config),
        tweak_tools: impl FnOnce(&mut agentmesh_tool_runner::Config),
        tweak: impl FnOnce(&mut agentmesh_orchestrator::Config),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();

        let mut gateway = agentmesh_llm_gateway::Config {
            server: test_server_config(),
            audit: agentmesh_llm_gateway::AuditConfig::disabled(),
            ..Default::default()
        };
        if let Some(rules) = rules {
            let path = dir.path().join("rules.toml");
            std::fs::write(&path, rules).unwrap();
            gateway.providers.get_mut("scripted").unwrap().rules_file = path.display().to_string();
        }
        tweak_gateway(&mut gateway);
        let listeners = Listeners::bind(&gateway.server).await.unwrap();
        let gateway_addr = listeners.grpc_addr().unwrap();
        let served: BoxFuture<'static, _> = Box::pin(agentmesh_llm_gateway::serve_with_listeners(
            gateway,
            listeners,
            stop.clone().cancelled_owned(),
        ));
        tasks.push(tokio::spawn(served));

        let mut tools = agentmesh_tool_runner::Config {
            server: test_server_config(),
            audit: agentmesh_tool_runner::AuditConfig::disabled(),
            ..Default::default()
        };
        tools.workspaces_dir = dir.path().join("workspaces");
        tweak_tools(&mut tools);
        let listeners = Listeners::bind(&tools.server).await.unwrap();
        let tools_addr = listeners.grpc_addr().unwrap();
        let served: BoxFuture<'static, _> = Box::pin(agentmesh_tool_runner::serve_with_listeners(
            tools,
            listeners,
            stop.clone().cancelled_owned(),
        ));
        tasks.push(tokio::spawn(served));

        let mut orchestrator = agentmesh_orchestrator::Config {
            server: test_server_config(),
            llm_gateway_url: format!("http://{gateway_addr}"),
            tool_runner_url: format!("http://{tools_addr}"),
            audit: agentmesh_orchestrator::AuditConfig::disabled(),
            ..Default::default()
        };
        orchestrator.storage.data_dir = dir.path().join("data");
        tweak(&mut orchestrator);
        let listeners = Listeners::bind(&orchestrator.server).await.unwrap();
        let orchestrator_addr = listeners.grpc_addr().unwrap();
        let orchestrator_admin = listeners.admin_addr().unwrap();
        let served: BoxFuture<'static, _> = Box::pin(agentmesh_orchestrator::serve_with_listeners(
            orchestrator,
            listeners,
            stop.clone().cancelled_owned(),
        ));
        tasks.push(tokio::spawn(served));

        for addr in [gateway_addr, tools_addr, orchestrator_addr] {
            wait_serving(channel(addr), "").await;
        }
        Self {
            orchestrator: orchestrator_addr,
            orchestrator_admin,
            stop,
            tasks,
            _dir: dir,
        }
    }

    /// A client of the orchestrator.
    pub fn client(&self) -> agentmesh_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient<Channel>{
        agentmesh_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient::new(channel(self.orchestrator))
    }

    /// Stops the services and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            within("a service to stop", Duration::from_secs(10), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

/// The `p` quantile (0 to 1) of sorted durations, for the benchmark
/// programs' reports; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into the slice"
    )]
    let index = ((sorted.len().saturating_sub(1)) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}
