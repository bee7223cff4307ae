//! Resilience mechanisms shared by agentmesh services, each a small state
//! machine with unit tests, used by hand around a service's calls (no tower
//! layers: a streaming service must answer a refusal before its stream
//! starts, then hold its place while a task relays the stream):
//!
//! * [`attempt`]: the attempt loop of one call — attempts at a target and
//!   its fallbacks, classified by the caller, retried with backoff within
//!   the budget and the caller's deadline, each asked of the target's
//!   circuit, every decision handed to the caller's observer.
//! * [`retry`]: exponential backoff with full jitter floored by
//!   `retry-after` and stopped by the caller's deadline, and a retry budget
//!   (tower's `TpsBudget`) so retries never exceed a share of the traffic;
//!   [`Retries`] holds both for a service.
//! * [`circuit`]: circuit breakers per target (closed → open → half-open),
//!   with an observer for state changes (audit events, gauges).
//! * [`bulkhead`]: bounded concurrency with a bounded queue, refusing beyond
//!   it, with an observer for its gauges.
//! * [`rate_limit`]: requests per minute per key by GCRA, and tokens per
//!   minute charged by estimate and reconciled with real usage, behind one
//!   interface ([`KeyedLimiter`]): in this process's memory (`governor`),
//!   or shared by replicas through a store of GCRA rows from which each
//!   leases small batches, falling back to 1/N of each limit when the
//!   store is down.
//!
//! ```text
//! call ─▶ rate limit ─▶ bulkhead place ─▶ AttemptLoop over targets
//!                                           ├ circuit leave per attempt
//!                                           ├ backoff + budget per retry
//!                                           └ observer: retries, refusals
//! ```
//!
//! Load shedding at servers (refusing calls past an in-flight limit) lives
//! in the service kit's server stack, next to the other server layers.
//!
//! Nothing here knows gRPC: services map a refusal to their status codes
//! (RESOURCE_EXHAUSTED with RetryInfo for rate limits and full bulkheads,
//! UNAVAILABLE for open circuits) and record metrics and audit events from
//! the observers and errors.

pub mod attempt;
pub mod bulkhead;
pub mod circuit;
pub mod rate_limit;
pub mod retry;

pub use attempt::{Attempt, AttemptEvent, AttemptLoop, Attempted, Attempts, Next, Verdict};
pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit, Entry, Queued};
pub use circuit::{
    CallPermit, CircuitBreaker, CircuitConfig, CircuitOpen, CircuitState, Transition,
};
pub use rate_limit::{
    Gcra, KeyedLimiter, KeyedRateLimiter, Lease, LeaseError, LeaseRequest, LeaseStore, Limit,
    LimiterEvent, LimiterMode, RateLimited, Resource, SharedRateLimiter, SharedSettings,
    TokenCharge,
};
pub use retry::{Backoff, NoRetry, Retries, RetryBudget, RetryConfig};
