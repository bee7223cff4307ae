//! Layered, validated configuration.
//!
//! Every service's configuration is a typed struct (implementing
//! [`ServiceConfig`]) read in layers, each overriding the one before:
//!
//! 1. the struct's `Default` (the embedded mode: SQLite, default ports);
//! 2. a TOML file: either a file for this service alone (top-level keys) or one
//!    file with a section per service (`[orchestrator]`, `[llm_gateway]`, …;
//!    see [`FileLayout`]): a service without a section in a sectioned file
//!    keeps its defaults;
//! 3. environment variables `AGENTMESH_<SECTION>__<KEY>__<SUBKEY>`, for example
//!    `AGENTMESH_ORCHESTRATOR__SERVER__PORT=6000`;
//! 4. command-line flags (`--port`, `--set server.grace_period=5s`).
//!
//! The result is checked before anything starts; a bad value becomes a
//! [`ConfigError`] whose one-line message names the setting and where it came from.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::config_error::ConfigError;
pub use agentmesh_auth::AuthConfig;

/// What a service's configuration struct provides to the kit.
pub trait ServiceConfig:
    Serialize + DeserializeOwned + Default + Clone + fmt::Debug + Send + Sync + 'static
{
    /// The service's name as it appears in binaries, logs and metrics, e.g. `llm-gateway`.
    const SERVICE: &'static str;
    /// Its section in a shared configuration file and its environment prefix, e.g. `llm_gateway`.
    const SECTION: &'static str;

    /// The gRPC and admin server settings.
    fn server(&self) -> &ServerConfig;
    /// Logging settings.
    fn log(&self) -> &LogConfig;
    /// Identity and access settings (`[<service>.auth]`).
    fn auth(&self) -> &agentmesh_auth::AuthConfig;
    /// Checks the service's own settings (the server settings are checked by the kit).
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Whether the service checks its callers' credentials itself (its
    /// `auth` section is then checked, and `["none"]` off loopback refused).
    /// The edge does not: it passes each caller's credential on to the
    /// service it calls.
    const CHECKS_CALLERS: bool = true;
}

/// Implements [`ServiceConfig`] for a struct with `server: ServerConfig`,
/// `log: LogConfig` and `auth: AuthConfig` fields, optionally with the
/// service's own checks (and `checks_callers = false` for a service that
/// checks no caller itself):
///
/// ```ignore
/// agentmesh_kit::service_config!(Config, service = "audit", section = "audit",
///     validate = |config: &Config| config.storage.validate());
/// ```
#[macro_export]
macro_rules! service_config {
    ($config:ty, service = $service:expr, section = $section:literal $(, validate = $validate:expr)? $(, checks_callers = $checks:expr)? $(,)?) => {
        impl $crate::config::ServiceConfig for $config {
            const SERVICE: &'static str = $service;
            const SECTION: &'static str = $section;
            $(const CHECKS_CALLERS: bool = $checks;)?

            fn server(&self) -> &$crate::config::ServerConfig {
                &self.server
            }

            fn log(&self) -> &$crate::config::LogConfig {
                &self.log
            }

            fn auth(&self) -> &$crate::config::AuthConfig {
                &self.auth
            }

            $(
            fn validate(&self) -> Result<(), $crate::config::ConfigError> {
                let validate: fn(&Self) -> Result<(), $crate::config::ConfigError> = $validate;
                validate(self)
            }
            )?
        }
    };
}

/// Settings of the gRPC server and the admin HTTP server beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the gRPC server listens on: loopback by default; set it (with
    /// `auth`) to serve the network.
    pub host: IpAddr,
    /// Address the admin HTTP server listens on (`/metrics`, `/livez`,
    /// `/readyz`, `/health/deep`, which carry no credentials); unset = `host`.
    pub admin_host: Option<IpAddr>,
    /// gRPC port; 0 picks a free one.
    pub port: u16,
    /// Admin HTTP port (`/metrics`, `/healthz`, `/readyz`); unset = `port + 1000`.
    pub admin_port: Option<u16>,
    /// How long a shutdown may take: in-flight calls and streams get this long
    /// to finish before they are ended.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// How long to keep serving after health turns NOT_SERVING, so load
    /// balancers stop sending new calls before the listener closes.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Largest accepted or sent gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// Calls handled at once across all connections; more are refused with
    /// UNAVAILABLE at once instead of queueing.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams_per_connection: u32,
    /// Largest header list (all metadata of a call, as HTTP/2 counts it) a
    /// client may send, in bytes; more resets the stream.
    pub max_header_list_bytes: u32,
    /// Limits on the connections of both listeners
    /// (`[server.connections]`: caps, handshake and idle timeouts, backlog).
    pub connections: crate::connections::ConnectionSettings,
    /// Interval of HTTP/2 keep-alive pings on idle connections.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long to wait for a keep-alive ping's answer before closing.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// How often each dependency check behind readiness runs (a failing one
    /// is retried sooner, up to this interval).
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// How long one dependency check may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub health_check_timeout: Duration,
    /// Whether the admin server answers `/health/deep`, whose report names
    /// internal addresses (the peers and databases checked); `/readyz`
    /// stays either way.
    pub deep_health: bool,
    /// Whether the admin server answers the profiling routes
    /// (`/debug/pprof/profile`, `/debug/heap`; see [`crate::profiling`]).
    /// Off by default: a profile names every function of the binary.
    pub profiling: bool,
    /// How often the service checks whether much of its heap is free and,
    /// if so, gives it back to the system (see [`crate::heap`]); `0s` never.
    #[serde(with = "humantime_serde")]
    pub heap_trim_interval: Duration,
    /// TLS on the gRPC listener (`[server.tls]`); absent = plain HTTP/2.
    /// (Boxed, as `client_tls`: configurations are held by start-up futures
    /// that are cheaper to move small.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<crate::tls::ServerTls>>,
    /// How calls to `https://` peers are secured (`[server.client_tls]`).
    pub client_tls: Box<crate::tls::ClientTls>,
    /// gRPC-Web for browsers on the gRPC listener, and its CORS
    /// (`[server.grpc_web]`; see [`crate::grpc_web`]).
    pub grpc_web: crate::grpc_web::GrpcWebConfig,
}

/// The admin port is the gRPC port plus this, as DESIGN fixes (51051 for 50051).
pub const ADMIN_PORT_OFFSET: u16 = 1000;

impl ServerConfig {
    /// Defaults with the given gRPC port.
    pub fn with_port(port: u16) -> Self {
        Self {
            port,
            ..Self::default()
        }
    }

    /// The admin port: as set, or the gRPC port plus 1000 (0 stays 0).
    pub fn admin_port(&self) -> u16 {
        match (self.admin_port, self.port) {
            (Some(port), _) => port,
            (None, 0) => 0,
            (None, port) => port.saturating_add(ADMIN_PORT_OFFSET),
        }
    }

    /// Checks the values that types alone do not rule out.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.port != 0 && self.admin_port.is_none() && self.port > u16::MAX - ADMIN_PORT_OFFSET {
            return Err(ConfigError::new(
                "server.admin_port",
                format!(
                    "the default admin port (port + {ADMIN_PORT_OFFSET}) does not fit for port {}; set server.admin_port",
                    self.port
                ),
            ));
        }
        if self.port != 0 && self.admin_port() == self.port {
            return Err(ConfigError::new(
                "server.admin_port",
                format!("must differ from server.port ({})", self.port),
            ));
        }
        self.validate_limits()?;
        if self.grace_period.is_zero() || self.grace_period > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "server.grace_period",
                "must be between 1ms and 1h",
            ));
        }
        if self.drain_delay >= self.grace_period {
            return Err(ConfigError::new(
                "server.drain_delay",
                format!(
                    "must be shorter than server.grace_period ({})",
                    humantime_serde::re::humantime::format_duration(self.grace_period)
                ),
            ));
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout.is_zero() {
            return Err(ConfigError::new(
                "server.keepalive_interval",
                "keep-alive interval and timeout must be positive",
            ));
        }
        if self.health_check_interval.is_zero() {
            return Err(ConfigError::new(
                "server.health_check_interval",
                "must be positive",
            ));
        }
        if self.health_check_timeout.is_zero() {
            return Err(ConfigError::new(
                "server.health_check_timeout",
                "must be positive",
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        self.grpc_web.validate()?;
        self.client_tls.validate()
    }

    /// The checks of the size and count limits, and of
    /// `[server.connections]`.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        const MIB: usize = 1024 * 1024;
        if !(1024..=256 * MIB).contains(&self.max_message_bytes) {
            return Err(ConfigError::new(
                "server.max_message_bytes",
                format!(
                    "{} is out of range: use 1024 to {} bytes",
                    self.max_message_bytes,
                    256 * MIB
                ),
            ));
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::new(
                "server.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.max_concurrent_streams_per_connection == 0 {
            return Err(ConfigError::new(
                "server.max_concurrent_streams_per_connection",
                "must be at least 1",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_list_bytes) {
            return Err(ConfigError::new(
                "server.max_header_list_bytes",
                format!(
                    "{} is out of range: use 1024 to 1048576 bytes",
                    self.max_header_list_bytes
                ),
            ));
        }
        self.connections.validate()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_host: None,
            port: 0,
            admin_port: None,
            grace_period: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            max_concurrent_streams_per_connection: 256,
            max_header_list_bytes: 16 * 1024,
            connections: crate::connections::ConnectionSettings::default(),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            health_check_interval: Duration::from_secs(5),
            health_check_timeout: Duration::from_secs(2),
            deep_health: true,
            profiling: false,
            heap_trim_interval: Duration::from_secs(10),
            tls: None,
            client_tls: Box::default(),
            grpc_web: crate::grpc_web::GrpcWebConfig::default(),
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable lines (for a terminal).
    Pretty,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` or `pretty`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,agentmesh_kit=debug`;
    /// `RUST_LOG`, when set, wins.
    pub level: String,
    /// OpenTelemetry trace export (`[log.traces]`).
    pub traces: crate::telemetry::TracesConfig,
    /// A call that succeeds (a model call, a tool call) is logged at info
    /// only when it took at least this long, as a slow call; every one is
    /// logged at debug. A line per call would cost more CPU than the call
    /// itself at high rates; errors are always logged.
    #[serde(with = "humantime_serde")]
    pub slow_call_threshold: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".to_owned(),
            traces: crate::telemetry::TracesConfig::default(),
            slow_call_threshold: Duration::from_secs(30),
        }
    }
}

impl LogConfig {
    /// Checks that the level parses as a filter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|err| ConfigError::new("log.level", err.to_string()))?;
        self.traces.validate()
    }
}

/// Settings given on the command line, applied over file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--host`.
    pub host: Option<IpAddr>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--admin-port`.
    pub admin_port: Option<u16>,
    /// `--set key=value` pairs, keys relative to the service's section.
    pub set: Vec<(String, String)>,
}

/// The sections of the five services and the edge in a shared
/// configuration file.
pub const SERVICE_SECTIONS: [&str; 6] = [
    "orchestrator",
    "llm_gateway",
    "tool_runner",
    "audit",
    "alerting",
    "edge",
];

/// How a configuration file holds a service's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileLayout {
    /// Decided by the file: it is sectioned when it has a table named after
    /// this service, or after another service that is not also one of this
    /// service's own settings (the producers of audit events have an `audit`
    /// setting, so `[audit]` alone leaves a producer's file flat); otherwise
    /// its top-level keys are this service's settings.
    Detect,
    /// A section per service, known to the caller (e.g. the whole mesh's
    /// file): this service reads its own section, or keeps its defaults.
    Sectioned,
}

/// Reads a service's configuration: defaults, then `file`, then the
/// environment, then `overrides`; then validates it. The file's layout is
/// detected ([`FileLayout::Detect`]).
pub fn load<C: ServiceConfig>(
    file: Option<&Path>,
    overrides: &Overrides,
) -> Result<C, ConfigError> {
    load_with_layout(file, FileLayout::Detect, overrides)
}

/// As [`load`], with the file's layout given.
pub fn load_with_layout<C: ServiceConfig>(
    file: Option<&Path>,
    layout: FileLayout,
    overrides: &Overrides,
) -> Result<C, ConfigError> {
    load_from_env(
        file,
        layout,
        overrides,
        Env::prefixed(&env_prefix::<C>()).split("__"),
    )
}

/// Whether the file at `path` has a section (a top-level table) named after
/// any of the five services. A file that cannot be read or parsed has none
/// (loading it then reports why).
pub fn has_service_section(path: &Path) -> bool {
    let file = Figment::from(Toml::file_exact(path));
    SERVICE_SECTIONS
        .iter()
        .any(|section| has_table(&file, section))
}

fn has_table(file: &Figment, name: &str) -> bool {
    file.find_value(name)
        .is_ok_and(|value| value.as_dict().is_some())
}

/// Whether `file` is sectioned for `C` ([`FileLayout::Detect`]).
fn detect_sectioned<C: ServiceConfig>(file: &Figment) -> bool {
    if has_table(file, C::SECTION) {
        return true;
    }
    let own_settings = serde_json::to_value(C::default()).unwrap_or_default();
    SERVICE_SECTIONS
        .iter()
        .any(|section| own_settings.get(section).is_none() && has_table(file, section))
}

/// The environment prefix of a service, e.g. `AGENTMESH_LLM_GATEWAY__`.
pub fn env_prefix<C: ServiceConfig>() -> String {
    format!("AGENTMESH_{}__", C::SECTION.to_ascii_uppercase())
}

fn load_from_env<C: ServiceConfig>(
    file: Option<&Path>,
    layout: FileLayout,
    overrides: &Overrides,
    env: Env,
) -> Result<C, ConfigError> {
    let section = C::SECTION;
    let mut figment = Figment::from(Serialized::defaults(C::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::new(
                "config",
                format!("configuration file {} does not exist", path.display()),
            ));
        }
        let file = Figment::from(Toml::file_exact(path));
        let sectioned = match layout {
            FileLayout::Sectioned => true,
            FileLayout::Detect => detect_sectioned::<C>(&file),
        };
        // A sectioned file without this service's section leaves it its
        // defaults (focusing on a missing key yields nothing).
        figment = if sectioned {
            figment.merge(file.focus(section))
        } else {
            figment.merge(file)
        };
    }
    figment = figment.merge(env);
    for (key, value) in &overrides.set {
        let parsed: figment::value::Value = value
            .parse()
            .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
        figment = figment.merge(Serialized::default(key, parsed));
    }
    if let Some(host) = overrides.host {
        figment = figment.merge(Serialized::default("server.host", host));
    }
    if let Some(port) = overrides.port {
        figment = figment.merge(Serialized::default("server.port", port));
    }
    if let Some(port) = overrides.admin_port {
        figment = figment.merge(Serialized::default("server.admin_port", port));
    }

    let config: C = figment
        .extract()
        .map_err(|err| ConfigError::from_figment(section, &env_prefix::<C>(), err))?;
    validate(&config)?;
    Ok(config)
}

/// Runs the kit's and the service's checks on an already-built configuration.
pub fn validate<C: ServiceConfig>(config: &C) -> Result<(), ConfigError> {
    config
        .server()
        .validate()
        .and_then(|()| config.log().validate())
        .and_then(|()| {
            if C::CHECKS_CALLERS {
                validate_auth(config.auth(), config.server())
            } else {
                Ok(())
            }
        })
        .and_then(|()| config.validate())
        .map_err(|err| err.within(C::SECTION))
}

/// The auth settings, and `none` only where the service listens on
/// loopback (unless forced).
fn validate_auth(auth: &AuthConfig, server: &ServerConfig) -> Result<(), ConfigError> {
    auth.validate()
        .and_then(|()| auth.check_listen_address(server.host))
        .map_err(|err| ConfigError::new(format!("auth.{}", err.setting), err.problem))?;
    let verifies_clients = server
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_auth != crate::tls::ClientAuth::None);
    if auth.methods.contains(&agentmesh_auth::Method::Mtls) && !verifies_clients {
        return Err(ConfigError::new(
            "auth.methods",
            "\"mtls\" needs client certificates verified by the listener: set [server.tls] with client_ca_file and client_auth = \"optional\" or \"required\"",
        ));
    }
    Ok(())
}

/// Renders a configuration as TOML, for `--dump-config`.
pub fn to_toml<C: ServiceConfig>(config: &C) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct TestConfig {
        server: ServerConfig,
        log: LogConfig,
        auth: AuthConfig,
        greeting: String,
        /// A setting named like a service, as the producers' `audit`.
        audit: std::collections::BTreeMap<String, String>,
    }

    impl Default for TestConfig {
        fn default() -> Self {
            Self {
                server: ServerConfig::with_port(50099),
                log: LogConfig::default(),
                auth: AuthConfig::default(),
                greeting: "hello".into(),
                audit: std::collections::BTreeMap::new(),
            }
        }
    }

    impl ServiceConfig for TestConfig {
        const SERVICE: &'static str = "test-svc";
        const SECTION: &'static str = "test_svc";
        fn server(&self) -> &ServerConfig {
            &self.server
        }
        fn log(&self) -> &LogConfig {
            &self.log
        }
        fn auth(&self) -> &AuthConfig {
            &self.auth
        }
        fn validate(&self) -> Result<(), ConfigError> {
            if self.greeting.is_empty() {
                return Err(ConfigError::new("greeting", "must not be empty"));
            }
            Ok(())
        }
    }

    fn load_with(file: Option<&Path>, overrides: &Overrides) -> Result<TestConfig, ConfigError> {
        // An empty environment source keeps these tests away from the process environment.
        let env = Env::prefixed("AGENTMESH_TEST_SVC_UNUSED__").split("__");
        load_from_env::<TestConfig>(file, FileLayout::Detect, overrides, env)
    }

    #[test]
    #[expect(
        clippy::result_large_err,
        reason = "figment's Jail fixes the closure's error type"
    )]
    fn environment_overrides_the_file_and_names_the_variable() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("svc.toml", "[server]\nport = 7000\n")?;
            jail.set_env("AGENTMESH_TEST_SVC__SERVER__GRACE_PERIOD", "3s");
            let config: TestConfig = load(Some(Path::new("svc.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(config.server.port, 7000);
            assert_eq!(config.server.grace_period, Duration::from_secs(3));

            jail.set_env("AGENTMESH_TEST_SVC__SERVER__PORT", "abc");
            let err = load::<TestConfig>(None, &Overrides::default()).unwrap_err();
            assert_eq!(err.setting, "test_svc.server.port");
            assert!(
                err.to_string()
                    .contains("environment variable AGENTMESH_TEST_SVC__SERVER__PORT"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn defaults_are_valid() {
        let config = load_with(None, &Overrides::default()).unwrap();
        assert_eq!(config, TestConfig::default());
        assert_eq!(config.server.admin_port(), 51099);
    }

    #[test]
    fn file_section_and_flags_layer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.toml");
        std::fs::write(
            &path,
            "[test_svc]\ngreeting = \"hi\"\n[test_svc.server]\nport = 7000\ngrace_period = \"5s\"\n[other]\nx = 1\n",
        )
        .unwrap();
        let overrides = Overrides {
            port: Some(7100),
            set: vec![("server.drain_delay".into(), "1s".into())],
            ..Overrides::default()
        };
        let config = load_with(Some(&path), &overrides).unwrap();
        assert_eq!(config.greeting, "hi");
        assert_eq!(config.server.port, 7100);
        assert_eq!(config.server.admin_port(), 8100);
        assert_eq!(config.server.grace_period, Duration::from_secs(5));
        assert_eq!(config.server.drain_delay, Duration::from_secs(1));
    }

    #[test]
    fn a_bad_port_names_the_setting_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.toml");
        std::fs::write(&path, "[server]\nport = \"abc\"\n").unwrap();
        let err = load_with(Some(&path), &Overrides::default()).unwrap_err();
        assert_eq!(err.setting, "test_svc.server.port");
        let line = err.to_string();
        assert!(line.contains("abc"), "{line}");
        assert!(line.contains("svc.toml"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn grpc_web_settings_load_and_a_bad_origin_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.toml");
        std::fs::write(
            &path,
            "[server.grpc_web]\nenabled = true\nallowed_origins = [\"http://localhost:5173\"]\nmax_age = \"1h\"\n",
        )
        .unwrap();
        let config = load_with(Some(&path), &Overrides::default()).unwrap();
        assert!(config.server.grpc_web.enabled);
        assert_eq!(config.server.grpc_web.max_age, Duration::from_secs(3600));

        let overrides = Overrides {
            set: vec![(
                "server.grpc_web.allowed_origins".into(),
                "[\"http://localhost:5173/\"]".into(),
            )],
            ..Overrides::default()
        };
        let err = load_with(Some(&path), &overrides).unwrap_err();
        assert_eq!(err.setting, "test_svc.server.grpc_web.allowed_origins");
        assert!(err.to_string().contains("localhost:5173/"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let overrides = Overrides {
            set: vec![("server.prot".into(), "1".into())],
            ..Overrides::default()
        };
        let err = load_with(None, &overrides).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn semantic_checks_name_the_setting() {
        let cases = [
            ("server.max_message_bytes", "10"),
            ("server.max_concurrent_requests", "0"),
            ("server.drain_delay", "1h"),
            ("server.health_check_interval", "0s"),
            ("server.health_check_timeout", "0s"),
            ("server.max_header_list_bytes", "10"),
            ("server.connections.max_grpc", "0"),
            ("server.connections.handshake_timeout", "0s"),
            ("server.tls.cert_file", "\"\""),
            ("server.client_tls.server_name", "\"not a name\""),
            ("log.level", "[[["),
            ("greeting", "\"\""),
        ];
        for (key, value) in cases {
            let overrides = Overrides {
                set: vec![(key.into(), value.into())],
                ..Overrides::default()
            };
            let err = load_with(None, &overrides).unwrap_err();
            assert_eq!(err.setting, format!("test_svc.{key}"), "{err}");
        }
    }

    #[test]
    fn the_mtls_method_needs_a_listener_that_verifies_client_certificates() {
        let mut config = TestConfig::default();
        config.auth.methods = vec![agentmesh_auth::Method::Mtls];
        config.auth.mtls_principals = vec![agentmesh_auth::mtls::MtlsPrincipal {
            dns: Some("batch.acme.internal".into()),
            subject: "batch".into(),
            ..Default::default()
        }];
        let err = validate(&config).unwrap_err();
        assert_eq!(err.setting, "test_svc.auth.methods", "{err}");
        config.server.tls = Some(Box::new(crate::tls::ServerTls {
            cert_file: "cert.pem".into(),
            key_file: "key.pem".into(),
            client_ca_file: Some("ca.pem".into()),
            client_auth: crate::tls::ClientAuth::Required,
            ..crate::tls::ServerTls::default()
        }));
        validate(&config).unwrap();
        // The TLS settings read from a file, with their defaults.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.toml");
        std::fs::write(
            &path,
            "[server]\ndeep_health = false\n[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n[server.client_tls]\nca_file = \"ca.pem\"\n",
        )
        .unwrap();
        let config = load_with(Some(&path), &Overrides::default()).unwrap();
        let tls = config.server.tls.unwrap();
        assert_eq!(tls.reload_interval, Duration::from_secs(10));
        assert_eq!(tls.client_auth, crate::tls::ClientAuth::None);
        assert!(!config.server.deep_health);
        assert!(to_toml(&TestConfig::default()).contains("deep_health = true"));
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = load_with(
            Some(Path::new("/nonexistent/agentmesh.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn a_service_without_a_section_in_a_sectioned_file_keeps_its_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.toml");
        std::fs::write(
            &path,
            "[alerting.route]\nreceiver = \"team\"\n[[alerting.receivers]]\nname = \"team\"\n",
        )
        .unwrap();
        assert!(has_service_section(&path));
        let config = load_with(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config, TestConfig::default());
    }

    #[test]
    fn a_setting_named_like_a_service_leaves_a_file_flat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.toml");
        std::fs::write(&path, "greeting = \"hi\"\n[audit]\nurl = \"\"\n").unwrap();
        let config = load_with(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.greeting, "hi");
        assert_eq!(config.audit.get("url").map(String::as_str), Some(""));
        // Known to be sectioned (the mesh's file), `[audit]` is the audit
        // service's, and this service keeps its defaults.
        let env = Env::prefixed("AGENTMESH_TEST_SVC_UNUSED__").split("__");
        let config = load_from_env::<TestConfig>(
            Some(&path),
            FileLayout::Sectioned,
            &Overrides::default(),
            env,
        )
        .unwrap();
        assert_eq!(config, TestConfig::default());
    }

    #[test]
    fn a_file_without_service_sections_is_flat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.toml");
        std::fs::write(&path, "[server]\nport = 7000\n").unwrap();
        assert!(!has_service_section(&path));
        assert!(!has_service_section(&dir.path().join("missing.toml")));
        let config = load_with(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.server.port, 7000);
    }
}
