//! The `agentmesh` command line.
//!
//! * `agentmesh up` runs all five services in this one process, each on its
//!   own port (50051…50055 by default, admin ports 51051…51055), with the
//!   embedded defaults: SQLite files under `./data`, no setup. Ctrl-C drains
//!   and stops them all.
//! * `agentmesh health` asks each service of a running mesh for its
//!   `grpc.health.v1` status and prints a table; the exit code says whether
//!   all are SERVING.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use agentmesh_kit::config::{self, LogFormat, Overrides, ServiceConfig};
use agentmesh_kit::{ConfigError, LogConfig};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The five services in port order: name, fully-qualified gRPC service.
const SERVICES: [(&str, &str); 5] = [
    (
        "orchestrator",
        "agentmesh.orchestrator.v1.OrchestratorService",
    ),
    ("llm-gateway", "agentmesh.llm.v1.LlmGatewayService"),
    ("tool-runner", "agentmesh.tools.v1.ToolRunnerService"),
    ("audit", "agentmesh.audit.v1.AuditService"),
    ("alerting", "agentmesh.alerting.v1.AlertingService"),
];

/// The first service's default port; the others follow.
const DEFAULT_BASE_PORT: u16 = 50051;

#[derive(Debug, Parser)]
#[command(
    name = "agentmesh",
    version,
    about = "Run AI agents in production: a mesh of gRPC services."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run all five services in this process (embedded mode), until Ctrl-C.
    Up(UpArgs),
    /// Show the health status of each service of a running mesh.
    Health(HealthArgs),
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Port of the orchestrator; the other services take the next four, and
    /// admin HTTP ports are each gRPC port + 1000.
    #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
    base_port: u16,
    /// Address every service listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Directory for the embedded SQLite databases.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Configuration file with a section per service ([orchestrator], [audit], …).
    #[arg(long, short = 'c', env = "AGENTMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty")]
    log_format: LogFormatArg,
    /// Log filter (e.g. `info`, `debug`); RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Pretty,
    Json,
}

#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// Host the services run on.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Port of the orchestrator; the other services are on the next four.
    #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
    base_port: u16,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the runtime: {err}")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up(args).await,
            Command::Health(args) => health(args).await,
        }
    });
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => fail(&format!("{err:#}")),
    }
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "agentmesh: {message}");
    ExitCode::FAILURE
}

// === up ===

/// The configuration of a service for `up`: the file section and environment
/// as usual, with this run's ports, host and data directory on top.
fn service_config<C: ServiceConfig>(
    args: &UpArgs,
    index: u16,
    with_storage: bool,
) -> Result<C, ConfigError> {
    let port = args.base_port.checked_add(index).ok_or_else(|| {
        ConfigError::new("--base-port", "leaves no room for five consecutive ports")
    })?;
    let admin_port = port
        .checked_add(config::ADMIN_PORT_OFFSET)
        .ok_or_else(|| ConfigError::new("--base-port", "admin ports (+1000) do not fit"))?;
    let mut set = Vec::new();
    if with_storage {
        set.push(("storage.data_dir".to_owned(), quoted(&args.data_dir)));
    }
    let overrides = Overrides {
        host: Some(args.host),
        port: Some(port),
        admin_port: Some(admin_port),
        set,
    };
    config::load::<C>(args.config.as_deref(), &overrides)
}

/// A path as a TOML string, so that figment does not read it as a number.
fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    agentmesh_kit::logging::init(&LogConfig {
        format: match args.log_format {
            LogFormatArg::Pretty => LogFormat::Pretty,
            LogFormatArg::Json => LogFormat::Json,
        },
        level: args.log_level.clone(),
    });
    let orchestrator = service_config::<agentmesh_orchestrator::Config>(&args, 0, true);
    let llm_gateway = service_config::<agentmesh_llm_gateway::Config>(&args, 1, false);
    let tool_runner = service_config::<agentmesh_tool_runner::Config>(&args, 2, false);
    let audit = service_config::<agentmesh_audit::Config>(&args, 3, true);
    let alerting = service_config::<agentmesh_alerting::Config>(&args, 4, true);
    let (orchestrator, llm_gateway, tool_runner, audit, alerting) =
        match (orchestrator, llm_gateway, tool_runner, audit, alerting) {
            (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)) => (a, b, c, d, e),
            (a, b, c, d, e) => {
                let first = [a.err(), b.err(), c.err(), d.err(), e.err()]
                    .into_iter()
                    .flatten()
                    .next();
                let message =
                    first.map_or_else(|| "invalid configuration".to_owned(), |e| e.to_string());
                let _ = writeln!(std::io::stderr(), "agentmesh: {message}");
                return Ok(ExitCode::from(agentmesh_kit::main_support::EXIT_CONFIG));
            }
        };

    let stop = CancellationToken::new();
    let signal = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = agentmesh_kit::shutdown::signal() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        }
    };
    let signal_task = tokio::spawn(signal);

    // Each service stops when asked, or when another one fails (a port in
    // use, say), so `up` never runs half a mesh.
    let run = |name: &'static str,
               served: futures::future::BoxFuture<
        'static,
        Result<(), agentmesh_kit::ServeError>,
    >| {
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
    let results = futures::future::join_all([
        run(
            "orchestrator",
            Box::pin(agentmesh_orchestrator::serve(
                orchestrator,
                stop.clone().cancelled_owned(),
            )),
        ),
        run(
            "llm-gateway",
            Box::pin(agentmesh_llm_gateway::serve(
                llm_gateway,
                stop.clone().cancelled_owned(),
            )),
        ),
        run(
            "tool-runner",
            Box::pin(agentmesh_tool_runner::serve(
                tool_runner,
                stop.clone().cancelled_owned(),
            )),
        ),
        run(
            "audit",
            Box::pin(agentmesh_audit::serve(
                audit,
                stop.clone().cancelled_owned(),
            )),
        ),
        run(
            "alerting",
            Box::pin(agentmesh_alerting::serve(
                alerting,
                stop.clone().cancelled_owned(),
            )),
        ),
    ])
    .await;
    stop.cancel();
    signal_task.abort();
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(Result::err)
        .map(|err| err.to_string())
        .collect();
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow::anyhow!(failures.join("; ")))
    }
}

// === health ===

async fn health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")?;
    let checks = SERVICES
        .iter()
        .enumerate()
        .map(|(index, (name, grpc_name))| {
            let host = args.host.clone();
            let port = u16::try_from(index)
                .ok()
                .and_then(|i| args.base_port.checked_add(i));
            async move {
                let Some(port) = port else {
                    return (
                        *name,
                        String::from("-"),
                        Err("port out of range".to_owned()),
                    );
                };
                let address = format!("{host}:{port}");
                let status = check(&address, grpc_name, timeout).await;
                (*name, address, status)
            }
        });
    let results = futures::future::join_all(checks).await;

    let mut out = std::io::stdout().lock();
    let mut all_serving = true;
    writeln!(out, "{:<14} {:<22} STATUS", "SERVICE", "ADDRESS")?;
    for (name, address, status) in results {
        let shown = match status {
            Ok(text) => {
                all_serving &= text == "SERVING";
                text
            }
            Err(err) => {
                all_serving = false;
                format!("UNREACHABLE ({err})")
            }
        };
        writeln!(out, "{name:<14} {address:<22} {shown}")?;
    }
    Ok(if all_serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The service's own health status (its gRPC name), as text.
async fn check(address: &str, grpc_name: &str, timeout: Duration) -> Result<String, String> {
    let channel = agentmesh_kit::client::plain_channel(&format!("http://{address}"))
        .map_err(|err| err.to_string())?;
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: grpc_name.to_owned(),
    });
    request.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, client.check(request))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(answer.into_inner().status().as_str_name().to_owned())
}
