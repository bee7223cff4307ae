//! How the gateway keeps answering when providers fail: what a provider
//! failure means to the attempt loop, and the circuit breakers of provider
//! targets (the rate limits are [`crate::limits`]).
//!
//! ```text
//! call ─▶ Limits::admit (tenant, route)        (crate::limits)
//!      ─▶ the shared AttemptLoop over the route's chain (one Circuits breaker per target):
//!           attempt fails ─▶ classify ─▶ verdict: retry the class? fall back (fallback_on)?
//!                                        retry-after
//!                        ─▶ circuit_failure: counts against the target's circuit, or not
//!      ─▶ Charges::settle(real tokens)
//! ```
//!
//! The loop itself (attempts, backoff, budget, deadline, circuit leave) is
//! `agentmesh_resilience::attempt`; the unary path ([`crate::unary`]) and
//! the stream relay ([`crate::relay`]) say what an attempt is, and read a
//! failure through [`verdict`] and [`circuit_failure`]. The mechanisms
//! themselves (breaker, backoff, budget) are in `agentmesh-resilience`.
//!
//! Circuit state stays in each process, on purpose: a replica learns that a
//! target fails from its own calls within a few of them, with no store on
//! the failure path; each replica's connections to a provider (and their
//! network path) can fail on their own; and a shared breaker would add a
//! round trip to every failure and let one replica's view open the circuit
//! of every other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_resilience::{CircuitBreaker, CircuitConfig, Verdict};
use tonic::Code;

use crate::config::FailureClass;
use crate::error::ProviderError;
use crate::providers::ProviderInstance;

/// Circuits kept for targets addressed directly as `provider/model` (any
/// model name a caller sends); beyond it such targets go unguarded.
const MAX_DIRECT_CIRCUITS: usize = 256;

/// The class of a provider failure.
pub(crate) fn classify(err: &ProviderError) -> FailureClass {
    match err {
        ProviderError::Connect { .. } => FailureClass::Connect,
        ProviderError::Broken(_) | ProviderError::Malformed(_) => FailureClass::Broken,
        ProviderError::Timeout(_) => FailureClass::Timeout,
        ProviderError::CallerDeadline(_) => FailureClass::CallerDeadline,
        ProviderError::MissingKey { .. } | ProviderError::Setup(_) => FailureClass::Unconfigured,
        ProviderError::CircuitOpen { .. } => FailureClass::CircuitOpen,
        // Any other 4xx (405, 415, …) rejects the request: the caller's.
        ProviderError::Http { status, .. }
            if (400..500).contains(status) && err.code() == Code::Unknown =>
        {
            FailureClass::InvalidRequest
        }
        ProviderError::Http { .. } | ProviderError::Upstream { .. } => match err.code() {
            Code::InvalidArgument => FailureClass::InvalidRequest,
            Code::PermissionDenied => FailureClass::PermissionDenied,
            Code::NotFound => FailureClass::NotFound,
            Code::ResourceExhausted => FailureClass::RateLimited,
            Code::FailedPrecondition => FailureClass::Unconfigured,
            _ => FailureClass::ServerError,
        },
    }
}

/// The `retry-after` a failure carries.
fn retry_after(err: &ProviderError) -> Option<Duration> {
    match err {
        ProviderError::Http { retry_after, .. } => *retry_after,
        _ => None,
    }
}

/// One target of a call's chain.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Provider instance name.
    pub instance: String,
    /// The provider's model name.
    pub model: String,
    /// The instance.
    pub provider: ProviderInstance,
    /// Its circuit, when guarded.
    pub circuit: Option<CircuitBreaker>,
    /// Its name in metric labels: `instance/model` when a route targets
    /// it, else `instance/other` — a model a caller names is never a
    /// label value.
    pub label: Arc<str>,
}

/// The circuit breakers of every provider target.
#[derive(Debug)]
pub(crate) struct Circuits {
    config: CircuitConfig,
    reporter: ResilienceReporter,
    by_target: Mutex<HashMap<String, (CircuitBreaker, Arc<str>)>>,
}

impl Circuits {
    /// Breakers configured by `config`, reported to `reporter`.
    pub(crate) fn new(config: CircuitConfig, reporter: ResilienceReporter) -> Self {
        Self {
            config,
            reporter,
            by_target: Mutex::new(HashMap::new()),
        }
    }

    /// The breaker of `instance/model`, made on first use (bounded for
    /// targets no route names), and the target's metric label.
    pub(crate) fn of(
        &self,
        instance: &str,
        model: &str,
        configured: bool,
    ) -> (Option<CircuitBreaker>, Arc<str>) {
        let name = format!("{instance}/{model}");
        let mut by_target = self
            .by_target
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((breaker, label)) = by_target.get(&name) {
            return (Some(breaker.clone()), Arc::clone(label));
        }
        let unlisted: Arc<str> = Arc::from(format!("{instance}/{UNLISTED_MODEL}"));
        if !configured && by_target.len() >= MAX_DIRECT_CIRCUITS {
            return (None, unlisted);
        }
        let breaker = CircuitBreaker::new(name.clone(), self.config.clone());
        let label = if configured {
            self.reporter.watch_circuit(&breaker);
            Arc::from(name.as_str())
        } else {
            // Audited as any circuit, counted under the instance alone.
            self.reporter.watch_unlisted_circuit(&breaker, &unlisted);
            unlisted
        };
        by_target.insert(name, (breaker.clone(), Arc::clone(&label)));
        (Some(breaker), label)
    }
}

/// The model part of the metric label of a target no route names.
const UNLISTED_MODEL: &str = "other";

/// What the shared attempt loop should make of a failure: retry its class
/// when it is retryable, fall back when the route's `fallback_on` names it,
/// and wait at least the provider's `retry-after`.
pub(crate) fn verdict(err: &ProviderError, fallback_on: &[FailureClass]) -> Verdict {
    let class = classify(err);
    Verdict {
        reason: class.as_str(),
        retry: class.retryable(),
        fall_back: fallback_on.contains(&class),
        retry_after: retry_after(err),
    }
}

/// The failure a failed attempt counts against its target's circuit: none
/// for a bad request or a 429, which say nothing about the target's health.
pub(crate) fn circuit_failure(err: &ProviderError) -> Option<String> {
    classify(err)
        .counts_against_circuit()
        .then(|| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_as_the_contract_says() {
        let http = |status| ProviderError::Http {
            status,
            message: String::new(),
            param: None,
            retry_after: None,
        };
        assert_eq!(classify(&http(500)), FailureClass::ServerError);
        assert_eq!(classify(&http(529)), FailureClass::ServerError);
        assert_eq!(classify(&http(429)), FailureClass::RateLimited);
        assert_eq!(classify(&http(400)), FailureClass::InvalidRequest);
        assert_eq!(classify(&http(401)), FailureClass::PermissionDenied);
        assert_eq!(classify(&http(404)), FailureClass::NotFound);
        assert_eq!(
            classify(&ProviderError::Malformed("x".into())),
            FailureClass::Broken
        );
        assert_eq!(
            classify(&ProviderError::Upstream {
                kind: "overloaded_error".into(),
                message: String::new()
            }),
            FailureClass::ServerError
        );
        for class in [
            FailureClass::InvalidRequest,
            FailureClass::PermissionDenied,
            FailureClass::NotFound,
        ] {
            assert!(!class.retryable());
        }
        assert!(!FailureClass::RateLimited.counts_against_circuit());
        // Any other 4xx is a rejected request, not a sick target.
        assert_eq!(classify(&http(415)), FailureClass::InvalidRequest);
        assert_eq!(classify(&http(408)), FailureClass::ServerError);
    }

    #[test]
    fn only_the_targets_failures_count_against_its_circuit() {
        let http = |status| ProviderError::Http {
            status,
            message: String::new(),
            param: None,
            retry_after: None,
        };
        let targets = [
            http(500),
            http(503),
            ProviderError::Connect {
                url: "http://x".into(),
                message: "refused".into(),
            },
            ProviderError::Broken("reset".into()),
            ProviderError::Timeout("no response within first_token_timeout (1s)".into()),
        ];
        for err in targets {
            assert!(circuit_failure(&err).is_some(), "{err:?}");
        }
        let callers = [
            http(400),
            http(404),
            http(413),
            http(422),
            ProviderError::Upstream {
                kind: "context_length_exceeded".into(),
                message: "too long".into(),
            },
            ProviderError::CallerDeadline(
                "the caller's deadline passed before the provider finished".into(),
            ),
        ];
        for err in callers {
            assert_eq!(circuit_failure(&err), None, "{err:?}");
            assert!(!verdict(&err, &[]).retry, "{err:?}");
        }
    }

    #[test]
    fn the_attempt_loop_reads_a_failure_by_its_class_and_the_route() {
        let limited = ProviderError::Http {
            status: 429,
            message: "slow down".into(),
            param: None,
            retry_after: Some(Duration::from_secs(2)),
        };
        let fallback_on = [FailureClass::ServerError, FailureClass::RateLimited];
        assert_eq!(
            verdict(&limited, &fallback_on),
            Verdict {
                reason: "rate_limited",
                retry: true,
                fall_back: true,
                retry_after: Some(Duration::from_secs(2)),
            }
        );
        assert_eq!(
            verdict(&limited, &[]),
            Verdict::retry("rate_limited").with_retry_after(Some(Duration::from_secs(2)))
        );
        // A 429 says nothing about the target's health.
        assert_eq!(circuit_failure(&limited), None);

        let bad = ProviderError::Http {
            status: 400,
            message: "bad".into(),
            param: None,
            retry_after: None,
        };
        assert_eq!(
            verdict(&bad, &fallback_on),
            Verdict::stop("invalid_request")
        );
        assert_eq!(circuit_failure(&bad), None);

        let down = ProviderError::Broken("reset".into());
        assert_eq!(verdict(&down, &[]), Verdict::retry("broken"));
        assert_eq!(circuit_failure(&down), Some(down.to_string()));
        let open = ProviderError::CircuitOpen {
            message: "open".into(),
            retry_in: Duration::from_secs(1),
        };
        assert!(verdict(&open, &[FailureClass::CircuitOpen]).fall_back);
        assert!(!verdict(&open, &[]).fall_back);
    }
}
