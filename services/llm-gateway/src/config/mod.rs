//! The gateway's configuration: provider instances, model routes, and the
//! checks that stop the service at start when a setting cannot work.
//!
//! A *provider instance* is a named connection to one provider protocol
//! (`openai`, `anthropic` or `scripted`) with its base URL, key and timeouts;
//! several instances may speak the same protocol (OpenAI itself and a local
//! vLLM, say). A *route* is a name callers use as `GenerateRequest.model`
//! that resolves to `instance/model`. Callers may also address
//! `instance/model` directly.
//!
//! *Prices* turn token counts into an estimated cost in US dollars, shown in
//! every response's `usage.estimated_cost_usd`, in ListModels and in the
//! LLM_CALL audit events:
//!
//! ```toml
//! [llm_gateway.prices."gpt-4o-mini"]          # this model on any provider
//! input_per_million_usd = 0.15
//! output_per_million_usd = 0.60
//!
//! [llm_gateway.prices."vllm/meta-llama/Llama-3.1-8B-Instruct"]   # one instance's model
//! input_per_million_usd = 0
//! output_per_million_usd = 0
//! ```
//!
//! A call is priced by `instance/model` first, then by the bare model name
//! (the model as requested, then as the provider reported it); with no price
//! the cost is absent, not zero. Prices for `gpt-4o-mini`, `gpt-4o`,
//! `claude-sonnet-4-5` and `claude-haiku-4-5` are built in; a file adds to
//! them or overrides them.
//!
//! # Layout
//!
//! * [`providers`](ProviderConfig): provider instances and their checks;
//! * [`routes`](RouteConfig): routes, fallbacks and [`FailureClass`];
//! * [`prices`](Price): prices and how a call finds its price;
//! * [`limits`](RateLimitsConfig): rate limits per tenant and route;
//! * [`shared_limits`](SharedLimitsConfig): the PostgreSQL database that
//!   shares those limits across replicas (none by default);
//! * [`budgets`](BudgetConfig): token and cost budgets per tenant and API
//!   key per UTC day or month, kept in `storage`.
//!
//! [`Config::validate`] checks them all, naming the setting that is wrong.

mod budgets;
mod limits;
mod prices;
mod providers;
mod routes;
mod shared_limits;

use std::collections::BTreeMap;

use agentmesh_audit_client::AuditConfig;
use agentmesh_kit::config::AuthConfig;
use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use agentmesh_resilience::{CircuitConfig, RetryConfig};
use agentmesh_storage::StorageConfig;
use serde::{Deserialize, Serialize};

pub use budgets::{BudgetConfig, BudgetPeriod, BudgetScope};
pub use limits::RateLimitsConfig;
pub use prices::Price;
pub(crate) use prices::price_of;
pub use providers::{ProviderConfig, ProviderKind};
pub(crate) use routes::split_target;
pub use routes::{FailureClass, RouteConfig};
pub use shared_limits::SharedLimitsConfig;

use prices::{default_prices, validate_price};
use providers::validate_provider;

/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50052;

/// The service's configuration (section `[llm_gateway]`, environment
/// `AGENTMESH_LLM_GATEWAY__*`).
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
    /// Route used when a request's `model` is empty.
    pub default_route: String,
    /// Provider instances by name (the `provider` of `provider/model`).
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Model routes by name.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Prices per million tokens, keyed by `provider/model` (a provider
    /// instance and the provider's model name) or by a bare model name (that
    /// model on any provider); see the module docs.
    pub prices: BTreeMap<String, Price>,
    /// Where audit events go.
    pub audit: AuditConfig,
    /// Retries of a failed provider call (per target), with backoff and a
    /// budget shared by every call (fallbacks count against it too).
    pub retry: RetryConfig,
    /// The circuit breaker of every provider target (`provider/model`).
    pub circuit_breaker: CircuitConfig,
    /// Rate limits per tenant and per route, on requests and tokens.
    pub rate_limits: RateLimitsConfig,
    /// Where the rate limits are shared by replicas (PostgreSQL); none by
    /// default: each replica limits on its own.
    pub shared_limits: SharedLimitsConfig,
    /// Token and cost budgets per tenant and API key per UTC day or month
    /// (`[[llm_gateway.budgets]]`); none by default.
    pub budgets: Vec<BudgetConfig>,
    /// Where the budgets' spend is kept (SQLite `<data_dir>/llm-gateway.db`
    /// by default, PostgreSQL by URL, shared by replicas); opened only when
    /// budgets are configured.
    pub storage: StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        let providers = BTreeMap::from([
            (
                "scripted".to_owned(),
                ProviderConfig::new(ProviderKind::Scripted),
            ),
            (
                "openai".to_owned(),
                ProviderConfig {
                    api_key_env: "OPENAI_API_KEY".to_owned(),
                    ..ProviderConfig::new(ProviderKind::Openai)
                },
            ),
            (
                "anthropic".to_owned(),
                ProviderConfig {
                    api_key_env: "ANTHROPIC_API_KEY".to_owned(),
                    ..ProviderConfig::new(ProviderKind::Anthropic)
                },
            ),
        ]);
        let routes = BTreeMap::from([
            (
                "default".to_owned(),
                RouteConfig::new(
                    "scripted/demo",
                    "The scripted demo model (offline, deterministic)",
                ),
            ),
            (
                "fast".to_owned(),
                RouteConfig::new(
                    "scripted/demo",
                    "A quick model for small steps; the scripted demo model until configured",
                ),
            ),
        ]);
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            default_route: "default".to_owned(),
            providers,
            routes,
            prices: default_prices(),
            audit: AuditConfig::default(),
            retry: RetryConfig::default(),
            circuit_breaker: CircuitConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            shared_limits: SharedLimitsConfig::default(),
            budgets: Vec::new(),
            storage: StorageConfig::default(),
        }
    }
}

// === validation ===

impl Config {
    /// Checks providers and routes; errors name the setting relative to the
    /// `llm_gateway` section (the kit adds the section).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, provider) in &self.providers {
            validate_provider(name, provider)?;
        }
        for (name, route) in &self.routes {
            if name.is_empty() {
                return Err(ConfigError::new("routes", "a route name must not be empty"));
            }
            for (field, target) in route.chain() {
                self.validate_target(name, &field, target)?;
            }
        }
        for (key, price) in &self.prices {
            validate_price(key, price)?;
        }
        self.shared_limits.validate()?;
        budgets::validate_budgets(&self.budgets)?;
        if !self.budgets.is_empty() {
            self.storage.validate()?;
        }
        self.audit.validate()?;
        self.retry
            .validate()
            .map_err(|(field, message)| ConfigError::new(format!("retry.{field}"), message))?;
        self.circuit_breaker
            .validate()
            .map_err(|(field, message)| {
                ConfigError::new(format!("circuit_breaker.{field}"), message)
            })?;
        if !self.routes.contains_key(&self.default_route) {
            return Err(ConfigError::new(
                "default_route",
                format!(
                    "route `{}` is not configured; configured routes: {}",
                    self.default_route,
                    join_names(self.routes.keys())
                ),
            ));
        }
        Ok(())
    }

    fn validate_target(&self, name: &str, field: &str, target: &str) -> Result<(), ConfigError> {
        let setting = format!("routes.{name}.{field}");
        {
            let route = RouteConfig::new(target, "");
            let Some((instance, model)) = split_target(&route.target) else {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "`{}` is not `provider/model` (e.g. `openai/gpt-4o-mini`)",
                        route.target
                    ),
                ));
            };
            if !self.providers.contains_key(instance) {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "provider `{instance}` is not configured; configured providers: {}",
                        join_names(self.providers.keys())
                    ),
                ));
            }
            if model.is_empty() {
                return Err(ConfigError::new(
                    setting,
                    format!("`{}` names no model after `{instance}/`", route.target),
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn join_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_are_valid_and_route_to_the_scripted_demo() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.routes["default"].target, "scripted/demo");
        assert_eq!(config.providers["openai"].api_key_env, "OPENAI_API_KEY");
        assert_eq!(
            config.providers["anthropic"].effective_base_url(),
            "https://api.anthropic.com"
        );
    }

    #[test]
    fn a_route_to_an_unknown_provider_names_the_setting() {
        let mut config = Config::default();
        config
            .routes
            .insert("fast".into(), RouteConfig::new("nope/model", ""));
        let err = config.validate().unwrap_err();
        assert_eq!(err.setting, "routes.fast.target");
        assert!(err.message.contains("anthropic, openai, scripted"), "{err}");

        config
            .routes
            .insert("fast".into(), RouteConfig::new("openai/", ""));
        assert_eq!(config.validate().unwrap_err().setting, "routes.fast.target");
        config
            .routes
            .insert("fast".into(), RouteConfig::new("gpt-4o", ""));
        assert_eq!(config.validate().unwrap_err().setting, "routes.fast.target");
    }

    #[test]
    fn the_default_route_must_exist() {
        let config = Config {
            default_route: "missing".into(),
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "default_route");
    }

    #[test]
    fn base_urls_must_be_http() {
        let mut config = Config::default();
        for bad in ["ftp://example.com", "not a url", "http://"] {
            config.providers.insert(
                "openai".into(),
                ProviderConfig {
                    base_url: bad.into(),
                    ..ProviderConfig::new(ProviderKind::Openai)
                },
            );
            let err = config.validate().unwrap_err();
            assert_eq!(err.setting, "providers.openai.base_url", "{bad}: {err}");
        }
    }

    #[test]
    fn a_file_needs_only_the_kind_of_a_new_provider() {
        let text = r#"
            default_route = "local"
            [providers.vllm]
            kind = "openai"
            base_url = "http://127.0.0.1:8000/v1"
            first_token_timeout = "2s"
            [routes.local]
            target = "vllm/meta-llama/Llama-3.1-8B-Instruct"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let vllm = &config.providers["vllm"];
        assert_eq!(vllm.first_token_timeout, Duration::from_secs(2));
        assert_eq!(vllm.request_timeout, Duration::from_secs(300));
        assert_eq!(
            split_target(&config.routes["local"].target),
            Some(("vllm", "meta-llama/Llama-3.1-8B-Instruct"))
        );

        let missing_kind = "[providers.x]\nbase_url = \"http://h\"\n";
        assert!(toml::from_str::<Config>(missing_kind).is_err());
    }

    #[test]
    fn scripted_settings_on_other_kinds_are_refused() {
        let mut config = Config::default();
        config.providers.insert(
            "openai".into(),
            ProviderConfig {
                pace: Some(Duration::ZERO),
                ..ProviderConfig::new(ProviderKind::Openai)
            },
        );
        assert_eq!(
            config.validate().unwrap_err().setting,
            "providers.openai.pace"
        );
    }

    #[test]
    fn cost_is_tokens_times_the_price_per_million() {
        let price = Price::new(0.15, 0.60);
        let cost = price.cost_usd(1_000_000, 500_000);
        assert!((cost - 0.45).abs() < 1e-12, "{cost}");
        let cost = price.cost_usd(1200, 300);
        assert!(
            (cost - (1200.0 * 0.15 + 300.0 * 0.60) / 1e6).abs() < 1e-15,
            "{cost}"
        );
        assert!(price.cost_usd(0, 0).abs() < f64::EPSILON);
        assert!(Price::new(0.0, 0.0).cost_usd(10, 10).abs() < f64::EPSILON);
    }

    #[test]
    fn prices_are_found_by_instance_and_model_then_by_model() {
        let mut prices = default_prices();
        assert_eq!(
            price_of(&prices, "openai", "gpt-4o-mini"),
            Some(Price::new(0.15, 0.60))
        );
        assert_eq!(
            price_of(&prices, "azure", "gpt-4o"),
            Some(Price::new(2.50, 10.00))
        );
        assert_eq!(
            price_of(&prices, "anthropic", "claude-sonnet-4-5"),
            Some(Price::new(3.00, 15.00))
        );
        assert_eq!(
            price_of(&prices, "anthropic", "claude-haiku-4-5"),
            Some(Price::new(1.00, 5.00))
        );
        assert_eq!(price_of(&prices, "scripted", "demo"), None);
        assert_eq!(price_of(&prices, "openai", ""), None);
        prices.insert("azure/gpt-4o".into(), Price::new(3.0, 12.0));
        assert_eq!(
            price_of(&prices, "azure", "gpt-4o"),
            Some(Price::new(3.0, 12.0))
        );
        assert_eq!(
            price_of(&prices, "openai", "gpt-4o"),
            Some(Price::new(2.50, 10.00))
        );
        prices.insert(
            "vllm/meta-llama/Llama-3.1-8B-Instruct".into(),
            Price::new(0.0, 0.0),
        );
        assert_eq!(
            price_of(&prices, "vllm", "meta-llama/Llama-3.1-8B-Instruct"),
            Some(Price::new(0.0, 0.0))
        );
    }

    #[test]
    fn prices_must_be_non_negative_and_finite() {
        for (value, field) in [
            (-0.01, "input_per_million_usd"),
            (f64::NAN, "input_per_million_usd"),
            (f64::INFINITY, "input_per_million_usd"),
        ] {
            let mut config = Config::default();
            config
                .prices
                .insert("gpt-4o".into(), Price::new(value, 1.0));
            let err = config.validate().unwrap_err();
            assert_eq!(err.setting, format!("prices.gpt-4o.{field}"), "{value}");
        }
        let mut config = Config::default();
        config
            .prices
            .insert("openai/gpt-4o".into(), Price::new(1.0, -1.0));
        assert_eq!(
            config.validate().unwrap_err().setting,
            "prices.openai/gpt-4o.output_per_million_usd"
        );
        for key in ["", "/gpt-4o", "openai/"] {
            let mut config = Config::default();
            config.prices.insert(key.into(), Price::new(1.0, 1.0));
            assert_eq!(
                config.validate().unwrap_err().setting,
                format!("prices.{key}"),
                "{key:?}"
            );
        }
        let mut config = Config::default();
        config.prices.insert("free".into(), Price::new(0.0, 0.0));
        config.validate().unwrap();
    }

    #[test]
    fn prices_in_a_file_add_to_the_built_in_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "[llm_gateway.prices.\"openai/gpt-4.1\"]\ninput_per_million_usd = 2.0\noutput_per_million_usd = 8.0\n",
        )
        .unwrap();
        let config: Config =
            agentmesh_kit::config::load(Some(&path), &agentmesh_kit::config::Overrides::default())
                .unwrap();
        assert_eq!(config.prices["openai/gpt-4.1"], Price::new(2.0, 8.0));
        assert_eq!(config.prices["gpt-4o-mini"], Price::new(0.15, 0.60));

        std::fs::write(
            &path,
            "[llm_gateway.prices.x]\ninput_per_million_usd = 1.0\n",
        )
        .unwrap();
        let err = agentmesh_kit::config::load::<Config>(
            Some(&path),
            &agentmesh_kit::config::Overrides::default(),
        )
        .unwrap_err();
        assert!(err.setting.starts_with("llm_gateway.prices"), "{err}");
    }

    #[test]
    fn the_configuration_round_trips_through_toml() {
        let config = Config::default();
        let text = toml::to_string_pretty(&config).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
    }
}
