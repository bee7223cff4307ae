//! The client commands: `run`, `runs list|get|cancel`, `tools list`.
//!
//! Each talks to the orchestrator (or tool runner) at the address given by
//! flag or environment; with none, it starts the embedded mesh in this
//! process on the data directory, so `agentmesh run` and `agentmesh runs
//! list` work on a fresh clone with nothing else running. Only `run` says
//! (on stderr) that the scripted demo model answers when no provider key is
//! set: the other commands run no model.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient,
};
use agentmesh_proto::tools::v1::{
    self as tools, tool_runner_service_client::ToolRunnerServiceClient,
};
use anyhow::Context as _;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::credential::{self, CliChannel, CredentialArgs};
use crate::mesh::{Mesh, MeshConfigs, Ports};

/// Where to find the mesh.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// Address of a running orchestrator (e.g. http://localhost:50051).
    /// Unset: start the embedded mesh in this process.
    #[arg(long, env = "AGENTMESH_ORCHESTRATOR", global = true)]
    orchestrator: Option<String>,
    #[command(flatten)]
    embedded: Embedded,
    #[command(flatten)]
    credential: CredentialArgs,
}

/// The services started in this process when no address is given.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Embedded {
    /// Directory of the embedded mesh's databases and workspaces.
    #[arg(long, default_value = "data", global = true)]
    pub(crate) data_dir: PathBuf,
    /// Configuration file of the embedded mesh (a section per service).
    #[arg(long, short = 'c', env = "AGENTMESH_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// Show the embedded services' logs at this level (e.g. info).
    #[arg(long, default_value = "error", global = true)]
    pub(crate) log_level: String,
    /// Serve the HTTP edge too, on this loopback port (0: any free port)
    /// while the command runs; its address is printed on stderr.
    #[arg(long, global = true)]
    pub(crate) edge_port: Option<u16>,
}

impl Embedded {
    /// Sends the embedded services' logs to stderr, at the chosen level.
    pub(crate) fn init_logging(&self) {
        agentmesh_kit::logging::init(
            "agentmesh",
            &agentmesh_kit::LogConfig {
                format: agentmesh_kit::config::LogFormat::Pretty,
                level: self.log_level.clone(),
                ..Default::default()
            },
        );
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// What the agent should achieve.
    objective: String,
    /// Agent profile (see `agentmesh agents`); default: the default profile.
    #[arg(long, default_value = "")]
    agent: String,
    /// Continue the conversation of an earlier run's session.
    #[arg(long, default_value = "")]
    session: String,
    /// Print every event as a JSON line on stdout instead.
    #[arg(long)]
    json: bool,
    /// Most model calls the run may make (0 = the profile's).
    #[arg(long, default_value_t = 0)]
    max_steps: i32,
    /// A label for the run, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Model route or provider/model for the embedded gateway's default
    /// route (with OPENAI_API_KEY or ANTHROPIC_API_KEY set).
    #[arg(long, env = "AGENTMESH_MODEL")]
    model: Option<String>,
    #[command(flatten)]
    target: Target,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs in this state (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Vec<String>,
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: i32,
        #[command(flatten)]
        target: Target,
    },
    /// Show one run.
    Get {
        run_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Cancel a run.
    Cancel {
        run_id: String,
        /// Why (recorded with the run).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ToolsCommand {
    /// List the tools, with their arguments' schema.
    List {
        /// Address of a running tool runner (e.g. http://localhost:50053).
        #[arg(long, env = "AGENTMESH_TOOL_RUNNER")]
        tool_runner: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// A connection to the mesh, embedded or remote.
struct Connection {
    orchestrator: CliChannel,
    tool_runner: Option<CliChannel>,
    embedded: Option<Mesh>,
}

impl Connection {
    /// To read runs or tools: no model answers, so nothing is said about it.
    async fn open(target: &Target) -> anyhow::Result<Self> {
        Self::open_with_model(target, None, false).await
    }

    /// To answer a run on `model`; `announce` says on stderr when, embedded,
    /// the scripted demo model is the one answering.
    async fn open_with_model(
        target: &Target,
        model: Option<&str>,
        announce: bool,
    ) -> anyhow::Result<Self> {
        let credential = target.credential.resolve()?;
        if let Some(address) = &target.orchestrator {
            let orchestrator = agentmesh_kit::client::plain_channel(address)
                .with_context(|| format!("bad orchestrator address {address:?}"))?;
            return Ok(Self {
                orchestrator: credential::channel(orchestrator, &credential),
                tool_runner: None,
                embedded: None,
            });
        }
        let embedded = &target.embedded;
        embedded.init_logging();
        let mut configs = MeshConfigs::load(
            embedded.config.as_deref(),
            Ports::Ephemeral,
            &embedded.data_dir,
        )
        .map_err(|err| anyhow::anyhow!("{err}"))?;
        if let Some(port) = embedded.edge_port {
            configs = configs
                .with_edge(
                    embedded.config.as_deref(),
                    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                    Some(port),
                )
                .map_err(|err| anyhow::anyhow!("{err}"))?;
        }
        configs.require_credential(&credential)?;
        let provider = choose_provider(&mut configs.llm_gateway, model);
        if announce && provider == Provider::ScriptedDemo {
            let _ = writeln!(
                std::io::stderr(),
                "agentmesh: no OPENAI_API_KEY or ANTHROPIC_API_KEY set: the scripted demo model \
                 answers (it does arithmetic and tells the time). Set one of them to run a real \
                 model."
            );
        }
        let mesh = Box::pin(Mesh::start(configs)).await?;
        if let Some(edge) = mesh.edge {
            let _ = writeln!(std::io::stderr(), "agentmesh: HTTP edge on http://{edge}");
        }
        let orchestrator =
            agentmesh_kit::client::plain_channel(&format!("http://{}", mesh.orchestrator))?;
        let tool_runner =
            agentmesh_kit::client::plain_channel(&format!("http://{}", mesh.tool_runner))?;
        wait_serving(
            &orchestrator,
            "agentmesh.orchestrator.v1.OrchestratorService",
        )
        .await?;
        Ok(Self {
            orchestrator: credential::channel(orchestrator, &credential),
            tool_runner: Some(credential::channel(tool_runner, &credential)),
            embedded: Some(mesh),
        })
    }

    async fn close(self) {
        if let Some(mesh) = self.embedded
            && let Err(err) = mesh.stop().await
        {
            let _ = writeln!(
                std::io::stderr(),
                "agentmesh: stopping the embedded mesh: {err:#}"
            );
        }
    }
}

/// Who answers the embedded mesh's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    /// A real provider, whose key is in the environment.
    Real,
    /// The scripted demo model: no key is set.
    ScriptedDemo,
}

/// Points the embedded gateway's default route at a real provider when a key
/// is in the environment; says which answers.
fn choose_provider(gateway: &mut agentmesh_llm_gateway::Config, model: Option<&str>) -> Provider {
    let route = gateway.default_route.clone();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    // `provider/model` naming a configured provider is a target as it is;
    // a bare model name is the keyed provider's.
    let named = model.filter(|model| {
        model
            .split_once('/')
            .is_some_and(|(provider, _)| gateway.providers.contains_key(provider))
    });
    let target = if env("OPENAI_API_KEY").is_some() {
        if let (Some(url), Some(openai)) =
            (env("OPENAI_BASE_URL"), gateway.providers.get_mut("openai"))
        {
            openai.base_url = url;
        }
        named.map_or_else(
            || format!("openai/{}", model.unwrap_or("gpt-4o-mini")),
            str::to_owned,
        )
    } else if env("ANTHROPIC_API_KEY").is_some() {
        named.map_or_else(
            || format!("anthropic/{}", model.unwrap_or("claude-sonnet-4-5")),
            str::to_owned,
        )
    } else {
        return Provider::ScriptedDemo;
    };
    // A route named on the command line that the gateway knows is used as is.
    if let Some(model) = model
        && gateway.routes.contains_key(model)
    {
        gateway.default_route = model.to_owned();
        return Provider::Real;
    }
    if let Some(default) = gateway.routes.get_mut(&route) {
        default.target = target;
    }
    Provider::Real
}

/// Waits until the service answers SERVING (the embedded mesh is starting).
pub(crate) async fn wait_serving(channel: &Channel, service: &str) -> anyhow::Result<()> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let started = tokio::time::Instant::now();
    loop {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await;
        if let Ok(answer) = &answer
            && answer.get_ref().status()
                == tonic_health::pb::health_check_response::ServingStatus::Serving
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the embedded {service} did not become ready within 30s: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_error(what: &str, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", status_text(status))
}

/// A failed call, for a person: `CODE: message`, then each field violation
/// of a `google.rpc.BadRequest` detail on a line of its own.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(bad_request) = status.get_error_details().bad_request() {
        for violation in &bad_request.field_violations {
            text.push_str(&format!(
                "\n  {}: {}",
                violation.field, violation.description
            ));
        }
    }
    text
}

/// Prints a failed call as `error: CODE: message` (and its field violations)
/// on stderr; the command's exit code.
pub(crate) fn print_status(status: &tonic::Status) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {}", status_text(status));
    ExitCode::FAILURE
}

/// The canonical name of a gRPC status code, e.g. `INVALID_ARGUMENT`.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (index, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let connection = Connection::open_with_model(&args.target, args.model.as_deref(), true).await?;
    let request = pb::RunRequest {
        objective: args.objective,
        agent: args.agent,
        session_id: args.session,
        limits: (args.max_steps > 0).then_some(pb::RunLimits {
            max_steps: args.max_steps,
            ..pb::RunLimits::default()
        }),
        labels: args.labels.into_iter().collect(),
        ..pb::RunRequest::default()
    };
    let result =
        crate::run::run_and_show(connection.orchestrator.clone(), request, args.json).await;
    connection.close().await;
    result
}

fn state_name(state: i32) -> String {
    pb::RunState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("RUN_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| state.to_string())
}

fn time_text(time: Option<&prost_types::Timestamp>) -> String {
    crate::time::from_proto(time)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

pub(crate) async fn runs(command: RunsCommand) -> anyhow::Result<ExitCode> {
    let target = match &command {
        RunsCommand::List { target, .. }
        | RunsCommand::Get { target, .. }
        | RunsCommand::Cancel { target, .. } => target.clone(),
    };
    let connection = Connection::open(&target).await?;
    let mut client = OrchestratorServiceClient::new(connection.orchestrator.clone());
    let result = async {
        let mut out = std::io::stdout().lock();
        match command {
            RunsCommand::List { state, limit, .. } => {
                let states = state
                    .iter()
                    .map(|name| {
                        pb::RunState::from_str_name(&format!("RUN_STATE_{}", name.to_uppercase()))
                            .map(i32::from)
                            .ok_or_else(|| anyhow::anyhow!("--state {name:?}: use queued, running, succeeded, failed or cancelled"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let runs = client
                    .list_runs(pb::ListRunsRequest { page_size: limit, states, ..pb::ListRunsRequest::default() })
                    .await
                    .map_err(|s| status_error("listing runs", &s))?
                    .into_inner()
                    .runs;
                writeln!(out, "{:<36}  {:<9}  {:<19}  {:>5}  OBJECTIVE", "RUN", "STATE", "CREATED", "STEPS")?;
                for run in runs {
                    let mut objective: String = run.objective.chars().take(60).collect();
                    if run.objective.chars().count() > 60 {
                        objective.push('…');
                    }
                    writeln!(
                        out,
                        "{:<36}  {:<9}  {:<19}  {:>5}  {}",
                        run.run_id,
                        state_name(run.state),
                        time_text(run.create_time.as_ref()),
                        run.steps,
                        objective.replace('\n', " ")
                    )?;
                }
            }
            RunsCommand::Get { run_id, .. } => {
                let run = client
                    .get_run(pb::GetRunRequest { run_id })
                    .await
                    .map_err(|s| status_error("getting the run", &s))?
                    .into_inner()
                    .run
                    .unwrap_or_default();
                show_run(&mut out, &run)?;
            }
            RunsCommand::Cancel { run_id, reason, .. } => {
                let run = client
                    .cancel_run(pb::CancelRunRequest { run_id, reason })
                    .await
                    .map_err(|s| status_error("cancelling the run", &s))?
                    .into_inner()
                    .run
                    .unwrap_or_default();
                show_run(&mut out, &run)?;
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    }
    .await;
    connection.close().await;
    result
}

fn show_run(out: &mut impl std::io::Write, run: &pb::Run) -> std::io::Result<()> {
    let usage = run.usage.unwrap_or_default();
    writeln!(out, "run:        {}", run.run_id)?;
    writeln!(out, "state:      {}", state_name(run.state))?;
    writeln!(out, "agent:      {}", run.agent)?;
    writeln!(out, "session:    {}", run.session_id)?;
    writeln!(out, "objective:  {}", run.objective)?;
    writeln!(out, "created:    {}", time_text(run.create_time.as_ref()))?;
    writeln!(out, "ended:      {}", time_text(run.end_time.as_ref()))?;
    writeln!(
        out,
        "steps:      {} ({} tool calls)",
        run.steps, run.tool_calls
    )?;
    writeln!(
        out,
        "tokens:     {} input, {} output",
        usage.input_tokens, usage.output_tokens
    )?;
    if let Some(error) = &run.error {
        writeln!(
            out,
            "error:      {:?}: {}",
            tonic::Code::from_i32(error.code),
            error.message
        )?;
    }
    if !run.output.is_empty() {
        writeln!(out, "output:\n{}", run.output)?;
    }
    Ok(())
}

pub(crate) async fn tools(command: ToolsCommand) -> anyhow::Result<ExitCode> {
    let ToolsCommand::List {
        tool_runner,
        mut target,
    } = command;
    // The tool runner is asked directly: at its address when given, else in
    // the embedded mesh. The orchestrator cannot list tools, so an
    // orchestrator address alone would silently list the embedded mesh's
    // tools instead of the running mesh's.
    if tool_runner.is_none() && target.orchestrator.is_some() {
        anyhow::bail!(
            "tools list asks the tool runner, not the orchestrator: give its address with \
             --tool-runner http://host:50053 (or AGENTMESH_TOOL_RUNNER)"
        );
    }
    let (channel, connection) = match tool_runner {
        Some(address) => (
            credential::channel(
                agentmesh_kit::client::plain_channel(&address)
                    .with_context(|| format!("bad tool runner address {address:?}"))?,
                &target.credential.resolve()?,
            ),
            None,
        ),
        None => {
            target.orchestrator = None;
            let connection = Connection::open(&target).await?;
            let channel = connection
                .tool_runner
                .clone()
                .context("the embedded mesh has no tool runner")?;
            (channel, Some(connection))
        }
    };
    let result = async {
        let list = ToolRunnerServiceClient::new(channel)
            .list_tools(tools::ListToolsRequest {
                page_size: 1000,
                ..tools::ListToolsRequest::default()
            })
            .await
            .map_err(|s| status_error("listing tools", &s))?
            .into_inner();
        let mut out = std::io::stdout().lock();
        for tool in list.tools {
            let kind = tools::ToolKind::try_from(tool.kind)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("TOOL_KIND_")
                        .to_lowercase()
                })
                .unwrap_or_default();
            writeln!(
                out,
                "{} ({kind})\n  {}\n  arguments: {}",
                tool.name, tool.description, tool.parameters_json
            )?;
        }
        anyhow::Ok(ExitCode::SUCCESS)
    }
    .await;
    if let Some(connection) = connection {
        connection.close().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_names_the_code_and_every_field_violation() {
        let status = agentmesh_kit::status::invalid_argument([
            ("filter.start_time", "must be before filter.end_time"),
            ("page_size", "must not be negative"),
        ]);
        let text = status_text(&status);
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("INVALID_ARGUMENT: filter.start_time")
        );
        assert_eq!(
            lines.next(),
            Some("  filter.start_time: must be before filter.end_time")
        );
        assert_eq!(lines.next(), Some("  page_size: must not be negative"));
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(
            status_text(&tonic::Status::unimplemented("not yet")),
            "UNIMPLEMENTED: not yet"
        );
    }
}
