//! Rate limits per key (a tenant, a route): requests per minute by GCRA,
//! and tokens per minute by a bucket that is charged an estimate before the
//! call and the real count after it — behind one interface,
//! [`KeyedLimiter`], with two implementations:
//!
//! * [`KeyedRateLimiter`] ([`local`]): the state in this process's memory
//!   (`governor`'s GCRA and a small token bucket). One replica, or several
//!   that each enforce their own copy.
//! * [`SharedRateLimiter`] ([`shared`]): the state in a store every replica
//!   shares (a [`LeaseStore`], e.g. a PostgreSQL table), so a key's limit
//!   holds across replicas. Calls do not wait for the store: each replica
//!   leases small batches of cells from the key's GCRA row ([`lease`]) and
//!   spends them locally, refilling in the background; when the store is
//!   unreachable it falls back to a local limiter at 1/N of each limit.
//!
//! ```text
//! admit(key, estimate) ─▶ tokens: room for the estimate?   no ─▶ RateLimited(tokens)
//!                           │ yes: take the estimate
//!                           ▼
//!                         requests: a cell free?           no ─▶ give the tokens back,
//!                           │ yes                                 RateLimited(requests)
//!                           ▼
//!                         TokenCharge ── after the call ──▶ reconcile(charge, real tokens)
//! ```
//!
//! A token limit cannot be known before a model answers, so the bucket may
//! go into debt when the real count exceeds the estimate: the key then waits
//! until the refill pays it back. Both resources are GCRA meters: a meter
//! emits one cell every `interval` and holds `burst` at once; a token meter
//! is one whose cells are tokens and whose burst is a minute's worth.

pub mod lease;
pub mod local;
pub mod shared;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use lease::{Gcra, Lease, LeaseError, LeaseRequest, LeaseStore};
pub use local::KeyedRateLimiter;
pub use shared::{LimiterEvent, LimiterMode, SharedRateLimiter, SharedSettings};

/// The period every limit is expressed over.
pub const PERIOD: Duration = Duration::from_secs(60);

/// A limit on one key; 0 = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limit {
    /// Requests per minute (GCRA: spread evenly, with a burst of `burst`).
    pub requests_per_minute: u32,
    /// Requests allowed at once before spacing applies; 0 = a minute's
    /// worth (`requests_per_minute`).
    pub burst: u32,
    /// Input plus output tokens per minute.
    pub tokens_per_minute: u64,
}

impl Limit {
    /// True when neither requests nor tokens are limited.
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute == 0 && self.tokens_per_minute == 0
    }

    /// The requests burst in effect (`burst`, or a minute's worth).
    pub fn effective_burst(&self) -> u32 {
        if self.burst == 0 {
            self.requests_per_minute
        } else {
            self.burst
        }
    }

    /// One of `replicas` equal shares of this limit: every rate and the
    /// burst divided by `replicas`, rounded down but never below 1, so
    /// that `replicas` processes each enforcing their share together stay
    /// within the limit (unless it is smaller than `replicas`).
    pub fn share(&self, replicas: u32) -> Self {
        let replicas = replicas.max(1);
        let part = |value: u32| {
            if value == 0 {
                0
            } else {
                (value / replicas).max(1)
            }
        };
        Self {
            requests_per_minute: part(self.requests_per_minute),
            burst: if self.requests_per_minute == 0 {
                0
            } else {
                part(self.effective_burst())
            },
            tokens_per_minute: if self.tokens_per_minute == 0 {
                0
            } else {
                (self.tokens_per_minute / u64::from(replicas)).max(1)
            },
        }
    }
}

/// What ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl Resource {
    /// `requests` or `tokens`, as audit events and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        }
    }
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rate limit of {limit} {} per minute for {key} reached; retry in {retry_after:?}", resource.as_str())]
pub struct RateLimited {
    /// The limited key.
    pub key: String,
    /// What ran out.
    pub resource: Resource,
    /// The configured limit per [`PERIOD`].
    pub limit: f64,
    /// When a retry can succeed.
    pub retry_after: Duration,
}

/// Tokens taken for a call, to settle with [`KeyedLimiter::reconcile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCharge {
    key: String,
    tokens: u64,
    /// Taken from a shared limiter's local fallback, which settles it.
    fallback: bool,
}

impl TokenCharge {
    fn new(key: &str, tokens: u64) -> Self {
        Self {
            key: key.to_owned(),
            tokens,
            fallback: false,
        }
    }
}

/// What [`KeyedLimiter::admit`] returns: a future, because a shared
/// limiter may have to wait for a lease (rarely: it refills ahead).
pub type Admit<'a> = Pin<Box<dyn Future<Output = Result<TokenCharge, RateLimited>> + Send + 'a>>;

/// Rate limits for many keys: one default limit, overrides by key.
pub trait KeyedLimiter: fmt::Debug + Send + Sync {
    /// The limit that applies to `key`.
    fn limit_of(&self, key: &str) -> Limit;

    /// True when no key is limited at all.
    fn is_unlimited(&self) -> bool;

    /// Admits one request expected to use `estimated_tokens`, or says which
    /// limit refused it and when to retry. Nothing is taken on a refusal.
    fn admit<'a>(&'a self, key: &'a str, estimated_tokens: u64) -> Admit<'a>;

    /// Settles a request's tokens with what it really used (input plus
    /// output): gives back an over-estimate, takes the rest of an
    /// under-estimate (possibly into debt).
    fn reconcile(&self, charge: TokenCharge, actual_tokens: u64);

    /// Gives back tokens taken by an admitted request that never reached a
    /// model (e.g. another limit refused it).
    fn refund(&self, charge: TokenCharge) {
        self.reconcile(charge, 0);
    }
}

/// A mutex's data even when a panic poisoned it: the state here is
/// counters, never left half-updated across a panic point.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_divides_every_rate_and_the_burst_never_below_one() {
        let limit = Limit {
            requests_per_minute: 60,
            burst: 0,
            tokens_per_minute: 1000,
        };
        assert_eq!(
            limit.share(4),
            Limit {
                requests_per_minute: 15,
                burst: 15,
                tokens_per_minute: 250,
            }
        );
        let small = Limit {
            requests_per_minute: 3,
            burst: 2,
            tokens_per_minute: 0,
        };
        assert_eq!(
            small.share(5),
            Limit {
                requests_per_minute: 1,
                burst: 1,
                tokens_per_minute: 0,
            }
        );
        assert_eq!(limit.share(0), limit.share(1));
        assert!(Limit::default().share(3).is_unlimited());
    }
}
