//! The audit service's settings (section `[audit]`, environment
//! `AGENTMESH_AUDIT__*`).

use std::time::Duration;

use agentmesh_kit::config::AuthConfig;
use agentmesh_kit::{ConfigError, LogConfig, ServerConfig};
use agentmesh_storage::StorageConfig;
use serde::{Deserialize, Serialize};

use crate::DEFAULT_PORT;

/// The service's configuration.
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
    /// Where the service keeps the log.
    pub storage: StorageConfig,
    /// Most events one `Record` call may carry.
    pub max_batch_events: usize,
    /// Largest encoded event accepted by `Record`, in bytes.
    pub max_event_bytes: usize,
    /// Most events written in one transaction: concurrent `Record` calls are
    /// grouped up to this many (group commit).
    pub max_commit_events: usize,
    /// How often an idle `Subscribe` stream gets a heartbeat and polls the
    /// database for events written by other replicas (on PostgreSQL their
    /// commits wake it at once; the poll is the fallback).
    #[serde(with = "humantime_serde")]
    pub subscribe_heartbeat: Duration,
    /// How long after a `Subscribe` filter's `end_time` the stream keeps
    /// waiting for late events before it ends.
    #[serde(with = "humantime_serde")]
    pub subscribe_end_grace: Duration,
    /// Events per `Export` chunk.
    pub export_chunk_events: usize,
    /// Most time buckets one `Report` may span (e.g. 8784 = a leap year of
    /// hours).
    pub max_report_buckets: usize,
    /// Most `VerifyChain` walks running at once (a chain is walked by one
    /// call at a time); beyond, RESOURCE_EXHAUSTED with a retry delay. At
    /// most `storage.max_connections - 1` apply, so writers keep a
    /// connection.
    pub max_concurrent_verifications: usize,
    /// Extra regular expressions redacted from every stored event (producers
    /// redact too; this is the last line of defence).
    pub redact_patterns: Vec<String>,
    /// Deleting old events.
    pub retention: RetentionConfig,
}

/// Retention of old events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events recorded longer ago than this are deleted; unset keeps
    /// everything.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// How often a retention pass runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Events deleted per transaction, so a pass never holds the log for long.
    pub batch_size: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            interval: Duration::from_secs(3600),
            batch_size: 5000,
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
            max_batch_events: 1000,
            max_event_bytes: 64 * 1024,
            max_commit_events: 5000,
            subscribe_heartbeat: Duration::from_secs(10),
            subscribe_end_grace: Duration::from_secs(5),
            export_chunk_events: 1000,
            max_report_buckets: 8784,
            max_concurrent_verifications: 2,
            redact_patterns: Vec::new(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Config {
    /// Checks every setting; errors name the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.storage.validate()?;
        let positive = [
            ("max_batch_events", self.max_batch_events),
            ("max_event_bytes", self.max_event_bytes),
            ("max_commit_events", self.max_commit_events),
            ("export_chunk_events", self.export_chunk_events),
            ("max_report_buckets", self.max_report_buckets),
            (
                "max_concurrent_verifications",
                self.max_concurrent_verifications,
            ),
            ("retention.batch_size", self.retention.batch_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
        }
        if self.max_commit_events < self.max_batch_events {
            return Err(ConfigError::new(
                "max_commit_events",
                "must be at least max_batch_events",
            ));
        }
        if self.subscribe_heartbeat.is_zero() {
            return Err(ConfigError::new(
                "subscribe_heartbeat",
                "must be more than 0",
            ));
        }
        if self.retention.interval.is_zero() {
            return Err(ConfigError::new(
                "retention.interval",
                "must be more than 0",
            ));
        }
        if self.retention.max_age.is_some_and(|age| age.is_zero()) {
            return Err(ConfigError::new(
                "retention.max_age",
                "must be more than 0 (leave it unset to keep everything)",
            ));
        }
        if let Err(err) = agentmesh_audit_client::Redactor::new(&self.redact_patterns) {
            return Err(ConfigError::new("redact_patterns", err.to_string()));
        }
        Ok(())
    }
}
