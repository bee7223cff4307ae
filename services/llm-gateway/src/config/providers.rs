//! Provider instances: the protocol each speaks, its base URL, key
//! variable and timeouts, and the checks that stop the service at start when
//! an instance cannot work (a scripted instance's rules file is loaded and
//! checked here, through [`crate::scripted_rules`]).

use std::fmt;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

use crate::scripted_rules::RuleSet;

/// The wire protocol a provider instance speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions, also spoken by vLLM, Ollama, llama.cpp, LiteLLM.
    Openai,
    /// The Anthropic Messages API.
    Anthropic,
    /// The deterministic stand-in driven by a rules file.
    Scripted,
}

impl ProviderKind {
    /// The `gen_ai.provider.name` of the OpenTelemetry GenAI conventions.
    pub fn semconv_name(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Scripted => "agentmesh.scripted",
        }
    }
}

impl ProviderKind {
    /// The name used in configuration and in `ModelTarget.provider_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Scripted => "scripted",
        }
    }

    /// The base URL used when `base_url` is empty.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::Openai => "https://api.openai.com/v1",
            Self::Anthropic => "https://api.anthropic.com",
            Self::Scripted => "",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of one provider instance.
///
/// `kind` is required in a file; every other field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The protocol: `openai`, `anthropic` or `scripted`.
    pub kind: ProviderKind,
    /// Base URL of the API; empty = the kind's default
    /// (`https://api.openai.com/v1`, `https://api.anthropic.com`).
    #[serde(default)]
    pub base_url: String,
    /// Name of the environment variable holding the API key, read at each
    /// request; empty = send no key (fine for local OpenAI-compatible servers).
    #[serde(default)]
    pub api_key_env: String,
    /// Time allowed to open a connection.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle connections to the provider kept open for the next calls (each
    /// streamed call holds a connection of its own while it streams). A
    /// burst of more calls at once opens more; those beyond this many are
    /// closed when their call ends, giving back their buffers instead of
    /// holding them for the 90 s idle timeout.
    #[serde(default = "defaults::max_idle_connections")]
    pub max_idle_connections: usize,
    /// `openai` and `anthropic`: speak HTTP/2 to the provider (without TLS
    /// as h2c, prior knowledge; with TLS, offering only `h2`), so that calls
    /// share one connection instead of holding one each while they stream.
    /// The provider's limit on streams per connection then bounds the
    /// calls in flight to it; calls beyond it wait for a stream. Off
    /// (default): HTTP/1.1.
    #[serde(default)]
    pub http2: bool,
    /// Time allowed until a streamed answer's response headers and first
    /// event. (A one-shot answer's headers come only when it is complete, so
    /// `request_timeout` bounds those.)
    #[serde(default = "defaults::first_token_timeout", with = "humantime_serde")]
    pub first_token_timeout: Duration,
    /// Time allowed for the whole call, or the whole stream.
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Output token limit sent when a request gives 0. Anthropic requires a
    /// limit; for `openai` 0 here means "send none" (the model's own limit).
    #[serde(default = "defaults::max_output_tokens")]
    pub max_output_tokens: i32,
    /// `scripted` only: the rules file (TOML); empty = the built-in demo rules.
    #[serde(default)]
    pub rules_file: String,
    /// `scripted` only: delay between streamed pieces, overriding the rules
    /// file's and every rule's pace (e.g. `0s` in tests).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub pace: Option<Duration>,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn max_idle_connections() -> usize {
        256
    }
    pub(super) fn first_token_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn request_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn max_output_tokens() -> i32 {
        4096
    }
}

impl ProviderConfig {
    /// An instance of `kind` with every other setting at its default.
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            base_url: String::new(),
            api_key_env: String::new(),
            max_idle_connections: defaults::max_idle_connections(),
            http2: false,
            connect_timeout: defaults::connect_timeout(),
            first_token_timeout: defaults::first_token_timeout(),
            request_timeout: defaults::request_timeout(),
            max_output_tokens: defaults::max_output_tokens(),
            rules_file: String::new(),
            pace: None,
        }
    }

    /// The base URL requests go to: as configured, or the kind's default.
    pub fn effective_base_url(&self) -> &str {
        if self.base_url.is_empty() {
            self.kind.default_base_url()
        } else {
            &self.base_url
        }
    }

    /// Whether the API key this instance needs is present in the environment
    /// (always true when it needs none).
    pub fn key_available(&self) -> bool {
        self.api_key_env.is_empty()
            || std::env::var_os(&self.api_key_env).is_some_and(|value| !value.is_empty())
    }
}

impl Default for ProviderConfig {
    /// An OpenAI-protocol instance with every other setting at its default.
    fn default() -> Self {
        Self::new(ProviderKind::Openai)
    }
}

pub(super) fn validate_provider(name: &str, provider: &ProviderConfig) -> Result<(), ConfigError> {
    let setting = |key: &str| format!("providers.{name}.{key}");
    if name.is_empty() || name.contains('/') {
        return Err(ConfigError::new(
            format!("providers.{name}"),
            "a provider name must be non-empty and must not contain `/` (it is the first part of `provider/model`)",
        ));
    }
    for (key, value) in [
        ("connect_timeout", provider.connect_timeout),
        ("first_token_timeout", provider.first_token_timeout),
        ("request_timeout", provider.request_timeout),
    ] {
        if value.is_zero() {
            return Err(ConfigError::new(setting(key), "must be longer than 0s"));
        }
    }
    if provider.max_output_tokens < 0 {
        return Err(ConfigError::new(
            setting("max_output_tokens"),
            "must not be negative",
        ));
    }
    if provider.api_key_env.contains(['=', '\0']) {
        return Err(ConfigError::new(
            setting("api_key_env"),
            "must be the name of an environment variable (no `=`), not a key",
        ));
    }
    match provider.kind {
        ProviderKind::Openai | ProviderKind::Anthropic => {
            if provider.kind == ProviderKind::Anthropic && provider.max_output_tokens == 0 {
                return Err(ConfigError::new(
                    setting("max_output_tokens"),
                    "the Anthropic API requires an output token limit: use a positive number",
                ));
            }
            check_base_url(provider.effective_base_url())
                .map_err(|message| ConfigError::new(setting("base_url"), message))?;
            if !provider.rules_file.is_empty() {
                return Err(ConfigError::new(
                    setting("rules_file"),
                    format!(
                        "is used by `scripted` providers only, and this one is `{}`",
                        provider.kind
                    ),
                ));
            }
            if provider.pace.is_some() {
                return Err(ConfigError::new(
                    setting("pace"),
                    format!(
                        "is used by `scripted` providers only, and this one is `{}`",
                        provider.kind
                    ),
                ));
            }
        }
        ProviderKind::Scripted => {
            RuleSet::load(&provider.rules_file)
                .map_err(|err| ConfigError::new(setting("rules_file"), err.to_string()))?;
        }
    }
    Ok(())
}

/// Accepts absolute `http` and `https` URLs with a host.
fn check_base_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("`{url}` is not a URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}` must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}
