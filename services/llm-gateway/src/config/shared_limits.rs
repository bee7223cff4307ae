//! Rate limits shared by the gateway's replicas: where their state is kept
//! and how replicas lease from it; the limiter itself is
//! `agentmesh_resilience::SharedRateLimiter`, its store
//! [`crate::limits`]'s.

use std::time::Duration;

use agentmesh_kit::ConfigError;
use agentmesh_storage::{Backend, StorageConfig};
use serde::{Deserialize, Serialize};

/// Most replicas a gateway may expect (a bound on a typo, not on a cluster).
const MAX_REPLICAS: u32 = 1000;

/// Shares `rate_limits` across replicas through PostgreSQL:
///
/// ```toml
/// [llm_gateway.shared_limits]
/// url = "postgres://gateway@db:5432/llm_gateway"   # empty: each replica limits on its own
/// expected_replicas = 3     # N: while the database is down, each enforces 1/N of every limit
/// lease = "1s"              # leased cells unspent after this are dropped
/// timeout = "250ms"         # a lease slower than this counts as the database being down
/// ```
///
/// Without a `url` (the default, and the embedded mode) every replica keeps
/// its limits in its own memory, as one replica does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedLimitsConfig {
    /// `postgres://` URL of the database holding the limits' state (may be
    /// the budgets' `storage` database); empty = limits per replica.
    pub url: String,
    /// How many gateway replicas share the limits (N); required with a
    /// `url`. While the database cannot be reached each replica enforces
    /// 1/N of every limit on its own, and one lease takes at most 1/N of a
    /// burst.
    pub expected_replicas: u32,
    /// How long leased cells stay usable (10ms to 60s). A replica's spending
    /// trails its leases by at most this, so it bounds the overshoot over
    /// any window to `lease / interval` cells (one cell at 60 a minute).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A lease slower than this (1ms to 10s) counts as the database being
    /// down: the call is decided locally, and so is every call until the
    /// database answers again.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest number of pooled connections to the database.
    pub max_connections: u32,
    /// How long opening a connection may take (at start-up, and when the
    /// database comes back).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for SharedLimitsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            expected_replicas: 0,
            lease: Duration::from_secs(1),
            timeout: Duration::from_millis(250),
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl SharedLimitsConfig {
    /// True when limits are shared (a `url` is set).
    pub fn is_enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The database, as the storage library opens it.
    pub(crate) fn storage(&self) -> StorageConfig {
        StorageConfig {
            url: Some(self.url.clone()),
            max_connections: self.max_connections,
            connect_timeout: self.connect_timeout,
            ..StorageConfig::default()
        }
    }

    /// Checks the settings when limits are shared; nothing otherwise.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let error = |field: &str, message: &str| {
            Err(ConfigError::new(format!("shared_limits.{field}"), message))
        };
        if Backend::of(&self.url) != Some(Backend::Postgres) {
            return error(
                "url",
                "must be a postgres:// or postgresql:// URL (shared limits live in PostgreSQL); \
                 leave it empty for limits per replica",
            );
        }
        if self.expected_replicas == 0 || self.expected_replicas > MAX_REPLICAS {
            return error(
                "expected_replicas",
                "must be the number of gateway replicas (1 to 1000): while the database is down \
                 each replica enforces 1/N of every limit",
            );
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.lease) {
            return error("lease", "must be between 10ms and 60s");
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&self.timeout) {
            return error("timeout", "must be between 1ms and 10s");
        }
        if self.max_connections == 0 {
            return error("max_connections", "must be at least 1");
        }
        if self.connect_timeout.is_zero() {
            return error("connect_timeout", "must be more than 0s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(url: &str) -> SharedLimitsConfig {
        SharedLimitsConfig {
            url: url.to_owned(),
            expected_replicas: 2,
            ..SharedLimitsConfig::default()
        }
    }

    #[test]
    fn the_default_shares_nothing_and_is_valid() {
        let config = SharedLimitsConfig::default();
        assert!(!config.is_enabled());
        config.validate().unwrap();
        shared("postgres://gateway@db:5432/llm").validate().unwrap();
        shared("postgresql://gateway@db/llm").validate().unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            (shared("sqlite://data/x.db"), "shared_limits.url"),
            (shared("mysql://db"), "shared_limits.url"),
            (
                SharedLimitsConfig {
                    expected_replicas: 0,
                    ..shared("postgres://db/x")
                },
                "shared_limits.expected_replicas",
            ),
            (
                SharedLimitsConfig {
                    lease: Duration::from_millis(1),
                    ..shared("postgres://db/x")
                },
                "shared_limits.lease",
            ),
            (
                SharedLimitsConfig {
                    timeout: Duration::ZERO,
                    ..shared("postgres://db/x")
                },
                "shared_limits.timeout",
            ),
            (
                SharedLimitsConfig {
                    max_connections: 0,
                    ..shared("postgres://db/x")
                },
                "shared_limits.max_connections",
            ),
        ];
        for (config, setting) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
        let err = SharedLimitsConfig {
            expected_replicas: 0,
            ..shared("postgres://db/x")
        }
        .validate()
        .unwrap_err();
        assert!(err.message.contains("1/N"), "{err}");
    }
}
