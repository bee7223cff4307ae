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
//!
//! [tool_runner.commands.word_count]
//! description = "Counts words in a text"
//! command = ["python3", "/opt/tools/wc.py"]   # argv; no shell
//! parameters_json = '{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}'
//! timeout = "10s"
//! env = { LANG = "C.UTF-8" }
//! streaming = false
//! ```
//!
//! [`Config::validate`] runs when the configuration is loaded (the kit calls
//! it) and again when the service starts, by building the tool registry:
//! every schema is compiled then, and a bad one stops the service with a
//! message naming the setting, e.g.
//! `tool_runner.commands.word_count.parameters_json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use agentmesh_audit_client::AuditConfig;
use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::registry::Registry;
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
    /// Command tools by name.
    pub commands: BTreeMap<String, CommandToolConfig>,
    /// Where audit events go.
    pub audit: AuditConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            log: LogConfig::default(),
            workspaces_dir: PathBuf::from("data/workspaces"),
            max_file_bytes: 1024 * 1024,
            max_output_bytes: 1024 * 1024,
            max_list_entries: 1000,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            commands: BTreeMap::new(),
            audit: AuditConfig::default(),
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
    /// Checks every setting, including each command tool, by building the
    /// registry (which compiles every JSON Schema). Setting names in errors
    /// are relative to the `[tool_runner]` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.audit.validate()?;
        Registry::from_config(self).map(|_| ())
    }

    /// Checks the settings that are not about a single tool.
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
    /// effect as once.
    pub idempotent: bool,
    /// Free-form labels shown by ListTools (e.g. `category = "text"`).
    pub labels: BTreeMap<String, String>,
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
            labels: BTreeMap::new(),
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
