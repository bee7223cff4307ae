//! The tool runner's configuration (section `[tool_runner]`), including the
//! command tools: the plugin mechanism, so that adding a tool is a few lines
//! of TOML and a restart, not a recompile.
//!
//! ```toml
//! [tool_runner]
//! workspaces_dir = "data/workspaces"
//! max_file_bytes = 1048576
//! default_timeout = "30s"
//! max_timeout = "5m"
//! max_concurrency_per_tool = 16   # calls of one tool running at once
//! max_queued_per_tool = 32        # and waiting for a place; beyond: RESOURCE_EXHAUSTED
//!
//! [tool_runner.circuit_breaker]   # one breaker per tool
//! consecutive_failures = 5
//! failure_ratio = 0.5
//! window = "30s"
//! minimum_calls = 20
//! open_for = "30s"
//! half_open_probes = 1
//!
//! [tool_runner.retry]             # only idempotent tools are retried
//! max_attempts = 2
//! initial_backoff = "100ms"
//! max_backoff = "2s"
//! budget_ratio = 0.2
//!
//! [tool_runner.commands.word_count]
//! description = "Counts words in a text"
//! command = ["python3", "/opt/tools/wc.py"]   # argv; no shell
//! parameters_json = '{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}'
//! timeout = "10s"
//! env = { LANG = "C.UTF-8" }
//! streaming = false
//! idempotent = true     # safe to run twice: failed runs may be retried
//! max_concurrency = 4   # 0 = max_concurrency_per_tool
//! max_queued = 8        # 0 = max_queued_per_tool
//! sandbox = "required"  # off | auto | required; unset = sandbox.mode
//! network = false       # true: the tool may use the network
//! limits = { processes = 32, cpu_seconds = 10 }   # over sandbox.limits
//! read_paths = ["/opt/tools/data"]                # readable besides the defaults
//!
//! [tool_runner.pipelines.sum_and_sqrt]   # a composite tool (see `pipeline`)
//! description = "Adds two numbers and takes the square root of the sum"
//! parameters_json = '{"type":"object","properties":{"a":{"type":"number"},"b":{"type":"number"}},"required":["a","b"]}'
//! [[tool_runner.pipelines.sum_and_sqrt.steps]]
//! id = "sum"
//! tool = "calculator"
//! arguments = { expression = "${/input/a} + ${/input/b}" }
//! [[tool_runner.pipelines.sum_and_sqrt.steps]]
//! id = "root"
//! tool = "calculator"
//! arguments = { expression = "sqrt(${/steps/sum/output/result})" }
//!
//! [tool_runner.mcp_servers.everything]   # an MCP server's tools (docs/mcp.md)
//! command = "npx"                        # stdio: a child process ...
//! args = ["-y", "@modelcontextprotocol/server-everything"]
//! # url = "https://mcp.example.com/mcp"  # ... or streamable HTTP
//! # headers.Authorization = { env = "EXAMPLE_TOKEN", prefix = "Bearer " }
//! prefix = "everything_"                # the default: NAME_
//! timeout = "60s"
//!
//! [tool_runner.sandbox]           # see docs/sandbox.md
//! mode = "auto"
//! helper = ""                     # empty: this executable
//! user = 65534                    # when the service runs as root
//! group = 65534
//! [tool_runner.sandbox.limits]
//! cpu_seconds = 60
//! memory_bytes = 2147483648
//! file_size_bytes = 67108864
//! processes = 256
//! open_files = 256
//!
//! [tool_runner.quota]
//! run_bytes = 104857600
//! run_files = 10000
//! tenant_bytes = 1073741824
//! tenant_files = 100000
//! retention = "24h"               # after a workspace's last use
//! sweep_interval = "10m"
//! ```
//!
//! How the limits, the breakers and the retries act on a call is in the
//! crate docs ("How a call flows").
//!
//! [`Config::validate`] (defined beside the registry it builds) runs when
//! the configuration is loaded (the kit calls it) and again when the service
//! starts, by building the tool registry:
//! every schema is compiled then, and a bad one stops the service with a
//! message naming the setting, e.g.
//! `tool_runner.commands.word_count.parameters_json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use agentmesh_audit_client::AuditConfig;
use agentmesh_kit::config::AuthConfig;
use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use agentmesh_resilience::{CircuitConfig, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::builtin::http::HttpToolConfig;
use crate::mcp::McpServerConfig;
use crate::pipeline::PipelineConfig;
use crate::quota::QuotaConfig;
use crate::sandbox::{LimitOverrides, SandboxConfig, SandboxMode};
use crate::{DEFAULT_PORT, SERVICE};

/// The service's configuration (section `[tool_runner]`, environment
/// `AGENTMESH_TOOL_RUNNER__*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC and admin servers.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Identity and access: who may call, with which credential this
    /// service calls its peers.
    pub auth: AuthConfig,
    /// Directory holding one workspace directory per run
    /// (`<workspaces_dir>/<run_id>`, and `_shared` for calls without a run).
    /// The file tools cannot reach outside a run's workspace; command tools
    /// run with it as their working directory and `HOME`.
    pub workspaces_dir: PathBuf,
    /// Largest file `read_file` returns and `write_file` writes, in bytes.
    pub max_file_bytes: u64,
    /// Largest standard output a command tool may print, in bytes; more is
    /// an INVALID_OUTPUT tool error.
    pub max_output_bytes: usize,
    /// Most entries `list_files` returns in one call.
    pub max_list_entries: usize,
    /// Timeout of the built-in tools, and of command tools that set none.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Upper bound of every timeout: a tool's own and a request's.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Calls of one tool that may run at once (the tool's bulkhead), for
    /// the built-ins and for command tools that set no `max_concurrency`.
    pub max_concurrency_per_tool: u32,
    /// Calls of one tool that may wait for a place when all are taken, for
    /// the built-ins and for command tools that set no `max_queued`. A call
    /// beyond them is refused with RESOURCE_EXHAUSTED; a waiting call's time
    /// counts against its timeout.
    pub max_queued_per_tool: u32,
    /// The circuit breaker each tool gets (`[tool_runner.circuit_breaker]`):
    /// runs that time out or fail open it; while open, calls of that tool
    /// are refused with UNAVAILABLE.
    pub circuit_breaker: CircuitConfig,
    /// Retries of idempotent tools whose run failed or timed out
    /// (`[tool_runner.retry]`); `max_attempts` counts the first run.
    pub retry: RetryConfig,
    /// The `http_request` built-in tool (`[tool_runner.http]`): off by
    /// default; where it may go is its `egress` policy.
    pub http: HttpToolConfig,
    /// Command tools by name.
    pub commands: BTreeMap<String, CommandToolConfig>,
    /// Pipelines by name: composite tools whose steps call the other tools
    /// (`[tool_runner.pipelines.NAME]`, see [`PipelineConfig`]).
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// MCP servers whose tools are offered, prefixed
    /// (`[tool_runner.mcp_servers.NAME]`, see [`McpServerConfig`] and
    /// docs/mcp.md).
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    /// Where audit events go.
    pub audit: AuditConfig,
    /// How command tools are isolated (`[tool_runner.sandbox]`): defaults
    /// for every tool, which a tool may override.
    pub sandbox: SandboxConfig,
    /// Workspace quotas and the removal of unused workspaces
    /// (`[tool_runner.quota]`).
    pub quota: QuotaConfig,
}

/// The most places a tool's bulkhead may have.
pub(crate) const MAX_CONCURRENCY: u32 = 10_000;
/// The most callers a tool's bulkhead may queue.
pub(crate) const MAX_QUEUED: u32 = 100_000;

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            workspaces_dir: PathBuf::from("data/workspaces"),
            max_file_bytes: 1024 * 1024,
            max_output_bytes: 1024 * 1024,
            max_list_entries: 1000,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_concurrency_per_tool: 16,
            max_queued_per_tool: 32,
            circuit_breaker: CircuitConfig::default(),
            // A tool call is retried once at most: a model can call it again
            // itself, and a command that failed twice is unlikely to be
            // transiently broken.
            retry: RetryConfig {
                max_attempts: 2,
                ..RetryConfig::default()
            },
            http: HttpToolConfig::default(),
            commands: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            mcp_servers: BTreeMap::new(),
            audit: AuditConfig::default(),
            sandbox: SandboxConfig::default(),
            quota: QuotaConfig::default(),
        }
    }
}

agentmesh_kit::service_config!(
    Config,
    service = SERVICE,
    section = "tool_runner",
    validate = |config: &Config| config.validate(),
);

impl Config {
    /// Checks the settings that are not about a single tool. The whole
    /// check, [`Config::validate`], builds the tool registry and is defined
    /// with it: the settings do not depend on what is built from them.
    pub(crate) fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.workspaces_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("workspaces_dir", "must not be empty"));
        }
        let max_message = u64::try_from(self.server.max_message_bytes).unwrap_or(u64::MAX);
        if self.max_file_bytes == 0 || self.max_file_bytes > max_message {
            return Err(ConfigError::new(
                "max_file_bytes",
                format!(
                    "{} is out of range: use 1 to server.max_message_bytes ({max_message})",
                    self.max_file_bytes
                ),
            ));
        }
        if self.max_output_bytes == 0 || self.max_output_bytes > self.server.max_message_bytes {
            return Err(ConfigError::new(
                "max_output_bytes",
                format!(
                    "{} is out of range: use 1 to server.max_message_bytes ({max_message})",
                    self.max_output_bytes
                ),
            ));
        }
        if !(1..=100_000).contains(&self.max_list_entries) {
            return Err(ConfigError::new(
                "max_list_entries",
                format!("{} is out of range: use 1 to 100000", self.max_list_entries),
            ));
        }
        if self.max_timeout.is_zero() {
            return Err(ConfigError::new("max_timeout", "must be positive"));
        }
        if self.default_timeout.is_zero() || self.default_timeout > self.max_timeout {
            return Err(ConfigError::new(
                "default_timeout",
                format!(
                    "must be positive and at most max_timeout ({})",
                    format_duration(self.max_timeout)
                ),
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.max_concurrency_per_tool) {
            return Err(ConfigError::new(
                "max_concurrency_per_tool",
                format!(
                    "{} is out of range: use 1 to {MAX_CONCURRENCY}",
                    self.max_concurrency_per_tool
                ),
            ));
        }
        if self.max_queued_per_tool > MAX_QUEUED {
            return Err(ConfigError::new(
                "max_queued_per_tool",
                format!(
                    "{} is out of range: use 0 (no queue) to {MAX_QUEUED}",
                    self.max_queued_per_tool
                ),
            ));
        }
        self.circuit_breaker
            .validate()
            .map_err(|(field, message)| {
                ConfigError::new(format!("circuit_breaker.{field}"), message)
            })?;
        self.retry
            .validate()
            .map_err(|(field, message)| ConfigError::new(format!("retry.{field}"), message))?;
        self.sandbox.validate()?;
        self.quota.validate()?;
        self.http.validate(self.server.max_message_bytes)?;
        Ok(())
    }
}

/// One command tool: an external program that gets the arguments as JSON on
/// stdin and answers one JSON value on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandToolConfig {
    /// What the tool does and when to use it, written for a model. Required.
    pub description: String,
    /// The program and its arguments (argv; no shell). The program is a name
    /// looked up on `PATH` or an absolute path. The working directory is the
    /// run's workspace, so relative paths in the arguments are relative to
    /// the workspace: give scripts as absolute paths.
    pub command: Vec<String>,
    /// JSON Schema of the arguments, as a JSON object; the arguments are
    /// validated against it before the program starts.
    pub parameters_json: String,
    /// JSON Schema the program's output must match; empty = any JSON value.
    pub output_schema_json: String,
    /// The tool's own timeout; unset = `default_timeout`. At most `max_timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Variables added to the program's environment. The environment is
    /// otherwise scrubbed: only `PATH` (the service's), `HOME` (the
    /// workspace) and `LANG` (`C.UTF-8`), which these may override.
    pub env: BTreeMap<String, String>,
    /// True when the program reports progress and output on stderr while it
    /// runs (see the crate docs for the protocol).
    pub streaming: bool,
    /// True when running it twice with the same arguments has the same
    /// effect as once. Only idempotent tools are retried (see `retry`).
    pub idempotent: bool,
    /// Calls of this tool that may run at once; 0 = `max_concurrency_per_tool`.
    pub max_concurrency: u32,
    /// Calls of this tool that may wait for a place; 0 =
    /// `max_queued_per_tool`.
    pub max_queued: u32,
    /// Free-form labels shown by ListTools (e.g. `category = "text"`).
    pub labels: BTreeMap<String, String>,
    /// How much isolation the tool demands; unset = `sandbox.mode`.
    /// `required`: the service does not start unless the host gives it all.
    pub sandbox: Option<SandboxMode>,
    /// True when the tool needs the network; otherwise it has none.
    pub network: bool,
    /// Its own resource limits; unset ones are `sandbox.limits`.
    pub limits: LimitOverrides,
    /// More paths it may read (and execute) besides `sandbox.read_only_paths`;
    /// its program and the absolute paths among its arguments are added.
    pub read_paths: Vec<PathBuf>,
}

impl Default for CommandToolConfig {
    fn default() -> Self {
        Self {
            description: String::new(),
            command: Vec::new(),
            parameters_json: r#"{"type":"object"}"#.to_owned(),
            output_schema_json: String::new(),
            timeout: None,
            env: BTreeMap::new(),
            streaming: false,
            idempotent: false,
            max_concurrency: 0,
            max_queued: 0,
            labels: BTreeMap::new(),
            sandbox: None,
            network: false,
            limits: LimitOverrides::default(),
            read_paths: Vec::new(),
        }
    }
}

/// A duration as people write it in the configuration (`10s`, `5m`, `300ms`).
pub(crate) fn format_duration(duration: Duration) -> String {
    humantime_serde::re::humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_command(name: &str, command: CommandToolConfig) -> Config {
        let mut config = Config::default();
        config.commands.insert(name.to_owned(), command);
        config
    }

    fn word_count() -> CommandToolConfig {
        CommandToolConfig {
            description: "Counts words".into(),
            command: vec!["python3".into(), "/opt/wc.py".into()],
            parameters_json:
                r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#
                    .into(),
            ..CommandToolConfig::default()
        }
    }

    fn setting_of(config: &Config) -> String {
        let err = agentmesh_kit::config::validate(config).unwrap_err();
        assert!(!err.message.is_empty());
        err.setting
    }

    #[test]
    fn defaults_and_a_good_command_are_valid() {
        agentmesh_kit::config::validate(&Config::default()).unwrap();
        agentmesh_kit::config::validate(&with_command("word_count", word_count())).unwrap();
    }

    #[test]
    fn the_toml_form_of_the_docs_parses() {
        let text = r#"
            workspaces_dir = "/tmp/ws"
            [commands.word_count]
            description = "Counts words in a text"
            command = ["python3", "/opt/tools/wc.py"]
            parameters_json = '{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}'
            timeout = "10s"
            env = { LANG = "C.UTF-8" }
            streaming = false
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let tool = &config.commands["word_count"];
        assert_eq!(tool.timeout, Some(Duration::from_secs(10)));
        assert_eq!(tool.env["LANG"], "C.UTF-8");
        agentmesh_kit::config::validate(&config).unwrap();
    }

    #[test]
    fn the_kit_loads_a_shared_file_and_dumps_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentmesh.toml");
        std::fs::write(
            &path,
            r#"
                [tool_runner]
                max_timeout = "2m"
                [tool_runner.commands.word_count]
                description = "Counts words"
                command = ["python3", "/opt/wc.py"]
                timeout = "10s"
                [tool_runner.commands.no_timeout]
                description = "Uses the default timeout"
                command = ["true"]
                [orchestrator]
                unrelated = 1
            "#,
        )
        .unwrap();
        let overrides = agentmesh_kit::config::Overrides::default();
        let config: Config = agentmesh_kit::config::load(Some(&path), &overrides).unwrap();
        assert_eq!(config.max_timeout, Duration::from_secs(120));
        assert_eq!(
            config.commands["word_count"].timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(config.commands["no_timeout"].timeout, None);
        assert_eq!(
            config.commands["no_timeout"].parameters_json,
            r#"{"type":"object"}"#
        );

        let dumped = agentmesh_kit::config::to_toml(&config);
        let reread: Config = toml::from_str(&dumped).unwrap();
        assert_eq!(reread, config);
    }

    #[test]
    fn a_bad_schema_in_a_file_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tools.toml");
        std::fs::write(
            &path,
            "[commands.word_count]\ndescription = \"d\"\ncommand = [\"true\"]\nparameters_json = '{\"type\": 12}'\n",
        )
        .unwrap();
        let overrides = agentmesh_kit::config::Overrides::default();
        let err = agentmesh_kit::config::load::<Config>(Some(&path), &overrides).unwrap_err();
        assert_eq!(
            err.setting,
            "tool_runner.commands.word_count.parameters_json"
        );
        assert!(err.to_string().contains("not a valid JSON Schema"), "{err}");
    }

    #[test]
    fn bad_command_tools_name_the_setting() {
        let cases: Vec<(&str, CommandToolConfig, &str)> = vec![
            (
                "word_count",
                CommandToolConfig {
                    parameters_json: "{not json".into(),
                    ..word_count()
                },
                "tool_runner.commands.word_count.parameters_json",
            ),
            (
                "word_count",
                CommandToolConfig {
                    parameters_json: r#"{"type":"no-such-type"}"#.into(),
                    ..word_count()
                },
                "tool_runner.commands.word_count.parameters_json",
            ),
            (
                "word_count",
                CommandToolConfig {
                    parameters_json: "[1]".into(),
                    ..word_count()
                },
                "tool_runner.commands.word_count.parameters_json",
            ),
            (
                "word_count",
                CommandToolConfig {
                    output_schema_json: r#"{"minimum":"x"}"#.into(),
                    ..word_count()
                },
                "tool_runner.commands.word_count.output_schema_json",
            ),
            (
                "word_count",
                CommandToolConfig {
                    command: vec![],
                    ..word_count()
                },
                "tool_runner.commands.word_count.command",
            ),
            (
                "word_count",
                CommandToolConfig {
                    command: vec!["scripts/wc.py".into()],
                    ..word_count()
                },
                "tool_runner.commands.word_count.command",
            ),
            (
                "word_count",
                CommandToolConfig {
                    description: " ".into(),
                    ..word_count()
                },
                "tool_runner.commands.word_count.description",
            ),
            (
                "word_count",
                CommandToolConfig {
                    timeout: Some(Duration::from_secs(3600)),
                    ..word_count()
                },
                "tool_runner.commands.word_count.timeout",
            ),
            (
                "word_count",
                CommandToolConfig {
                    env: BTreeMap::from([("A=B".into(), "x".into())]),
                    ..word_count()
                },
                "tool_runner.commands.word_count.env",
            ),
            (
                "word count",
                word_count(),
                "tool_runner.commands.word count",
            ),
            (
                "calculator",
                word_count(),
                "tool_runner.commands.calculator",
            ),
        ];
        for (name, command, setting) in cases {
            assert_eq!(setting_of(&with_command(name, command)), setting, "{name}");
        }
    }

    #[test]
    fn the_resilience_settings_parse_and_keep_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentmesh.toml");
        std::fs::write(
            &path,
            r#"
                [tool_runner]
                max_concurrency_per_tool = 4
                max_queued_per_tool = 0
                [tool_runner.circuit_breaker]
                consecutive_failures = 2
                open_for = "1m"
                [tool_runner.retry]
                initial_backoff = "50ms"
                [tool_runner.commands.fetch]
                description = "Fetches"
                command = ["true"]
                idempotent = true
                max_concurrency = 2
                max_queued = 3
            "#,
        )
        .unwrap();
        let overrides = agentmesh_kit::config::Overrides::default();
        let config: Config = agentmesh_kit::config::load(Some(&path), &overrides).unwrap();
        assert_eq!(config.max_concurrency_per_tool, 4);
        assert_eq!(config.max_queued_per_tool, 0);
        assert_eq!(config.circuit_breaker.consecutive_failures, 2);
        assert_eq!(config.circuit_breaker.open_for, Duration::from_secs(60));
        // Unset fields of a section keep the service's defaults.
        assert_eq!(
            config.circuit_breaker.half_open_probes,
            CircuitConfig::default().half_open_probes
        );
        assert_eq!(config.retry.initial_backoff, Duration::from_millis(50));
        assert_eq!(config.retry.max_attempts, 2);
        let fetch = &config.commands["fetch"];
        assert!(fetch.idempotent);
        assert_eq!((fetch.max_concurrency, fetch.max_queued), (2, 3));

        let dumped = agentmesh_kit::config::to_toml(&config);
        let reread: Config = toml::from_str(&dumped).unwrap();
        assert_eq!(reread, config);

        let defaults = Config::default();
        assert_eq!(defaults.max_concurrency_per_tool, 16);
        assert_eq!(defaults.max_queued_per_tool, 32);
        assert_eq!(defaults.retry.max_attempts, 2);
    }

    #[test]
    fn bad_resilience_settings_name_the_setting() {
        let cases = [
            (
                Config {
                    max_concurrency_per_tool: 0,
                    ..Config::default()
                },
                "tool_runner.max_concurrency_per_tool",
            ),
            (
                Config {
                    max_queued_per_tool: MAX_QUEUED + 1,
                    ..Config::default()
                },
                "tool_runner.max_queued_per_tool",
            ),
            (
                Config {
                    circuit_breaker: CircuitConfig {
                        failure_ratio: 2.0,
                        ..CircuitConfig::default()
                    },
                    ..Config::default()
                },
                "tool_runner.circuit_breaker.failure_ratio",
            ),
            (
                Config {
                    circuit_breaker: CircuitConfig {
                        open_for: Duration::ZERO,
                        ..CircuitConfig::default()
                    },
                    ..Config::default()
                },
                "tool_runner.circuit_breaker.open_for",
            ),
            (
                Config {
                    retry: RetryConfig {
                        max_attempts: 0,
                        ..RetryConfig::default()
                    },
                    ..Config::default()
                },
                "tool_runner.retry.max_attempts",
            ),
            (
                Config {
                    retry: RetryConfig {
                        budget_ttl: Duration::ZERO,
                        ..RetryConfig::default()
                    },
                    ..Config::default()
                },
                "tool_runner.retry.budget_ttl",
            ),
            (
                with_command(
                    "word_count",
                    CommandToolConfig {
                        max_concurrency: MAX_CONCURRENCY + 1,
                        ..word_count()
                    },
                ),
                "tool_runner.commands.word_count.max_concurrency",
            ),
            (
                with_command(
                    "word_count",
                    CommandToolConfig {
                        max_queued: MAX_QUEUED + 1,
                        ..word_count()
                    },
                ),
                "tool_runner.commands.word_count.max_queued",
            ),
        ];
        for (config, setting) in cases {
            assert_eq!(setting_of(&config), setting);
        }
    }

    #[test]
    fn pipelines_load_from_a_file_and_dump_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentmesh.toml");
        std::fs::write(
            &path,
            r#"
                [tool_runner.pipelines.sum_and_sqrt]
                description = "Adds two numbers and takes the square root of the sum"
                parameters_json = '{"type":"object","required":["a","b"]}'
                output = { root = "${/steps/root/output/result}", parts = ["${/input/a}", 2] }
                timeout = "10s"
                [[tool_runner.pipelines.sum_and_sqrt.steps]]
                id = "fan"
                when = { path = "/input/a", not_equals = 0 }
                [[tool_runner.pipelines.sum_and_sqrt.steps.parallel]]
                id = "left"
                tool = "calculator"
                arguments = { expression = "${/input/a}" }
                [[tool_runner.pipelines.sum_and_sqrt.steps.parallel]]
                id = "right"
                tool = "calculator"
                arguments = { expression = "${/input/b}" }
                [[tool_runner.pipelines.sum_and_sqrt.steps]]
                id = "sum"
                tool = "calculator"
                arguments = { expression = "${/steps/left/output/result} + ${/steps/right/output/result}" }
                [[tool_runner.pipelines.sum_and_sqrt.steps]]
                id = "root"
                tool = "calculator"
                arguments = { expression = "sqrt(${/steps/sum/output/result})" }
            "#,
        )
        .unwrap();
        let overrides = agentmesh_kit::config::Overrides::default();
        let config: Config = agentmesh_kit::config::load(Some(&path), &overrides).unwrap();
        let pipeline = &config.pipelines["sum_and_sqrt"];
        assert_eq!(pipeline.steps.len(), 3);
        assert_eq!(pipeline.steps[0].parallel.len(), 2);
        assert_eq!(pipeline.timeout, Some(Duration::from_secs(10)));
        assert_eq!(
            pipeline.steps[0].when.as_ref().unwrap().not_equals,
            Some(serde_json::json!(0))
        );

        let dumped = agentmesh_kit::config::to_toml(&config);
        let reread: Config = toml::from_str(&dumped).unwrap();
        assert_eq!(reread, config);

        // The example in this module's docs is a working pipeline.
        let docs = include_str!("config.rs");
        let example: String = docs
            .lines()
            .skip_while(|line| !line.starts_with("//! [tool_runner.pipelines."))
            .take_while(|line| !line.starts_with("//! [tool_runner.sandbox]"))
            .map(|line| format!("{}\n", line.trim_start_matches("//!")))
            .collect();
        let example: toml::Table = toml::from_str(&example).unwrap();
        let section = toml::to_string(&example["tool_runner"]).unwrap();
        let config: Config = toml::from_str(&section).unwrap();
        assert_eq!(config.pipelines.len(), 1);
        agentmesh_kit::config::validate(&config).unwrap();
    }

    #[test]
    fn bad_limits_name_the_setting() {
        let config = Config {
            default_timeout: Duration::from_secs(600),
            ..Config::default()
        };
        assert_eq!(setting_of(&config), "tool_runner.default_timeout");
        let config = Config {
            max_file_bytes: 0,
            ..Config::default()
        };
        assert_eq!(setting_of(&config), "tool_runner.max_file_bytes");
        let config = Config {
            workspaces_dir: PathBuf::new(),
            ..Config::default()
        };
        assert_eq!(setting_of(&config), "tool_runner.workspaces_dir");
    }
}
