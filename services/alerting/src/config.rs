//! The alerting service's configuration (section `[alerting]`, environment
//! `AGENTMESH_ALERTING__*`): where the audit stream comes from, the rules,
//! the routing tree, inhibition rules, receivers, Alertmanager forwarding,
//! and the timing of the alert lifecycle.
//!
//! [`Config::compile`] checks everything at start and builds the parts the
//! service runs with; an error names the setting (e.g.
//! `alerting.rules[ToolFailing].count.window`) so the service stops with one
//! line saying what to fix.

use std::time::Duration;

use agentmesh_audit_client::AuditConfig;
use agentmesh_kit::config::AuthConfig;
use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use agentmesh_storage::StorageConfig;
use serde::{Deserialize, Serialize};

use crate::receivers::{
    AlertmanagerConfig, AlertmanagerForwarder, DeliveryConfig, ReceiverConfig, Receivers,
};
use crate::routing::{InhibitRuleConfig, Inhibitor, Route, RouteConfig};
use crate::rules::{Rule, RuleConfig};

/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50055;

/// The service's configuration. Rules, routes, receivers and the rest of
/// the alerting tree are set from configuration files and the environment
/// (TOML, Alertmanager's names), not from Rust: their fields are private.
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
    /// Where the service keeps alerts, silences, the notification log and
    /// its position in the audit stream.
    pub storage: StorageConfig,
    /// Where the service's own audit events (NOTIFICATION, CONFIG_LOADED) go.
    pub audit: AuditConfig,
    /// Where the audit events the rules look at come from.
    pub source: SourceConfig,
    /// Leader election among replicas sharing a PostgreSQL database.
    pub leader: LeaderConfig,
    /// How often rules are evaluated when no event arrives (windows slide,
    /// pending alerts fire, absences start).
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// A pushed alert without an end resolves when not re-sent for this
    /// long (Alertmanager's `resolve_timeout`).
    #[serde(with = "humantime_serde")]
    pub resolve_timeout: Duration,
    /// How long resolved alerts stay listed.
    #[serde(with = "humantime_serde")]
    pub resolved_retention: Duration,
    /// How long expired silences stay listed.
    #[serde(with = "humantime_serde")]
    pub silence_retention: Duration,
    /// How long the notification log remembers a group it notified.
    #[serde(with = "humantime_serde")]
    pub notification_log_retention: Duration,
    /// Most alerts held at once (bounded memory whatever the traffic).
    pub max_alerts: usize,
    /// Most groups (distinct `group_by` values) per rule.
    pub max_groups_per_rule: usize,
    /// Most aggregation groups in the dispatcher.
    pub max_aggregation_groups: usize,
    /// Interval of heartbeats on idle WatchAlerts streams.
    #[serde(with = "humantime_serde")]
    pub watch_heartbeat: Duration,
    /// The URL people reach this service's alerts at, put in notifications.
    pub external_url: String,
    /// The operator's rules (a rule named as a shipped one replaces it).
    pub(crate) rules: Vec<RuleConfig>,
    /// Names of rules (shipped or configured) listed but not evaluated.
    pub(crate) disable_rules: Vec<String>,
    /// The routing tree.
    pub(crate) route: RouteConfig,
    /// Inhibition rules.
    pub(crate) inhibit_rules: Vec<InhibitRuleConfig>,
    /// Receivers, referred to by name from the routes.
    pub(crate) receivers: Vec<ReceiverConfig>,
    /// Prometheus Alertmanagers every alert is forwarded to.
    pub(crate) alertmanagers: Vec<AlertmanagerConfig>,
    /// Retries of failed deliveries.
    pub(crate) delivery: DeliveryConfig,
}

/// The audit stream the rules are evaluated over.
///
/// The stream is read with the service's own credential
/// (`[alerting.auth] credential_file`, or `AGENTMESH_SERVICE_CREDENTIAL`),
/// and covers every tenant: with auth on, that credential needs the scopes
/// `service`, `audit:read` and `admin` at the audit service (without
/// `admin` the audit service refuses a subscription across tenants with
/// PERMISSION_DENIED: the stream stays down, the `audit-stream` check
/// fails and the log names the refusal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// The audit service's address.
    pub url: String,
    /// First wait before reconnecting a lost stream (doubles up to
    /// `max_reconnect_backoff`).
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub max_reconnect_backoff: Duration,
    /// Most events evaluated and committed together.
    pub batch_size: usize,
}

/// Leader election: of several replicas on one PostgreSQL database, the
/// one holding a PostgreSQL advisory lock evaluates rules, advances the
/// audit cursor and notifies; the others stand by and try for the lock
/// every `retry`. On SQLite the single process always leads.
///
/// A standby forwards FireAlert, CreateSilence, DeleteSilence and
/// WatchAlerts to the leader at the address the leader advertises
/// (`advertise_url`, stored in the database while it leads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderConfig {
    /// How often a standby tries for the lock, and how often (and how
    /// long at most) the leader checks that it still holds it. A standby
    /// takes over within about this long after the leader's process dies.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// The gRPC address the other replicas reach this one at while it
    /// leads, e.g. `http://10.0.3.7:50055` (on Kubernetes the pod IP:
    /// `http://$(POD_IP):50055`). Empty: nothing is advertised, and
    /// standbys answer writes and WatchAlerts UNAVAILABLE instead of
    /// forwarding them.
    pub advertise_url: String,
}

/// The longest `leader.retry`: a leader must notice a lost lock well before
/// PostgreSQL's keepalive hands it to another replica.
pub(crate) const MAX_LEADER_RETRY: Duration = Duration::from_secs(3);

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            retry: Duration::from_secs(2),
            advertise_url: String::new(),
        }
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:50054".to_owned(),
            reconnect_backoff: Duration::from_millis(500),
            max_reconnect_backoff: Duration::from_secs(30),
            batch_size: 500,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            audit: AuditConfig::default(),
            source: SourceConfig::default(),
            leader: LeaderConfig::default(),
            evaluation_interval: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(5 * 60),
            resolved_retention: Duration::from_secs(15 * 60),
            silence_retention: Duration::from_secs(5 * 24 * 3600),
            notification_log_retention: Duration::from_secs(5 * 24 * 3600),
            max_alerts: 10_000,
            max_groups_per_rule: 1_000,
            max_aggregation_groups: 10_000,
            watch_heartbeat: Duration::from_secs(15),
            external_url: String::new(),
            rules: Vec::new(),
            disable_rules: Vec::new(),
            route: RouteConfig {
                receiver: Some("default".to_owned()),
                ..RouteConfig::default()
            },
            inhibit_rules: Vec::new(),
            receivers: vec![ReceiverConfig::named("default")],
            alertmanagers: Vec::new(),
            delivery: DeliveryConfig::default(),
        }
    }
}

/// The parts built from a checked configuration.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) rules: Vec<Rule>,
    pub(crate) route: Route,
    pub(crate) inhibitor: Inhibitor,
    pub(crate) receivers: Receivers,
    pub(crate) forwarders: Vec<AlertmanagerForwarder>,
}

impl Config {
    /// Checks every setting (what `validate` runs at start).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(drop)
    }

    /// Checks every setting and builds rules, routes, receivers.
    pub(crate) fn compile(&self) -> Result<Compiled, ConfigError> {
        self.storage.validate()?;
        self.audit.validate()?;
        if self.source.url.is_empty() {
            return Err(ConfigError::new(
                "source.url",
                "the audit service's address is required",
            ));
        }
        if !self.source.url.starts_with("http://") && !self.source.url.starts_with("https://") {
            return Err(ConfigError::new(
                "source.url",
                format!("{:?} must start with http:// or https://", self.source.url),
            ));
        }
        let advertised = &self.leader.advertise_url;
        if !advertised.is_empty()
            && !advertised.starts_with("http://")
            && !advertised.starts_with("https://")
        {
            return Err(ConfigError::new(
                "leader.advertise_url",
                format!("{advertised:?} must start with http:// or https:// (or be empty)"),
            ));
        }
        if self.source.batch_size == 0 {
            return Err(ConfigError::new("source.batch_size", "must be at least 1"));
        }
        for (setting, value) in [
            ("source.reconnect_backoff", self.source.reconnect_backoff),
            (
                "source.max_reconnect_backoff",
                self.source.max_reconnect_backoff,
            ),
            ("evaluation_interval", self.evaluation_interval),
            ("resolve_timeout", self.resolve_timeout),
            ("watch_heartbeat", self.watch_heartbeat),
            ("leader.retry", self.leader.retry),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(setting, "must be longer than 0s"));
            }
        }
        if self.leader.retry > MAX_LEADER_RETRY {
            return Err(ConfigError::new(
                "leader.retry",
                format!(
                    "must be at most {MAX_LEADER_RETRY:?}: a leader checks its lock this often and must \
                     give up before PostgreSQL frees the lock of a vanished leader"
                ),
            ));
        }
        for (setting, value) in [
            ("max_alerts", self.max_alerts),
            ("max_groups_per_rule", self.max_groups_per_rule),
            ("max_aggregation_groups", self.max_aggregation_groups),
        ] {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        let rules = crate::rules::compile(&self.rules, &self.disable_rules)?;
        let receivers = Receivers::build(&self.receivers, &self.delivery, &self.external_url)?;
        let names: Vec<String> = receivers.names().into_iter().map(str::to_owned).collect();
        let route = Route::compile(&self.route, &names)?;
        let inhibitor = Inhibitor::compile(&self.inhibit_rules)?;
        let forwarders = AlertmanagerForwarder::build(&self.alertmanagers)?;
        Ok(Compiled {
            rules,
            route,
            inhibitor,
            receivers,
            forwarders,
        })
    }
}
