//! How the gateway keeps answering when providers fail: the plan of
//! attempts for one call, the circuit breakers of provider targets, and the
//! rate limits per tenant and route.
//!
//! ```text
//! call ─▶ Limits::admit (tenant, route)        RESOURCE_EXHAUSTED + RetryInfo, RATE_LIMITED
//!      ─▶ Plan over the route's chain:
//!           target 1: circuit? ─▶ attempt ─▶ fails, retryable? ─▶ backoff (jitter, retry-after,
//!                     │                                           deadline) + budget ─▶ attempt …
//!                     └─ open, or failed for good with a class in fallback_on
//!           target 2: (a fallback takes from the retry budget too) …
//!      ─▶ Charges::settle(real tokens)
//! ```
//!
//! [`Plan`] only decides; the attempt loops of the unary path
//! ([`crate::unary`]) and the stream relay ([`crate::relay`]) make the
//! attempts (a stream that already sent output must send a reset before the
//! next attempt). The mechanisms themselves (breaker,
//! backoff, budget, GCRA) are in `agentmesh-resilience`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_audit_client::resilience::{Refusal, ResilienceReporter};
use agentmesh_proto::llm::v1::GenerateRequest;
use agentmesh_resilience::{
    Backoff, CallPermit, CircuitBreaker, CircuitConfig, KeyedRateLimiter, RateLimited, RetryBudget,
    RetryConfig, TokenCharge, rate_limit::PERIOD,
};
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::completion::estimate_input_tokens;
use crate::config::{Config, FailureClass};
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
        ProviderError::MissingKey { .. } | ProviderError::Setup(_) => FailureClass::Unconfigured,
        ProviderError::CircuitOpen(_) => FailureClass::CircuitOpen,
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
pub(crate) fn retry_after(err: &ProviderError) -> Option<Duration> {
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
}

impl Target {
    /// `instance/model`.
    pub(crate) fn name(&self) -> String {
        format!("{}/{}", self.instance, self.model)
    }
}

/// The circuit breakers of every provider target.
#[derive(Debug)]
pub(crate) struct Circuits {
    config: CircuitConfig,
    reporter: ResilienceReporter,
    by_target: Mutex<HashMap<String, CircuitBreaker>>,
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
    /// targets no route names).
    pub(crate) fn of(
        &self,
        instance: &str,
        model: &str,
        configured: bool,
    ) -> Option<CircuitBreaker> {
        let name = format!("{instance}/{model}");
        let mut by_target = self
            .by_target
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(breaker) = by_target.get(&name) {
            return Some(breaker.clone());
        }
        if !configured && by_target.len() >= MAX_DIRECT_CIRCUITS {
            return None;
        }
        let breaker = CircuitBreaker::new(name.clone(), self.config.clone());
        self.reporter.watch_circuit(&breaker);
        by_target.insert(name, breaker.clone());
        Some(breaker)
    }
}

/// What to do after an attempt failed.
#[derive(Debug)]
pub(crate) enum Next {
    /// Try the same target again after the delay.
    Retry(Duration),
    /// Go to the next target of the chain at once.
    Fallback,
    /// Stop: answer with the failure.
    GiveUp,
}

/// The attempts of one call over its chain of targets.
#[derive(Debug)]
pub(crate) struct Plan {
    chain: Arc<[Target]>,
    fallback_on: Arc<[FailureClass]>,
    max_attempts: u32,
    backoff: Backoff,
    budget: RetryBudget,
    deadline: Option<Instant>,
    reporter: ResilienceReporter,
    /// Index of the current target.
    target: usize,
    /// Attempts made at the current target.
    at_target: u32,
    /// Upstream attempts made in all (what the response's `attempts` says).
    attempts: u32,
    /// Why the last retry or fallback stopped, for the final message.
    stopped: Option<String>,
}

impl Plan {
    /// A plan over `chain`; counts the call in the budget.
    pub(crate) fn new(
        chain: Arc<[Target]>,
        fallback_on: Arc<[FailureClass]>,
        policy: &RetryPolicy,
        deadline: Option<Instant>,
    ) -> Self {
        policy.budget.deposit();
        Self {
            chain,
            fallback_on,
            max_attempts: policy.config.max_attempts.max(1),
            backoff: policy.config.backoff(),
            budget: policy.budget.clone(),
            deadline,
            reporter: policy.reporter.clone(),
            target: 0,
            at_target: 0,
            attempts: 0,
            stopped: None,
        }
    }

    /// The current target.
    #[expect(
        clippy::indexing_slicing,
        reason = "the chain is never empty (a route has its target, a direct call its one) and \
                  `target` only moves to valid indexes"
    )]
    pub(crate) fn target(&self) -> &Target {
        &self.chain[self.target.min(self.chain.len() - 1)]
    }

    /// Upstream attempts made.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why retrying stopped early, if it did (budget, deadline).
    pub(crate) fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Asks the current target's circuit for leave to call it. `Err` with
    /// the next step when it is open.
    pub(crate) fn admit(&mut self) -> Result<Option<CallPermit>, (Next, ProviderError)> {
        let target = self.target().clone();
        let Some(circuit) = &target.circuit else {
            self.attempts += 1;
            self.at_target += 1;
            return Ok(None);
        };
        match circuit.try_acquire() {
            Ok(permit) => {
                self.attempts += 1;
                self.at_target += 1;
                Ok(Some(permit))
            }
            Err(open) => {
                let err = ProviderError::CircuitOpen(open.to_string());
                let next = self.fallback(FailureClass::CircuitOpen, false);
                Err((next, err))
            }
        }
    }

    /// Decides what follows a failed attempt at the current target.
    pub(crate) fn after_failure(&mut self, err: &ProviderError) -> Next {
        let class = classify(err);
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            self.stopped = Some("the caller's deadline passed".to_owned());
            return Next::GiveUp;
        }
        if class.retryable() && self.at_target < self.max_attempts {
            match self
                .backoff
                .delay(self.at_target, retry_after(err), self.deadline)
            {
                Ok(delay) if self.budget.withdraw() => {
                    self.reporter.retried(&self.target().name(), class.as_str());
                    return Next::Retry(delay);
                }
                Ok(_) => self.stopped = Some("the retry budget is spent".to_owned()),
                Err(why) => self.stopped = Some(why.to_string()),
            }
        }
        self.fallback(class, true)
    }

    /// Moves to the next target when `class` allows it; a fallback after
    /// an upstream attempt takes from the budget.
    fn fallback(&mut self, class: FailureClass, attempted: bool) -> Next {
        if !self.fallback_on.contains(&class) || self.target + 1 >= self.chain.len() {
            return Next::GiveUp;
        }
        if attempted && !self.budget.withdraw() {
            self.stopped = Some("the retry budget is spent".to_owned());
            return Next::GiveUp;
        }
        self.reporter.retried(
            &self.target().name(),
            &format!("fallback_{}", class.as_str()),
        );
        self.target += 1;
        self.at_target = 0;
        Next::Fallback
    }
}

/// Retry settings and the budget shared by every call.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    config: RetryConfig,
    budget: RetryBudget,
    reporter: ResilienceReporter,
}

impl RetryPolicy {
    /// The policy of `config`.
    pub(crate) fn new(config: &RetryConfig, reporter: ResilienceReporter) -> Self {
        Self {
            config: config.clone(),
            budget: RetryBudget::new(config),
            reporter,
        }
    }
}

/// Reports how a circuit permit's call ended.
pub(crate) fn settle_permit(permit: Option<CallPermit>, result: Result<(), &ProviderError>) {
    let Some(permit) = permit else { return };
    match result {
        Ok(()) => permit.success(),
        Err(err) if classify(err).counts_against_circuit() => permit.failure(&err.to_string()),
        // A bad request or a 429 says nothing about the target's health.
        Err(_) => drop(permit),
    }
}

// === rate limits ===

/// The rate limits per tenant and per route.
#[derive(Debug)]
pub(crate) struct Limits {
    tenants: KeyedRateLimiter,
    routes: KeyedRateLimiter,
    reporter: ResilienceReporter,
}

/// Tokens taken from the limits for one call, settled with its real usage.
#[derive(Debug)]
pub(crate) struct Charges {
    limits: Arc<Limits>,
    tenant: Option<TokenCharge>,
    route: Option<TokenCharge>,
}

impl Limits {
    /// The limits of `config`.
    pub(crate) fn new(config: &Config, reporter: ResilienceReporter) -> Self {
        let limits = &config.rate_limits;
        Self {
            tenants: KeyedRateLimiter::new(limits.tenant, limits.tenants.clone()),
            routes: KeyedRateLimiter::new(limits.route, limits.routes.clone()),
            reporter,
        }
    }

    /// Admits a call of `tenant` on `route`, charged the estimated input
    /// tokens of `request`, or refuses it with RESOURCE_EXHAUSTED and
    /// RetryInfo (and a RATE_LIMITED event).
    pub(crate) fn admit(
        self: &Arc<Self>,
        tenant: &str,
        route: &str,
        request: &GenerateRequest,
        method: &str,
    ) -> Result<Charges, Status> {
        let mut charges = Charges {
            limits: Arc::clone(self),
            tenant: None,
            route: None,
        };
        if self.tenants.is_unlimited() && self.routes.is_unlimited() {
            return Ok(charges);
        }
        let estimated_tokens = estimate_input_tokens(request);
        if !self.tenants.is_unlimited() {
            let charge = self
                .tenants
                .admit(tenant, estimated_tokens)
                .map_err(|refused| self.refuse("tenant", &refused, method))?;
            charges.tenant = Some(charge);
        }
        if !self.routes.is_unlimited() {
            match self.routes.admit(route, estimated_tokens) {
                Ok(charge) => charges.route = Some(charge),
                Err(refused) => {
                    if let Some(charge) = charges.tenant.take() {
                        self.tenants.refund(charge);
                    }
                    return Err(self.refuse("route", &refused, method));
                }
            }
        }
        Ok(charges)
    }

    fn refuse(&self, scope: &str, refused: &RateLimited, method: &str) -> Status {
        self.reporter.refused(&Refusal {
            scope,
            key: &refused.key,
            resource: refused.resource.as_str(),
            limit: refused.limit,
            period: Some(PERIOD),
            retry_after: refused.retry_after,
            method,
        });
        let details = ErrorDetails::with_retry_info(Some(refused.retry_after));
        Status::with_error_details(
            Code::ResourceExhausted,
            format!("{scope} {refused}"),
            details,
        )
    }
}

impl Charges {
    /// Settles the tokens taken with what the call used (input + output);
    /// once (later calls do nothing).
    pub(crate) fn settle(&mut self, used_tokens: u64) {
        if let Some(charge) = self.tenant.take() {
            self.limits.tenants.reconcile(charge, used_tokens);
        }
        if let Some(charge) = self.route.take() {
            self.limits.routes.reconcile(charge, used_tokens);
        }
    }
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
    }
}
