//! The tool runner service: a registry of tools that agents may call, and
//! their validated, sandboxed execution (`agentmesh.tools.v1.ToolRunnerService`).
//!
//! The orchestrator calls it when a model asks for a tool. A tool that fails
//! is not a gRPC error: the call answers normally with `is_error = true` and
//! an error kind, so the failure can go back to the model. gRPC errors are
//! for calls that cannot be attempted (unknown tool, malformed request,
//! deadline already passed).
//!
//! # How a call flows
//!
//! ```text
//! ExecuteTool / ExecuteToolStream
//!   │ validate the request      INVALID_ARGUMENT (field violations): empty tool,
//!   │                           arguments_json not JSON, negative timeout, bad run_id
//!   │ the caller's allow-list   PERMISSION_DENIED naming the tool (audited as an
//!   │                           AUTHORIZATION denial); the tool never runs
//!   │ look the tool up          NOT_FOUND, listing known tools; a name under the
//!   │                           prefix of an MCP server that is down: UNAVAILABLE
//!   │ effective timeout         min(request timeout, tool timeout, max_timeout,
//!   │                           caller's gRPC deadline), from the call's arrival: it
//!   │                           bounds the wait for a place, every attempt and backoff
//!   │ the tool's circuit        open: UNAVAILABLE, RetryInfo = when it is probed
//!   │ an MCP tool's server      down: UNAVAILABLE, RetryInfo = its next attempt
//!   │ the tool's bulkhead       a place (max_concurrency), or a wait in its queue
//!   │                           (max_queued); queue full: RESOURCE_EXHAUSTED with
//!   │                           RetryInfo; timeout while waiting: DEADLINE_EXCEEDED
//!   ▼ ── from here on, every failure is a result with is_error ──
//!   │ ┌ attempt, until the deadline
//!   │ │ schema check            INVALID_ARGUMENTS, each violation with its JSON pointer
//!   │ │ run                     built-in: calculator inline, file and time tools on
//!   │ │                         the blocking pool; command: a child process
//!   │ │                         (EXECUTION_FAILED, TIMEOUT, INVALID_OUTPUT, DENIED);
//!   │ │                         MCP: tools/call on the server's connection
//!   │ │ circuit                 TIMEOUT, a command's EXECUTION_FAILED and an MCP
//!   │ │                         server out of reach are failures
//!   │ └ retry                   idempotent tools only: EXECUTION_FAILED (and TIMEOUT
//!   │                           with time left), after a backoff that ends before the
//!   │                           deadline, within the retry budget, circuit permitting
//!   ▼ result                    output_json, duration, attempts, call_id echoed
//! ```
//!
//! So one slow or broken tool holds at most its own places and queue, and
//! its failures open only its own circuit: the other tools keep working.
//!
//! Every ExecuteTool and ExecuteToolStream call is recorded as one TOOL_CALL
//! audit event when it ends: with its result, with the status that refused
//! it, or as cancelled when the caller went away.
//!
//! ExecuteToolStream relays a command tool's stderr as output chunks and its
//! `progress:` lines as progress while it runs (an MCP server's
//! `notifications/progress` too), then sends the result. If the client goes
//! away, the running tool is dropped, which kills a command (and sends an
//! MCP server `notifications/cancelled`).
//!
//! # Layout
//!
//! * `config`: [`Config`] and [`CommandToolConfig`] (the `[tool_runner]`
//!   section; command tools are the plugin mechanism).
//! * `registry`: the tools, their compiled JSON Schemas, schema messages;
//!   building it is the configuration check ([`Config::validate`]). The
//!   configured tools are fixed at start; each MCP server's tools are its
//!   own part of it, replaced when the server lists them.
//! * `mcp`: MCP servers as tool sources (`[tool_runner.mcp_servers.NAME]`,
//!   [`McpServerConfig`], docs/mcp.md), through the `rmcp` SDK: a child
//!   process over stdio or streamable HTTP; one supervisor task per server
//!   connects it in the background, lists its tools (again on
//!   `notifications/tools/list_changed`) and restarts or reconnects it with
//!   exponential backoff when it dies; `mcp::call` makes one `tools/call`,
//!   relaying its progress.
//! * `runner`: request checks, timeouts, admission, results; its child
//!   `attempts` gives the shared attempt loop (`agentmesh-resilience`) what
//!   one attempt is, what is retried and what counts against a circuit.
//! * `resilience`: the per-tool guards (bulkhead, circuit breaker, retries
//!   of idempotent tools), their statuses and what counts as a failure;
//!   reported through the service's one `ResilienceReporter` (circuit
//!   gauges and audit events, refusals, retries, bulkhead gauges).
//! * `metrics`: executions by tool and outcome, their duration, those in
//!   flight (the kit adds the gRPC metrics).
//! * `service`: the gRPC handlers and ListTools paging; `allowed`: the
//!   identity's tool allow-list (PERMISSION_DENIED, audited, before a call
//!   is admitted; ListTools shows only allowed tools).
//! * `pipeline`: composite tools from the configuration
//!   (`[tool_runner.pipelines.NAME]`): steps over the other tools, with
//!   fan-outs, conditions and JSON mapping between steps, each step a call
//!   on the same path as ExecuteTool's (the service's `steps`); a caller
//!   must be allowed the pipeline and every tool its steps call.
//! * `builtin`: `calculator`, `current_time`, `read_file`, `write_file`,
//!   `list_files`, `http_request` (opt-in, through `agentmesh-egress`);
//!   `workspace`: per-tenant, per-run directories and path confinement;
//!   `command`: running configured programs.
//! * `sandbox`: how command tools are isolated (a helper mode of this binary
//!   applies rlimits, a network namespace, Landlock and an unprivileged
//!   user, then executes the program), probed and reported at start;
//!   `quota`: workspace quotas per run and tenant, and the sweeper that
//!   removes workspaces unused for `quota.retention` (docs/sandbox.md).
//!
//! Health: ready (SERVING) while every command tool's program is there to
//! run (the `tools` check, also a start-up step retried with backoff, so a
//! program installed late is picked up); the audit service is reported but
//! optional, and so is `sandbox` (failing while a command tool runs with
//! less than full isolation), and each MCP server (`mcp:NAME`, failing
//! while it is down: its tools are then refused, the service serves on). A quota refusal is RESOURCE_EXHAUSTED naming
//! the quota, audited as RATE_LIMITED.
//!
//! [`serve`] binds the gRPC and admin listeners from [`Config`] and hands
//! the service to the kit's [`ServiceHost`], which adds health, reflection,
//! metrics, limits, metadata forwarding and graceful shutdown; `main.rs`
//! only calls it.

mod allowed;
mod builtin;
mod command;
mod config;
mod mcp;
mod metrics;
mod outcome;
mod pipeline;
mod quota;
mod registry;
mod resilience;
mod runner;
pub mod sandbox;
mod service;
mod workspace;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_kit::auth::{Scope, ScopeTable};
use agentmesh_kit::health::DependencyCheck;
use agentmesh_kit::{Listeners, ServeError, ServiceHost, StartupError};
use agentmesh_proto::tools::v1::tool_runner_service_server::ToolRunnerServiceServer;

pub use agentmesh_audit_client::AuditConfig;
pub use builtin::http::HttpToolConfig;
pub use config::{CommandToolConfig, Config};
pub use mcp::{HeaderSource, McpServerConfig};
pub use pipeline::{PipelineConfig, StepCondition, StepConfig};
pub use quota::QuotaConfig;
pub use sandbox::{LimitOverrides, ResourceLimits, SandboxConfig, SandboxMode};

use crate::registry::Implementation;
use crate::runner::ToolRunner;
use crate::sandbox::{SandboxHost, ToolSandbox};
use crate::service::ToolRunnerServiceImpl;

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "tool-runner";
/// The scope each RPC needs (`agentmesh auth scopes` prints every
/// service's table). A new RPC must be added here: the access matrix test
/// fails for a method no table lists.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "agentmesh.tools.v1.ToolRunnerService",
    methods: &[
        ("ListTools", Scope::ToolsRead),
        ("ExecuteTool", Scope::ToolsExecute),
        ("ExecuteToolStream", Scope::ToolsExecute),
    ],
};

/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50053;

/// Serves on the configured ports until `shutdown` resolves, then drains.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let listeners = Listeners::bind(&config.server).await?;
    serve_with_listeners(config, listeners, shutdown).await
}

/// Serves on listeners bound by the caller (tests bind port 0).
///
/// The configuration is checked first (it may not have come through the
/// kit's loader): a bad command tool stops the start with an error naming
/// the setting.
pub async fn serve_with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    agentmesh_kit::config::validate(&config).map_err(invalid_config)?;
    let runner = ToolRunner::new(&config).map_err(invalid_config)?;
    let sandbox = start_sandbox(&config, &runner).await?;
    let runner = runner.with_sandbox(Arc::clone(&sandbox));
    let mut host = ServiceHost::for_config(&config, &[SCOPES])?;
    let metrics = metrics::ToolMetrics::new(host.metrics().registry(), runner.registry().names())?;
    metrics::export_sandbox(host.metrics().registry(), &sandbox.summary())?;
    let sweeper = tokio::spawn(sweep_workspaces(
        Arc::clone(runner.quotas()),
        config.quota.sweep_interval,
    ));
    let audit = agentmesh_audit_client::start_service::<Config>(
        &config.audit,
        &host,
        &effective_config(&config),
    )?;
    // One reporter for the service: circuits, refusals, retries and
    // bulkhead gauges of every tool, in the service's registry.
    let reporter = ResilienceReporter::new(audit.clone(), host.metrics().registry());
    let runner = runner
        .with_metrics(metrics.clone())
        .with_reporter(reporter.clone());
    let mcp_sources = runner.registry().mcp_sources().to_vec();
    let limit = config.server.max_message_bytes;
    host.add_service(
        ToolRunnerServiceServer::new(
            ToolRunnerServiceImpl::new(runner, audit.clone())
                .with_access(allowed::ToolAccess::new(Arc::clone(host.access()))),
        )
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
    );
    let commands = Arc::new(config.commands.clone());
    host.add_check(tools_check(Arc::clone(&commands)))
        .add_check(sandbox_check(&runner_sandbox_shortfalls(&sandbox, &config)))
        .add_check(audit.health_check());
    for source in &mcp_sources {
        host.add_check(source.server.health_check());
    }
    let supervisors = start_mcp_servers(&mcp_sources, &reporter, &metrics);
    // A program that is not installed yet keeps the service NOT_SERVING,
    // with the reason logged, and is looked for again with backoff.
    let startup = || {
        let result = programs_present(&commands);
        async move { result.map_err(StartupError::from) }
    };
    let result = host.serve(listeners, startup, shutdown).await;
    sweeper.abort();
    supervisors.stop().await;
    // The drain is over: send what is queued, or spool it.
    audit.shutdown().await;
    result
}

/// Starts (or reaches) the MCP servers in the background: one that is slow
/// or down never keeps the service from serving. Each list a server gives
/// becomes its tools in the registry; a tool listed for the first time gets
/// its guards watched and its metrics, as the configured tools got theirs.
fn start_mcp_servers(
    sources: &[Arc<registry::McpSource>],
    reporter: &ResilienceReporter,
    metrics: &metrics::ToolMetrics,
) -> mcp::Supervisors {
    let servers = sources
        .iter()
        .map(|source| {
            let server = Arc::clone(&source.server);
            let source = Arc::clone(source);
            let reporter = reporter.clone();
            let metrics = metrics.clone();
            let listed: mcp::Listed = Arc::new(move |tools| {
                source.install(tools, &|tool: &registry::RegisteredTool| {
                    reporter.watch_circuit(&tool.breaker);
                    reporter.watch_bulkhead(&tool.bulkhead);
                    metrics.add(tool.name());
                })
            });
            (server, listed)
        })
        .collect();
    mcp::Supervisors::start(servers)
}

/// Finds what isolation the host gives command tools, logs it, and refuses
/// to start when a `required` tool cannot have all of it.
async fn start_sandbox(
    config: &Config,
    runner: &ToolRunner,
) -> Result<Arc<SandboxHost>, ServeError> {
    let settings = config.sandbox.clone();
    let workspaces_dir = config.workspaces_dir.clone();
    // The probe starts the helper once and waits for it.
    let sandbox =
        tokio::task::spawn_blocking(move || SandboxHost::start(&settings, &workspaces_dir))
            .await
            .map_err(|err| ServeError::Io(std::io::Error::other(err.to_string())))?;
    let summary = sandbox.summary();
    tracing::info!(
        filesystem = summary.filesystem,
        network = summary.network,
        user = summary.user,
        uid = sandbox.user().map(|(user, _)| user),
        limits = summary.limits,
        landlock_abi = summary.landlock_abi,
        "command tool isolation"
    );
    for tool in runner.registry().iter() {
        let Implementation::Command(command) = &tool.implementation else {
            continue;
        };
        let missing = sandbox.shortfall(&command.sandbox);
        if missing.is_empty() {
            continue;
        }
        if command.sandbox.mode == SandboxMode::Required {
            return Err(invalid_config(agentmesh_kit::ConfigError::new(
                format!("commands.{}.sandbox", tool.name()),
                format!(
                    "`required`, but this host cannot give it: {}",
                    missing.join("; ")
                ),
            )));
        }
        tracing::warn!(tool = tool.name(), missing = %missing.join("; "), "command tool runs with less than full isolation");
    }
    Ok(Arc::new(sandbox))
}

/// Each command tool that runs with less than full isolation, and what it
/// lacks.
fn runner_sandbox_shortfalls(sandbox: &SandboxHost, config: &Config) -> Vec<String> {
    config
        .commands
        .iter()
        .filter_map(|(name, command)| {
            let tool = ToolSandbox::resolve(
                &config.sandbox,
                command.sandbox,
                command.network,
                &command.limits,
                &command.read_paths,
                &command.command,
            );
            let missing = sandbox.shortfall(&tool);
            (!missing.is_empty()).then(|| format!("tool `{name}`: {}", missing.join(", ")))
        })
        .collect()
}

/// The optional check `sandbox`: failing (reported, readiness unchanged)
/// while some command tool runs with less than full isolation, naming it.
fn sandbox_check(shortfalls: &[String]) -> DependencyCheck {
    let result = if shortfalls.is_empty() {
        Ok(())
    } else {
        Err(format!("partial isolation: {}", shortfalls.join("; ")))
    };
    DependencyCheck::optional("sandbox", move || {
        let result = result.clone();
        async move { result }
    })
}

/// Removes expired workspaces every `interval`, until aborted.
async fn sweep_workspaces(quotas: Arc<quota::Quotas>, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let quotas = Arc::clone(&quotas);
        let removed =
            tokio::task::spawn_blocking(move || quotas.sweep(std::time::SystemTime::now())).await;
        if let Ok(removed @ 1..) = removed {
            tracing::info!(removed, "expired workspaces removed");
        }
    }
}

/// The required readiness check `tools`: the registry is loaded (it is, once
/// `serve` runs) and every command tool's program is there to run.
fn tools_check(commands: Arc<BTreeMap<String, CommandToolConfig>>) -> DependencyCheck {
    DependencyCheck::required("tools", move || {
        let result = programs_present(&commands);
        async move { result }
    })
}

/// `Ok` when every command tool's program can be started; else the tools
/// whose program is missing, and what was looked for.
fn programs_present(commands: &BTreeMap<String, CommandToolConfig>) -> Result<(), String> {
    let missing: Vec<String> = commands
        .iter()
        .filter_map(|(name, tool)| {
            let program = tool.command.first()?;
            let path = tool
                .env
                .get("PATH")
                .map_or_else(command::service_path, Into::into);
            (!program_found(program, &path))
                .then(|| format!("tool `{name}`: program `{program}` not found or not executable"))
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("command tools cannot run: {}", missing.join("; ")))
    }
}

/// Whether `program` can be started with `PATH` = `path`: an executable
/// file at that path when it names one, else in some `PATH` directory. A
/// relative path with a directory part is relative to each run's workspace,
/// so it cannot be checked ahead; it counts as found.
fn program_found(program: &str, path: &OsStr) -> bool {
    let program = Path::new(program);
    if program.is_absolute() {
        return is_executable(program);
    }
    if program.components().count() > 1 {
        return true;
    }
    std::env::split_paths(path).any(|dir| is_executable(&dir.join(program)))
}

fn is_executable(path: &Path) -> bool {
    let Ok(metadata) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        metadata.is_file()
    }
}

/// Hex SHA-256 of the effective configuration, to spot changes. Values of
/// command tools' `env` may be secrets (tokens a tool needs): only their
/// names count.
fn effective_config(config: &Config) -> Config {
    let mut effective = config.clone();
    for command in effective.commands.values_mut() {
        for value in command.env.values_mut() {
            "[REDACTED]".clone_into(value);
        }
    }
    for server in effective.mcp_servers.values_mut() {
        for value in server.env.values_mut() {
            "[REDACTED]".clone_into(value);
        }
    }
    effective
}

/// A configuration error as the kit's serve error (it has no variant of its
/// own for configuration; the message names the setting).
fn invalid_config(error: agentmesh_kit::ConfigError) -> ServeError {
    ServeError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        error.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(argv: &[&str]) -> CommandToolConfig {
        CommandToolConfig {
            description: "a test tool".into(),
            command: argv.iter().map(|arg| (*arg).to_owned()).collect(),
            ..CommandToolConfig::default()
        }
    }

    #[test]
    fn programs_are_looked_for_on_path_and_missing_ones_named() {
        let mut commands = BTreeMap::from([
            ("shell".to_owned(), tool(&["sh", "-c", "true"])),
            ("absolute".to_owned(), tool(&["/bin/sh"])),
        ]);
        programs_present(&commands).unwrap();
        commands.insert("gone".to_owned(), tool(&["agentmesh-no-such-program", "x"]));
        commands.insert("nowhere".to_owned(), tool(&["/nonexistent/program"]));
        let reason = programs_present(&commands).unwrap_err();
        assert!(
            reason.contains("tool `gone`: program `agentmesh-no-such-program`"),
            "{reason}"
        );
        assert!(reason.contains("tool `nowhere`"), "{reason}");
        assert!(!reason.contains("shell"), "{reason}");
    }

    #[test]
    fn a_file_that_is_not_executable_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let script = script.to_str().unwrap();
        assert!(!program_found(script, OsStr::new("")));
        let mut tool = tool(&["my-tool"]);
        tool.env
            .insert("PATH".into(), dir.path().display().to_string());
        std::fs::copy("/bin/sh", dir.path().join("my-tool")).unwrap();
        programs_present(&BTreeMap::from([("mine".to_owned(), tool)])).unwrap();
    }
}
