//! The whole mesh in this process: five services, each on its own loopback
//! (or configured) port, talking real gRPC to each other.

use std::net::SocketAddr;
use std::path::Path;

use agentmesh_kit::config::{self, Overrides, ServiceConfig};
use agentmesh_kit::{ConfigError, Listeners, ServeError, ServerConfig};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// The five services' configurations.
#[derive(Debug, Clone)]
pub(crate) struct MeshConfigs {
    pub(crate) orchestrator: agentmesh_orchestrator::Config,
    pub(crate) llm_gateway: agentmesh_llm_gateway::Config,
    pub(crate) tool_runner: agentmesh_tool_runner::Config,
    pub(crate) audit: agentmesh_audit::Config,
    pub(crate) alerting: agentmesh_alerting::Config,
}

/// Where a service gets its ports from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ports {
    /// `base`, `base + 1`, … in service order; admin ports each + 1000.
    From(std::net::IpAddr, u16),
    /// Free loopback ports picked by the system.
    Ephemeral,
}

impl MeshConfigs {
    /// Each service's section of `file` (if any) and its environment, with
    /// `ports` and `data_dir` on top.
    pub(crate) fn load(
        file: Option<&Path>,
        ports: Ports,
        data_dir: &Path,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            orchestrator: load_one(file, ports, 0, Some(data_dir))?,
            llm_gateway: load_one(file, ports, 1, None)?,
            tool_runner: load_one(file, ports, 2, None).map(
                |mut c: agentmesh_tool_runner::Config| {
                    // Run workspaces live beside the databases.
                    if c.workspaces_dir == agentmesh_tool_runner::Config::default().workspaces_dir {
                        c.workspaces_dir = data_dir.join("workspaces");
                    }
                    c
                },
            )?,
            audit: load_one(file, ports, 3, Some(data_dir))?,
            alerting: load_one(file, ports, 4, Some(data_dir))?,
        })
    }
}

fn load_one<C: ServiceConfig>(
    file: Option<&Path>,
    ports: Ports,
    index: u16,
    data_dir: Option<&Path>,
) -> Result<C, ConfigError> {
    let mut set = Vec::new();
    if let Some(dir) = data_dir {
        set.push((
            "storage.data_dir".to_owned(),
            format!("{:?}", dir.display().to_string()),
        ));
    }
    let overrides = match ports {
        Ports::From(host, base) => {
            let port = base.checked_add(index).ok_or_else(|| {
                ConfigError::new("--base-port", "leaves no room for five consecutive ports")
            })?;
            let admin_port = port
                .checked_add(config::ADMIN_PORT_OFFSET)
                .ok_or_else(|| ConfigError::new("--base-port", "admin ports (+1000) do not fit"))?;
            Overrides {
                host: Some(host),
                port: Some(port),
                admin_port: Some(admin_port),
                set,
            }
        }
        Ports::Ephemeral => Overrides {
            host: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            port: Some(0),
            admin_port: Some(0),
            set,
        },
    };
    config::load::<C>(file, &overrides)
}

/// A running mesh.
#[derive(Debug)]
pub(crate) struct Mesh {
    /// Where the orchestrator listens.
    pub(crate) orchestrator: SocketAddr,
    /// Where the tool runner listens.
    pub(crate) tool_runner: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<anyhow::Result<()>>>,
}

/// An address a client on this machine can reach (`0.0.0.0` → loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            addr.port(),
        )
    } else {
        addr
    }
}

async fn bind(server: &ServerConfig) -> anyhow::Result<(Listeners, SocketAddr)> {
    let listeners = Listeners::bind(server).await?;
    let addr = reachable(listeners.grpc_addr()?);
    Ok((listeners, addr))
}

impl Mesh {
    /// Binds every service's ports, points the orchestrator at the gateway
    /// and the tool runner it just bound, and starts all five. A service
    /// that fails stops the others, so no half mesh keeps running.
    pub(crate) async fn start(mut configs: MeshConfigs) -> anyhow::Result<Self> {
        let (orchestrator_listeners, orchestrator) = bind(&configs.orchestrator.server).await?;
        let (gateway_listeners, gateway) = bind(&configs.llm_gateway.server).await?;
        let (tools_listeners, tool_runner) = bind(&configs.tool_runner.server).await?;
        let (audit_listeners, _) = bind(&configs.audit.server).await?;
        let (alerting_listeners, _) = bind(&configs.alerting.server).await?;
        configs.orchestrator.llm_gateway_url = format!("http://{gateway}");
        configs.orchestrator.tool_runner_url = format!("http://{tool_runner}");

        let stop = CancellationToken::new();
        let run = |name: &'static str, served: BoxFuture<'static, Result<(), ServeError>>| {
            let stop = stop.clone();
            async move {
                let result = served.await;
                if let Err(err) = &result {
                    tracing::error!(service = name, error = %err, "service failed; stopping the mesh");
                    stop.cancel();
                }
                result.map_err(|err| anyhow::anyhow!("{name}: {err}"))
            }
        };
        let services = [
            run(
                "orchestrator",
                Box::pin(agentmesh_orchestrator::serve_with_listeners(
                    configs.orchestrator,
                    orchestrator_listeners,
                    stop.clone().cancelled_owned(),
                )),
            ),
            run(
                "llm-gateway",
                Box::pin(agentmesh_llm_gateway::serve_with_listeners(
                    configs.llm_gateway,
                    gateway_listeners,
                    stop.clone().cancelled_owned(),
                )),
            ),
            run(
                "tool-runner",
                Box::pin(agentmesh_tool_runner::serve_with_listeners(
                    configs.tool_runner,
                    tools_listeners,
                    stop.clone().cancelled_owned(),
                )),
            ),
            run(
                "audit",
                Box::pin(agentmesh_audit::serve_with_listeners(
                    configs.audit,
                    audit_listeners,
                    stop.clone().cancelled_owned(),
                )),
            ),
            run(
                "alerting",
                Box::pin(agentmesh_alerting::serve_with_listeners(
                    configs.alerting,
                    alerting_listeners,
                    stop.clone().cancelled_owned(),
                )),
            ),
        ];
        let task = tokio::spawn(futures::future::join_all(services));
        Ok(Self {
            orchestrator,
            tool_runner,
            stop,
            task,
        })
    }

    /// A token that stops the mesh when cancelled.
    pub(crate) fn stopper(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Resolves when the mesh has been told to stop (or a service failed).
    pub(crate) async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Stops every service (draining) and reports the failures.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let results = self.task.await?;
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(Result::err)
            .map(|err| err.to_string())
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(failures.join("; ")))
        }
    }
}
