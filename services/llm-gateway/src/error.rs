//! Why a provider call failed, and the gRPC status each failure becomes.
//!
//! Providers report [`ProviderError`]s without knowing which route or
//! instance they serve; [`ProviderError::into_status`] adds that, so every
//! message says which provider and model failed and what happened. The
//! mapping follows the contract: HTTP 400 → INVALID_ARGUMENT, 401/403 →
//! PERMISSION_DENIED, 404 → NOT_FOUND, 429 → RESOURCE_EXHAUSTED with
//! `google.rpc.RetryInfo`, 5xx and broken connections → UNAVAILABLE,
//! timeouts → DEADLINE_EXCEEDED.
//!
//! Every status caused by the provider (it was unreachable, failed, timed
//! out, rate-limited or refused the call, or its circuit is open) also
//! carries a `google.rpc.ErrorInfo` in domain [`ERROR_DOMAIN`] whose reason
//! starts with `PROVIDER_` ([`provider_reason`]), with the route, provider
//! instance and model as metadata. Statuses about the gateway itself (its
//! configuration, the caller's deadline, and — outside this module — its
//! own load shedding and shutdown) carry none, so a client or a mesh can
//! tell "the provider is down" from "this replica is in trouble".

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The delay suggested to a caller after a 429 that said nothing about when
/// to come back.
pub(crate) const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The `google.rpc.ErrorInfo` domain of the gateway's provider errors.
pub const ERROR_DOMAIN: &str = "agentmesh";

/// ErrorInfo reasons of statuses the provider caused. Each starts with
/// `PROVIDER_`: a caller that sees one knows another gateway replica would
/// meet the same provider, and fails over to another route or model (or
/// waits) instead.
pub mod provider_reason {
    /// UNAVAILABLE: the provider could not be reached, answered 5xx (or
    /// 408/409), broke its stream, sent something that is not its protocol,
    /// or reported an error of its own in the answer.
    pub const UNAVAILABLE: &str = "PROVIDER_UNAVAILABLE";
    /// UNAVAILABLE: the target's circuit is open after repeated provider
    /// failures, so no call was made (a `RetryInfo` says when a probe may
    /// go through).
    pub const CIRCUIT_OPEN: &str = "PROVIDER_CIRCUIT_OPEN";
    /// DEADLINE_EXCEEDED: the provider did not answer within the gateway's
    /// time limits for it (connect, first token, whole request). A caller's
    /// own deadline passing carries no ErrorInfo.
    pub const TIMEOUT: &str = "PROVIDER_TIMEOUT";
    /// RESOURCE_EXHAUSTED: the provider rate-limited the call (HTTP 429 or
    /// a rate-limit error); a `RetryInfo` says when to come back.
    pub const RATE_LIMITED: &str = "PROVIDER_RATE_LIMITED";
    /// The provider refused the call (HTTP 4xx other than 429, or an error
    /// of that kind): INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND, …
    pub const REJECTED: &str = "PROVIDER_REJECTED";
}

/// A failed provider call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ProviderError {
    /// The environment variable holding the API key is not set.
    #[error("environment variable {env} is not set")]
    MissingKey {
        /// The variable's name.
        env: String,
    },
    /// The provider answered with an HTTP error status.
    #[error("HTTP {status}: {message}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The provider's error message (key values removed).
        message: String,
        /// The request field the provider blamed, when it said.
        param: Option<String>,
        /// From `retry-after`, when sent.
        retry_after: Option<Duration>,
    },
    /// The provider reported an error inside the response (an SSE `error`
    /// event, or an error object in a 200 body).
    #[error("{kind}: {message}")]
    Upstream {
        /// The provider's error type or code, e.g. `overloaded_error`.
        kind: String,
        /// The provider's message.
        message: String,
    },
    /// No connection could be made, or it broke before a response.
    #[error("cannot reach {url}: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The stream broke after the response had started.
    #[error("{0}")]
    Broken(String),
    /// The provider sent something that is not its protocol.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The provider's own time limit passed (its first-token, request or
    /// connect timeout): the target's failure.
    #[error("{0}")]
    Timeout(String),
    /// The caller's deadline passed before the provider finished, within
    /// the provider's own time limits: the caller's, not the target's.
    #[error("{0}")]
    CallerDeadline(String),
    /// The gateway cannot make the call at all (e.g. no TLS roots).
    #[error("{0}")]
    Setup(String),
    /// The target's circuit is open (or half-open with its probes out): no
    /// call was made.
    #[error("{message}")]
    CircuitOpen {
        /// What the breaker said.
        message: String,
        /// When a probe may go through, for RetryInfo.
        retry_in: Duration,
    },
}

impl ProviderError {
    /// The gRPC code of this failure.
    pub(crate) fn code(&self) -> Code {
        match self {
            Self::MissingKey { .. } | Self::Setup(_) => Code::FailedPrecondition,
            Self::Http { status, .. } => http_status_code(*status),
            Self::Upstream { kind, .. } => upstream_error_code(kind),
            Self::Connect { .. }
            | Self::Broken(_)
            | Self::Malformed(_)
            | Self::CircuitOpen { .. } => Code::Unavailable,
            Self::Timeout(_) | Self::CallerDeadline(_) => Code::DeadlineExceeded,
        }
    }

    /// The ErrorInfo reason of this failure when the provider caused it
    /// (see [`provider_reason`]); `None` when the gateway's configuration
    /// or the caller's deadline did.
    pub(crate) fn provider_reason(&self) -> Option<&'static str> {
        match self {
            Self::MissingKey { .. } | Self::Setup(_) | Self::CallerDeadline(_) => None,
            Self::CircuitOpen { .. } => Some(provider_reason::CIRCUIT_OPEN),
            Self::Timeout(_) => Some(provider_reason::TIMEOUT),
            Self::Connect { .. } | Self::Broken(_) | Self::Malformed(_) => {
                Some(provider_reason::UNAVAILABLE)
            }
            Self::Http { .. } | Self::Upstream { .. } => Some(match self.code() {
                Code::Unavailable => provider_reason::UNAVAILABLE,
                Code::ResourceExhausted => provider_reason::RATE_LIMITED,
                _ => provider_reason::REJECTED,
            }),
        }
    }

    /// The status a caller gets: code, a message naming the provider instance
    /// and model, and details (field violation, retry delay, and the
    /// provider ErrorInfo) where they apply. `route` is empty when the call
    /// named `provider/model` directly.
    pub(crate) fn into_status(self, route: &str, instance: &str, model: &str) -> Status {
        let code = self.code();
        let message = format!("provider {instance} (model {model}): {self}");
        let reason = self.provider_reason();
        let mut details = ErrorDetails::new();
        if let Some(reason) = reason {
            let mut metadata = HashMap::from([
                ("provider".to_owned(), instance.to_owned()),
                ("model".to_owned(), model.to_owned()),
            ]);
            if !route.is_empty() {
                metadata.insert("route".to_owned(), route.to_owned());
            }
            if let Self::Http { status, .. } = &self {
                metadata.insert("http_status".to_owned(), status.to_string());
            }
            details.set_error_info(reason, ERROR_DOMAIN, metadata);
        }
        match self {
            Self::Http {
                param: Some(param), ..
            } if code == Code::InvalidArgument => {
                details.add_bad_request_violation(param, message.clone());
            }
            Self::Http { retry_after, .. } if code == Code::ResourceExhausted => {
                details.set_retry_info(Some(retry_after.unwrap_or(DEFAULT_RETRY_DELAY)));
            }
            Self::Upstream { .. } if code == Code::ResourceExhausted => {
                details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            }
            Self::CircuitOpen { retry_in, .. } => {
                details.set_retry_info(Some(retry_in));
            }
            _ => {}
        }
        // Every detail above comes with a provider reason; a status without
        // one keeps `grpc-status-details-bin` unset.
        if reason.is_some() {
            Status::with_error_details(code, message, details)
        } else {
            Status::new(code, message)
        }
    }
}

/// HTTP status → gRPC code, as the contract fixes it (and the usual gRPC
/// mapping for the rest).
pub(crate) fn http_status_code(status: u16) -> Code {
    match status {
        400 | 413 | 422 => Code::InvalidArgument,
        401 | 403 => Code::PermissionDenied,
        404 => Code::NotFound,
        429 => Code::ResourceExhausted,
        // 408: the provider gave up waiting for us; 409: a transient conflict.
        408 | 409 | 500..=599 => Code::Unavailable,
        402 => Code::FailedPrecondition,
        _ => Code::Unknown,
    }
}

/// Provider error type/code strings (Anthropic's `error.type`, OpenAI's
/// `error.type` or `error.code`) → gRPC code. Unknown kinds in the middle of
/// a response are the provider's trouble: UNAVAILABLE.
pub(crate) fn upstream_error_code(kind: &str) -> Code {
    match kind {
        "invalid_request_error" | "invalid_request" | "context_length_exceeded" => {
            Code::InvalidArgument
        }
        "authentication_error" | "permission_error" | "invalid_api_key" => Code::PermissionDenied,
        "not_found_error" | "model_not_found" => Code::NotFound,
        "rate_limit_error" | "rate_limit_exceeded" | "insufficient_quota" | "tokens" => {
            Code::ResourceExhausted
        }
        "request_too_large" => Code::InvalidArgument,
        _ => Code::Unavailable,
    }
}

/// Removes API keys from a provider's message: the exact key, and anything
/// shaped like a provider key (`sk-…`), which OpenAI echoes partly masked in
/// its 401 messages.
pub(crate) fn redact(message: &str, key: Option<&str>) -> String {
    let mut text = message.to_owned();
    if let Some(key) = key.filter(|key| key.len() >= 4) {
        text = text.replace(key, "[redacted]");
    }
    text.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_start_matches(|c: char| !c.is_alphanumeric());
            if trimmed.starts_with("sk-") || trimmed.starts_with("sk_") {
                let tail: String = word.chars().filter(|c| c.is_whitespace()).collect();
                format!("[redacted]{tail}")
            } else {
                word.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_as_the_contract_says() {
        for (status, code) in [
            (400, Code::InvalidArgument),
            (401, Code::PermissionDenied),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (429, Code::ResourceExhausted),
            (500, Code::Unavailable),
            (503, Code::Unavailable),
            (529, Code::Unavailable),
        ] {
            assert_eq!(http_status_code(status), code, "{status}");
        }
    }

    #[test]
    fn rate_limits_carry_a_retry_delay() {
        let status = ProviderError::Http {
            status: 429,
            message: "slow down".into(),
            param: None,
            retry_after: Some(Duration::from_secs(7)),
        }
        .into_status("fast", "openai", "gpt-4o");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("provider openai (model gpt-4o)"));
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(7)));
    }

    #[test]
    fn an_open_circuit_says_when_to_come_back() {
        let status = ProviderError::CircuitOpen {
            message: "the circuit of openai/gpt-4o is open".into(),
            retry_in: Duration::from_millis(1500),
        }
        .into_status("fast", "openai", "gpt-4o");
        assert_eq!(status.code(), Code::Unavailable);
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn provider_failures_carry_a_provider_error_info() {
        let http = |status| ProviderError::Http {
            status,
            message: "upstream said no".into(),
            param: None,
            retry_after: None,
        };
        let cases = [
            (http(503), Code::Unavailable, provider_reason::UNAVAILABLE),
            (http(500), Code::Unavailable, provider_reason::UNAVAILABLE),
            (
                http(429),
                Code::ResourceExhausted,
                provider_reason::RATE_LIMITED,
            ),
            (http(401), Code::PermissionDenied, provider_reason::REJECTED),
            (
                ProviderError::Connect {
                    url: "http://127.0.0.1:9".into(),
                    message: "connection refused".into(),
                },
                Code::Unavailable,
                provider_reason::UNAVAILABLE,
            ),
            (
                ProviderError::Broken("cut".into()),
                Code::Unavailable,
                provider_reason::UNAVAILABLE,
            ),
            (
                ProviderError::Upstream {
                    kind: "overloaded_error".into(),
                    message: "busy".into(),
                },
                Code::Unavailable,
                provider_reason::UNAVAILABLE,
            ),
            (
                ProviderError::Upstream {
                    kind: "rate_limit_error".into(),
                    message: "slow down".into(),
                },
                Code::ResourceExhausted,
                provider_reason::RATE_LIMITED,
            ),
            (
                ProviderError::Timeout("no first token within 1s".into()),
                Code::DeadlineExceeded,
                provider_reason::TIMEOUT,
            ),
            (
                ProviderError::CircuitOpen {
                    message: "open".into(),
                    retry_in: Duration::from_secs(1),
                },
                Code::Unavailable,
                provider_reason::CIRCUIT_OPEN,
            ),
        ];
        for (err, code, reason) in cases {
            let what = format!("{err:?}");
            let status = err.into_status("fast", "openai", "gpt-4o");
            assert_eq!(status.code(), code, "{what}");
            let info = status.get_details_error_info().expect(&what);
            assert_eq!(info.reason, reason, "{what}");
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(info.metadata["provider"], "openai");
            assert_eq!(info.metadata["model"], "gpt-4o");
            assert_eq!(info.metadata["route"], "fast");
        }
        // Addressed as provider/model: no route; the HTTP status is kept.
        let status = http(502).into_status("", "openai", "gpt-4o");
        let info = status.get_details_error_info().unwrap();
        assert!(!info.metadata.contains_key("route"));
        assert_eq!(info.metadata["http_status"], "502");
    }

    #[test]
    fn failures_of_the_gateway_or_the_caller_carry_none() {
        for err in [
            ProviderError::MissingKey {
                env: "OPENAI_API_KEY".into(),
            },
            ProviderError::Setup("no TLS roots".into()),
            ProviderError::CallerDeadline("the caller's deadline passed".into()),
        ] {
            let what = format!("{err:?}");
            let status = err.into_status("fast", "openai", "gpt-4o");
            assert!(status.get_details_error_info().is_none(), "{what}");
            assert!(status.details().is_empty(), "{what}");
        }
    }

    #[test]
    fn keys_are_redacted() {
        let text = redact(
            "Incorrect API key provided: sk-abc123***xyz. You can find your key at ...",
            Some("sk-abc123secretxyz"),
        );
        assert!(!text.contains("sk-"), "{text}");
        assert!(text.contains("provided: [redacted] You can"), "{text}");
        let text = redact("bad key my-secret-key here", Some("my-secret-key"));
        assert_eq!(text, "bad key [redacted] here");
    }
}
