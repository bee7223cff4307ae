//! The run callbacks' settings (`[orchestrator.callbacks]`): the signing
//! secrets, which destinations may be called, and how deliveries are
//! retried (docs/callbacks.md).

use std::path::PathBuf;
use std::time::Duration;

use agentmesh_egress::EgressConfig;
use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

/// Run callbacks: where runs' ends (or steps) are POSTed, signed per tenant.
///
/// ```toml
/// [orchestrator.callbacks]
/// secrets_file = "/etc/agentmesh/callback-secrets.toml"
/// timeout = "10s"
/// initial_backoff = "2s"
/// max_backoff = "10m"
/// max_attempts = 20
/// max_age = "24h"
///
/// [orchestrator.callbacks.egress]   # the outbound-URL guard (docs/egress.md)
/// allow_cidrs = []                  # e.g. ["10.1.2.0/24"]: private targets let through
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbacksConfig {
    /// The signing secrets, by tenant (TOML: `default = "…"` for every
    /// tenant not listed, `[tenants] acme = "…"`, or a list of secrets
    /// while rotating). Unset: StartRun refuses callbacks
    /// (FAILED_PRECONDITION). Re-read when it changes.
    pub secrets_file: Option<PathBuf>,
    /// Which destinations a callback may have, checked at StartRun and
    /// again at every delivery (after resolution): by default public
    /// addresses only, over http or https. Redirects are never followed
    /// (`max_redirects` must stay 0).
    pub egress: EgressConfig,
    /// Time for one delivery attempt, connection included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Wait before the second attempt; it doubles at each further one
    /// (with ±20% jitter), up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Attempts per delivery before it is given up (audited).
    pub max_attempts: u32,
    /// Age (from the step or end it reports) after which a delivery that
    /// fails again is given up.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How often the outbox is looked at for due deliveries (other
    /// replicas' and retries); this replica's new ones go out at once.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Attempts in flight at once on this replica.
    pub max_in_flight: usize,
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        Self {
            secrets_file: None,
            egress: EgressConfig {
                max_redirects: 0,
                ..EgressConfig::default()
            },
            timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(600),
            max_attempts: 20,
            max_age: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(1),
            max_in_flight: 32,
        }
    }
}

impl CallbacksConfig {
    /// Checks the settings; errors name `callbacks.<field>`.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let setting = |field: &str| format!("callbacks.{field}");
        self.egress.compile().map_err(|(field, problem)| {
            ConfigError::new(setting(&format!("egress.{field}")), problem)
        })?;
        if self.egress.max_redirects != 0 {
            return Err(ConfigError::new(
                setting("egress.max_redirects"),
                "must be 0: callbacks never follow redirects (a redirected POST may arrive \
                 as a GET without its body)",
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.timeout) {
            return Err(ConfigError::new(
                setting("timeout"),
                "must be between 100ms and 5m",
            ));
        }
        if self.initial_backoff < Duration::from_millis(10) {
            return Err(ConfigError::new(
                setting("initial_backoff"),
                "must be at least 10ms",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(ConfigError::new(
                setting("max_backoff"),
                "must be at least initial_backoff",
            ));
        }
        if !(1..=1000).contains(&self.max_attempts) {
            return Err(ConfigError::new(
                setting("max_attempts"),
                "must be between 1 and 1000",
            ));
        }
        if self.max_age < Duration::from_secs(1) {
            return Err(ConfigError::new(setting("max_age"), "must be at least 1s"));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.poll_interval) {
            return Err(ConfigError::new(
                setting("poll_interval"),
                "must be between 10ms and 1m",
            ));
        }
        if !(1..=1024).contains(&self.max_in_flight) {
            return Err(ConfigError::new(
                setting("max_in_flight"),
                "must be between 1 and 1024",
            ));
        }
        Ok(())
    }

    /// How long a claim on a callback lasts: the attempt's timeout with
    /// room to record its outcome, so a live replica's claim never runs
    /// out mid-attempt (another replica would send it again).
    pub(crate) fn claim_lease(&self) -> Duration {
        self.timeout.saturating_mul(2) + Duration::from_secs(5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting_of(config: &CallbacksConfig) -> String {
        config.validate().unwrap_err().setting
    }

    #[test]
    fn the_defaults_are_valid_and_follow_no_redirect() {
        let config = CallbacksConfig::default();
        config.validate().unwrap();
        assert_eq!(config.egress.max_redirects, 0);
        assert!(config.egress.allow_cidrs.is_empty());
        assert!(config.claim_lease() > config.timeout);
    }

    #[test]
    fn bad_settings_are_named() {
        let mut config = CallbacksConfig::default();
        config.egress.max_redirects = 3;
        assert_eq!(setting_of(&config), "callbacks.egress.max_redirects");
        let mut config = CallbacksConfig::default();
        config.egress.allow_cidrs = vec!["not a range".into()];
        assert_eq!(setting_of(&config), "callbacks.egress.allow_cidrs");
        let config = CallbacksConfig {
            max_backoff: Duration::from_secs(1),
            initial_backoff: Duration::from_secs(2),
            ..CallbacksConfig::default()
        };
        assert_eq!(setting_of(&config), "callbacks.max_backoff");
        let config = CallbacksConfig {
            max_attempts: 0,
            ..CallbacksConfig::default()
        };
        assert_eq!(setting_of(&config), "callbacks.max_attempts");
        let config = CallbacksConfig {
            timeout: Duration::ZERO,
            ..CallbacksConfig::default()
        };
        assert_eq!(setting_of(&config), "callbacks.timeout");
    }
}
