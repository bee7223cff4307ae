//! The rate limits per tenant and per route (`rate_limits`), in this
//! process's memory or shared by replicas through PostgreSQL
//! (`shared_limits`).
//!
//! ```text
//! call ─▶ Limits::admit(tenant, route)   each limiter: a KeyedLimiter
//!           ├ local: KeyedRateLimiter (memory)                 no shared_limits.url
//!           └ shared: SharedRateLimiter over RateLimitStore    shared_limits.url
//!                leases cells from llm_rate_limits rows (store), spends them here;
//!                the database down ─▶ 1/N of each limit, locally, until it answers
//!      refused ─▶ RESOURCE_EXHAUSTED + RetryInfo, RATE_LIMITED event
//!      admitted ─▶ Charges ── the call ends ──▶ Charges::settle(real tokens)
//! ```
//!
//! The mechanisms (GCRA, token bucket, leases, fallback) are in
//! `agentmesh_resilience::rate_limit`; this module picks the limiters, maps a
//! refusal to its status and event, and holds the store.

mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use agentmesh_audit_client::resilience::{Refusal, ResilienceReporter};
use agentmesh_proto::llm::v1::GenerateRequest;
use agentmesh_resilience::rate_limit::PERIOD;
use agentmesh_resilience::{
    KeyedLimiter, KeyedRateLimiter, Limit, RateLimited, SharedRateLimiter, SharedSettings,
    TokenCharge,
};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::completion::estimate_input_tokens;
use crate::config::Config;
pub use store::RateLimitStore;

/// The rate limits per tenant and per route.
#[derive(Debug)]
pub(crate) struct Limits {
    tenants: Arc<dyn KeyedLimiter>,
    routes: Arc<dyn KeyedLimiter>,
    /// The shared limits' database, when `shared_limits.url` is set.
    store: Option<RateLimitStore>,
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
    /// The limits of `config`: shared through its `shared_limits` database
    /// when one is set, each limiter's mode and leases reported to
    /// `reporter`; else in memory.
    pub(crate) fn new(config: &Config, reporter: ResilienceReporter) -> Self {
        let limits = &config.rate_limits;
        let shared = &config.shared_limits;
        let store = shared.is_enabled().then(|| RateLimitStore::new(shared));
        let limiter = |scope: &str,
                       default: Limit,
                       overrides: &BTreeMap<String, Limit>|
         -> Arc<dyn KeyedLimiter> {
            match &store {
                Some(store) => {
                    let limiter = SharedRateLimiter::new(
                        scope,
                        default,
                        overrides.clone(),
                        Arc::new(store.clone()),
                        SharedSettings {
                            replicas: shared.expected_replicas,
                            lease: shared.lease,
                            timeout: shared.timeout,
                        },
                    );
                    reporter.watch_rate_limiter(&limiter);
                    Arc::new(limiter)
                }
                None => Arc::new(KeyedRateLimiter::new(default, overrides.clone())),
            }
        };
        Self {
            tenants: limiter("tenant", limits.tenant, &limits.tenants),
            routes: limiter("route", limits.route, &limits.routes),
            store,
            reporter,
        }
    }

    /// The shared limits' database, when limits are shared.
    pub(crate) fn store(&self) -> Option<&RateLimitStore> {
        self.store.as_ref()
    }

    /// Admits a call of `tenant` on `route`, charged the estimated input
    /// tokens of `request`, or refuses it with RESOURCE_EXHAUSTED and
    /// RetryInfo (and a RATE_LIMITED event).
    pub(crate) async fn admit(
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
                .await
                .map_err(|refused| self.refuse("tenant", &refused, method))?;
            charges.tenant = Some(charge);
        }
        if !self.routes.is_unlimited() {
            match self.routes.admit(route, estimated_tokens).await {
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
