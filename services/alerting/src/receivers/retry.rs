//! Retrying failed deliveries: one delivery attempt is made, and when it
//! fails in a way that may pass (a connection error, a timeout, HTTP 429 or
//! 5xx, a transient SMTP reply) it is tried again after an exponentially
//! growing, fully jittered pause, until it succeeds, fails for good, or the
//! next attempt would start after the caller's deadline.
//!
//! A server's `Retry-After` (on 429 and 503) is honoured: the next attempt
//! waits at least that long. Every attempt is also cut at the deadline, so a
//! server that never answers cannot hold the dispatcher past it.
//!
//! The attempts themselves are a closure, so the loop is tested without a
//! network under a paused clock.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use agentmesh_kit::ConfigError;

use crate::model::Delivery;

/// Why one delivery attempt failed: a short message free of secrets and
/// URLs, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct DeliveryError {
    /// What went wrong, e.g. "HTTP 500 Internal Server Error: overloaded".
    pub(crate) message: String,
    /// True for failures that may pass: connection errors, timeouts, 429,
    /// 5xx, transient SMTP replies.
    pub(crate) retryable: bool,
    /// The server's `Retry-After`, when it sent one with a 429 or 503.
    pub(crate) retry_after: Option<Duration>,
}

impl DeliveryError {
    /// A failure that trying again will not fix (a 4xx, a rejected address).
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// A failure that may pass.
    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }
}

/// How failed deliveries are retried (`[alerting.delivery]`), for every
/// integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DeliveryConfig {
    /// The pause before the first retry; later pauses double up to
    /// `max_backoff`, each drawn at random between this and its ceiling.
    #[serde(with = "humantime_serde")]
    pub(crate) initial_backoff: Duration,
    /// The longest pause between two attempts.
    #[serde(with = "humantime_serde")]
    pub(crate) max_backoff: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl DeliveryConfig {
    /// Checks the settings (paths relative to the service section).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_backoff.is_zero() {
            return Err(ConfigError::new(
                "delivery.initial_backoff",
                "must be greater than zero (e.g. \"1s\"): retries without a pause would hammer a failing receiver",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(ConfigError::new(
                "delivery.max_backoff",
                format!(
                    "must be at least delivery.initial_backoff ({})",
                    humantime_serde::re::humantime::format_duration(self.initial_backoff)
                ),
            ));
        }
        Ok(())
    }

    /// The pause before retry number `retry` (1 = the first retry): drawn
    /// uniformly between `initial_backoff` and the ceiling
    /// `initial_backoff × 2^(retry-1)` (at most `max_backoff`), from `random`
    /// (any u64). Full jitter spreads the retries of many groups failing at
    /// once; the floor keeps a failing receiver from being hammered.
    pub(crate) fn backoff(&self, retry: u32, random: u64) -> Duration {
        let initial = self.initial_backoff.as_nanos();
        let max = self.max_backoff.as_nanos().max(initial);
        let doublings = retry.saturating_sub(1).min(64);
        let ceiling = initial
            .checked_mul(1u128 << doublings)
            .map_or(max, |ceiling| ceiling.min(max));
        let span = ceiling.saturating_sub(initial);
        let jitter = span * u128::from(random) / u128::from(u64::MAX);
        let nanos = initial.saturating_add(jitter);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A random u64 for the jitter (v4 UUIDs come from the OS's generator; no
/// extra dependency for a few bits).
fn random() -> u64 {
    let value = uuid::Uuid::new_v4().as_u128();
    // Truncation is the point: any 64 of the random bits will do.
    (value >> 64) as u64 ^ value as u64
}

/// Runs `attempt` until it succeeds, fails for good, or the deadline comes;
/// `what` names the integration in log lines ("receiver team webhook[0]").
pub(crate) async fn with_retries<F, Fut>(
    config: &DeliveryConfig,
    deadline: Instant,
    what: &str,
    mut attempt: F,
) -> Delivery
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), DeliveryError>>,
{
    let mut attempts: u32 = 0;
    let mut last: Option<String> = None;
    loop {
        attempts = attempts.saturating_add(1);
        let error = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(())) => {
                return Delivery {
                    attempts,
                    error: None,
                };
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => {
                // The earlier failure says more than the cut-off retry.
                let message = match last {
                    Some(last) => {
                        format!("{last} (the retry was cut off at the delivery deadline)")
                    }
                    None => "no answer before the delivery deadline".to_owned(),
                };
                return Delivery {
                    attempts,
                    error: Some(message),
                };
            }
        };
        if !error.retryable {
            tracing::debug!(%what, attempts, error = %error.message, "delivery failed; not retryable");
            return Delivery {
                attempts,
                error: Some(error.message),
            };
        }
        let backoff = config.backoff(attempts, random());
        let pause = error
            .retry_after
            .map_or(backoff, |after| after.max(backoff));
        let now = Instant::now();
        if now.checked_add(pause).is_none_or(|next| next >= deadline) {
            tracing::debug!(%what, attempts, error = %error.message, "delivery failed; no time left to retry before the deadline");
            let message = match error.retry_after {
                Some(after) if now + backoff < deadline => format!(
                    "{} (the server asked to retry after {}, past the delivery deadline)",
                    error.message,
                    humantime_serde::re::humantime::format_duration(after)
                ),
                _ => error.message,
            };
            return Delivery {
                attempts,
                error: Some(message),
            };
        }
        tracing::debug!(%what, attempts, error = %error.message, pause_ms = pause.as_millis(), "delivery failed; retrying");
        last = Some(error.message);
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn config(initial_ms: u64, max_ms: u64) -> DeliveryConfig {
        DeliveryConfig {
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn backoff_doubles_with_full_jitter_between_the_bounds() {
        let config = config(1000, 60_000);
        assert_eq!(config.backoff(1, 0), Duration::from_secs(1));
        assert_eq!(config.backoff(1, u64::MAX), Duration::from_secs(1));
        assert_eq!(config.backoff(2, 0), Duration::from_secs(1));
        assert_eq!(config.backoff(2, u64::MAX), Duration::from_secs(2));
        assert_eq!(config.backoff(4, u64::MAX), Duration::from_secs(8));
        assert_eq!(config.backoff(30, u64::MAX), Duration::from_secs(60));
        assert_eq!(config.backoff(u32::MAX, u64::MAX), Duration::from_secs(60));
        let middle = config.backoff(3, u64::MAX / 2);
        assert!(
            middle > Duration::from_millis(2400) && middle < Duration::from_millis(2600),
            "{middle:?}"
        );
        for retry in 1..100 {
            let pause = config.backoff(retry, random());
            assert!(pause >= Duration::from_secs(1) && pause <= Duration::from_secs(60));
        }
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(DeliveryConfig::default().validate(), Ok(()));
        let err = config(0, 10).validate().unwrap_err();
        assert_eq!(err.setting, "delivery.initial_backoff");
        let err = config(10, 5).validate().unwrap_err();
        assert_eq!(err.setting, "delivery.max_backoff");
        assert!(err.message.contains("10ms"), "{}", err.message);
        let parsed: DeliveryConfig =
            toml_like("{\"initial_backoff\": \"2s\", \"max_backoff\": \"1m\"}");
        assert_eq!(parsed, config(2000, 60_000));
    }

    fn toml_like(json: &str) -> DeliveryConfig {
        serde_json::from_str(json).unwrap()
    }

    /// An attempt closure answering with `script` in turn (then success),
    /// counting calls.
    fn scripted(
        script: Vec<Result<(), DeliveryError>>,
    ) -> (
        Arc<AtomicU32>,
        impl FnMut() -> futures::future::Ready<Result<(), DeliveryError>>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let attempt = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
            futures::future::ready(script.get(n).cloned().unwrap_or(Ok(())))
        };
        (calls, attempt)
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_until_success() {
        let (calls, attempt) = scripted(vec![
            Err(DeliveryError::transient("HTTP 500 Internal Server Error")),
            Err(DeliveryError::transient("HTTP 502 Bad Gateway")),
        ]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let delivery = with_retries(&config(10, 50), deadline, "test", attempt).await;
        assert_eq!(
            delivery,
            Delivery {
                attempts: 3,
                error: None
            }
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let (calls, attempt) = scripted(vec![Err(DeliveryError::permanent(
            "HTTP 400 Bad Request: no",
        ))]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let delivery = with_retries(&config(10, 50), deadline, "test", attempt).await;
        assert_eq!(delivery.attempts, 1);
        assert_eq!(delivery.error.as_deref(), Some("HTTP 400 Bad Request: no"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_deadline() {
        let failures = (0..1000)
            .map(|_| Err(DeliveryError::transient("HTTP 503 Service Unavailable")))
            .collect();
        let (calls, attempt) = scripted(failures);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let delivery = with_retries(&config(1000, 2000), deadline, "test", attempt).await;
        assert_eq!(
            delivery.error.as_deref(),
            Some("HTTP 503 Service Unavailable")
        );
        assert!(Instant::now() < deadline);
        // Pauses of 1–2 s in 10 s: between 5 and 10 retries.
        let attempts = calls.load(Ordering::SeqCst);
        assert_eq!(delivery.attempts, attempts);
        assert!((5..=11).contains(&attempts), "{attempts}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured() {
        let mut slow = DeliveryError::transient("HTTP 429 Too Many Requests");
        slow.retry_after = Some(Duration::from_secs(30));
        let (calls, attempt) = scripted(vec![Err(slow.clone())]);
        let start = Instant::now();
        let delivery = with_retries(
            &config(1, 5),
            start + Duration::from_secs(60),
            "test",
            attempt,
        )
        .await;
        assert_eq!(
            delivery,
            Delivery {
                attempts: 2,
                error: None
            }
        );
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // A Retry-After past the deadline ends the delivery at once.
        let (calls, attempt) = scripted(vec![Err(slow)]);
        let start = Instant::now();
        let delivery = with_retries(
            &config(1, 5),
            start + Duration::from_secs(10),
            "test",
            attempt,
        )
        .await;
        assert_eq!(delivery.attempts, 1);
        let error = delivery.error.unwrap();
        assert!(
            error.starts_with("HTTP 429 Too Many Requests (the server asked to retry after 30s"),
            "{error}"
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_cut_at_the_deadline_reports_the_failure_before() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let start = Instant::now();
        let delivery = with_retries(
            &config(1000, 1000),
            start + Duration::from_secs(5),
            "test",
            move || {
                let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        Err(DeliveryError::transient("HTTP 502 Bad Gateway"))
                    } else {
                        futures::future::pending().await
                    }
                }
            },
        )
        .await;
        assert_eq!(delivery.attempts, 2);
        assert_eq!(
            delivery.error.as_deref(),
            Some("HTTP 502 Bad Gateway (the retry was cut off at the delivery deadline)")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_is_cut_at_the_deadline() {
        let start = Instant::now();
        let delivery = with_retries(
            &config(1, 5),
            start + Duration::from_secs(5),
            "test",
            futures::future::pending::<Result<(), DeliveryError>>,
        )
        .await;
        assert_eq!(delivery.attempts, 1);
        assert_eq!(
            delivery.error.as_deref(),
            Some("no answer before the delivery deadline")
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
