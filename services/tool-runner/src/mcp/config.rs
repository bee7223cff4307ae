//! The settings of one MCP server (`[tool_runner.mcp_servers.NAME]`) and
//! their checks. A server is either a child process speaking MCP over its
//! stdin and stdout (`command`, `args`, `env`) or a streamable HTTP
//! endpoint (`url`, `headers`).
//!
//! Secrets never sit in the file: a header's value names the environment
//! variable holding it (`headers.Authorization = { env = "GITHUB_TOKEN",
//! prefix = "Bearer " }`), read when the service starts, like the
//! gateway's `api_key_env`; a child's secrets are passed through from the
//! service's environment by name (`env_passthrough`). Messages about a
//! header or a variable name it, never its value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

/// The longest tool-name prefix (a tool name is at most 64 bytes).
pub(crate) const MAX_PREFIX_LEN: usize = 48;

/// Headers the transport sets itself: configuring them would break the
/// protocol (or, for `host`, send requests somewhere unexpected).
const RESERVED_HEADERS: [&str; 7] = [
    "accept",
    "content-type",
    "content-length",
    "host",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// One MCP server whose tools the runner offers, prefixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpServerConfig {
    /// False: the server is neither started nor listed (its settings are
    /// still checked).
    pub enabled: bool,
    /// Stdio: the program to start (a name looked up on `PATH`, or an
    /// absolute path). Exclusive with `url`.
    pub command: String,
    /// Stdio: its arguments (no shell).
    pub args: Vec<String>,
    /// Stdio: variables set for it, besides `PATH`, `HOME`, `LANG` and
    /// `TMPDIR` (the service's), which it gets unless set here. The values
    /// are redacted from the configuration's digest, but not secret
    /// otherwise: give secrets with `env_passthrough`.
    pub env: BTreeMap<String, String>,
    /// Stdio: names of the service's environment variables passed on to
    /// the server (its tokens, say), unset ones skipped.
    pub env_passthrough: Vec<String>,
    /// Stdio: its working directory; unset = the service's.
    pub cwd: Option<PathBuf>,
    /// Streamable HTTP (MCP 2025-06-18): the endpoint, `http://` or
    /// `https://`, without credentials in it. Exclusive with `command`.
    pub url: String,
    /// Streamable HTTP: headers sent with every request, by name.
    pub headers: BTreeMap<String, HeaderSource>,
    /// What its tools are called: this prefix and the server's name of the
    /// tool. Unset = `NAME_` (the server's name and an underscore). Letters,
    /// digits, `_` and `-` only: tool names offered to a model allow no
    /// more.
    pub prefix: Option<String>,
    /// Only these tools (the server's names); empty = all.
    pub include: Vec<String>,
    /// Not these tools (the server's names).
    pub exclude: Vec<String>,
    /// Timeout of its tool calls; unset = `default_timeout`. At most
    /// `max_timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How long starting or reaching it, the MCP handshake and listing its
    /// tools may take before the attempt counts as failed.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First wait before it is started (or reached) again after it failed
    /// or exited; doubled at each failure in a row, up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Calls of each of its tools that may run at once; 0 =
    /// `max_concurrency_per_tool`.
    pub max_concurrency: u32,
    /// Calls of each of its tools that may wait for a place; 0 =
    /// `max_queued_per_tool`.
    pub max_queued: u32,
}

impl Default for McpServerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            env_passthrough: Vec::new(),
            cwd: None,
            url: String::new(),
            headers: BTreeMap::new(),
            prefix: None,
            include: Vec::new(),
            exclude: Vec::new(),
            timeout: None,
            // `npx` may download the server first.
            connect_timeout: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_concurrency: 0,
            max_queued: 0,
        }
    }
}

/// Where a header's value comes from: an environment variable (a secret,
/// read at start, `prefix` put before it) or, for what is not secret, the
/// configuration itself (`value`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderSource {
    /// The environment variable holding the value.
    pub env: String,
    /// Put before the variable's value (e.g. `"Bearer "`).
    pub prefix: String,
    /// The value itself, for headers that are not secret.
    pub value: String,
}

/// How the server is reached, checked.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// A child process over stdio.
    Stdio {
        program: String,
        args: Vec<String>,
        /// The child's whole environment.
        env: Vec<(String, String)>,
        cwd: Option<PathBuf>,
    },
    /// Streamable HTTP.
    Http {
        url: String,
        /// Marked sensitive when they come from the environment, so that
        /// they are never printed.
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
}

impl McpServerConfig {
    /// The prefix of its tools' names.
    pub(crate) fn prefix_of(&self, name: &str) -> String {
        self.prefix.clone().unwrap_or_else(|| format!("{name}_"))
    }

    /// Checks the settings that do not depend on the rest of the
    /// configuration; `setting` is `mcp_servers.NAME`. Reads the
    /// environment for the secrets.
    pub(crate) fn transport(&self, setting: &str) -> Result<Transport, ConfigError> {
        let at = |field: &str| format!("{setting}.{field}");
        self.check_timing(setting)?;
        match (self.command.is_empty(), self.url.is_empty()) {
            (false, false) | (true, true) => Err(ConfigError::new(
                setting,
                "set either `command` (a server started as a child process, speaking MCP over stdio) or `url` (a streamable HTTP server), not both or neither",
            )),
            (false, true) => {
                if !self.headers.is_empty() {
                    return Err(ConfigError::new(
                        at("headers"),
                        "only for a server reached by `url`; a child process gets `env` and `env_passthrough`",
                    ));
                }
                self.stdio(setting)
            }
            (true, false) => {
                if !self.args.is_empty()
                    || !self.env.is_empty()
                    || !self.env_passthrough.is_empty()
                    || self.cwd.is_some()
                {
                    return Err(ConfigError::new(
                        setting,
                        "`args`, `env`, `env_passthrough` and `cwd` are for a server started by `command`, not one reached by `url`",
                    ));
                }
                self.http(setting)
            }
        }
    }

    fn check_timing(&self, setting: &str) -> Result<(), ConfigError> {
        let at = |field: &str| format!("{setting}.{field}");
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(600) {
            return Err(ConfigError::new(
                at("connect_timeout"),
                "must be positive and at most 10m",
            ));
        }
        if self.max_backoff.is_zero() || self.max_backoff > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                at("max_backoff"),
                "must be positive and at most 1h",
            ));
        }
        if self.initial_backoff.is_zero() || self.initial_backoff > self.max_backoff {
            return Err(ConfigError::new(
                at("initial_backoff"),
                "must be positive and at most max_backoff",
            ));
        }
        Ok(())
    }

    fn stdio(&self, setting: &str) -> Result<Transport, ConfigError> {
        let at = |field: &str| format!("{setting}.{field}");
        let program = &self.command;
        if program.contains('\0') || (program.contains('/') && !program.starts_with('/')) {
            return Err(ConfigError::new(
                at("command"),
                format!("`{program}` must be a program name looked up on PATH or an absolute path"),
            ));
        }
        if self.args.iter().any(|arg| arg.contains('\0')) {
            return Err(ConfigError::new(
                at("args"),
                "arguments must not contain NUL characters",
            ));
        }
        let mut env: BTreeMap<String, String> = ["PATH", "HOME", "LANG", "TMPDIR"]
            .into_iter()
            .filter_map(|name| Some((name.to_owned(), std::env::var(name).ok()?)))
            .collect();
        for name in &self.env_passthrough {
            check_env_name(name, &at("env_passthrough"))?;
            if let Ok(value) = std::env::var(name) {
                env.insert(name.clone(), value);
            }
        }
        for (name, value) in &self.env {
            check_env_name(name, &at("env"))?;
            if value.contains('\0') {
                return Err(ConfigError::new(
                    at("env"),
                    format!("the value of `{name}` holds a NUL character"),
                ));
            }
            env.insert(name.clone(), value.clone());
        }
        Ok(Transport::Stdio {
            program: program.clone(),
            args: self.args.clone(),
            env: env.into_iter().collect(),
            cwd: self.cwd.clone(),
        })
    }

    fn http(&self, setting: &str) -> Result<Transport, ConfigError> {
        let at = |field: &str| format!("{setting}.{field}");
        let url = reqwest::Url::parse(&self.url)
            .map_err(|err| ConfigError::new(at("url"), format!("is not a valid URL: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::new(
                at("url"),
                "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:3001/mcp",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::new(
                at("url"),
                "must not hold credentials (they would show in logs); send them in a header from the environment: headers.Authorization = { env = \"...\", prefix = \"Bearer \" }",
            ));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, source) in &self.headers {
            headers.push(header(name, source, &at(&format!("headers.{name}")))?);
        }
        Ok(Transport::Http {
            url: self.url.clone(),
            headers,
        })
    }
}

/// One configured header, its value read; errors never quote the value.
fn header(
    name: &str,
    source: &HeaderSource,
    setting: &str,
) -> Result<(http::HeaderName, http::HeaderValue), ConfigError> {
    let header_name = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ConfigError::new(setting, format!("`{name}` is not a valid header name")))?;
    if RESERVED_HEADERS.contains(&header_name.as_str()) {
        return Err(ConfigError::new(
            setting,
            format!("`{name}` is set by the MCP transport itself"),
        ));
    }
    let value = match (source.env.is_empty(), source.value.is_empty()) {
        (false, true) => {
            check_env_name(&source.env, &format!("{setting}.env"))?;
            let secret = std::env::var(&source.env).unwrap_or_default();
            if secret.is_empty() {
                return Err(ConfigError::new(
                    format!("{setting}.env"),
                    format!(
                        "the environment variable `{}` is not set or empty; set it to the header's value",
                        source.env
                    ),
                ));
            }
            let mut value = http::HeaderValue::try_from(format!("{}{secret}", source.prefix))
                .map_err(|_| {
                    ConfigError::new(
                        format!("{setting}.env"),
                        format!(
                            "the value of `{}` (with the prefix) is not a valid header value: printable ASCII only, no line breaks",
                            source.env
                        ),
                    )
                })?;
            value.set_sensitive(true);
            value
        }
        (true, false) if source.prefix.is_empty() => {
            http::HeaderValue::try_from(source.value.as_str()).map_err(|_| {
                ConfigError::new(
                    format!("{setting}.value"),
                    "is not a valid header value: printable ASCII only, no line breaks",
                )
            })?
        }
        _ => {
            return Err(ConfigError::new(
                setting,
                "set either `env` (the environment variable holding a secret value, with an optional `prefix`) or `value` (a value that is not secret)",
            ));
        }
    };
    Ok((header_name, value))
}

fn check_env_name(name: &str, setting: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(ConfigError::new(
            setting,
            format!("`{name}` is not a valid environment variable name"),
        ));
    }
    Ok(())
}

/// A prefix may hold what tool names offered to a model may: ASCII
/// letters and digits, `_` and `-`.
pub(crate) fn check_prefix(prefix: &str, setting: &str) -> Result<(), ConfigError> {
    if prefix.is_empty()
        || prefix.len() > MAX_PREFIX_LEN
        || !prefix
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
    {
        return Err(ConfigError::new(
            setting,
            format!(
                "`{prefix}` must be 1 to {MAX_PREFIX_LEN} ASCII letters, digits, `_` or `-` (tool names offered to a model allow no more; e.g. `github_`)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdio() -> McpServerConfig {
        McpServerConfig {
            command: "node".into(),
            args: vec!["/opt/server.js".into()],
            ..McpServerConfig::default()
        }
    }

    #[test]
    fn either_command_or_url() {
        assert!(matches!(
            stdio().transport("s").unwrap(),
            Transport::Stdio { .. }
        ));
        let both = McpServerConfig {
            url: "http://127.0.0.1:1/mcp".into(),
            ..stdio()
        };
        let err = both.transport("mcp_servers.x").unwrap_err();
        assert_eq!(err.setting, "mcp_servers.x");
        let neither = McpServerConfig::default();
        assert!(neither.transport("s").is_err());
        let http_with_args = McpServerConfig {
            url: "http://127.0.0.1:1/mcp".into(),
            args: vec!["x".into()],
            ..McpServerConfig::default()
        };
        assert!(http_with_args.transport("s").is_err());
    }

    #[test]
    fn urls_are_checked_and_credentials_refused() {
        for (url, field) in [
            ("not a url", "s.url"),
            ("ftp://host/mcp", "s.url"),
            ("http://user:pw@host/mcp", "s.url"),
        ] {
            let config = McpServerConfig {
                url: url.into(),
                ..McpServerConfig::default()
            };
            let err = config.transport("s").unwrap_err();
            assert_eq!(err.setting, field, "{url}");
            assert!(!err.message.contains("pw"), "{}", err.message);
        }
    }

    #[test]
    fn a_header_secret_comes_from_the_environment_and_is_never_quoted() {
        let config = McpServerConfig {
            url: "http://127.0.0.1:1/mcp".into(),
            headers: BTreeMap::from([(
                "Authorization".to_owned(),
                HeaderSource {
                    env: "AGENTMESH_TEST_UNSET_MCP_TOKEN".into(),
                    prefix: "Bearer ".into(),
                    value: String::new(),
                },
            )]),
            ..McpServerConfig::default()
        };
        let err = config.transport("s").unwrap_err();
        assert_eq!(err.setting, "s.headers.Authorization.env");
        assert!(err.message.contains("AGENTMESH_TEST_UNSET_MCP_TOKEN"));

        // PATH is always set: its value must not show in a message, nor in
        // the header's debug form.
        let path = std::env::var("PATH").unwrap();
        let mut with_path = config.clone();
        with_path.headers.insert(
            "Authorization".into(),
            HeaderSource {
                env: "PATH".into(),
                ..HeaderSource::default()
            },
        );
        let Transport::Http { headers, .. } = with_path.transport("s").unwrap() else {
            panic!("http");
        };
        assert!(headers[0].1.is_sensitive());
        assert!(!format!("{:?}", headers[0].1).contains(&path));

        let mut reserved = config.clone();
        reserved.headers = BTreeMap::from([(
            "Mcp-Session-Id".to_owned(),
            HeaderSource {
                value: "x".into(),
                ..HeaderSource::default()
            },
        )]);
        assert_eq!(
            reserved.transport("s").unwrap_err().setting,
            "s.headers.Mcp-Session-Id"
        );
    }

    #[test]
    fn timing_and_prefixes_are_checked() {
        let config = McpServerConfig {
            initial_backoff: Duration::from_secs(60),
            ..stdio()
        };
        assert_eq!(
            config.transport("s").unwrap_err().setting,
            "s.initial_backoff"
        );
        check_prefix("github_", "p").unwrap();
        assert!(check_prefix("", "p").is_err());
        assert!(check_prefix("a b", "p").is_err());
        assert!(check_prefix("github.", "p").is_err());
        assert_eq!(stdio().prefix_of("fs"), "fs_");
    }

    #[test]
    fn the_child_environment_is_scrubbed_and_passed_through_by_name() {
        let config = McpServerConfig {
            env: BTreeMap::from([("LANG".to_owned(), "C".to_owned())]),
            env_passthrough: vec!["PATH".into(), "AGENTMESH_TEST_UNSET_VAR".into()],
            ..stdio()
        };
        let Transport::Stdio { env, .. } = config.transport("s").unwrap() else {
            panic!("stdio");
        };
        let names: Vec<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
        assert!(names.contains(&"PATH"));
        assert!(!names.contains(&"AGENTMESH_TEST_UNSET_VAR"));
        assert!(env.contains(&("LANG".to_owned(), "C".to_owned())));
    }
}
