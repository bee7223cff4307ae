//! Secrets in the receivers' configuration: webhook and Slack URLs (their
//! paths carry tokens), PagerDuty routing keys, SMTP passwords, and the
//! credentials of the Alertmanager forwarder.
//!
//! Each secret can be given three ways, exactly one of which is used: the
//! value itself (`url = "…"`), a file holding it (`url_file = "/run/secrets/hook"`,
//! read when the receivers are built, surrounding whitespace trimmed), or an
//! environment variable (`url_env = "TEAM_HOOK_URL"`). [`resolve`] turns the
//! three settings into one [`Secret`] or a [`ConfigError`] naming the setting.
//!
//! A [`Secret`] prints and serializes as `<secret>`: the effective
//! configuration is logged and hashed into an audit event, and receivers are
//! `Debug`-printed in logs, so the value must never reach either. Only
//! [`Secret::expose`] reads it, at the moment it is sent. [`Redactor`] removes
//! secrets from text that came back from a server (an error page may quote
//! the request path, and with it a webhook's token).

use std::fmt;
use std::path::{Path, PathBuf};

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret prints as, everywhere.
pub(crate) const REDACTED: &str = "<secret>";

/// A secret value: its `Debug`, `Display` and `Serialize` forms are
/// `<secret>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for sending it; never for logging.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// Takes a string, or an integer as its digits: layered configuration
/// (environment variables, `--set`) reads an all-digit password as a number.
struct SecretVisitor;

impl serde::de::Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Secret, E> {
        Ok(Secret(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Secret, E> {
        Ok(Secret(value.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Secret, E> {
        Ok(Secret(value.to_string()))
    }

    fn visit_i128<E: serde::de::Error>(self, value: i128) -> Result<Secret, E> {
        Ok(Secret(value.to_string()))
    }

    fn visit_u128<E: serde::de::Error>(self, value: u128) -> Result<Secret, E> {
        Ok(Secret(value.to_string()))
    }
}

/// The three settings one secret can come from, as configured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecretSettings<'a> {
    /// The setting's path without suffix, e.g.
    /// `receivers[team].webhook_configs[0].url`; `_file` and `_env` are
    /// appended for the other two forms.
    pub(crate) setting: &'a str,
    /// The value given inline.
    pub(crate) value: Option<&'a Secret>,
    /// The file holding it.
    pub(crate) file: Option<&'a PathBuf>,
    /// The environment variable holding it.
    pub(crate) env: Option<&'a String>,
}

/// Looks an environment variable up (the process environment, or a map in
/// tests: the 2024 edition makes changing the process environment unsafe).
pub(crate) type EnvLookup<'a> = &'a (dyn Fn(&str) -> Result<String, std::env::VarError> + Sync);

/// Reads secrets from their settings, with environment variables from a
/// lookup.
#[derive(Clone, Copy)]
pub(crate) struct Resolver<'a> {
    env: EnvLookup<'a>,
}

impl fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

fn process_env(name: &str) -> Result<String, std::env::VarError> {
    std::env::var(name)
}

impl Resolver<'static> {
    /// Reads environment variables from the process environment.
    pub(crate) fn process() -> Self {
        Self { env: &process_env }
    }
}

impl<'a> Resolver<'a> {
    /// Reads environment variables through `env`.
    #[cfg(test)]
    pub(crate) fn with_env(env: EnvLookup<'a>) -> Self {
        Self { env }
    }

    /// Resolves the secret of `settings`: `Ok(None)` when none of the three
    /// forms is set (the caller decides whether that is allowed), an error
    /// naming the setting when more than one is set, the file cannot be
    /// read, the variable is not set, or the value is empty.
    pub(crate) fn resolve(
        &self,
        settings: SecretSettings<'_>,
    ) -> Result<Option<Secret>, ConfigError> {
        let name = settings.setting;
        let leaf = leaf(name);
        let given = [
            settings.value.is_some(),
            settings.file.is_some(),
            settings.env.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if given > 1 {
            return Err(ConfigError::new(
                name,
                format!("set only one of {leaf}, {leaf}_file and {leaf}_env"),
            ));
        }
        if let Some(value) = settings.value {
            let value = value.expose().trim();
            if value.is_empty() {
                return Err(ConfigError::new(name, "is empty"));
            }
            return Ok(Some(Secret::new(value)));
        }
        if let Some(path) = settings.file {
            return read_file(&format!("{name}_file"), path).map(Some);
        }
        if let Some(var) = settings.env {
            return self.read_env(&format!("{name}_env"), var).map(Some);
        }
        Ok(None)
    }

    /// Like [`resolve`](Self::resolve), but the secret is required: none of
    /// the three forms set is an error.
    pub(crate) fn require(&self, settings: SecretSettings<'_>) -> Result<Secret, ConfigError> {
        let name = settings.setting;
        let leaf = leaf(name);
        self.resolve(settings)?.ok_or_else(|| {
            ConfigError::new(
                name,
                format!(
                    "is required: set {leaf}, {leaf}_file (a file holding it) \
                     or {leaf}_env (an environment variable holding it)"
                ),
            )
        })
    }

    fn read_env(&self, setting: &str, var: &str) -> Result<Secret, ConfigError> {
        if var.is_empty() {
            return Err(ConfigError::new(setting, "names no environment variable"));
        }
        match (self.env)(var) {
            Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim())),
            Ok(_) => Err(ConfigError::new(
                setting,
                format!("the environment variable {var} is empty"),
            )),
            Err(std::env::VarError::NotPresent) => Err(ConfigError::new(
                setting,
                format!("the environment variable {var} is not set"),
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(
                setting,
                format!("the environment variable {var} is not valid UTF-8"),
            )),
        }
    }
}

/// The last part of a setting's path: "url" of "receivers[team].webhook_configs[0].url".
fn leaf(setting: &str) -> &str {
    setting.rsplit('.').next().unwrap_or(setting)
}

fn read_file(setting: &str, path: &Path) -> Result<Secret, ConfigError> {
    // The io error names the cause (not found, permission denied) and never
    // the contents.
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new(setting, format!("cannot read {}: {err}", path.display()))
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(ConfigError::new(
            setting,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Secret::new(value))
}

/// Removes known secrets from text a server sent back or an error library
/// produced, before it is logged or reported.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    // Longest first, so that a URL is replaced whole before its path is.
    needles: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.needles.len())
            .finish()
    }
}

impl Redactor {
    /// Shortest text treated as a secret fragment: shorter ones ("/", "a")
    /// would garble messages without protecting anything.
    const MIN_FRAGMENT: usize = 4;

    /// Redacts `secret` itself.
    pub(crate) fn add(&mut self, secret: &Secret) {
        self.push(secret.expose());
    }

    /// Redacts a URL that is a secret: the whole URL, and its path and query
    /// (servers quote them in error pages: "Cannot POST /hooks/T0/B0/XXXX"),
    /// and its userinfo and long path segments.
    pub(crate) fn add_url(&mut self, url: &Secret) {
        let text = url.expose();
        self.push(text);
        if let Ok(parsed) = reqwest::Url::parse(text) {
            let path = parsed.path();
            if let Some(query) = parsed.query() {
                self.push(&format!("{path}?{query}"));
                self.push(query);
                for (_, value) in parsed.query_pairs() {
                    self.push(&value);
                }
            }
            if path != "/" {
                self.push(path);
            }
            for segment in path.split('/') {
                // Token-like segments only: "hooks" or "v2" are not secret,
                // and redacting them would make messages unreadable.
                if segment.len() >= 8 {
                    self.push(segment);
                }
            }
            if !parsed.username().is_empty() {
                self.push(parsed.username());
            }
            if let Some(password) = parsed.password() {
                self.push(password);
            }
        }
    }

    fn push(&mut self, needle: &str) {
        if needle.len() >= Self::MIN_FRAGMENT && !self.needles.iter().any(|known| known == needle) {
            self.needles.push(needle.to_owned());
            self.needles
                .sort_by_key(|needle| std::cmp::Reverse(needle.len()));
        }
    }

    /// `text` with every known secret replaced by `<secret>`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for needle in &self.needles {
            if text.contains(needle.as_str()) {
                text = text.replace(needle.as_str(), REDACTED);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<'a>(
        value: Option<&'a Secret>,
        file: Option<&'a PathBuf>,
        env: Option<&'a String>,
    ) -> SecretSettings<'a> {
        SecretSettings {
            setting: "receivers[team].webhook_configs[0].url",
            value,
            file,
            env,
        }
    }

    fn test_env(name: &str) -> Result<String, std::env::VarError> {
        match name {
            "TEAM_HOOK_URL" => Ok("https://example.com/hook/from-env\n".to_owned()),
            "EMPTY" => Ok(String::new()),
            _ => Err(std::env::VarError::NotPresent),
        }
    }

    fn resolver() -> Resolver<'static> {
        Resolver::with_env(&test_env)
    }

    #[test]
    fn secrets_print_and_serialize_redacted() {
        let secret = Secret::new("hunter2-token");
        assert_eq!(format!("{secret:?}"), "<secret>");
        assert_eq!(format!("{secret}"), "<secret>");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"<secret>\"");
        let back: Secret = serde_json::from_str("\"hunter2-token\"").unwrap();
        assert_eq!(back.expose(), "hunter2-token");
        let digits: Secret = serde_json::from_str("123456").unwrap();
        assert_eq!(digits.expose(), "123456");
        let err = serde_json::from_str::<Secret>("[1]").unwrap_err();
        assert!(err.to_string().contains("expected a string"), "{err}");
    }

    #[test]
    fn inline_values_resolve() {
        let value = Secret::new(" https://example.com/hook \n");
        let resolved = resolver()
            .resolve(settings(Some(&value), None, None))
            .unwrap()
            .unwrap();
        assert_eq!(resolved.expose(), "https://example.com/hook");
        assert_eq!(
            resolver().resolve(settings(None, None, None)).unwrap(),
            None
        );
    }

    #[test]
    fn files_resolve_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook");
        std::fs::write(&path, "https://example.com/hook/abc\n").unwrap();
        let resolved = resolver()
            .resolve(settings(None, Some(&path), None))
            .unwrap()
            .unwrap();
        assert_eq!(resolved.expose(), "https://example.com/hook/abc");
    }

    #[test]
    fn missing_and_empty_files_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = resolver()
            .resolve(settings(None, Some(&missing), None))
            .unwrap_err();
        assert_eq!(err.setting, "receivers[team].webhook_configs[0].url_file");
        assert!(err.message.contains("cannot read"), "{}", err.message);

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = resolver()
            .resolve(settings(None, Some(&empty), None))
            .unwrap_err();
        assert_eq!(err.setting, "receivers[team].webhook_configs[0].url_file");
        assert!(err.message.contains("is empty"), "{}", err.message);
    }

    #[test]
    fn environment_variables_resolve() {
        let var = "TEAM_HOOK_URL".to_owned();
        let resolved = resolver()
            .resolve(settings(None, None, Some(&var)))
            .unwrap()
            .unwrap();
        assert_eq!(resolved.expose(), "https://example.com/hook/from-env");

        let unset = "UNSET".to_owned();
        let err = resolver()
            .resolve(settings(None, None, Some(&unset)))
            .unwrap_err();
        assert_eq!(err.setting, "receivers[team].webhook_configs[0].url_env");
        assert_eq!(err.message, "the environment variable UNSET is not set");

        let empty = "EMPTY".to_owned();
        let err = resolver()
            .resolve(settings(None, None, Some(&empty)))
            .unwrap_err();
        assert_eq!(err.message, "the environment variable EMPTY is empty");
    }

    #[test]
    fn the_process_environment_is_read() {
        // Changing the process environment is unsafe in this edition: read
        // a variable that is there already.
        let Some((name, value)) = std::env::vars().find(|(_, value)| !value.trim().is_empty())
        else {
            return;
        };
        let resolved = Resolver::process()
            .resolve(settings(None, None, Some(&name)))
            .unwrap()
            .unwrap();
        assert_eq!(resolved.expose(), value.trim());
    }

    #[test]
    fn exactly_one_form_is_allowed() {
        let value = Secret::new("https://example.com/hook");
        let var = "TEAM_HOOK_URL".to_owned();
        let err = resolver()
            .resolve(settings(Some(&value), None, Some(&var)))
            .unwrap_err();
        assert_eq!(err.setting, "receivers[team].webhook_configs[0].url");
        assert_eq!(err.message, "set only one of url, url_file and url_env");
        assert!(!err.message.contains("example.com"));

        let err = resolver().require(settings(None, None, None)).unwrap_err();
        assert_eq!(err.setting, "receivers[team].webhook_configs[0].url");
        assert!(err.message.contains("url_file"), "{}", err.message);

        let empty = Secret::new("  ");
        let err = resolver()
            .resolve(settings(Some(&empty), None, None))
            .unwrap_err();
        assert_eq!(err.message, "is empty");
    }

    #[test]
    fn redactor_removes_urls_paths_and_tokens() {
        let mut redactor = Redactor::default();
        redactor.add_url(&Secret::new(
            "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX?token=abcdefgh",
        ));
        redactor.add(&Secret::new("routing-key-123"));
        let text = redactor.redact(
            "Cannot POST /services/T000/B000/XXXXXXXXXXXXXXXX?token=abcdefgh; \
             seen XXXXXXXXXXXXXXXX and routing-key-123 at \
             https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX?token=abcdefgh",
        );
        assert!(!text.contains("XXXXXXXX"), "{text}");
        assert!(!text.contains("abcdefgh"), "{text}");
        assert!(!text.contains("routing-key-123"), "{text}");
        assert!(text.contains("Cannot POST <secret>"), "{text}");
        assert!(!format!("{redactor:?}").contains("routing"));
    }
}
