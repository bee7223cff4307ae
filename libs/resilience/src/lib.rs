//! Resilience mechanisms shared by agentmesh services, each a small state
//! machine with unit tests and, where a service stack can use it, a tower
//! Layer + Service pair:
//!
//! * [`circuit`]: circuit breakers per target (closed → open → half-open),
//!   with an observer for state changes (audit events, gauges), and
//!   [`CircuitBreakerLayer`].
//! * [`retry`]: exponential backoff with full jitter floored by
//!   `retry-after` and stopped by the caller's deadline; a retry budget
//!   (tower's `TpsBudget`) so retries never exceed a share of the traffic;
//!   and [`RetryPolicy`], the same rules as a `tower::retry::Policy`.
//! * [`bulkhead`]: bounded concurrency with a bounded queue, refusing beyond
//!   it, and [`BulkheadLayer`].
//! * [`rate_limit`]: requests per minute per key by GCRA (`governor`), and
//!   tokens per minute charged by estimate and reconciled with real usage.
//!
//! Load shedding at servers (refusing calls past an in-flight limit) lives
//! in the service kit's server stack, next to the other server layers.
//!
//! Nothing here knows gRPC: services map a refusal to their status codes
//! (RESOURCE_EXHAUSTED with RetryInfo for rate limits and full bulkheads,
//! UNAVAILABLE for open circuits) and record metrics and audit events from
//! the observers and errors.

pub mod bulkhead;
pub mod circuit;
pub mod rate_limit;
pub mod retry;

pub use bulkhead::{
    Bulkhead, BulkheadError, BulkheadFull, BulkheadLayer, BulkheadPermit, Entry, Queued,
};
pub use circuit::{
    CallPermit, CircuitBreaker, CircuitBreakerLayer, CircuitConfig, CircuitError, CircuitOpen,
    CircuitState, Transition,
};
pub use rate_limit::{KeyedRateLimiter, Limit, RateLimited, Resource, TokenCharge};
pub use retry::{Backoff, NoRetry, RetryBudget, RetryConfig, RetryPolicy, Verdict};
