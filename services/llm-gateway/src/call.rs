//! What the unary and the streaming path share once a call is admitted: the
//! [`Prepared`] call (validated, resolved, within the rate limits, with the
//! caller's deadline) and its attempt loop over the route's chain, how both
//! paths count and log the loop's retries and fallbacks, the final status
//! of a call that failed for good, and the accounting of usage across
//! attempts.
//!
//! ```text
//! request ─▶ validate ─▶ Gateway::resolve ─▶ the caller's route allow-list
//!         ─▶ register provider keys as secrets
//!         ─▶ Limits::admit (the verified tenant, route)
//!         ─▶ AttemptLoop over the chain's circuits ─▶ (Prepared, AttemptLoop)
//!         ─▶ (async, by the service) Budgets::admit (tenant, key) ─▶ Spend
//! ```
//!
//! When the call ends, [`Prepared::settle`] settles the rate limits' tokens
//! and records the usage against the budgets.

use std::sync::Arc;
use std::time::Instant as StdInstant;

use agentmesh_audit_client::AuditClient;
use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_auth::Mechanism;
use agentmesh_kit::RequestContext;
use agentmesh_proto::llm::v1::{GenerateRequest, Usage};
use agentmesh_resilience::{AttemptEvent, AttemptLoop};
use tonic::Status;

use crate::allowed::RouteAccess;
use crate::audit::{KeyRegistry, LlmCallRecord};
use crate::budget::{Payer, Spend};
use crate::completion::Completion;
use crate::error::ProviderError;
use crate::gateway::{Gateway, Resolved};
use crate::limits::Charges;
use crate::providers::ProviderCall;
use crate::validate::validate_request;

/// How a call came in: its method (as refusals name it), the caller's
/// address, and the allow-list check its route goes through.
pub(crate) struct Admission<'a> {
    pub(crate) method: &'a str,
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) routes: &'a RouteAccess,
}

/// A call that passed its checks and limits.
pub(crate) struct Prepared {
    /// Where the call goes first, and its chain.
    pub(crate) resolved: Resolved,
    /// The validated request.
    pub(crate) request: Arc<GenerateRequest>,
    /// When the caller stops waiting, if it said.
    pub(crate) caller_deadline: Option<tokio::time::Instant>,
    /// Tokens taken from the rate limits, settled with the real usage.
    pub(crate) charges: Charges,
    /// Who pays: the tenant and the credential, for the budgets.
    pub(crate) payer: Payer,
    /// Where the usage goes once the call ends (set when the budgets
    /// admit the call).
    pub(crate) spend: Spend,
}

impl Prepared {
    /// Validates and resolves `request`, registers the keys of every target
    /// it may reach as secrets, applies the rate limits, and captures the
    /// caller's deadline (the task-local context is gone once a stream is
    /// being polled). With it comes the call's attempt loop over the chain,
    /// made now so the call counts in the retry budget from its admission.
    pub(crate) async fn new(
        gateway: &Gateway,
        keys: &KeyRegistry,
        audit: &AuditClient,
        request: GenerateRequest,
        record: &mut LlmCallRecord,
        admission: &Admission<'_>,
    ) -> Result<(Self, AttemptLoop), Status> {
        let method = admission.method;
        validate_request(&request)?;
        let resolved = gateway.resolve(&request.model)?;
        record.resolved(&resolved);
        let route_key = if resolved.route.is_empty() {
            format!("{}/{}", resolved.instance, resolved.model)
        } else {
            resolved.route.clone()
        };
        let context = RequestContext::current();
        let identity = context.as_ref().and_then(RequestContext::identity);
        admission
            .routes
            .check(identity, &route_key, method, admission.peer)?;
        for target in resolved.chain.iter() {
            keys.register(audit, &target.provider.config);
        }
        // The verified tenant (in the embedded mode, the header's label).
        let tenant = identity
            .map(|identity| identity.tenant.as_str())
            .or_else(|| {
                context
                    .as_ref()
                    .and_then(|context| context.header("x-agentmesh-tenant"))
            })
            .filter(|tenant| !tenant.is_empty())
            .unwrap_or("-")
            .to_owned();
        let charges = gateway
            .limits()
            .admit(&tenant, &route_key, &request, method)
            .await?;
        let payer = Payer {
            key: identity
                .filter(|identity| identity.mechanism != Mechanism::None)
                .map(|identity| identity.credential_id.clone()),
            tenant,
        };
        let caller_deadline = context
            .and_then(|context| context.deadline())
            .map(|deadline| tokio::time::Instant::from_std(deadline.min(far_future())));
        let attempt_loop = AttemptLoop::new(gateway.retries(), caller_deadline)
            .targets(resolved.chain.iter().map(|target| target.circuit.clone()));
        let prepared = Self {
            resolved,
            request: Arc::new(request),
            caller_deadline,
            charges,
            payer,
            spend: Spend::default(),
        };
        Ok((prepared, attempt_loop))
    }

    /// The resolution at `target` of the chain (an index the attempt loop
    /// handed out, so always in it; the first target otherwise).
    pub(crate) fn at(&self, target: usize) -> Resolved {
        self.resolved
            .chain
            .get(target)
            .map_or_else(|| self.resolved.clone(), |target| self.resolved.at(target))
    }

    /// The provider call to `resolved`.
    pub(crate) fn call(&self, resolved: &Resolved) -> ProviderCall {
        ProviderCall {
            model: resolved.model.clone(),
            request: Arc::clone(&self.request),
            caller_deadline: self.caller_deadline,
        }
    }

    /// Counts and logs the retries and fallbacks the attempt loop decides:
    /// a retry under its failure's class, a fallback as `fallback_<class>`,
    /// both against the target that failed. A fallback past an open
    /// circuit is counted but not logged (nothing was attempted). `error`
    /// finds the provider's failure in the path's own failure type.
    pub(crate) fn observe<E>(
        &self,
        reporter: &ResilienceReporter,
        event: &AttemptEvent<'_, E>,
        error: impl Fn(&E) -> Option<&ProviderError>,
    ) {
        match *event {
            AttemptEvent::Retrying {
                target,
                reason,
                failure,
                ..
            } => {
                let resolved = self.at(target);
                reporter.retried(&resolved.label, reason);
                if let Some(err) = error(failure) {
                    log_retry(&resolved, err, "retrying");
                }
            }
            AttemptEvent::FallingBack {
                from,
                reason,
                attempted,
                failure,
                ..
            } => {
                let resolved = self.at(from);
                reporter.retried(&resolved.label, &format!("fallback_{reason}"));
                if attempted && let Some(err) = error(failure) {
                    log_retry(&resolved, err, "falling back");
                }
            }
            AttemptEvent::Attempting { .. } | AttemptEvent::NotRetrying { .. } => {}
        }
    }

    /// The status a call that failed for good at `target` ends with: the
    /// last error's, with the attempt loop's `summary` (how many attempts
    /// were made and why retrying stopped) when it has one.
    pub(crate) fn final_status(
        &self,
        err: ProviderError,
        target: usize,
        summary: Option<String>,
    ) -> Status {
        let status = log_failure(&self.at(target), err);
        let Some(summary) = summary else {
            return status;
        };
        let message = format!("{} ({summary})", status.message());
        Status::with_details(status.code(), message, status.details().to_vec().into())
    }

    /// Settles the call's tokens with the rate limits and records its
    /// usage against its budgets (the write starts now; await
    /// [`Spend::recorded`] before answering).
    pub(crate) fn settle(&mut self, usage: &Usage) {
        self.charges.settle(Self::used_tokens(usage));
        self.spend.record(usage);
    }

    /// Tokens used, for the token limits.
    pub(crate) fn used_tokens(usage: &Usage) -> u64 {
        u64::try_from(usage.input_tokens.max(0)).unwrap_or(0)
            + u64::try_from(usage.output_tokens.max(0)).unwrap_or(0)
    }
}

/// Adds `more` to `total`: the tokens, and the cost while every part with
/// tokens has one (a part without a price makes the sum's cost unknown).
pub(crate) fn add_usage(total: &mut Usage, more: &Usage) {
    let priced = |usage: &Usage| {
        usage.estimated_cost_usd.is_some() || (usage.input_tokens == 0 && usage.output_tokens == 0)
    };
    total.estimated_cost_usd = if priced(total) && priced(more) {
        match (total.estimated_cost_usd, more.estimated_cost_usd) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        }
    } else {
        None
    };
    total.input_tokens = total.input_tokens.saturating_add(more.input_tokens);
    total.output_tokens = total.output_tokens.saturating_add(more.output_tokens);
    total.total_tokens = total.total_tokens.saturating_add(more.total_tokens);
    total.cached_input_tokens = total
        .cached_input_tokens
        .saturating_add(more.cached_input_tokens);
    total.reasoning_tokens = total.reasoning_tokens.saturating_add(more.reasoning_tokens);
    total.tokens_estimated |= more.tokens_estimated;
}

/// A deadline a year away stands for "none" where an `Instant` is needed
/// (tokio's timers cannot represent arbitrarily far instants).
fn far_future() -> StdInstant {
    StdInstant::now() + std::time::Duration::from_secs(365 * 24 * 3600)
}

/// Runs `future` until the caller's deadline, if it gave one. Providers
/// check the deadline themselves; this bounds any provider that does not.
pub(crate) async fn within_caller_deadline<F: Future>(
    deadline: Option<tokio::time::Instant>,
    future: F,
) -> Result<F::Output, ProviderError> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future)
            .await
            .map_err(|_| {
                ProviderError::CallerDeadline(
                    "the caller's deadline passed before the provider finished".to_owned(),
                )
            }),
        None => Ok(future.await),
    }
}

/// Logs a successful call: at debug, and at info as a slow call when it
/// took `log.slow_call_threshold` or longer. (A line per call at info cost
/// the gateway about a tenth of its CPU at high rates.)
pub(crate) fn log_success(
    gateway: &Gateway,
    resolved: &Resolved,
    (finish_reason, usage): (impl std::fmt::Debug, &Usage),
    (attempts, took): (u32, std::time::Duration),
    run_id: &str,
    what: &'static str,
) {
    // One field list for both levels (a level must be a constant).
    macro_rules! line {
        ($level:ident, $($message:tt)+) => {
            tracing::$level!(
                route = %resolved.route,
                provider = %resolved.instance,
                model = %resolved.model,
                finish_reason = ?finish_reason,
                input_tokens = usage.input_tokens,
                output_tokens = usage.output_tokens,
                attempts,
                took = ?took,
                run_id,
                $($message)+
            )
        };
    }
    if took >= gateway.slow_call() {
        line!(info, "slow call: {what}");
    } else {
        line!(debug, "{what}");
    }
}

fn log_retry(resolved: &Resolved, err: &ProviderError, action: &str) {
    tracing::info!(
        route = %resolved.route,
        provider = %resolved.instance,
        model = %resolved.model,
        error = %err,
        "provider attempt failed; {action}"
    );
}

fn log_failure(resolved: &Resolved, err: ProviderError) -> Status {
    let status = err.into_status(&resolved.route, &resolved.instance, &resolved.model);
    tracing::warn!(
        route = %resolved.route,
        provider = %resolved.instance,
        model = %resolved.model,
        code = ?status.code(),
        error = %status.message(),
        "provider call failed"
    );
    status
}

pub(crate) fn reported_model(completion: &Completion, resolved: &Resolved) -> String {
    if completion.model.is_empty() {
        resolved.model.clone()
    } else {
        completion.model.clone()
    }
}
