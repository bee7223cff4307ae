//! Long-term memory settings: the store's limits and retention
//! (`[orchestrator.memory]`, [`MemoryConfig`]) and what each agent profile
//! does with it (`[orchestrator.agents.NAME.memory]`, [`MemoryProfile`]).
//!
//! The store's limits apply to every tenant alike; a profile only decides
//! whether its runs use memory, whose notes they see (the tenant's, or
//! also the agent's own) and how many notes are recalled into the system
//! prompt before the first step.

use std::time::Duration;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

/// The most notes one recall returns, whatever is asked.
pub(crate) const MAX_TOP_K: usize = 50;

/// The long-term memory store: how much each tenant may keep and for how
/// long.
///
/// ```toml
/// [orchestrator.memory]
/// max_age = "180d"              # unset keeps notes until forgotten or pushed out
/// max_notes_per_tenant = 10000  # a new note beyond it deletes the tenant's oldest
/// max_note_bytes = 8192         # text (tags included) of one note
/// default_top_k = 5             # notes a recall returns when it names no number
/// prune_interval = "1h"         # how often expired and aged notes are deleted
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Notes older than this are never recalled, and deleted by the next
    /// prune; unset keeps them.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Notes one tenant keeps; remembering one more deletes the tenant's
    /// oldest.
    pub max_notes_per_tenant: usize,
    /// Largest note (its text plus its tags), in bytes; a larger one is
    /// refused with a message saying so.
    pub max_note_bytes: usize,
    /// Notes a recall returns when it asks for none in particular.
    pub default_top_k: usize,
    /// How often expired and aged notes are deleted.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            max_notes_per_tenant: 10_000,
            max_note_bytes: 8 * 1024,
            default_top_k: 5,
            prune_interval: Duration::from_secs(3600),
        }
    }
}

impl MemoryConfig {
    /// Checks the settings; errors name `memory.<field>`.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let setting = |field: &str| format!("memory.{field}");
        if self.max_age.is_some_and(|age| age < Duration::from_secs(1)) {
            return Err(ConfigError::new(
                setting("max_age"),
                "must be at least 1s (unset it to keep notes)",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_notes_per_tenant) {
            return Err(ConfigError::new(
                setting("max_notes_per_tenant"),
                format!("is {}; it must be 1 to 1000000", self.max_notes_per_tenant),
            ));
        }
        if !(64..=1024 * 1024).contains(&self.max_note_bytes) {
            return Err(ConfigError::new(
                setting("max_note_bytes"),
                format!(
                    "is {}; it must be 64 to 1048576 (1 MiB)",
                    self.max_note_bytes
                ),
            ));
        }
        if !(1..=MAX_TOP_K).contains(&self.default_top_k) {
            return Err(ConfigError::new(
                setting("default_top_k"),
                format!("is {}; it must be 1 to {MAX_TOP_K}", self.default_top_k),
            ));
        }
        if self.prune_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                setting("prune_interval"),
                "must be at least 1s",
            ));
        }
        Ok(())
    }
}

/// Whose notes a profile's runs remember and recall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryScope {
    /// Notes belong to the tenant: every agent of the tenant recalls them.
    #[default]
    Tenant,
    /// Notes belong to the agent: only this profile's runs recall them
    /// (beside the tenant's own notes).
    Agent,
}

impl MemoryScope {
    /// The agent a note of the profile `profile` is stored and recalled
    /// under: `""` (every agent of the tenant) for [`MemoryScope::Tenant`],
    /// the profile's name for [`MemoryScope::Agent`].
    pub fn agent_key<'a>(&self, profile: &'a str) -> &'a str {
        match self {
            Self::Tenant => "",
            Self::Agent => profile,
        }
    }
}

/// What an agent profile's runs do with long-term memory.
///
/// ```toml
/// [orchestrator.agents.support.memory]
/// enabled = true
/// scope = "agent"     # "tenant" (the default) or "agent"
/// auto_recall = 3     # notes recalled into the system prompt; 0 = none
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryProfile {
    /// Whether runs of the profile may remember and recall notes.
    pub enabled: bool,
    /// Whose notes they are.
    pub scope: MemoryScope,
    /// Notes most relevant to the objective put into the system prompt
    /// before the first step; 0 = none.
    pub auto_recall: usize,
}

impl MemoryProfile {
    /// Checks the section of profile `name`; errors name
    /// `agents.<name>.memory.<field>`.
    pub(crate) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let setting = |field: &str| format!("agents.{name}.memory.{field}");
        if self.auto_recall > MAX_TOP_K {
            return Err(ConfigError::new(
                setting("auto_recall"),
                format!("is {}; it must be 0 to {MAX_TOP_K}", self.auto_recall),
            ));
        }
        if self.auto_recall > 0 && !self.enabled {
            return Err(ConfigError::new(
                setting("auto_recall"),
                format!(
                    "only applies with memory on: set agents.{name}.memory.enabled = true, \
                     or this to 0"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        MemoryConfig::default().validate().unwrap();
        MemoryProfile::default().validate("default").unwrap();
        assert!(!MemoryProfile::default().enabled);
        assert_eq!(MemoryProfile::default().scope, MemoryScope::Tenant);
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: [(MemoryConfig, &str); 6] = [
            (
                MemoryConfig {
                    max_age: Some(Duration::from_millis(10)),
                    ..MemoryConfig::default()
                },
                "memory.max_age",
            ),
            (
                MemoryConfig {
                    max_notes_per_tenant: 0,
                    ..MemoryConfig::default()
                },
                "memory.max_notes_per_tenant",
            ),
            (
                MemoryConfig {
                    max_note_bytes: 10,
                    ..MemoryConfig::default()
                },
                "memory.max_note_bytes",
            ),
            (
                MemoryConfig {
                    default_top_k: 0,
                    ..MemoryConfig::default()
                },
                "memory.default_top_k",
            ),
            (
                MemoryConfig {
                    default_top_k: MAX_TOP_K + 1,
                    ..MemoryConfig::default()
                },
                "memory.default_top_k",
            ),
            (
                MemoryConfig {
                    prune_interval: Duration::ZERO,
                    ..MemoryConfig::default()
                },
                "memory.prune_interval",
            ),
        ];
        for (config, setting) in cases {
            assert_eq!(config.validate().unwrap_err().setting, setting);
        }
    }

    #[test]
    fn auto_recall_needs_memory_on_and_a_bound() {
        let off = MemoryProfile {
            auto_recall: 3,
            ..MemoryProfile::default()
        };
        let err = off.validate("support").unwrap_err();
        assert_eq!(err.setting, "agents.support.memory.auto_recall");
        let on = MemoryProfile {
            enabled: true,
            ..off
        };
        on.validate("support").unwrap();
        let many = MemoryProfile {
            auto_recall: MAX_TOP_K + 1,
            ..on
        };
        assert_eq!(
            many.validate("support").unwrap_err().setting,
            "agents.support.memory.auto_recall"
        );
    }

    #[test]
    fn the_sections_are_read_from_a_file_and_checked_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentmesh.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            agentmesh_kit::config::load::<crate::Config>(
                Some(&path),
                &agentmesh_kit::config::Overrides::default(),
            )
        };
        let config = load(
            r#"
            [orchestrator.memory]
            max_age = "30d"
            max_notes_per_tenant = 100
            [orchestrator.agents.default.memory]
            enabled = true
            scope = "agent"
            auto_recall = 3
            "#,
        )
        .unwrap();
        assert_eq!(
            config.memory.max_age,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(config.memory.max_notes_per_tenant, 100);
        assert_eq!(config.memory.max_note_bytes, 8 * 1024);
        let profile = config.agents["default"].memory;
        assert!(profile.enabled);
        assert_eq!(profile.scope, MemoryScope::Agent);
        assert_eq!(profile.auto_recall, 3);

        let mut config = crate::Config::default();
        config.memory.default_top_k = 0;
        let err = agentmesh_kit::config::validate(&config).unwrap_err();
        assert_eq!(err.setting, "orchestrator.memory.default_top_k");
        let mut config = crate::Config::default();
        config.agents.get_mut("default").unwrap().memory.auto_recall = 2;
        let err = agentmesh_kit::config::validate(&config).unwrap_err();
        assert_eq!(
            err.setting,
            "orchestrator.agents.default.memory.auto_recall"
        );

        for unknown in [
            "[orchestrator.memory]\nmax_notes = 3\n",
            "[orchestrator.agents.default.memory]\nscope = \"everyone\"\n",
            "[orchestrator.agents.default.memory]\nenable = true\n",
        ] {
            assert!(load(unknown).is_err(), "{unknown}");
        }
    }

    #[test]
    fn the_scope_names_the_agent_notes_are_kept_under() {
        assert_eq!(MemoryScope::Tenant.agent_key("support"), "");
        assert_eq!(MemoryScope::Agent.agent_key("support"), "support");
    }
}
