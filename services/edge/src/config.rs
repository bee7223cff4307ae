//! The edge's configuration (section `[edge]`, environment
//! `AGENTMESH_EDGE__*`): where the services it fronts listen, how long its
//! calls and streams may take, its MCP sessions and the web console.

use std::collections::BTreeMap;
use std::time::Duration;

use agentmesh_kit::config::AuthConfig;
use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use serde::{Deserialize, Serialize};

/// The longest console session.
const MAX_SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// The audit service (`/v1/audit/…`: the console's audit search, cost
    /// chart and chain check).
    pub audit_url: String,
    /// The alerting service (`/v1/alerts`, `/v1/silences`, `/v1/rules`).
    pub alerting_url: String,
    /// The admin address (`host:port`) of a service, by name
    /// (`orchestrator`, `llm-gateway`, `tool-runner`, `audit`, `alerting`),
    /// where `/v1/health` reads its `/health/deep`. A service not named here
    /// is read at its URL's host and port + 1000, as every service
    /// defaults to.
    pub admin_addresses: BTreeMap<String, String>,
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
    /// The web console at `/`.
    pub console: ConsoleConfig,
}

/// The web console's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Whether `/` serves the console (and `/console/…` its login).
    pub enabled: bool,
    /// How long a console session (the cookie a login sets) lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// A file of at least 32 bytes (e.g. from a Secret) the session cookies
    /// are sealed with; every replica given the same file reads every
    /// session. Empty: a key drawn at start (sessions hold on this replica
    /// until it restarts).
    pub session_key_file: String,
    /// Mark the session cookie `Secure` (sent over HTTPS only). Set it when
    /// a TLS-terminating proxy fronts the edge; a request forwarded with
    /// `X-Forwarded-Proto: https` gets a `Secure` cookie in any case.
    pub secure_cookie: bool,
    /// The link from a run to its trace: `{trace_id}` is replaced, e.g.
    /// `http://jaeger:16686/trace/{trace_id}`. Empty: no link.
    pub trace_url_template: String,
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
            audit_url: "http://127.0.0.1:50054".to_owned(),
            alerting_url: "http://127.0.0.1:50055".to_owned(),
            admin_addresses: BTreeMap::new(),
            call_timeout: Duration::from_secs(30),
            completion_timeout: Duration::from_secs(600),
            stream_heartbeat: Duration::from_secs(15),
            mcp: McpConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: Duration::from_secs(30 * 60),
            session_key_file: String::new(),
            secure_cookie: false,
            trace_url_template: String::new(),
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
            ("audit_url", &self.audit_url),
            ("alerting_url", &self.alerting_url),
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
            ("console.session_ttl", self.console.session_ttl),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(
                    format!("edge.{setting}"),
                    "must be more than 0",
                ));
            }
        }
        for (name, address) in &self.admin_addresses {
            if !crate::health::SERVICES.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    format!("edge.admin_addresses.{name}"),
                    format!(
                        "unknown service; use one of {}",
                        crate::health::SERVICES.join(", ")
                    ),
                ));
            }
            if address.parse::<http::uri::Authority>().is_err() || !address.contains(':') {
                return Err(ConfigError::new(
                    format!("edge.admin_addresses.{name}"),
                    format!("`{address}` is not host:port"),
                ));
            }
        }
        if self.console.session_ttl > MAX_SESSION_TTL {
            return Err(ConfigError::new(
                "edge.console.session_ttl",
                "at most 7 days: a console session is meant to be short",
            ));
        }
        let template = &self.console.trace_url_template;
        if !template.is_empty()
            && !(template.contains("{trace_id}")
                && (template.starts_with("http://") || template.starts_with("https://")))
        {
            return Err(ConfigError::new(
                "edge.console.trace_url_template",
                format!("`{template}` must be an http(s) URL containing {{trace_id}}"),
            ));
        }
        Ok(())
    }

    /// The admin address of `service` (one of `crate::health::SERVICES`).
    pub(crate) fn admin_address(&self, service: &str) -> Option<String> {
        if let Some(address) = self.admin_addresses.get(service) {
            return Some(address.clone());
        }
        let url = match service {
            "orchestrator" => &self.orchestrator_url,
            "llm-gateway" => &self.llm_gateway_url,
            "tool-runner" => &self.tool_runner_url,
            "audit" => &self.audit_url,
            "alerting" => &self.alerting_url,
            _ => return None,
        };
        let uri = url.parse::<http::Uri>().ok()?;
        let default_port = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let port = uri.port_u16().unwrap_or(default_port).checked_add(1000)?;
        Some(format!("{}:{port}", uri.host()?))
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
    fn admin_addresses_default_to_the_grpc_port_plus_1000() {
        let mut config = Config::default();
        assert_eq!(
            config.admin_address("alerting").as_deref(),
            Some("127.0.0.1:51055")
        );
        config
            .admin_addresses
            .insert("audit".to_owned(), "audit:9999".to_owned());
        assert_eq!(config.admin_address("audit").as_deref(), Some("audit:9999"));
        assert!(config.check().is_ok());
        config
            .admin_addresses
            .insert("nope".to_owned(), "x:1".to_owned());
        assert!(config.check().is_err());
    }

    #[test]
    fn a_trace_link_needs_the_trace_id() {
        let mut config = Config::default();
        config.console.trace_url_template = "http://jaeger:16686/trace/".to_owned();
        assert!(config.check().is_err());
        config.console.trace_url_template = "http://jaeger:16686/trace/{trace_id}".to_owned();
        assert!(config.check().is_ok());
    }

    #[test]
    fn a_console_session_is_short() {
        let mut config = Config::default();
        config.console.session_ttl = Duration::from_secs(8 * 24 * 3600);
        assert!(config.check().is_err());
    }

    #[test]
    fn zero_durations_are_refused() {
        let mut config = Config::default();
        config.mcp.run_timeout = Duration::ZERO;
        assert!(config.check().is_err());
    }
}
