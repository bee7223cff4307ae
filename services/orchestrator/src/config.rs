//! The orchestrator's configuration: where its peers are, its limits, the
//! agent profiles it can run, run callbacks ([`callbacks`]) and long-term
//! memory ([`memory`]).

use std::collections::BTreeMap;
use std::time::Duration;

use agentmesh_audit_client::AuditConfig;
use agentmesh_kit::config::AuthConfig;
use agentmesh_kit::ident::check_identifier_setting;
use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use agentmesh_proto::orchestrator::v1 as pb;
use agentmesh_storage::StorageConfig;
use serde::{Deserialize, Serialize};

use crate::{DEFAULT_PORT, SERVICE};

mod callbacks;
mod memory;
mod strategy;

pub use callbacks::CallbacksConfig;
pub(crate) use memory::MAX_TOP_K;
pub use memory::{MemoryConfig, MemoryProfile, MemoryScope};
pub(crate) use strategy::Prompts;
pub use strategy::{
    EvaluatorSettings, PlanSettings, PromptSettings, RouterSettings, Strategy, WorkerSettings,
};

/// The service's configuration (section `[orchestrator]`, environment
/// `AGENTMESH_ORCHESTRATOR__*`).
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
    /// Where the service keeps its database.
    pub storage: StorageConfig,
    /// The LLM gateway, e.g. `http://127.0.0.1:50052`.
    pub llm_gateway_url: String,
    /// The tool runner, e.g. `http://127.0.0.1:50053`.
    pub tool_runner_url: String,
    /// The profile used when a request names none.
    pub default_agent: String,
    /// Agent profiles by name. A `default` profile is always there unless
    /// replaced.
    pub agents: BTreeMap<String, AgentProfile>,
    /// Largest accepted objective, in bytes.
    pub max_objective_bytes: usize,
    /// How long a run stream may stay silent before it gets a heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Runs driven at the same time by this instance (every tenant's);
    /// more wait QUEUED, and are given places tenant by tenant in turn.
    pub max_concurrent_runs: usize,
    /// Runs waiting for a place on this instance beyond which StartRun and
    /// Run answer RESOURCE_EXHAUSTED (0 = no queue).
    pub max_queued_runs: usize,
    /// Runs of one tenant (its verified tenant; in the embedded mode the
    /// `x-agentmesh-tenant` label, calls without one sharing the tenant
    /// `-`) driven at the same time by this instance: its share, so one
    /// tenant's burst cannot take every place.
    pub max_concurrent_runs_per_tenant: usize,
    /// Runs of one tenant waiting for a place beyond which StartRun and Run
    /// answer RESOURCE_EXHAUSTED (0 = no queue: refused at once when full).
    pub max_queued_runs_per_tenant: usize,
    /// How long a new run may wait QUEUED for a place before it ends
    /// FAILED (RESOURCE_EXHAUSTED, "retry later"); 0 = as long as it takes.
    /// Runs resumed after a restart wait as long as it takes.
    #[serde(with = "humantime_serde")]
    pub max_queue_wait: Duration,
    /// Tenants whose admission metrics get series of their own (`tenant`
    /// label); every other tenant counts under `other`, so that request
    /// values never become label values.
    pub metric_tenants: Vec<String>,
    /// How long this instance's claim on a run lasts without renewal; an
    /// unfinished run whose claim ran out (its instance died) is resumed from
    /// its last checkpoint by the next instance that starts or looks.
    #[serde(with = "humantime_serde")]
    pub run_lease: Duration,
    /// The gRPC address the other replicas (on one PostgreSQL database)
    /// reach this one at, e.g. `http://10.0.3.7:50051` (on Kubernetes the
    /// pod IP: `http://$(POD_IP):50051`): a follower on another replica of
    /// a run this one drives is served live from here. Empty: nothing is
    /// advertised, and such followers read the stored events only (each
    /// step as it is stored).
    pub advertise_url: String,
    /// Deleting finished runs (with their events and checkpoints).
    pub retention: RetentionConfig,
    /// Run callbacks: signing secrets, allowed destinations, retries.
    pub callbacks: CallbacksConfig,
    /// Long-term memory: what each tenant may keep, and for how long.
    pub memory: MemoryConfig,
    /// Where audit events go.
    pub audit: AuditConfig,
}

/// Retention of finished runs: a background pass on every replica deletes,
/// a bounded batch per statement, the runs that ended longer ago than their
/// final state's age, with their events, labels and checkpoints, then the
/// sessions left without runs.
///
/// ```toml
/// [orchestrator.retention]
/// max_age = "30d"      # every finished run; unset keeps them (the default)
/// failed = "90d"       # a final state's own age (succeeded, failed, cancelled)
/// interval = "1h"
/// batch_size = 500
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Finished runs that ended longer ago than this are deleted; unset
    /// keeps them (unless their state sets its own age).
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// The age of SUCCEEDED runs, instead of `max_age`.
    #[serde(with = "humantime_serde")]
    pub succeeded: Option<Duration>,
    /// The age of FAILED runs, instead of `max_age`.
    #[serde(with = "humantime_serde")]
    pub failed: Option<Duration>,
    /// The age of CANCELLED runs, instead of `max_age`.
    #[serde(with = "humantime_serde")]
    pub cancelled: Option<Duration>,
    /// How often a pass runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Runs deleted per statement, so a pass never holds the tables long.
    pub batch_size: i64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            succeeded: None,
            failed: None,
            cancelled: None,
            interval: Duration::from_secs(3600),
            batch_size: 500,
        }
    }
}

impl RetentionConfig {
    /// The age after which runs that ended in `state` are deleted, if any.
    pub(crate) fn age_of(&self, state: pb::RunState) -> Option<Duration> {
        match state {
            pb::RunState::Succeeded => self.succeeded.or(self.max_age),
            pb::RunState::Failed => self.failed.or(self.max_age),
            pb::RunState::Cancelled => self.cancelled.or(self.max_age),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (setting, age) in [
            ("retention.max_age", self.max_age),
            ("retention.succeeded", self.succeeded),
            ("retention.failed", self.failed),
            ("retention.cancelled", self.cancelled),
        ] {
            if age.is_some_and(|age| age.is_zero()) {
                return Err(ConfigError::new(
                    setting,
                    "must be above zero (unset it to keep the runs)",
                ));
            }
        }
        if self.interval.is_zero() {
            return Err(ConfigError::new("retention.interval", "must be above zero"));
        }
        if !(1..=100_000).contains(&self.batch_size) {
            return Err(ConfigError::new(
                "retention.batch_size",
                format!("is {}; it must be 1 to 100000", self.batch_size),
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                // Browsers are the orchestrator's clients: gRPC-Web is on
                // (CORS stays closed until origins are configured).
                grpc_web: agentmesh_kit::grpc_web::GrpcWebConfig {
                    enabled: true,
                    ..Default::default()
                },
                ..ServerConfig::with_port(DEFAULT_PORT)
            },
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            llm_gateway_url: "http://127.0.0.1:50052".to_owned(),
            tool_runner_url: "http://127.0.0.1:50053".to_owned(),
            default_agent: DEFAULT_AGENT.to_owned(),
            agents: BTreeMap::from([(DEFAULT_AGENT.to_owned(), AgentProfile::default())]),
            max_objective_bytes: 64 * 1024,
            heartbeat_interval: Duration::from_secs(15),
            max_concurrent_runs: 64,
            max_queued_runs: 1024,
            max_concurrent_runs_per_tenant: 16,
            max_queued_runs_per_tenant: 64,
            max_queue_wait: Duration::from_secs(600),
            metric_tenants: Vec::new(),
            run_lease: Duration::from_secs(30),
            advertise_url: String::new(),
            retention: RetentionConfig::default(),
            callbacks: CallbacksConfig::default(),
            memory: MemoryConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

/// The name of the profile shipped with the service.
pub(crate) const DEFAULT_AGENT: &str = "default";

/// An agent profile: how runs of this agent behave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentProfile {
    /// What the agent is for (shown by ListAgents).
    pub description: String,
    /// The system prompt every run starts with.
    pub system_prompt: String,
    /// The gateway route (or `provider/model`); empty = the gateway's default.
    pub model: String,
    /// Tools the agent may call, by name; `*` allows every tool.
    pub tools: Vec<String>,
    /// Model calls per run before it fails with RESOURCE_EXHAUSTED.
    pub max_steps: i32,
    /// Output tokens per model call; 0 = the gateway's default.
    pub max_output_tokens: i32,
    /// Tokens (input + output) a run may use, its sub-runs included;
    /// 0 = no budget.
    pub max_tokens: i64,
    /// US dollars a run may spend, its sub-runs included, by the gateway's
    /// prices; 0 = no budget.
    pub max_cost_usd: f64,
    /// Wall-clock limit of a run.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Sampling temperature; unset = the model's default.
    pub temperature: Option<f64>,
    /// Runs of this profile driven at the same time by this instance; more
    /// wait QUEUED. 0 = no limit beyond the instance's and the tenant's.
    pub max_concurrent_runs: usize,
    /// Runs of this profile waiting for a place beyond which StartRun and
    /// Run answer RESOURCE_EXHAUSTED (0 = no queue). Only with
    /// `max_concurrent_runs` above 0.
    pub max_queued_runs: usize,
    /// How runs work towards their objective (see [`Strategy`]).
    pub strategy: Strategy,
    /// `plan_execute`'s settings.
    pub plan: PlanSettings,
    /// `evaluator_optimizer`'s settings.
    pub evaluator: EvaluatorSettings,
    /// `router`'s settings.
    pub router: RouterSettings,
    /// `orchestrator_workers`' settings.
    pub workers: WorkerSettings,
    /// The prompts of the strategy's roles (planner, validator, ...).
    pub prompts: PromptSettings,
    /// Long-term memory: off unless enabled.
    pub memory: MemoryProfile,
}

impl Default for AgentProfile {
    fn default() -> Self {
        Self {
            description: "A general assistant with a calculator, a clock and a scratch workspace."
                .to_owned(),
            system_prompt: "You are a helpful assistant running inside agentmesh. Use the tools \
                            when they help (the calculator for arithmetic, current_time for the \
                            time, the file tools for the run's workspace), then answer concisely."
                .to_owned(),
            model: String::new(),
            tools: [
                "calculator",
                "current_time",
                "read_file",
                "write_file",
                "list_files",
            ]
            .map(str::to_owned)
            .to_vec(),
            max_steps: 8,
            max_output_tokens: 0,
            max_tokens: 0,
            max_cost_usd: 0.0,
            timeout: Duration::from_secs(300),
            temperature: None,
            max_concurrent_runs: 0,
            max_queued_runs: 0,
            strategy: Strategy::default(),
            plan: PlanSettings::default(),
            evaluator: EvaluatorSettings::default(),
            router: RouterSettings::default(),
            workers: WorkerSettings::default(),
            prompts: PromptSettings::default(),
            memory: MemoryProfile::default(),
        }
    }
}

impl AgentProfile {
    /// Whether the profile lets runs call `tool`.
    pub(crate) fn allows(&self, tool: &str) -> bool {
        self.tools
            .iter()
            .any(|allowed| allowed == "*" || allowed == tool)
    }

    /// The profile as the API shows it.
    pub(crate) fn to_proto(&self, name: &str, is_default: bool) -> pb::Agent {
        pb::Agent {
            name: name.to_owned(),
            description: self.description.clone(),
            is_default,
            system_prompt: self.system_prompt.clone(),
            model: self.model.clone(),
            tools: self.tools.clone(),
            limits: Some(pb::RunLimits {
                max_steps: self.max_steps,
                max_output_tokens: self.max_output_tokens,
                max_tokens: self.max_tokens,
                max_cost_usd: self.max_cost_usd,
                timeout: prost_types::Duration::try_from(self.timeout).ok(),
            }),
            temperature: self.temperature,
            max_concurrent_runs: i32::try_from(self.max_concurrent_runs).unwrap_or(i32::MAX),
            strategy: self.strategy.name().to_owned(),
        }
    }
}

/// The largest cost budget a run may ask for, in US dollars.
pub(crate) const MAX_COST_USD: f64 = 1_000_000.0;

/// US dollars as micro-dollars (what budgets count in), for amounts
/// checked to be within [0, MAX_COST_USD].
pub(crate) fn usd_to_micros(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "bounded by MAX_COST_USD: at most 1e12 micro-dollars"
    )]
    let micros = (usd.min(MAX_COST_USD) * 1e6).round() as i64;
    micros
}

/// Largest step limit a profile or request may set.
pub(crate) const MAX_STEPS_LIMIT: i32 = 1000;

agentmesh_kit::service_config!(
    Config,
    service = SERVICE,
    section = "orchestrator",
    validate = validate,
);

fn validate(config: &Config) -> Result<(), ConfigError> {
    config.storage.validate()?;
    config.retention.validate()?;
    config.memory.validate()?;
    config.audit.validate()?;
    for (setting, url) in [
        ("llm_gateway_url", &config.llm_gateway_url),
        ("tool_runner_url", &config.tool_runner_url),
    ] {
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.parse::<http::Uri>().is_err()
        {
            return Err(ConfigError::new(
                setting,
                format!("{url:?} is not an http:// or https:// address"),
            ));
        }
    }
    let advertised = &config.advertise_url;
    if !advertised.is_empty()
        && (!(advertised.starts_with("http://") || advertised.starts_with("https://"))
            || advertised.parse::<http::Uri>().is_err())
    {
        return Err(ConfigError::new(
            "advertise_url",
            format!("{advertised:?} is not an http:// or https:// address (or empty)"),
        ));
    }
    if !config.agents.contains_key(&config.default_agent) {
        return Err(ConfigError::new(
            "default_agent",
            format!(
                "names no configured agent profile (have: {})",
                config.agents.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    for (name, profile) in &config.agents {
        validate_profile(name, profile)?;
        strategy::validate_references(
            name,
            profile.strategy,
            (&profile.router, &profile.workers),
            |other| config.agents.contains_key(other),
        )?;
    }
    if config.max_objective_bytes == 0 {
        return Err(ConfigError::new(
            "max_objective_bytes",
            "must be above zero",
        ));
    }
    if config.heartbeat_interval < Duration::from_millis(10) {
        return Err(ConfigError::new(
            "heartbeat_interval",
            "must be at least 10ms",
        ));
    }
    if config.max_concurrent_runs == 0 {
        return Err(ConfigError::new(
            "max_concurrent_runs",
            "must be at least 1",
        ));
    }
    if config.max_concurrent_runs_per_tenant == 0 {
        return Err(ConfigError::new(
            "max_concurrent_runs_per_tenant",
            "must be at least 1",
        ));
    }
    validate_metric_tenants(&config.metric_tenants)?;
    if config.run_lease < Duration::from_secs(1) {
        return Err(ConfigError::new("run_lease", "must be at least 1s"));
    }
    config.callbacks.validate()
}

/// Tenants with metric series of their own, at most this many.
const MAX_METRIC_TENANTS: usize = 256;

/// Checks `metric_tenants`: a bounded list of plain names.
fn validate_metric_tenants(tenants: &[String]) -> Result<(), ConfigError> {
    if tenants.len() > MAX_METRIC_TENANTS {
        return Err(ConfigError::new(
            "metric_tenants",
            format!(
                "lists {} tenants, at most {MAX_METRIC_TENANTS}",
                tenants.len()
            ),
        ));
    }
    for (at, tenant) in tenants.iter().enumerate() {
        let setting = format!("metric_tenants[{at}]");
        if tenant.is_empty() || tenant.len() > 128 || tenant.chars().any(char::is_control) {
            return Err(ConfigError::new(
                setting,
                "must be 1 to 128 bytes without control characters",
            ));
        }
        if tenant == "other" {
            return Err(ConfigError::new(
                setting,
                "`other` is the label of every tenant not listed",
            ));
        }
    }
    Ok(())
}

/// Checks one agent profile; errors name `agents.<name>.<field>`.
fn validate_profile(name: &str, profile: &AgentProfile) -> Result<(), ConfigError> {
    let setting = |field: &str| format!("agents.{name}.{field}");
    check_identifier_setting(format!("agents.{name}"), name)?;
    if !(1..=MAX_STEPS_LIMIT).contains(&profile.max_steps) {
        return Err(ConfigError::new(
            setting("max_steps"),
            format!("must be between 1 and {MAX_STEPS_LIMIT}"),
        ));
    }
    if !profile.max_cost_usd.is_finite() || !(0.0..=MAX_COST_USD).contains(&profile.max_cost_usd) {
        return Err(ConfigError::new(
            setting("max_cost_usd"),
            format!("must be 0 to {} (0: no budget)", MAX_COST_USD),
        ));
    }
    if profile.max_tokens < 0 {
        return Err(ConfigError::new(
            setting("max_tokens"),
            "must not be negative (0: no budget)",
        ));
    }
    if profile.max_output_tokens < 0 {
        return Err(ConfigError::new(
            setting("max_output_tokens"),
            "must not be negative",
        ));
    }
    if profile.timeout.is_zero() {
        return Err(ConfigError::new(setting("timeout"), "must be above zero"));
    }
    if let Some(temperature) = profile.temperature
        && !(0.0..=2.0).contains(&temperature)
    {
        return Err(ConfigError::new(
            setting("temperature"),
            "must be between 0 and 2",
        ));
    }
    if profile.max_queued_runs > 0 && profile.max_concurrent_runs == 0 {
        return Err(ConfigError::new(
            setting("max_queued_runs"),
            format!(
                "only applies with a limit: set agents.{name}.max_concurrent_runs above 0, or this to 0"
            ),
        ));
    }
    profile.memory.validate(name)?;
    strategy::validate(name, &profile.plan, &profile.evaluator, &profile.prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting_of(config: &Config) -> String {
        agentmesh_kit::config::validate(config).unwrap_err().setting
    }

    #[test]
    fn run_limits_default_to_per_tenant_shares_and_no_profile_limit() {
        let config = Config::default();
        agentmesh_kit::config::validate(&config).unwrap();
        assert_eq!(config.max_concurrent_runs_per_tenant, 16);
        assert_eq!(config.max_queued_runs_per_tenant, 64);
        let profile = &config.agents[DEFAULT_AGENT];
        assert_eq!(profile.max_concurrent_runs, 0);
        assert_eq!(profile.to_proto(DEFAULT_AGENT, true).max_concurrent_runs, 0);
    }

    #[test]
    fn metric_tenants_are_a_bounded_list_of_plain_names() {
        let mut config = Config {
            metric_tenants: vec!["acme".into(), "globex".into()],
            ..Config::default()
        };
        agentmesh_kit::config::validate(&config).unwrap();
        for bad in ["", "other", "a\nb", &"x".repeat(129)] {
            config.metric_tenants = vec!["acme".into(), bad.to_owned()];
            assert_eq!(
                setting_of(&config),
                "orchestrator.metric_tenants[1]",
                "{bad:?}"
            );
        }
        config.metric_tenants = (0..=MAX_METRIC_TENANTS).map(|n| format!("t{n}")).collect();
        assert_eq!(setting_of(&config), "orchestrator.metric_tenants");
    }

    #[test]
    fn run_limits_are_checked_and_named() {
        let mut config = Config {
            max_concurrent_runs_per_tenant: 0,
            ..Config::default()
        };
        assert_eq!(
            setting_of(&config),
            "orchestrator.max_concurrent_runs_per_tenant"
        );
        config.max_concurrent_runs_per_tenant = 1;
        // No queue at all is a valid choice.
        config.max_queued_runs_per_tenant = 0;
        agentmesh_kit::config::validate(&config).unwrap();

        let profile = config.agents.get_mut(DEFAULT_AGENT).unwrap();
        profile.max_queued_runs = 4;
        assert_eq!(
            setting_of(&config),
            "orchestrator.agents.default.max_queued_runs"
        );
        let profile = config.agents.get_mut(DEFAULT_AGENT).unwrap();
        profile.max_concurrent_runs = 2;
        agentmesh_kit::config::validate(&config).unwrap();
        assert_eq!(
            config.agents[DEFAULT_AGENT]
                .to_proto(DEFAULT_AGENT, true)
                .max_concurrent_runs,
            2
        );
    }

    #[test]
    fn profile_names_follow_the_identifier_rule() {
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            let mut config = Config::default();
            config
                .agents
                .insert(bad.to_owned(), AgentProfile::default());
            assert_eq!(setting_of(&config), format!("orchestrator.agents.{bad}"));
        }
        let mut config = Config::default();
        config
            .agents
            .insert("x".repeat(64), AgentProfile::default());
        agentmesh_kit::config::validate(&config).unwrap();
    }

    #[test]
    fn run_limits_are_read_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentmesh.toml");
        std::fs::write(
            &path,
            r#"
            [orchestrator]
            max_concurrent_runs_per_tenant = 2
            max_queued_runs_per_tenant = 3
            [orchestrator.agents.default]
            max_concurrent_runs = 4
            max_queued_runs = 5
            "#,
        )
        .unwrap();
        let config: Config =
            agentmesh_kit::config::load(Some(&path), &agentmesh_kit::config::Overrides::default())
                .unwrap();
        assert_eq!(config.max_concurrent_runs_per_tenant, 2);
        assert_eq!(config.max_queued_runs_per_tenant, 3);
        let profile = &config.agents[DEFAULT_AGENT];
        assert_eq!(profile.max_concurrent_runs, 4);
        assert_eq!(profile.max_queued_runs, 5);
        // The rest of the profile keeps its defaults.
        assert_eq!(profile.max_steps, AgentProfile::default().max_steps);
    }

    #[test]
    fn routers_and_leads_must_name_other_configured_profiles() {
        let mut config = Config::default();
        config.agents.insert(
            "triage".to_owned(),
            AgentProfile {
                strategy: Strategy::Router,
                ..AgentProfile::default()
            },
        );
        assert_eq!(
            setting_of(&config),
            "orchestrator.agents.triage.router.routes"
        );
        let triage = config.agents.get_mut("triage").unwrap();
        triage.router.routes = vec!["nobody".to_owned()];
        assert_eq!(
            setting_of(&config),
            "orchestrator.agents.triage.router.routes"
        );
        let triage = config.agents.get_mut("triage").unwrap();
        triage.router.routes = vec!["default".to_owned()];
        triage.router.fallback = "triage".to_owned();
        assert_eq!(
            setting_of(&config),
            "orchestrator.agents.triage.router.fallback"
        );
        config.agents.get_mut("triage").unwrap().router.fallback = String::new();
        assert!(agentmesh_kit::config::validate(&config).is_ok());
        config.agents.insert(
            "team".to_owned(),
            AgentProfile {
                strategy: Strategy::OrchestratorWorkers,
                ..AgentProfile::default()
            },
        );
        assert_eq!(
            setting_of(&config),
            "orchestrator.agents.team.workers.agents"
        );
    }
}
