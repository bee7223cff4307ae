//! The whole mesh in this process: five services, each on its own loopback
//! (or configured) port, talking real gRPC to each other, and optionally
//! the HTTP edge in front of them.
//!
//! The audit service runs apart from the other four: they send it their audit
//! events, so it starts first and stops last, after they have flushed their
//! queues. [`EmbeddedAudit`] is that service alone, which the `agentmesh
//! audit` commands also start on their own over the data directory.
//!
//! `auth`: the mesh's one `[auth]` section and the service keys the services
//! present to each other when it asks for credentials.

use std::net::SocketAddr;
use std::path::Path;

use agentmesh_audit_client::AuditConfig;
use agentmesh_kit::config::{self, FileLayout, Overrides, ServiceConfig};
use agentmesh_kit::{ConfigError, Listeners, ServeError, ServerConfig};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

mod auth;
mod demo;

pub(crate) use auth::require_credential;

/// The five services' configurations.
#[derive(Debug, Clone)]
pub(crate) struct MeshConfigs {
    pub(crate) orchestrator: agentmesh_orchestrator::Config,
    pub(crate) llm_gateway: agentmesh_llm_gateway::Config,
    pub(crate) tool_runner: agentmesh_tool_runner::Config,
    pub(crate) audit: agentmesh_audit::Config,
    pub(crate) alerting: agentmesh_alerting::Config,
    /// The HTTP edge, when it is served too (its own port: 8080 unless
    /// configured; any free one with ephemeral ports).
    pub(crate) edge: Option<agentmesh_edge::Config>,
}

/// Where a service gets its ports from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ports {
    /// `base`, `base + 1`, … in service order; admin ports each + 1000.
    From(std::net::IpAddr, u16),
    /// Free loopback ports picked by the system.
    Ephemeral,
}

/// The audit service's place in the port order.
const AUDIT_INDEX: u16 = 3;

impl MeshConfigs {
    /// Each service's section of `file` (if any) and its environment, with
    /// `ports` and `data_dir` on top.
    pub(crate) fn load(
        file: Option<&Path>,
        ports: Ports,
        data_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let layout = layout_of(file);
        let mut configs = Self {
            orchestrator: load_one(file, layout, ports, 0, Some(data_dir))?,
            llm_gateway: load_one(file, layout, ports, 1, None)?,
            tool_runner: load_one(file, layout, ports, 2, None).map(
                |mut c: agentmesh_tool_runner::Config| {
                    // Run workspaces live beside the databases.
                    if c.workspaces_dir == agentmesh_tool_runner::Config::default().workspaces_dir {
                        c.workspaces_dir = data_dir.join("workspaces");
                    }
                    c
                },
            )?,
            audit: load_one(file, layout, ports, AUDIT_INDEX, Some(data_dir))?,
            alerting: load_one(file, layout, ports, 4, Some(data_dir))?,
            edge: None,
        };
        demo::add_demo_profiles(&mut configs.orchestrator)?;
        let shared = auth::shared(file)?;
        let shared = shared.as_ref();
        auth::apply_shared(&mut configs.orchestrator, |c| &mut c.auth, file, shared)?;
        auth::apply_shared(&mut configs.llm_gateway, |c| &mut c.auth, file, shared)?;
        auth::apply_shared(&mut configs.tool_runner, |c| &mut c.auth, file, shared)?;
        auth::apply_shared(&mut configs.audit, |c| &mut c.auth, file, shared)?;
        auth::apply_shared(&mut configs.alerting, |c| &mut c.auth, file, shared)?;
        // Audit events that cannot be sent yet wait beside the databases.
        let default_spool = AuditConfig::default().spool_dir;
        for audit in configs.producers_audit() {
            if audit.spool_dir == default_spool {
                audit.spool_dir = data_dir.join("spool");
            }
        }
        Ok(configs)
    }

    /// The audit settings of the four services that send audit events.
    fn producers_audit(&mut self) -> [&mut AuditConfig; 4] {
        [
            &mut self.orchestrator.audit,
            &mut self.llm_gateway.audit,
            &mut self.tool_runner.audit,
            &mut self.alerting.audit,
        ]
    }
}

impl MeshConfigs {
    /// Serves the edge too: its section of `file` (if any) and its
    /// environment, on `host` (its configured port, or `port` when given).
    pub(crate) fn with_edge(
        mut self,
        file: Option<&Path>,
        host: std::net::IpAddr,
        port: Option<u16>,
    ) -> Result<Self, ConfigError> {
        let overrides = Overrides {
            host: Some(host),
            port,
            admin_port: port.map(|port| {
                if port == 0 {
                    0
                } else {
                    port.saturating_add(config::ADMIN_PORT_OFFSET)
                }
            }),
            set: Vec::new(),
        };
        self.edge = Some(config::load_with_layout(file, layout_of(file), &overrides)?);
        Ok(self)
    }
}

/// The audit service's section of `file` (if any) and its environment, with
/// `ports` and `data_dir` on top.
pub(crate) fn load_audit(
    file: Option<&Path>,
    ports: Ports,
    data_dir: &Path,
) -> Result<agentmesh_audit::Config, ConfigError> {
    let mut config: agentmesh_audit::Config =
        load_one(file, layout_of(file), ports, AUDIT_INDEX, Some(data_dir))?;
    let shared = auth::shared(file)?;
    auth::apply_shared(&mut config, |c| &mut c.auth, file, shared.as_ref())?;
    Ok(config)
}

/// How the mesh's file is read: one with any service's section is sectioned
/// for all five (a service without a section keeps its defaults), so that
/// `[audit.storage]` alone is the audit service's, not the producers' audit
/// settings; one without is read by every service as its own settings.
fn layout_of(file: Option<&Path>) -> FileLayout {
    match file {
        Some(path) if config::has_service_section(path) => FileLayout::Sectioned,
        _ => FileLayout::Detect,
    }
}

fn load_one<C: ServiceConfig>(
    file: Option<&Path>,
    layout: FileLayout,
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
    config::load_with_layout::<C>(file, layout, &overrides)
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

/// Where one service bound here listens: its gRPC and admin addresses.
type Bound = (SocketAddr, SocketAddr);

/// The edge's configuration pointed at the services bound here (their gRPC
/// and admin addresses, by name, in the order of the edge's URL settings
/// below), and its listeners.
async fn bind_edge(
    mut config: agentmesh_edge::Config,
    bound: [(&str, Bound); 5],
) -> anyhow::Result<(agentmesh_edge::Config, Listeners, SocketAddr)> {
    let urls = [
        &mut config.orchestrator_url,
        &mut config.llm_gateway_url,
        &mut config.tool_runner_url,
        &mut config.audit_url,
        &mut config.alerting_url,
    ];
    for ((name, (grpc, admin)), url) in bound.into_iter().zip(urls) {
        *url = format!("http://{grpc}");
        config
            .admin_addresses
            .insert(name.to_owned(), admin.to_string());
    }
    let (listeners, addr) = bind(&config.server).await?;
    Ok((config, listeners, addr))
}

// === impl Services ===

/// A service's `serve_with_listeners` future.
type Served = BoxFuture<'static, Result<(), ServeError>>;

/// Services that stop together (when `stop` is cancelled), running on a task
/// of their own.
#[derive(Debug)]
struct Services {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<anyhow::Result<()>>>,
}

impl Services {
    /// Runs `services`, each serving until `stop` is cancelled; one that
    /// fails cancels `failed`, so that the rest are stopped too (no half mesh
    /// keeps running).
    fn spawn(
        stop: CancellationToken,
        services: Vec<(&'static str, Served)>,
        failed: &CancellationToken,
    ) -> Self {
        let running = services.into_iter().map(|(name, served)| {
            let failed = failed.clone();
            async move {
                let result = served.await;
                if let Err(err) = &result {
                    tracing::error!(service = name, error = %err, "service failed; stopping the mesh");
                    failed.cancel();
                }
                result.map_err(|err| anyhow::anyhow!("{name}: {err}"))
            }
        });
        let task = tokio::spawn(futures::future::join_all(running));
        Self { stop, task }
    }

    /// Tells the services to stop, waits until they have drained, and
    /// returns their failures.
    async fn stop(self) -> anyhow::Result<Vec<String>> {
        self.stop.cancel();
        let results = self.task.await?;
        Ok(results
            .into_iter()
            .filter_map(Result::err)
            .map(|err| err.to_string())
            .collect())
    }
}

fn all_ok(failures: Vec<String>) -> anyhow::Result<()> {
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(failures.join("; ")))
    }
}

// === impl EmbeddedAudit ===

/// The audit service running in this process.
#[derive(Debug)]
pub(crate) struct EmbeddedAudit {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Cancelled when the service fails.
    failed: CancellationToken,
    services: Services,
}

impl EmbeddedAudit {
    /// Binds the audit service's ports per `config` and starts it.
    pub(crate) async fn start(config: agentmesh_audit::Config) -> anyhow::Result<Self> {
        let (listeners, addr) = bind(&config.server).await?;
        Ok(Self::spawn(
            config,
            listeners,
            addr,
            CancellationToken::new(),
        ))
    }

    /// Starts the service on `listeners` (bound at `addr`); its failure
    /// cancels `failed`.
    fn spawn(
        config: agentmesh_audit::Config,
        listeners: Listeners,
        addr: SocketAddr,
        failed: CancellationToken,
    ) -> Self {
        // Its own stop signal: it stops only when told, after its producers.
        let stop = CancellationToken::new();
        let served = agentmesh_audit::serve_with_listeners(
            config,
            listeners,
            stop.clone().cancelled_owned(),
        );
        let services = Services::spawn(stop, vec![("audit", Box::pin(served))], &failed);
        Self {
            addr,
            failed,
            services,
        }
    }

    /// Resolves when the service has failed (e.g. its database cannot be
    /// opened); [`Self::stop`] then says why.
    pub(crate) async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// Stops the service (draining) and reports its failure, if any.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        all_ok(self.services.stop().await?)
    }
}

// === impl Mesh ===

/// A running mesh.
#[derive(Debug)]
pub(crate) struct Mesh {
    /// Where the orchestrator listens.
    pub(crate) orchestrator: SocketAddr,
    /// Where the tool runner listens.
    pub(crate) tool_runner: SocketAddr,
    /// Where the HTTP edge listens, when it is served.
    pub(crate) edge: Option<SocketAddr>,
    /// Cancelled to stop the mesh, or by a service that failed.
    stop: CancellationToken,
    /// The four services that produce audit events; they stop on `stop`.
    producers: Services,
    /// Their audit service, stopped after them so that their last events
    /// (flushed as they stop) are recorded.
    audit: EmbeddedAudit,
}

impl Mesh {
    /// Binds every service's ports, points the orchestrator at the gateway
    /// and the tool runner, and every producer of audit events at the audit
    /// service it just bound, gives each its service key when they ask for
    /// credentials, and starts all five (and the edge, when configured). A
    /// service that fails stops the others, so no half mesh keeps running.
    /// Kept whole: binding, wiring and starting the services, in the order
    /// they depend on each other, read best in one place.
    pub(crate) async fn start(mut configs: MeshConfigs) -> anyhow::Result<Self> {
        auth::issue_service_keys(&mut configs)?;
        let (orchestrator_listeners, orchestrator) = bind(&configs.orchestrator.server).await?;
        let (gateway_listeners, gateway) = bind(&configs.llm_gateway.server).await?;
        let (tools_listeners, tool_runner) = bind(&configs.tool_runner.server).await?;
        let (audit_listeners, audit) = bind(&configs.audit.server).await?;
        let (alerting_listeners, alerting) = bind(&configs.alerting.server).await?;
        let bound = [
            (
                "orchestrator",
                (
                    orchestrator,
                    reachable(orchestrator_listeners.admin_addr()?),
                ),
            ),
            (
                "llm-gateway",
                (gateway, reachable(gateway_listeners.admin_addr()?)),
            ),
            (
                "tool-runner",
                (tool_runner, reachable(tools_listeners.admin_addr()?)),
            ),
            ("audit", (audit, reachable(audit_listeners.admin_addr()?))),
            (
                "alerting",
                (alerting, reachable(alerting_listeners.admin_addr()?)),
            ),
        ];
        configs.orchestrator.llm_gateway_url = format!("http://{gateway}");
        configs.orchestrator.tool_runner_url = format!("http://{tool_runner}");
        // Every producer sends its events to the audit service bound here,
        // unless its configuration names an audit service (or "" for none).
        let default_url = AuditConfig::default().url;
        for producer in configs.producers_audit() {
            if producer.url == default_url {
                producer.url = format!("http://{audit}");
            }
        }
        // The alerting service's rules read the same audit service.
        if configs.alerting.source.url == agentmesh_alerting::SourceConfig::default().url {
            configs.alerting.source.url = format!("http://{audit}");
        }

        let edge = match configs.edge.take() {
            Some(config) => Some(bind_edge(config, bound).await?),
            None => None,
        };
        let edge_addr = edge.as_ref().map(|(_, _, addr)| *addr);

        let stop = CancellationToken::new();
        // The audit service first, so that the producers' first events find it.
        let audit = EmbeddedAudit::spawn(configs.audit, audit_listeners, audit, stop.clone());
        // Stopping the mesh stops the producers at once; the audit service
        // only when `stop()` has seen them finish.
        let producers_stop = stop.child_token();
        let signal = || producers_stop.clone().cancelled_owned();
        let mut services: Vec<(&'static str, Served)> = vec![
            (
                "orchestrator",
                Box::pin(agentmesh_orchestrator::serve_with_listeners(
                    configs.orchestrator,
                    orchestrator_listeners,
                    signal(),
                )),
            ),
            (
                "llm-gateway",
                Box::pin(agentmesh_llm_gateway::serve_with_listeners(
                    configs.llm_gateway,
                    gateway_listeners,
                    signal(),
                )),
            ),
            (
                "tool-runner",
                Box::pin(agentmesh_tool_runner::serve_with_listeners(
                    configs.tool_runner,
                    tools_listeners,
                    signal(),
                )),
            ),
            (
                "alerting",
                Box::pin(agentmesh_alerting::serve_with_listeners(
                    configs.alerting,
                    alerting_listeners,
                    signal(),
                )),
            ),
        ];
        if let Some((config, listeners, _)) = edge {
            services.push((
                "edge",
                Box::pin(agentmesh_edge::serve_with_listeners(
                    config,
                    listeners,
                    signal(),
                )),
            ));
        }
        let producers = Services::spawn(producers_stop.clone(), services, &stop);
        Ok(Self {
            orchestrator,
            tool_runner,
            edge: edge_addr,
            stop,
            producers,
            audit,
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

    /// Stops every service (draining) and reports the failures: first the
    /// four producers of audit events, which flush their audit queues as they
    /// stop, then the audit service.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let mut failures = self.producers.stop().await?;
        failures.extend(self.audit.services.stop().await?);
        all_ok(failures)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Loads the mesh's configurations from a file holding `text`, in a
    /// directory of its own (removed afterwards).
    fn load(text: &str) -> Result<MeshConfigs, ConfigError> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir: PathBuf = std::env::temp_dir().join(format!(
            "agentmesh-mesh-config-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = MeshConfigs::load(Some(&path), Ports::Ephemeral, &dir);
        std::fs::remove_dir_all(&dir).unwrap();
        loaded
    }

    #[test]
    fn services_without_a_section_keep_their_defaults() {
        let configs = load(
            "[alerting.route]\nreceiver = \"team\"\n\n[[alerting.receivers]]\nname = \"team\"\n",
        )
        .unwrap();
        assert_eq!(
            configs.llm_gateway.log,
            agentmesh_llm_gateway::Config::default().log
        );
        let configs = load("[audit.storage]\nmax_connections = 3\n").unwrap();
        assert_eq!(configs.audit.storage.max_connections, 3);
        assert_eq!(
            configs.orchestrator.audit.url,
            AuditConfig::default().url,
            "the producers keep their own audit settings"
        );
    }

    #[test]
    fn a_file_without_sections_is_every_service_s_own() {
        let configs = load("[log]\nlevel = \"debug\"\n").unwrap();
        assert_eq!(configs.orchestrator.log.level, "debug");
        assert_eq!(configs.alerting.log.level, "debug");
    }

    #[test]
    fn the_shared_auth_section_is_every_service_s_unless_it_has_its_own() {
        let configs = load(
            "[auth]\nmethods = [\"api_key\"]\nkeys_file = \"keys.toml\"\n\n\
             [audit.auth]\nmethods = [\"none\"]\n",
        )
        .unwrap();
        for auth in [
            &configs.orchestrator.auth,
            &configs.llm_gateway.auth,
            &configs.tool_runner.auth,
            &configs.alerting.auth,
        ] {
            assert_eq!(auth.methods, [agentmesh_auth::Method::ApiKey]);
            assert_eq!(auth.keys_file, Some(PathBuf::from("keys.toml")));
        }
        assert!(configs.audit.auth.is_none(), "its own section wins");

        let err = load("[auth]\nmethods = [\"api_key\"]\n\n[audit.log]\nlevel = \"info\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.keys_file"), "{err}");
        let err = load("[auth]\nmethodz = []\n\n[audit.log]\nlevel = \"info\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("methodz"), "{err}");
    }

    #[test]
    fn service_keys_are_made_only_when_auth_is_on_each_with_its_scopes() {
        use agentmesh_auth::Scope;

        let mut configs = load("[log]\nlevel = \"info\"\n").unwrap();
        auth::issue_service_keys(&mut configs).unwrap();
        assert!(configs.orchestrator.auth.in_memory_keys.is_none());

        let mut configs = load(
            "[auth]\nmethods = [\"api_key\"]\nkeys_file = \"keys.toml\"\n\n[audit.log]\nlevel = \"info\"\n",
        )
        .unwrap();
        auth::issue_service_keys(&mut configs).unwrap();
        let keys = |auth: &agentmesh_auth::AuthConfig| auth.in_memory_keys.clone().unwrap();
        let orchestrator = keys(&configs.orchestrator.auth);
        let alerting = keys(&configs.alerting.auth);
        assert_eq!(orchestrator.accepted().len(), 5);
        assert_eq!(orchestrator.accepted(), alerting.accepted());
        assert_ne!(orchestrator.own(), alerting.own());
        let scopes_of = |keys: &agentmesh_auth::keys::store::InMemoryKeys| {
            let entry = keys
                .accepted()
                .iter()
                .find(|entry| entry.id == keys.own().id())
                .unwrap()
                .clone();
            assert_eq!(entry.tenant, "");
            agentmesh_auth::ScopeSet::parse_list(&entry.scopes.join(" ")).unwrap()
        };
        let scopes = scopes_of(&orchestrator);
        assert!(scopes.contains(Scope::Service) && scopes.contains(Scope::LlmGenerate));
        assert!(!scopes.contains(Scope::Admin));
        assert!(scopes_of(&alerting).contains(Scope::Admin));
        assert!(!scopes_of(&keys(&configs.llm_gateway.auth)).contains(Scope::ToolsExecute));
        assert!(!format!("{orchestrator:?}").contains(orchestrator.own().expose()));
    }
}
