//! What the unary and the streaming path share once a call is admitted: the
//! [`Prepared`] call (validated, resolved, within the rate limits, with its
//! plan of attempts and the caller's deadline), the final status of a call
//! that failed for good, and the accounting of usage across attempts.
//!
//! ```text
//! request ─▶ validate ─▶ Gateway::resolve ─▶ register provider keys as secrets
//!         ─▶ Limits::admit (tenant, route) ─▶ Plan over the chain ─▶ Prepared
//! ```

use std::sync::Arc;
use std::time::Instant as StdInstant;

use agentmesh_audit_client::AuditClient;
use agentmesh_kit::RequestContext;
use agentmesh_proto::llm::v1::{GenerateRequest, Usage};
use tonic::Status;

use crate::audit::{KeyRegistry, LlmCallRecord};
use crate::completion::Completion;
use crate::error::ProviderError;
use crate::gateway::{Gateway, Resolved};
use crate::providers::ProviderCall;
use crate::resilience::{Charges, Plan};
use crate::validate::validate_request;

/// A call that passed its checks and limits, with its plan of attempts.
pub(crate) struct Prepared {
    /// Where the call goes first, and its chain.
    pub(crate) resolved: Resolved,
    /// The validated request.
    pub(crate) request: Arc<GenerateRequest>,
    /// When the caller stops waiting, if it said.
    pub(crate) caller_deadline: Option<tokio::time::Instant>,
    /// The attempts over the chain.
    pub(crate) plan: Plan,
    /// Tokens taken from the rate limits, settled with the real usage.
    pub(crate) charges: Charges,
}

impl Prepared {
    /// Validates and resolves `request`, registers the keys of every target
    /// it may reach as secrets, applies the rate limits, and captures the
    /// caller's deadline (the task-local context is gone once a stream is
    /// being polled).
    pub(crate) fn new(
        gateway: &Gateway,
        keys: &KeyRegistry,
        audit: &AuditClient,
        request: GenerateRequest,
        record: &mut LlmCallRecord,
        method: &str,
    ) -> Result<Self, Status> {
        validate_request(&request)?;
        let resolved = gateway.resolve(&request.model)?;
        record.resolved(&resolved);
        for target in resolved.chain.iter() {
            keys.register(audit, &target.provider.config);
        }
        let context = RequestContext::current();
        let tenant = context
            .as_ref()
            .and_then(|context| context.header("x-agentmesh-tenant"))
            .filter(|tenant| !tenant.is_empty())
            .unwrap_or("-")
            .to_owned();
        let route_key = if resolved.route.is_empty() {
            format!("{}/{}", resolved.instance, resolved.model)
        } else {
            resolved.route.clone()
        };
        let charges = gateway
            .limits()
            .admit(&tenant, &route_key, &request, method)?;
        let caller_deadline = context
            .and_then(|context| context.deadline())
            .map(|deadline| tokio::time::Instant::from_std(deadline.min(far_future())));
        let plan = Plan::new(
            Arc::clone(&resolved.chain),
            Arc::clone(&resolved.fallback_on),
            gateway.retry(),
            caller_deadline,
        );
        Ok(Self {
            resolved,
            request: Arc::new(request),
            caller_deadline,
            plan,
            charges,
        })
    }

    /// The provider call for the plan's current target.
    pub(crate) fn call(&self) -> ProviderCall {
        ProviderCall {
            model: self.plan.target().model.clone(),
            request: Arc::clone(&self.request),
            caller_deadline: self.caller_deadline,
        }
    }

    /// The status a call that failed for good ends with: the last error's,
    /// saying how many attempts were made and why retrying stopped.
    pub(crate) fn final_status(&self, err: ProviderError) -> Status {
        let resolved = self.resolved.at(self.plan.target());
        let attempts = self.plan.attempts();
        let status = log_failure(&resolved, err);
        if attempts <= 1 && self.plan.stopped().is_none() {
            return status;
        }
        let mut message = format!("{} (after {attempts} attempts", status.message());
        if let Some(why) = self.plan.stopped() {
            message.push_str("; no further retry: ");
            message.push_str(why);
        }
        message.push(')');
        Status::with_details(status.code(), message, status.details().to_vec().into())
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
                ProviderError::Timeout(
                    "the caller's deadline passed before the provider finished".to_owned(),
                )
            }),
        None => Ok(future.await),
    }
}

pub(crate) fn log_retry(resolved: &Resolved, err: &ProviderError, action: &str) {
    tracing::info!(
        route = %resolved.route,
        provider = %resolved.instance,
        model = %resolved.model,
        error = %err,
        "provider attempt failed; {action}"
    );
}

fn log_failure(resolved: &Resolved, err: ProviderError) -> Status {
    let status = err.into_status(&resolved.instance, &resolved.model);
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
