//! The edge's configuration (section `[edge]`, environment
//! `AGENTMESH_EDGE__*`): where the services it fronts listen, how long its
//! calls and streams may take, and its MCP sessions.

use std::time::Duration;

use agentmesh_kit::config::AuthConfig;
use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use serde::{Deserialize, Serialize};

/// The default HTTP port (the admin port is this plus 1000: 9080).
pub const DEFAULT_PORT: u16 = 8080;

/// The edge's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The HTTP listener (`server.port`, 8080) and the admin one (9080).
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Not used: the edge holds no keys and presents no credential; it
    /// passes each request's `authorization` on to the service the route
    /// maps to, which checks it exactly as it checks a gRPC call (so it
    /// may listen off loopback with no `auth` settings of its own).
    pub auth: AuthConfig,
    /// The orchestrator (runs over REST, SSE and WebSocket; `run_agent`).
    pub orchestrator_url: String,
    /// The LLM gateway (the OpenAI-compatible API).
    pub llm_gateway_url: String,
    /// The tool runner (the tools the MCP server lists).
    pub tool_runner_url: String,
    /// The deadline of a unary call made for an HTTP request (the HTTP
    /// client has no way to say its own).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// The deadline of a non-streaming chat completion (a model's answer
    /// can take minutes).
    #[serde(with = "humantime_serde")]
    pub completion_timeout: Duration,
    /// How often an idle event stream (SSE or WebSocket) gets a heartbeat
    /// (an SSE comment, a WebSocket ping), so proxies keep it open.
    #[serde(with = "humantime_serde")]
    pub stream_heartbeat: Duration,
    /// The MCP server at `/mcp`.
    pub mcp: McpConfig,
}

/// The MCP server's settings. Its sessions are the edge's only state: an
/// MCP client must reach the replica that holds its session (session
/// affinity on `mcp-session-id`), or use `stateless`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Whether `/mcp` is served.
    pub enabled: bool,
    /// Answer every request on its own, with no session (any replica can
    /// answer; no server-initiated messages between requests).
    pub stateless: bool,
    /// A session unused for this long is closed.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// The longest `run_agent` waits for a run's answer.
    #[serde(with = "humantime_serde")]
    pub run_timeout: Duration,
    /// The `Host` names (or `host:port`) `/mcp` answers, against DNS
    /// rebinding. Empty: loopback names when the edge listens on loopback,
    /// any otherwise (credentials guard a network-facing edge).
    pub allowed_hosts: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            orchestrator_url: "http://127.0.0.1:50051".to_owned(),
            llm_gateway_url: "http://127.0.0.1:50052".to_owned(),
            tool_runner_url: "http://127.0.0.1:50053".to_owned(),
            call_timeout: Duration::from_secs(30),
            completion_timeout: Duration::from_secs(600),
            stream_heartbeat: Duration::from_secs(15),
            mcp: McpConfig::default(),
        }
    }
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stateless: false,
            session_idle_timeout: Duration::from_secs(600),
            run_timeout: Duration::from_secs(600),
            allowed_hosts: Vec::new(),
        }
    }
}

impl Config {
    /// Checks the edge's own settings (the kit checks `server`).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        for (setting, url) in [
            ("orchestrator_url", &self.orchestrator_url),
            ("llm_gateway_url", &self.llm_gateway_url),
            ("tool_runner_url", &self.tool_runner_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<http::Uri>().is_err()
            {
                return Err(ConfigError::new(
                    format!("edge.{setting}"),
                    format!("`{url}` is not an http:// or https:// URL"),
                ));
            }
        }
        for (setting, value) in [
            ("call_timeout", self.call_timeout),
            ("completion_timeout", self.completion_timeout),
            ("stream_heartbeat", self.stream_heartbeat),
            ("mcp.session_idle_timeout", self.mcp.session_idle_timeout),
            ("mcp.run_timeout", self.mcp.run_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(
                    format!("edge.{setting}"),
                    "must be more than 0",
                ));
            }
        }
        Ok(())
    }
}

// The services behind the routes check every caller: the edge checks none.
agentmesh_kit::service_config!(
    Config,
    service = "edge",
    section = "edge",
    validate = Config::check,
    checks_callers = false
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_on_8080() {
        let config = Config::default();
        assert!(config.check().is_ok());
        assert_eq!(config.server.port, 8080);
        assert_eq!(config.server.admin_port(), 9080);
    }

    #[test]
    fn a_bad_peer_url_names_the_setting() {
        let config = Config {
            llm_gateway_url: "localhost:50052".to_owned(),
            ..Config::default()
        };
        let err = config.check().err().map(|err| err.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|err| err.contains("edge.llm_gateway_url")),
            "{err:?}"
        );
    }

    #[test]
    fn the_edge_may_serve_the_network_without_auth_settings() {
        let mut config = Config::default();
        config.server.host = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        assert!(agentmesh_kit::config::validate(&config).is_ok());
    }

    #[test]
    fn zero_durations_are_refused() {
        let mut config = Config::default();
        config.mcp.run_timeout = Duration::ZERO;
        assert!(config.check().is_err());
    }
}
