//! The in-memory [`KeyedRateLimiter`]: requests per minute by GCRA
//! (`governor`), and tokens per minute by a bucket charged an estimate
//! before the call and the real count after it, both in this process's
//! memory.
//!
//! With several replicas each enforces its own copy, so a key's effective
//! limit is the configured one times the replicas its calls are spread over;
//! [`super::SharedRateLimiter`] shares the state instead, and falls back to
//! one of these (at a share of each limit) while its store is unreachable.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::{Admit, KeyedLimiter, Limit, PERIOD, RateLimited, Resource, TokenCharge, lock};

/// Keys kept before idle ones are dropped (their buckets are full again).
pub(super) const MAX_KEYS: usize = 10_000;
/// A key unused this long has a full bucket and a free cell: forgettable.
pub(super) const IDLE: Duration = Duration::from_secs(120);

/// Rate limits for many keys: one default, overrides by key.
pub struct KeyedRateLimiter {
    default: Limit,
    overrides: BTreeMap<String, Limit>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

impl fmt::Debug for KeyedRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("default", &self.default)
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

struct Entry {
    limit: Limit,
    requests: Option<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>,
    tokens: Mutex<Bucket>,
}

struct Bucket {
    /// Tokens available; negative = debt.
    available: f64,
    refilled: Instant,
    used: Instant,
}

impl KeyedRateLimiter {
    /// Limits of `default` for every key, except those in `overrides`.
    pub fn new(default: Limit, overrides: BTreeMap<String, Limit>) -> Self {
        Self {
            default,
            overrides,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The limit that applies to `key`.
    pub fn limit_of(&self, key: &str) -> Limit {
        self.overrides.get(key).copied().unwrap_or(self.default)
    }

    /// True when no key is limited at all.
    pub fn is_unlimited(&self) -> bool {
        self.default.is_unlimited() && self.overrides.values().all(Limit::is_unlimited)
    }

    /// Admits one request expected to use `estimated_tokens`, or says which
    /// limit refused it and when to retry; at once (nothing here waits).
    /// Nothing is taken on a refusal.
    pub fn admit_now(&self, key: &str, estimated_tokens: u64) -> Result<TokenCharge, RateLimited> {
        let limit = self.limit_of(key);
        let charge = TokenCharge::new(key, 0);
        if limit.is_unlimited() {
            return Ok(charge);
        }
        let entry = self.entry(key, limit);
        let now = Instant::now();
        let mut charged = 0;
        if limit.tokens_per_minute > 0 {
            let mut bucket = lock(&entry.tokens);
            bucket.refill(limit.tokens_per_minute, now);
            let capacity = limit.tokens_per_minute as f64;
            // A request larger than the whole bucket passes when it is full
            // (and leaves it in debt), else it could never pass.
            let need = (estimated_tokens as f64).min(capacity);
            if bucket.available < need {
                let per_second = capacity / PERIOD.as_secs_f64();
                return Err(RateLimited {
                    key: key.to_owned(),
                    resource: Resource::Tokens,
                    limit: capacity,
                    retry_after: Duration::from_secs_f64(
                        ((need - bucket.available) / per_second).max(0.001),
                    ),
                });
            }
            bucket.available -= estimated_tokens as f64;
            bucket.used = now;
            charged = estimated_tokens;
        }
        if let Some(requests) = &entry.requests
            && let Err(not_until) = requests.check()
        {
            if charged > 0 {
                lock(&entry.tokens).available += charged as f64;
            }
            return Err(RateLimited {
                key: key.to_owned(),
                resource: Resource::Requests,
                limit: f64::from(limit.requests_per_minute),
                retry_after: not_until
                    .wait_time_from(DefaultClock::default().now())
                    .max(Duration::from_millis(1)),
            });
        }
        lock(&entry.tokens).used = now;
        Ok(TokenCharge {
            tokens: charged,
            ..charge
        })
    }

    /// Settles a request's tokens with what it really used (input plus
    /// output): gives back an over-estimate, takes the rest of an
    /// under-estimate (possibly into debt).
    pub fn reconcile(&self, charge: TokenCharge, actual_tokens: u64) {
        let limit = self.limit_of(&charge.key);
        if limit.tokens_per_minute == 0 {
            return;
        }
        let entry = self.entry(&charge.key, limit);
        let mut bucket = lock(&entry.tokens);
        bucket.refill(limit.tokens_per_minute, Instant::now());
        bucket.available += charge.tokens as f64 - actual_tokens as f64;
        bucket.available = bucket.available.min(limit.tokens_per_minute as f64);
    }

    fn entry(&self, key: &str, limit: Limit) -> Arc<Entry> {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(key)
            && entry.limit == limit
        {
            return Arc::clone(entry);
        }
        if entries.len() >= MAX_KEYS {
            let now = Instant::now();
            entries
                .retain(|_, entry| now.saturating_duration_since(lock(&entry.tokens).used) < IDLE);
        }
        let entry = Arc::new(Entry::new(limit));
        entries.insert(key.to_owned(), Arc::clone(&entry));
        entry
    }
}

impl KeyedLimiter for KeyedRateLimiter {
    fn limit_of(&self, key: &str) -> Limit {
        Self::limit_of(self, key)
    }

    fn is_unlimited(&self) -> bool {
        Self::is_unlimited(self)
    }

    fn admit<'a>(&'a self, key: &'a str, estimated_tokens: u64) -> Admit<'a> {
        Box::pin(std::future::ready(self.admit_now(key, estimated_tokens)))
    }

    fn reconcile(&self, charge: TokenCharge, actual_tokens: u64) {
        Self::reconcile(self, charge, actual_tokens);
    }
}

impl Entry {
    fn new(limit: Limit) -> Self {
        let requests = NonZeroU32::new(limit.requests_per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(limit.burst).unwrap_or(per_minute);
            RateLimiter::direct(Quota::per_minute(per_minute).allow_burst(burst))
        });
        let now = Instant::now();
        Self {
            limit,
            requests,
            tokens: Mutex::new(Bucket {
                available: limit.tokens_per_minute as f64,
                refilled: now,
                used: now,
            }),
        }
    }
}

impl Bucket {
    fn refill(&mut self, per_minute: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        let capacity = per_minute as f64;
        self.available = (self.available + elapsed * capacity / PERIOD.as_secs_f64()).min(capacity);
        self.refilled = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_limited_per_key_with_a_retry_delay() {
        let limiter = KeyedRateLimiter::new(
            Limit {
                requests_per_minute: 2,
                ..Limit::default()
            },
            BTreeMap::from([(
                "big".to_owned(),
                Limit {
                    requests_per_minute: 100,
                    ..Limit::default()
                },
            )]),
        );
        limiter.admit_now("acme", 0).unwrap();
        limiter.admit_now("acme", 0).unwrap();
        let refused = limiter.admit_now("acme", 0).unwrap_err();
        assert_eq!(refused.resource, Resource::Requests);
        assert_eq!(refused.limit, 2.0);
        // One cell every 30 s.
        assert!(refused.retry_after > Duration::from_secs(25), "{refused:?}");
        assert!(
            refused.retry_after <= Duration::from_secs(30),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("acme"));
        // Another key is not affected; an override applies.
        limiter.admit_now("globex", 0).unwrap();
        for _ in 0..100 {
            limiter.admit_now("big", 0).unwrap();
        }
        assert!(limiter.admit_now("big", 0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_charged_an_estimate_then_reconciled() {
        let limiter = KeyedRateLimiter::new(
            Limit {
                tokens_per_minute: 600,
                ..Limit::default()
            },
            BTreeMap::new(),
        );
        let charge = limiter.admit_now("acme", 100).unwrap();
        // The call really used 600: the bucket now holds 0.
        limiter.reconcile(charge, 600);
        let refused = limiter.admit_now("acme", 100).unwrap_err();
        assert_eq!(refused.resource, Resource::Tokens);
        // 10 tokens per second: 100 tokens in 10 s.
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        let charge = limiter.admit_now("acme", 100).unwrap();
        // Over-estimated: 80 come back.
        limiter.reconcile(charge, 20);
        tokio::time::advance(Duration::from_secs(2)).await;
        limiter.admit_now("acme", 100).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_over_the_whole_bucket_passes_when_full_and_leaves_debt() {
        let limiter = KeyedRateLimiter::new(
            Limit {
                tokens_per_minute: 60,
                ..Limit::default()
            },
            BTreeMap::new(),
        );
        limiter.admit_now("acme", 120).unwrap();
        // 60 tokens in debt: even 1 token waits 61 s.
        let refused = limiter.admit_now("acme", 1).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(61));
    }

    #[test]
    fn a_request_refusal_gives_the_tokens_back() {
        let limiter = KeyedRateLimiter::new(
            Limit {
                requests_per_minute: 1,
                tokens_per_minute: 100,
                ..Limit::default()
            },
            BTreeMap::new(),
        );
        let charge = limiter.admit_now("acme", 60).unwrap();
        limiter.reconcile(charge, 60);
        assert_eq!(
            limiter.admit_now("acme", 40).unwrap_err().resource,
            Resource::Requests
        );
        // The 40 were given back.
        let entry = limiter.entry("acme", limiter.limit_of("acme"));
        assert!(lock(&entry.tokens).available >= 40.0);
        assert!(KeyedRateLimiter::new(Limit::default(), BTreeMap::new()).is_unlimited());
    }
}
