//! The `agentmesh` command line.
//!
//! * `agentmesh up` runs all five services in this one process, each on its
//!   own port (50051…50055 by default, admin ports 51051…51055), with the
//!   embedded defaults: SQLite files under `./data`, no setup. Ctrl-C drains
//!   and stops them all.
//! * `agentmesh run "OBJECTIVE"` runs an agent and shows it live. With no
//!   orchestrator address (`--orchestrator`, `AGENTMESH_ORCHESTRATOR`) it
//!   starts the whole mesh in this process on free loopback ports (real gRPC
//!   between the services, SQLite under `./data`) and runs there.
//! * `agentmesh runs list|get|cancel` and `agentmesh tools list` talk to a
//!   running mesh, or, with no address given, to the embedded one.
//! * `agentmesh audit query|export|report|verify` reads the audit log: from
//!   the audit service at `--audit` (`AGENTMESH_AUDIT`), or, with none, from
//!   the audit service started alone in this process over the data directory.
//! * `agentmesh alerts list|watch` and `agentmesh silences add|list|expire`
//!   talk to the alerting service at `--alerting` (`AGENTMESH_ALERTING`,
//!   default the port `agentmesh up` uses), in the manner of `amtool`.
//! * `agentmesh health` asks each service of a running mesh for its
//!   `grpc.health.v1` status and prints a table; `--deep` adds every
//!   dependency of each (from its admin port's `/health/deep`) with the
//!   reason of each failing one. The exit code says whether all are ready.
//! * `agentmesh keys create|list|revoke` makes API keys and keeps the keys
//!   file, like `htpasswd`; `agentmesh auth scopes` prints the scope each
//!   RPC needs.
//! * `agentmesh load run|generate|http` puts load on a running mesh at a
//!   fixed rate or concurrency and reports latencies (the client `make
//!   bench` uses).
//! * Every client command takes `--api-key` (`AGENTMESH_API_KEY`) or
//!   `--token` (`AGENTMESH_TOKEN`) and presents it on each call.
//!
//! # Layout
//!
//! Flags are parsed by clap into each command's arguments; a command turns
//! them into requests, calls the service (remote, or started in this
//! process), and renders the answers.
//!
//! * `mesh`: the embedded services and their configuration (`up`, and the
//!   commands run with no address).
//! * `commands` (`run`, `runs`, `tools`, with `run` showing a run live) and
//!   `health`.
//! * `audit/`: `flags` and `filter` (the TIME parser, the `EventFilter`),
//!   `connection`, then one module per command (`query` with `events`,
//!   `export`, `report`, `verify`).
//! * `alerting/`: what `alerts` and `silences` share: the target and
//!   connection, the output choice, the label matchers (and, in tests, a
//!   fake alerting service). `alerts/`: the flags and requests, `list`,
//!   `watch`, `render`. `silences`: add, list, expire.
//! * `load`: `agentmesh load` (the load client is `agentmesh-load`).
//! * `credential`: the caller's key or token and the channels that send it.
//! * `keys/`: the keys commands (`create`, and `file`: changes of the keys
//!   file, atomic); `scopes`: `auth scopes`.
//! * `output`: protobuf JSON lines and the one table formatter; `time`: the
//!   one duration grammar (`30m`, `1h30m`, `PT2H`) and the conversions
//!   between jiff and protobuf timestamps.

mod alerting;
mod alerts;
mod audit;
mod commands;
mod credential;
mod health;
mod keys;
mod load;
mod mesh;
mod output;
mod run;
mod scopes;
mod silences;
mod time;

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agentmesh_kit::LogConfig;
use agentmesh_kit::config::LogFormat;
use clap::{Parser, Subcommand};

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
    /// Run an agent on an objective and show its answer live.
    Run(commands::RunArgs),
    /// List, show or cancel runs.
    #[command(subcommand)]
    Runs(commands::RunsCommand),
    /// List the tools agents can call.
    #[command(subcommand)]
    Tools(commands::ToolsCommand),
    /// Query, export, report on and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// List or watch the alerts of the alerting service.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Add, list or expire silences of the alerting service.
    #[command(subcommand)]
    Silences(silences::SilencesCommand),
    /// Show the health status of each service of a running mesh.
    Health(health::HealthArgs),
    /// Make, list and revoke API keys in a keys file.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Identity and access: the scope each RPC needs.
    #[command(subcommand)]
    Auth(scopes::AuthCommand),
    /// Put load on a running mesh (runs, gateway calls or HTTP requests) at
    /// a fixed rate or concurrency, and report latencies and errors.
    Load(load::LoadArgs),
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
    /// Port of the HTTP edge (OpenAI-compatible API, runs over REST, SSE
    /// and WebSocket); its admin port is this + 1000. Unset: `[edge]`
    /// `server.port` of the configuration, 8080 by default.
    #[arg(long)]
    edge_port: Option<u16>,
    /// Do not serve the HTTP edge.
    #[arg(long)]
    no_edge: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Pretty,
    Json,
}

fn main() -> ExitCode {
    // The embedded tool runner re-runs this executable as the sandbox helper
    // of its command tools; in that mode it never reaches the CLI.
    if let Some(code) = agentmesh_tool_runner::sandbox::helper_main() {
        return code;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the runtime: {err}")),
    };
    // The embedded mesh makes some commands' futures large: boxed, so the
    // dispatch does not copy them around the stack.
    let result = runtime.block_on(async move {
        let result = match cli.command {
            Command::Up(args) => up(args).await,
            Command::Run(args) => Box::pin(commands::run(args)).await,
            Command::Runs(command) => Box::pin(commands::runs(command)).await,
            Command::Tools(command) => Box::pin(commands::tools(command)).await,
            Command::Audit(command) => audit::audit(command).await,
            Command::Alerts(command) => alerts::alerts(command).await,
            Command::Silences(command) => silences::silences(command).await,
            Command::Health(args) => health::health(args).await,
            Command::Keys(command) => keys::keys(command),
            Command::Auth(command) => scopes::auth(command),
            Command::Load(args) => load::load(args).await,
        };
        // The embedded services' last spans, when traces are on.
        // (It blocks while it exports: off the runtime's threads.)
        drop(tokio::task::spawn_blocking(agentmesh_kit::telemetry::shutdown).await);
        result
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

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    agentmesh_kit::logging::init(
        "agentmesh",
        &LogConfig {
            format: match args.log_format {
                LogFormatArg::Pretty => LogFormat::Pretty,
                LogFormatArg::Json => LogFormat::Json,
            },
            level: args.log_level.clone(),
            ..Default::default()
        },
    );
    let configs = match mesh::MeshConfigs::load(
        args.config.as_deref(),
        mesh::Ports::From(args.host, args.base_port),
        &args.data_dir,
    )
    .and_then(|configs| {
        if args.no_edge {
            Ok(configs)
        } else {
            configs.with_edge(args.config.as_deref(), args.host, args.edge_port)
        }
    }) {
        Ok(configs) => configs,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "agentmesh: {err}");
            return Ok(ExitCode::from(agentmesh_kit::main_support::EXIT_CONFIG));
        }
    };
    let mesh = Box::pin(mesh::Mesh::start(configs)).await?;
    let stopper = mesh.stopper();
    tokio::select! {
        () = agentmesh_kit::shutdown::signal() => {}
        () = mesh.stopped() => {}
    }
    stopper.cancel();
    mesh.stop().await?;
    Ok(ExitCode::SUCCESS)
}
