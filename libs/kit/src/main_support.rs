//! What every service binary's `main` does, so each stays a few lines:
//! parse the common flags, load and check the configuration (exit 64 naming
//! the bad setting), start logging and the runtime, serve until a signal,
//! drain, and exit 0.

use std::fmt::Display;
use std::future::Future;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::config::{self, Overrides, ServiceConfig};

/// Exit code for a configuration error (sysexits' EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// The flags every service binary takes.
#[derive(Debug, Parser)]
struct ServiceArgs {
    /// Configuration file (TOML): this service's settings at top level, or a
    /// file with a section per service.
    #[arg(long, short = 'c', env = "AGENTMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (server.host).
    #[arg(long)]
    host: Option<IpAddr>,
    /// gRPC port (server.port).
    #[arg(long)]
    port: Option<u16>,
    /// Admin HTTP port (server.admin_port).
    #[arg(long)]
    admin_port: Option<u16>,
    /// Any setting, as KEY=VALUE with a dotted key (e.g. server.grace_period=10s).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    dump_config: bool,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .filter(|(key, _)| !key.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got `{text}`"))
}

/// Runs a service binary: `serve` gets the configuration and a future that
/// resolves when the process is asked to stop.
pub fn run<C, Serve, Fut, E>(serve: Serve) -> ExitCode
where
    C: ServiceConfig,
    Serve: FnOnce(C, futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let binary = format!("agentmesh-{}", C::SERVICE);
    let command = ServiceArgs::command()
        .name(binary.clone())
        .about(format!(
            "The agentmesh {} service. Settings come from defaults, then --config, then {}* environment variables, then flags.",
            C::SERVICE,
            config::env_prefix::<C>()
        ));
    let args = match ServiceArgs::from_arg_matches(&command.get_matches()) {
        Ok(args) => args,
        Err(err) => err.exit(),
    };
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        admin_port: args.admin_port,
        set: args.set,
    };
    let config: C = match config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "{binary}: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.dump_config {
        let _ = write!(std::io::stdout(), "{}", config::to_toml(&config));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "{binary}: cannot start the runtime: {err}"
            );
            return ExitCode::FAILURE;
        }
    };
    {
        let _runtime = runtime.enter();
        crate::logging::init(C::SERVICE, config.log());
    }
    let result = runtime.block_on(async move {
        tracing::info!(
            service = C::SERVICE,
            version = env!("CARGO_PKG_VERSION"),
            "starting"
        );
        serve(config, Box::pin(crate::shutdown::signal())).await
    });
    // Export the last spans while the runtime (the exporter's connection)
    // still runs; then tasks still running (connections cut at the end of
    // the grace period) must not hold up the exit.
    {
        let _runtime = runtime.enter();
        crate::telemetry::shutdown();
    }
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "stopped with an error");
            let _ = writeln!(std::io::stderr(), "{binary}: {err}");
            ExitCode::FAILURE
        }
    }
}
