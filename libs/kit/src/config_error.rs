//! [`ConfigError`]: a configuration value that cannot be used, named by its
//! setting. Its own module because every module that checks settings
//! (configuration, telemetry, identifiers) returns it, while configuration
//! itself is built from those modules' settings types.

use std::fmt;

/// A configuration value that cannot be used, with the setting it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the setting, e.g. `orchestrator.server.port`.
    pub setting: String,
    /// What is wrong with it, and where the value came from when known.
    pub message: String,
}

impl ConfigError {
    /// A problem with `setting` (a path relative to the service's section).
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            message: message.into(),
        }
    }

    pub(crate) fn within(mut self, section: &str) -> Self {
        if self.setting.is_empty() {
            self.setting = section.to_owned();
        } else if !self.setting.starts_with(section) {
            self.setting = format!("{section}.{}", self.setting);
        }
        self
    }

    pub(crate) fn from_figment(section: &str, env_prefix: &str, error: figment::Error) -> Self {
        // figment can report several errors; the first one is enough to act on,
        // and a second run reports the next.
        let Some(first) = error.into_iter().next() else {
            return Self::new(section, "invalid configuration");
        };
        let setting = first.path.join(".");
        let source = first
            .metadata
            .as_ref()
            .map(|meta| match &meta.source {
                Some(figment::Source::File(path)) => {
                    let profile = first.profile.clone().unwrap_or_default();
                    let key = meta.interpolate(&profile, &first.path);
                    format!(" (set in {} as {key})", path.display())
                }
                // figment names an environment value by its key path; name
                // the variable the operator actually set.
                _ if meta.name.contains("environment") => format!(
                    " (from environment variable {env_prefix}{})",
                    first.path.join("__").to_ascii_uppercase()
                ),
                _ => format!(" (from {})", meta.name),
            })
            .unwrap_or_default();
        Self::new(setting, format!("{}{source}", first.kind)).within(section)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting `{}`: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}
