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
//!   │ look the tool up          NOT_FOUND, listing known tools
//!   │ effective timeout         min(request timeout, tool timeout, max_timeout,
//!   │                           caller's gRPC deadline)
//!   ▼ ── from here on, every failure is a result with is_error ──
//!   │ schema check              INVALID_ARGUMENTS, each violation with its JSON pointer
//!   │ run under the timeout     built-in: calculator inline, file and time tools on
//!   │                           the blocking pool; command: a child process
//!   │                           (EXECUTION_FAILED, TIMEOUT, INVALID_OUTPUT, DENIED)
//!   ▼ result                    output_json, duration, call_id echoed
//! ```
//!
//! Every ExecuteTool and ExecuteToolStream call is recorded as one TOOL_CALL
//! audit event when it ends: with its result, with the status that refused
//! it, or as cancelled when the caller went away.
//!
//! ExecuteToolStream relays a command tool's stderr as output chunks and its
//! `progress:` lines as progress while it runs, then sends the result. If
//! the client goes away, the running tool is dropped, which kills a command.
//!
//! # Layout
//!
//! * [`config`]: [`Config`] and [`CommandToolConfig`] (the `[tool_runner]`
//!   section; command tools are the plugin mechanism).
//! * `registry`: the tools, their compiled JSON Schemas, schema messages.
//! * `runner`: request checks, timeouts, execution, results.
//! * `service`: the gRPC handlers and ListTools paging.
//! * `builtin`: `calculator`, `current_time`, `read_file`, `write_file`,
//!   `list_files`; `workspace`: per-run directories and path confinement;
//!   `command`: running configured programs.
//!
//! [`serve`] binds the gRPC and admin listeners from [`Config`] and hands
//! the service to the kit's [`ServiceHost`], which adds health, reflection,
//! metrics, limits, metadata forwarding and graceful shutdown; `main.rs`
//! only calls it.

mod builtin;
mod command;
pub mod config;
mod outcome;
mod registry;
mod runner;
mod service;
mod workspace;

use std::future::Future;

use agentmesh_kit::{Listeners, ServeError, ServiceHost, StartupError};
use agentmesh_proto::tools::v1::tool_runner_service_server::ToolRunnerServiceServer;

pub use agentmesh_audit_client::AuditConfig;
pub use config::{CommandToolConfig, Config};

use crate::runner::ToolRunner;
use crate::service::ToolRunnerServiceImpl;

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "tool-runner";
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
    let mut host = ServiceHost::new(SERVICE, &config.server);
    let audit = agentmesh_audit_client::start_service::<Config>(
        &config.audit,
        SERVICE,
        host.metrics().registry(),
        &effective_config(&config),
    )?;
    let limit = config.server.max_message_bytes;
    host.add_service(
        ToolRunnerServiceServer::new(ToolRunnerServiceImpl::new(runner, audit.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    let result = host
        .serve(listeners, || async { Ok::<(), StartupError>(()) }, shutdown)
        .await;
    // The drain is over: send what is queued, or spool it.
    audit.shutdown().await;
    result
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
