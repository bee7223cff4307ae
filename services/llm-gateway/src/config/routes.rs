//! Model routes: a name callers use as `GenerateRequest.model`, its target
//! and fallbacks (`instance/model`), and the failure classes that hand a
//! call to the next target.

use serde::{Deserialize, Serialize};

/// Why a provider call failed, as retries, fallbacks and circuit breakers
/// see it. `fallback_on` of a route lists the classes that hand a call over
/// to the route's next target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// No connection could be made (refused, DNS, TLS). Retried.
    Connect,
    /// HTTP 5xx, 408, 409, or an overloaded/server error in the stream. Retried.
    ServerError,
    /// HTTP 429 or a rate-limit error from the provider. Retried after its
    /// `retry-after`.
    RateLimited,
    /// The provider's first-token or whole-call timeout passed. Retried.
    Timeout,
    /// The stream broke or was malformed. Retried.
    Broken,
    /// The target's circuit is open (no call was made).
    CircuitOpen,
    /// The target cannot be called: its API key is not set, or no TLS.
    Unconfigured,
    /// HTTP 400/413/422: the request itself is wrong. Never retried.
    InvalidRequest,
    /// HTTP 401/403. Never retried.
    PermissionDenied,
    /// HTTP 404: the provider does not know the model. Never retried.
    NotFound,
    /// The caller's deadline passed before the provider finished (within
    /// the provider's own time limits), or the caller went away: the
    /// caller's failure, never retried, never counted against a circuit.
    /// Not a setting: no fallback can answer a caller whose time is up.
    #[serde(skip)]
    CallerDeadline,
}

impl FailureClass {
    /// The name used in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ServerError => "server_error",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::Broken => "broken",
            Self::CircuitOpen => "circuit_open",
            Self::Unconfigured => "unconfigured",
            Self::InvalidRequest => "invalid_request",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::CallerDeadline => "caller_deadline",
        }
    }

    /// Whether another attempt at the same target may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Connect | Self::ServerError | Self::RateLimited | Self::Timeout | Self::Broken
        )
    }

    /// Whether the failure says the target is unhealthy (and counts against
    /// its circuit): only the target's own failures. A 429 is the provider
    /// protecting our quota, not a sick target: it is retried after its
    /// delay but does not open the circuit. A request the provider rejects
    /// (4xx) and a caller's deadline are the caller's.
    pub fn counts_against_circuit(self) -> bool {
        matches!(
            self,
            Self::Connect | Self::ServerError | Self::Timeout | Self::Broken
        )
    }
}

/// The classes that hand a call to the next target by default: every
/// failure of the target rather than of the request.
pub(crate) fn default_fallback_on() -> Vec<FailureClass> {
    vec![
        FailureClass::Connect,
        FailureClass::ServerError,
        FailureClass::RateLimited,
        FailureClass::Timeout,
        FailureClass::Broken,
        FailureClass::CircuitOpen,
        FailureClass::Unconfigured,
    ]
}

/// A model route: its first target and the fallbacks after it.
///
/// ```toml
/// [llm_gateway.routes.default]
/// target = "openai/gpt-4o-mini"
/// fallbacks = ["anthropic/claude-haiku-4-5", "scripted/demo"]
/// fallback_on = ["connect", "server_error", "rate_limited", "timeout", "broken", "circuit_open"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// `provider_instance/model`, e.g. `openai/gpt-4o-mini`: tried first.
    pub target: String,
    /// Further `provider_instance/model` targets, in order: a target that
    /// fails (after its retries) with a class in `fallback_on`, or whose
    /// circuit is open, hands the call to the next.
    pub fallbacks: Vec<String>,
    /// The failure classes that trigger a fallback (see [`FailureClass`]);
    /// by default every failure of the target rather than of the request.
    pub fallback_on: Vec<FailureClass>,
    /// Free text shown by ListModels.
    pub description: String,
}

impl RouteConfig {
    /// A route to `target` (`instance/model`).
    pub fn new(target: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            fallbacks: Vec::new(),
            fallback_on: default_fallback_on(),
            description: description.into(),
        }
    }

    /// Adds fallback targets.
    pub fn with_fallbacks<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        targets: I,
    ) -> Self {
        self.fallbacks.extend(targets.into_iter().map(Into::into));
        self
    }

    /// The targets in order, each with the name of its setting.
    pub fn chain(&self) -> impl Iterator<Item = (String, &str)> {
        std::iter::once(("target".to_owned(), self.target.as_str())).chain(
            self.fallbacks
                .iter()
                .enumerate()
                .map(|(index, target)| (format!("fallbacks[{index}]"), target.as_str())),
        )
    }
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self::new("", "")
    }
}

/// Splits `instance/model` at the first `/` (model names may contain more,
/// e.g. `vllm/meta-llama/Llama-3.1-8B-Instruct`).
pub(crate) fn split_target(target: &str) -> Option<(&str, &str)> {
    target.split_once('/')
}
