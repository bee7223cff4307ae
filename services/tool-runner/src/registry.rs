//! The tool registry: every tool the service can run, built once at start
//! from the built-ins and the configured command tools.
//!
//! Building it is also the configuration check ([`Config::validate`] is
//! defined here, so the settings need not know the registry): names are
//! validated, and each tool's JSON Schemas are compiled here, once, so a
//! call only runs the compiled validator. The `jsonschema` crate is used without its default
//! features, so a schema can never make the service fetch anything over the
//! network or from disk: a remote `$ref` is a configuration error.
//!
//! Each tool also gets its guards here, named `tool:<name>`: a bulkhead of
//! its concurrency limit and queue, and a circuit breaker (see `runner` for
//! how a call passes them).
//!
//! The configured tools are fixed at start; an MCP server's tools are its
//! own part of the registry, replaced whenever the server lists them (see
//! `mcp`; the child module `mcp` keeps and builds them). Lookups and
//! listings see both.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use agentmesh_kit::ident::check_identifier_setting;
use agentmesh_kit::text::truncate_bytes;
use agentmesh_proto::tools::v1::{self, ToolKind};
use agentmesh_resilience::{Bulkhead, CircuitBreaker};
use serde_json::Value;

use crate::builtin::Builtin;
use crate::command::{CommandTool, service_path};
use crate::config::{CommandToolConfig, Config, MAX_CONCURRENCY, MAX_QUEUED, format_duration};
use crate::mcp::McpServer;
use crate::outcome::ToolFailure;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::sandbox::{ToolSandbox, validate_read_paths};

mod mcp;

pub(crate) use mcp::{McpSource, McpTool};

/// The label ListTools shows on a pipeline (`agentmesh.kind = pipeline`):
/// the contract's `ToolKind` has no value for pipelines, so they are
/// listed as `TOOL_KIND_UNSPECIFIED` with this label.
pub(crate) const PIPELINE_LABEL: &str = "agentmesh.kind";

/// At most this many schema violations are listed in one message.
const MAX_LISTED_VIOLATIONS: usize = 10;
/// Each violation's text is cut to this many bytes (the validator quotes
/// the offending value, which may be large).
const MAX_VIOLATION_BYTES: usize = 300;

/// How a tool runs.
#[derive(Debug)]
pub(crate) enum Implementation {
    Builtin(Builtin),
    Command(CommandTool),
    /// Steps calling the other tools (never another pipeline).
    Pipeline(Pipeline),
    /// A tool of an MCP server.
    Mcp(McpTool),
}

/// One tool: its public description, compiled schemas and implementation.
#[derive(Debug)]
pub(crate) struct RegisteredTool {
    /// What ListTools returns for it.
    pub(crate) descriptor: v1::Tool,
    /// The tool's own timeout.
    pub(crate) timeout: Duration,
    pub(crate) implementation: Implementation,
    /// At most `max_concurrency` calls at once, `max_queued` waiting.
    pub(crate) bulkhead: Bulkhead,
    /// Opens when runs keep failing or timing out.
    pub(crate) breaker: CircuitBreaker,
    arguments: jsonschema::Validator,
    output: Option<jsonschema::Validator>,
}

impl RegisteredTool {
    /// The tool's name.
    pub(crate) fn name(&self) -> &str {
        &self.descriptor.name
    }

    /// The tools a call of this one also calls (a pipeline's steps'), which
    /// a caller must be allowed too.
    pub(crate) fn inner_tools(&self) -> &[String] {
        match &self.implementation {
            Implementation::Pipeline(pipeline) => pipeline.tools(),
            _ => &[],
        }
    }

    /// `tool:<name>`: how its bulkhead and circuit are named in metrics,
    /// audit events and logs.
    pub(crate) fn target(&self) -> &str {
        self.breaker.target()
    }

    /// Checks arguments against the parameter schema; the failure lists
    /// every violation with its JSON pointer, for the model to fix its call.
    pub(crate) fn check_arguments(&self, arguments: &Value) -> Result<(), ToolFailure> {
        if self.arguments.is_valid(arguments) {
            return Ok(());
        }
        Err(ToolFailure::invalid_arguments(format!(
            "arguments do not match the parameter schema of `{}`: {}",
            self.name(),
            describe_violations(self.arguments.iter_errors(arguments))
        )))
    }

    /// Checks a command tool's output against its declared output schema.
    pub(crate) fn check_output(&self, output: &Value) -> Result<(), ToolFailure> {
        let Some(schema) = &self.output else {
            return Ok(());
        };
        if schema.is_valid(output) {
            return Ok(());
        }
        Err(ToolFailure::invalid_output(format!(
            "the output of `{}` does not match its output schema: {}",
            self.name(),
            describe_violations(schema.iter_errors(output))
        ))
        .with_output(output.to_string()))
    }
}

/// Every violation as `<JSON pointer>: <what is wrong>` (`/` is the
/// top level), joined with `; `.
fn describe_violations<'a>(
    errors: impl Iterator<Item = jsonschema::ValidationError<'a>>,
) -> String {
    let mut listed = Vec::new();
    let mut total = 0_usize;
    for error in errors {
        total += 1;
        if listed.len() < MAX_LISTED_VIOLATIONS {
            let path = error.instance_path().as_str();
            let path = if path.is_empty() { "/" } else { path };
            listed.push(format!(
                "{path}: {}",
                truncate_bytes(&error.to_string(), MAX_VIOLATION_BYTES)
            ));
        }
    }
    if total > listed.len() {
        listed.push(format!("and {} more", total - listed.len()));
    }
    listed.join("; ")
}

/// All tools, by name.
impl Config {
    /// Checks every setting, including each command tool, by building the
    /// registry (which compiles every JSON Schema). Setting names in errors
    /// are relative to the `[tool_runner]` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.audit.validate()?;
        Registry::from_config(self).map(|_| ())
    }
}

#[derive(Debug)]
pub(crate) struct Registry {
    /// The configured tools: built-in, command, pipeline.
    tools: BTreeMap<String, Arc<RegisteredTool>>,
    /// The enabled MCP servers, each with its tools as last listed.
    mcp: Vec<Arc<McpSource>>,
}

/// What a tool name stands for.
#[derive(Debug)]
pub(crate) enum Lookup {
    Tool(Arc<RegisteredTool>),
    /// Under the prefix of an MCP server that is down and never listed it.
    ServerDown(Arc<McpServer>),
    Missing,
}

impl Registry {
    /// Builds the registry from the configuration, checking it: errors name
    /// the setting (relative to the `[tool_runner]` section).
    pub(crate) fn from_config(config: &Config) -> Result<Self, ConfigError> {
        config.validate_limits()?;
        let mut tools = BTreeMap::new();
        for builtin in Builtin::ALL.into_iter().filter(|b| b.enabled(&config.http)) {
            let tool = builtin_tool(builtin, config).map_err(|message| {
                ConfigError::new("", format!("built-in tool {}: {message}", builtin.name()))
            })?;
            tools.insert(builtin.name().to_owned(), Arc::new(tool));
        }
        let path = service_path();
        for (name, command) in &config.commands {
            let setting = format!("commands.{name}");
            check_identifier_setting(&setting, name)?;
            if tools.contains_key(name) {
                return Err(ConfigError::new(
                    setting,
                    format!("`{name}` is the name of a built-in tool; choose another name"),
                ));
            }
            let tool = command_tool(name, command, config, &setting, path.clone())?;
            tools.insert(name.clone(), Arc::new(tool));
        }
        // Compiled against the built-in and command tools only: a step may
        // not call a pipeline, so pipelines can never form a cycle.
        let mut pipelines = Vec::with_capacity(config.pipelines.len());
        for (name, pipeline) in &config.pipelines {
            let setting = format!("pipelines.{name}");
            check_identifier_setting(&setting, name)?;
            if let Some(tool) = tools.get(name) {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "`{name}` is already the name of a {} tool; choose another name",
                        if matches!(tool.implementation, Implementation::Builtin(_)) {
                            "built-in"
                        } else {
                            "command"
                        }
                    ),
                ));
            }
            let usable = |tool: &str| step_tool_usable(tool, &tools, config);
            pipelines.push(pipeline_tool(name, pipeline, config, &setting, usable)?);
        }
        for tool in pipelines {
            tools.insert(tool.name().to_owned(), Arc::new(tool));
        }
        let mcp = mcp::sources(config, &tools)?;
        Ok(Self { tools, mcp })
    }

    /// The configured tool called `name` (not an MCP server's).
    #[cfg(test)]
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<RegisteredTool>> {
        self.tools.get(name)
    }

    /// The tool called `name`, of any kind.
    pub(crate) fn lookup(&self, name: &str) -> Lookup {
        if let Some(tool) = self.tools.get(name) {
            return Lookup::Tool(Arc::clone(tool));
        }
        // Prefixes are checked to be disjoint: one server at most.
        let Some(source) = self
            .mcp
            .iter()
            .find(|source| name.starts_with(&source.server.prefix))
        else {
            return Lookup::Missing;
        };
        match source.tools().get(name) {
            Some(tool) => Lookup::Tool(Arc::clone(tool)),
            None if source.server.peer().is_none() => {
                Lookup::ServerDown(Arc::clone(&source.server))
            }
            None => Lookup::Missing,
        }
    }

    /// The configured tools, ordered by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &RegisteredTool> {
        self.tools.values().map(|tool| &**tool)
    }

    /// Every tool now, configured and MCP servers', ordered by name.
    pub(crate) fn all(&self) -> Vec<Arc<RegisteredTool>> {
        let mut all: Vec<Arc<RegisteredTool>> = self.tools.values().cloned().collect();
        for source in &self.mcp {
            all.extend(source.tools().values().cloned());
        }
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The names of the configured tools, ordered.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    /// The enabled MCP servers, with their tools.
    pub(crate) fn mcp_sources(&self) -> &[Arc<McpSource>] {
        &self.mcp
    }
}

fn builtin_tool(builtin: Builtin, config: &Config) -> Result<RegisteredTool, String> {
    let parameters = builtin.parameters(config.max_file_bytes, &config.http);
    let output = builtin.output_schema();
    let arguments = compile(&parameters)?;
    // Built-in outputs are ours and tested; the schema is published for the
    // model, not checked on every call.
    compile(&output)?;
    Ok(RegisteredTool {
        descriptor: v1::Tool {
            name: builtin.name().to_owned(),
            description: builtin.description().to_owned(),
            parameters_json: parameters.to_string(),
            output_schema_json: output.to_string(),
            kind: ToolKind::Builtin.into(),
            idempotent: builtin.idempotent(),
            streaming: false,
            timeout: proto_duration(config.default_timeout),
            max_concurrency: max_concurrency(config.max_concurrency_per_tool),
            labels: builtin.labels().into_iter().collect(),
        },
        timeout: config.default_timeout,
        implementation: Implementation::Builtin(builtin),
        bulkhead: bulkhead(
            builtin.name(),
            config.max_concurrency_per_tool,
            config.max_queued_per_tool,
        ),
        breaker: breaker(builtin.name(), config),
        arguments,
        output: None,
    })
}

fn command_tool(
    name: &str,
    command: &CommandToolConfig,
    config: &Config,
    setting: &str,
    path: std::ffi::OsString,
) -> Result<RegisteredTool, ConfigError> {
    check_description(&command.description, setting)?;
    check_argv(&command.command)
        .map_err(|message| ConfigError::new(format!("{setting}.command"), message))?;
    check_env(command, setting)?;
    let timeout = own_timeout(command.timeout, config, setting)?;
    let (concurrency, queued) =
        limits(command.max_concurrency, command.max_queued, config, setting)?;
    let sandbox = tool_sandbox(command, config, setting)?;
    let parameters_setting = format!("{setting}.parameters_json");
    let parameters = parse_schema(&command.parameters_json)
        .map_err(|message| ConfigError::new(&parameters_setting, message))?;
    let arguments =
        compile(&parameters).map_err(|message| ConfigError::new(&parameters_setting, message))?;
    let output = if command.output_schema_json.trim().is_empty() {
        None
    } else {
        let output_setting = format!("{setting}.output_schema_json");
        let schema = parse_schema(&command.output_schema_json)
            .map_err(|message| ConfigError::new(&output_setting, message))?;
        Some(compile(&schema).map_err(|message| ConfigError::new(&output_setting, message))?)
    };
    Ok(RegisteredTool {
        descriptor: v1::Tool {
            name: name.to_owned(),
            description: command.description.clone(),
            parameters_json: parameters.to_string(),
            output_schema_json: if output.is_some() {
                command.output_schema_json.trim().to_owned()
            } else {
                String::new()
            },
            kind: ToolKind::Command.into(),
            idempotent: command.idempotent,
            streaming: command.streaming,
            timeout: proto_duration(timeout),
            max_concurrency: max_concurrency(concurrency),
            labels: command.labels.clone().into_iter().collect(),
        },
        timeout,
        bulkhead: bulkhead(name, concurrency, queued),
        breaker: breaker(name, config),
        implementation: Implementation::Command(CommandTool {
            name: name.to_owned(),
            argv: command.command.clone(),
            env: command.env.clone(),
            path,
            max_output_bytes: config.max_output_bytes,
            sandbox,
        }),
        arguments,
        output,
    })
}

/// A pipeline tool: its steps compiled (see `pipeline`), and the limits,
/// schema and descriptor every configured tool has.
fn pipeline_tool(
    name: &str,
    pipeline: &PipelineConfig,
    config: &Config,
    setting: &str,
    step_tool_usable: impl Fn(&str) -> Result<(), String>,
) -> Result<RegisteredTool, ConfigError> {
    check_description(&pipeline.description, setting)?;
    let timeout = own_timeout(pipeline.timeout, config, setting)?;
    let (concurrency, queued) = limits(
        pipeline.max_concurrency,
        pipeline.max_queued,
        config,
        setting,
    )?;
    let parameters_setting = format!("{setting}.parameters_json");
    let parameters = parse_schema(&pipeline.parameters_json)
        .map_err(|message| ConfigError::new(&parameters_setting, message))?;
    let arguments =
        compile(&parameters).map_err(|message| ConfigError::new(&parameters_setting, message))?;
    let compiled = Pipeline::compile(
        name,
        pipeline,
        setting,
        config.max_output_bytes,
        step_tool_usable,
    )?;
    let mut labels = pipeline.labels.clone();
    // The contract has no pipeline kind (yet): the label tells clients.
    labels.insert(PIPELINE_LABEL.to_owned(), "pipeline".to_owned());
    Ok(RegisteredTool {
        descriptor: v1::Tool {
            name: name.to_owned(),
            description: pipeline.description.clone(),
            parameters_json: parameters.to_string(),
            output_schema_json: String::new(),
            kind: ToolKind::Unspecified.into(),
            // Never retried whole: its idempotent steps are retried on
            // their own.
            idempotent: false,
            // It reports each step's end as progress.
            streaming: true,
            timeout: proto_duration(timeout),
            max_concurrency: max_concurrency(concurrency),
            labels: labels.into_iter().collect(),
        },
        timeout,
        bulkhead: bulkhead(name, concurrency, queued),
        breaker: breaker(name, config),
        implementation: Implementation::Pipeline(compiled),
        arguments,
        output: None,
    })
}

/// Whether a pipeline step may call `tool`: a registered built-in or
/// command tool, not a pipeline; else why not.
fn step_tool_usable(
    tool: &str,
    tools: &BTreeMap<String, Arc<RegisteredTool>>,
    config: &Config,
) -> Result<(), String> {
    if tools.contains_key(tool) {
        return Ok(());
    }
    if config.pipelines.contains_key(tool) {
        return Err(format!(
            "`{tool}` is a pipeline: a pipeline's steps call built-in and command tools, not other pipelines"
        ));
    }
    let known: Vec<&str> = tools.keys().map(String::as_str).collect();
    Err(format!(
        "no tool named `{tool}`; steps can call: {}",
        known.join(", ")
    ))
}

fn check_description(description: &str, setting: &str) -> Result<(), ConfigError> {
    if description.trim().is_empty() {
        return Err(ConfigError::new(
            format!("{setting}.description"),
            "required: say what the tool does and when to use it, for the model",
        ));
    }
    Ok(())
}

/// A configured tool's timeout: its own, or `default_timeout`; at most
/// `max_timeout`.
fn own_timeout(
    timeout: Option<Duration>,
    config: &Config,
    setting: &str,
) -> Result<Duration, ConfigError> {
    let timeout = timeout.unwrap_or(config.default_timeout);
    if timeout.is_zero() || timeout > config.max_timeout {
        return Err(ConfigError::new(
            format!("{setting}.timeout"),
            format!(
                "must be positive and at most max_timeout ({})",
                format_duration(config.max_timeout)
            ),
        ));
    }
    Ok(timeout)
}

/// Environment variable names must be settable, values free of NUL.
fn check_env(command: &CommandToolConfig, setting: &str) -> Result<(), ConfigError> {
    for (key, value) in &command.env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(ConfigError::new(
                format!("{setting}.env"),
                format!(
                    "`{key}` is not a valid environment variable name (or its value holds a NUL character)"
                ),
            ));
        }
    }
    Ok(())
}

/// A command tool's sandbox settings, checked.
fn tool_sandbox(
    command: &CommandToolConfig,
    config: &Config,
    setting: &str,
) -> Result<ToolSandbox, ConfigError> {
    let sandbox = ToolSandbox::resolve(
        &config.sandbox,
        command.sandbox,
        command.network,
        &command.limits,
        &command.read_paths,
        &command.command,
    );
    sandbox.limits.validate(&format!("{setting}.limits"))?;
    validate_read_paths(setting, &command.read_paths)?;
    Ok(sandbox)
}

/// A configured tool's concurrency limit and queue: its own, or the
/// service's defaults where it sets 0.
fn limits(
    max_concurrency: u32,
    max_queued: u32,
    config: &Config,
    setting: &str,
) -> Result<(u32, u32), ConfigError> {
    if max_concurrency > MAX_CONCURRENCY {
        return Err(ConfigError::new(
            format!("{setting}.max_concurrency"),
            format!(
                "{max_concurrency} is out of range: use 1 to {MAX_CONCURRENCY}, or 0 for max_concurrency_per_tool"
            ),
        ));
    }
    if max_queued > MAX_QUEUED {
        return Err(ConfigError::new(
            format!("{setting}.max_queued"),
            format!(
                "{max_queued} is out of range: use 1 to {MAX_QUEUED}, or 0 for max_queued_per_tool"
            ),
        ));
    }
    let or_default = |own: u32, default: u32| if own == 0 { default } else { own };
    Ok((
        or_default(max_concurrency, config.max_concurrency_per_tool),
        or_default(max_queued, config.max_queued_per_tool),
    ))
}

fn bulkhead(name: &str, max_concurrency: u32, max_queued: u32) -> Bulkhead {
    let places = usize::try_from(max_concurrency).unwrap_or(usize::MAX);
    let queue = usize::try_from(max_queued).unwrap_or(usize::MAX);
    Bulkhead::new(format!("tool:{name}"), places, queue)
}

fn breaker(name: &str, config: &Config) -> CircuitBreaker {
    CircuitBreaker::new(format!("tool:{name}"), config.circuit_breaker.clone())
}

/// The limit as ListTools reports it (checked to be at most
/// [`MAX_CONCURRENCY`], so it fits).
fn max_concurrency(limit: u32) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

/// A program is a name looked up on `PATH` or an absolute path: a relative
/// path would be resolved in each run's workspace, never what is meant.
fn check_argv(argv: &[String]) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err(
            "must name the program to run, e.g. [\"python3\", \"/opt/tools/wc.py\"]".to_owned(),
        );
    };
    if program.is_empty() {
        return Err("the program (first element) must not be empty".to_owned());
    }
    if program.contains('/') && !Path::new(program).is_absolute() {
        return Err(format!(
            "the program `{program}` is a relative path, which would be resolved in each run's workspace; give an absolute path or a program name on PATH"
        ));
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err("arguments must not contain NUL characters".to_owned());
    }
    Ok(())
}

fn parse_schema(text: &str) -> Result<Value, String> {
    let schema: Value =
        serde_json::from_str(text).map_err(|err| format!("is not valid JSON: {err}"))?;
    if !schema.is_object() {
        return Err(
            "must be a JSON Schema object, e.g. {\"type\":\"object\",\"properties\":{...}}"
                .to_owned(),
        );
    }
    Ok(schema)
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .build(schema)
        .map_err(|err| format!("is not a valid JSON Schema: {err}"))
}

fn proto_duration(duration: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(duration).ok()
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use agentmesh_kit::ident::is_identifier;
    use serde_json::json;

    use super::*;

    fn registry() -> Registry {
        Registry::from_config(&Config::default()).unwrap()
    }

    #[test]
    fn builtins_are_registered_in_name_order() {
        let registry = registry();
        let names: Vec<&str> = registry.names().collect();
        assert_eq!(
            names,
            [
                "calculator",
                "current_time",
                "list_files",
                "read_file",
                "write_file"
            ]
        );
        for tool in registry.iter() {
            assert!(is_identifier(tool.name()));
            assert!(!tool.descriptor.description.is_empty());
            let schema: Value = serde_json::from_str(&tool.descriptor.parameters_json).unwrap();
            assert_eq!(schema["type"], "object");
            assert_eq!(tool.descriptor.timeout.unwrap().seconds, 30);
        }
    }

    #[test]
    fn schema_violations_name_the_pointer_and_the_problem() {
        let registry = registry();
        let calculator = registry.get("calculator").unwrap();
        calculator
            .check_arguments(&json!({"expression": "1+1"}))
            .unwrap();

        let failure = calculator
            .check_arguments(&json!({"expression": 12}))
            .unwrap_err();
        assert_eq!(
            failure.kind,
            agentmesh_proto::tools::v1::ToolErrorKind::InvalidArguments
        );
        assert!(
            failure
                .message
                .contains(r#"/expression: 12 is not of type "string""#),
            "{}",
            failure.message
        );

        let failure = calculator.check_arguments(&json!({})).unwrap_err();
        assert!(
            failure
                .message
                .contains(r#"/: "expression" is a required property"#),
            "{}",
            failure.message
        );

        let failure = calculator
            .check_arguments(&json!({"expresion": "1"}))
            .unwrap_err();
        assert!(failure.message.contains("expresion"), "{}", failure.message);
        assert!(
            failure
                .message
                .contains("\"expression\" is a required property")
        );

        let failure = calculator.check_arguments(&json!([1])).unwrap_err();
        assert!(
            failure.message.contains("is not of type \"object\""),
            "{}",
            failure.message
        );
    }

    #[test]
    fn huge_offending_values_are_not_quoted_in_full() {
        let registry = registry();
        let calculator = registry.get("calculator").unwrap();
        let failure = calculator
            .check_arguments(&json!({"expression": "1".repeat(100_000)}))
            .unwrap_err();
        assert!(failure.message.len() < 1000, "{}", failure.message.len());
        assert!(failure.message.starts_with("arguments do not match"));
    }

    #[test]
    fn many_violations_are_summarised() {
        let mut config = Config::default();
        let properties: serde_json::Map<String, Value> = (0..20)
            .map(|index| (format!("p{index}"), json!({"type": "string"})))
            .collect();
        config.commands.insert(
            "many".into(),
            CommandToolConfig {
                description: "d".into(),
                command: vec!["true".into()],
                parameters_json: json!({"type": "object", "properties": properties}).to_string(),
                ..CommandToolConfig::default()
            },
        );
        let registry = Registry::from_config(&config).unwrap();
        let arguments: serde_json::Map<String, Value> = (0..20)
            .map(|index| (format!("p{index}"), json!(index)))
            .collect();
        let failure = registry
            .get("many")
            .unwrap()
            .check_arguments(&Value::Object(arguments))
            .unwrap_err();
        assert!(
            failure.message.ends_with("and 10 more"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn remote_references_are_refused_at_start() {
        let mut config = Config::default();
        config.commands.insert(
            "remote".into(),
            CommandToolConfig {
                description: "d".into(),
                command: vec!["true".into()],
                parameters_json: r#"{"$ref": "https://example.com/schema.json"}"#.into(),
                ..CommandToolConfig::default()
            },
        );
        let err = Registry::from_config(&config).unwrap_err();
        assert_eq!(err.setting, "commands.remote.parameters_json");
    }

    #[test]
    fn output_schemas_of_command_tools_are_checked() {
        let mut config = Config::default();
        config.commands.insert(
            "typed".into(),
            CommandToolConfig {
                description: "d".into(),
                command: vec!["true".into()],
                output_schema_json: r#"{"type":"object","required":["count"]}"#.into(),
                ..CommandToolConfig::default()
            },
        );
        let registry = Registry::from_config(&config).unwrap();
        let tool = registry.get("typed").unwrap();
        tool.check_output(&json!({"count": 1})).unwrap();
        let failure = tool.check_output(&json!({"total": 1})).unwrap_err();
        assert_eq!(
            failure.kind,
            agentmesh_proto::tools::v1::ToolErrorKind::InvalidOutput
        );
        assert!(failure.message.contains("\"count\" is a required property"));
        assert_eq!(failure.output_json, r#"{"total":1}"#);
    }

    #[test]
    fn each_tool_gets_its_limits_and_guards() {
        let mut config = Config {
            max_concurrency_per_tool: 3,
            max_queued_per_tool: 5,
            ..Config::default()
        };
        for (name, max_concurrency, max_queued) in [("own", 1, 2), ("defaults", 0, 0)] {
            config.commands.insert(
                name.into(),
                CommandToolConfig {
                    description: "d".into(),
                    command: vec!["true".into()],
                    max_concurrency,
                    max_queued,
                    ..CommandToolConfig::default()
                },
            );
        }
        let registry = Registry::from_config(&config).unwrap();
        let own = registry.get("own").unwrap();
        assert_eq!(own.descriptor.max_concurrency, 1);
        assert_eq!(own.bulkhead.max_concurrent(), 1);
        assert_eq!(own.bulkhead.name(), "tool:own");
        assert_eq!(own.target(), "tool:own");
        let defaults = registry.get("defaults").unwrap();
        assert_eq!(defaults.descriptor.max_concurrency, 3);
        let calculator = registry.get("calculator").unwrap();
        assert_eq!(calculator.descriptor.max_concurrency, 3);
        assert_eq!(calculator.target(), "tool:calculator");
    }

    fn pipeline(steps: &str) -> crate::pipeline::PipelineConfig {
        toml::from_str(&format!("description = \"d\"\n{steps}")).unwrap()
    }

    fn with_pipeline(name: &str, pipeline: crate::pipeline::PipelineConfig) -> Config {
        let mut config = Config::default();
        config.commands.insert(
            "word".into(),
            CommandToolConfig {
                description: "d".into(),
                command: vec!["true".into()],
                ..CommandToolConfig::default()
            },
        );
        config.pipelines.insert(name.into(), pipeline);
        config
    }

    const ONE_STEP: &str = "[[steps]]\nid = \"a\"\ntool = \"calculator\"";

    #[test]
    fn pipelines_are_tools_with_their_own_schema_and_guards() {
        let mut config = with_pipeline("twice", pipeline(ONE_STEP));
        config.pipelines.get_mut("twice").unwrap().max_concurrency = 2;
        let registry = Registry::from_config(&config).unwrap();
        let tool = registry.get("twice").unwrap();
        assert!(matches!(tool.implementation, Implementation::Pipeline(_)));
        assert_eq!(tool.descriptor.kind, i32::from(ToolKind::Unspecified));
        assert_eq!(tool.descriptor.labels[PIPELINE_LABEL], "pipeline");
        assert_eq!(tool.descriptor.max_concurrency, 2);
        assert_eq!(tool.target(), "tool:twice");
        assert_eq!(tool.inner_tools(), ["calculator"]);
        assert!(registry.get("calculator").unwrap().inner_tools().is_empty());
        tool.check_arguments(&json!({})).unwrap();
        assert!(tool.check_arguments(&json!([])).is_err());
    }

    #[test]
    fn bad_pipelines_name_the_setting() {
        let with = |name: &str, text: &str| with_pipeline(name, pipeline(text));
        let mut no_description = pipeline(ONE_STEP);
        no_description.description = " ".into();
        let mut bad_schema = pipeline(ONE_STEP);
        bad_schema.parameters_json = r#"{"type": 5}"#.into();
        let mut long = pipeline(ONE_STEP);
        long.timeout = Some(Duration::from_secs(3600));
        let mut wide = pipeline(ONE_STEP);
        wide.max_queued = MAX_QUEUED + 1;
        let mut other = with("first", ONE_STEP);
        other.pipelines.insert(
            "second".into(),
            pipeline("[[steps]]\nid = \"a\"\ntool = \"first\""),
        );
        let cases = [
            (
                with("calculator", ONE_STEP),
                "pipelines.calculator",
                "built-in",
            ),
            (with("word", ONE_STEP), "pipelines.word", "command"),
            (with("a b", ONE_STEP), "pipelines.a b", "must be"),
            (
                with_pipeline("p", no_description),
                "pipelines.p.description",
                "required",
            ),
            (
                with_pipeline("p", bad_schema),
                "pipelines.p.parameters_json",
                "JSON Schema",
            ),
            (
                with_pipeline("p", long),
                "pipelines.p.timeout",
                "max_timeout",
            ),
            (
                with_pipeline("p", wide),
                "pipelines.p.max_queued",
                "out of range",
            ),
            (
                other,
                "pipelines.second.steps[0].tool",
                "`first` is a pipeline",
            ),
            (
                with("p", "[[steps]]\nid = \"a\"\ntool = \"http_request\""),
                "pipelines.p.steps[0].tool",
                "no tool named `http_request`; steps can call: calculator, current_time",
            ),
        ];
        for (config, setting, words) in cases {
            let err = Registry::from_config(&config).unwrap_err();
            assert_eq!(err.setting, setting);
            assert!(err.message.contains(words), "{setting}: {}", err.message);
        }
    }

    /// The example in the `pipeline` module's docs is a working pipeline.
    #[test]
    fn the_documented_pipeline_is_valid() {
        let example: String = include_str!("pipeline.rs")
            .lines()
            .skip_while(|line| *line != "//! ```toml")
            .skip(1)
            .take_while(|line| *line != "//! ```")
            .map(|line| format!("{}\n", line.trim_start_matches("//!")))
            .collect();
        let example: toml::Table = toml::from_str(&example).unwrap();
        let config: Config =
            toml::from_str(&toml::to_string(&example["tool_runner"]).unwrap()).unwrap();
        let registry = Registry::from_config(&config).unwrap();
        let tool = registry.get("hypotenuse").unwrap();
        assert_eq!(tool.inner_tools(), ["calculator"]);
        assert_eq!(tool.timeout, Duration::from_secs(20));
    }

    #[test]
    fn tool_names_follow_the_contract() {
        assert!(is_identifier("word_count-2"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("a b"));
        assert!(!is_identifier("é"));
        assert!(!is_identifier(&"a".repeat(65)));
        let mut config = Config::default();
        config.commands.insert(
            "a b".to_owned(),
            CommandToolConfig {
                description: "d".into(),
                command: vec!["true".into()],
                ..CommandToolConfig::default()
            },
        );
        let err = Registry::from_config(&config).unwrap_err();
        assert_eq!(err.setting, "commands.a b");
    }
}
