//! Retries that cannot become a retry storm: exponential backoff with full
//! jitter, a floor from the server's `retry-after`, a stop at the caller's
//! deadline, and a budget that caps retries at a fraction of the traffic.
//!
//! A caller that retries by hand (the gateway's attempt loop, which must
//! also fall back between targets and reset streams) uses the parts:
//!
//! ```text
//! budget.deposit()                       once per call
//! attempt ── fails, retryable ──▶ retry_delay(n, retry_after, deadline)?
//!                                   └─ budget.withdraw()? ─▶ sleep ─▶ attempt
//! ```
//!
//! [`RetryPolicy`] puts the same rules into a `tower::retry::Policy`, for
//! services whose requests can be cloned (the tool runner's idempotent
//! tools).
//!
//! The budget is tower's [`TpsBudget`] (Finagle's design): every call
//! deposits, every retry withdraws, deposits expire after `budget_ttl`, and a
//! small reserve (`budget_min_per_second`) lets a quiet service retry at
//! all.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::retry::budget::{Budget as _, TpsBudget};

/// Retry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per target, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Upper bound of the first retry's delay (full jitter picks a delay
    /// between zero and the bound).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The bound doubles per retry up to this.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Retries allowed as a share of calls (0.2 = one retry per five calls),
    /// over the last `budget_ttl`. Fallbacks to another target count as
    /// retries too.
    pub budget_ratio: f32,
    /// Retries per second always allowed, so a quiet service can retry.
    pub budget_min_per_second: u32,
    /// How long a call counts towards the budget (1s to 60s).
    #[serde(with = "humantime_serde")]
    pub budget_ttl: Duration,
    /// The longest `retry-after` honoured by waiting; a longer one ends the
    /// retries for that target (the caller gets the delay in RetryInfo).
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            budget_ttl: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    /// Checks the settings; the error names the field (relative to the
    /// section) and says what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_attempts == 0 {
            return Err(("max_attempts", "must be at least 1 (1 = no retries)".into()));
        }
        if self.initial_backoff > self.max_backoff {
            return Err((
                "initial_backoff",
                "must not be longer than max_backoff".into(),
            ));
        }
        if !(0.0..=10.0).contains(&self.budget_ratio) {
            return Err((
                "budget_ratio",
                format!("must be between 0 and 10, not {}", self.budget_ratio),
            ));
        }
        if self.budget_min_per_second > 1_000_000 {
            return Err(("budget_min_per_second", "must be at most 1000000".into()));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.budget_ttl) {
            return Err(("budget_ttl", "must be between 1s and 60s".into()));
        }
        Ok(())
    }

    /// The backoff these settings describe.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.initial_backoff,
            max: self.max_backoff,
            max_retry_after: self.max_retry_after,
        }
    }
}

/// Exponential backoff with full jitter, floored by `retry-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    max_retry_after: Duration,
}

/// Why no retry is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRetry {
    /// The wait would end after the caller's deadline.
    Deadline,
    /// The server asked for a wait longer than `max_retry_after`.
    RetryAfterTooLong(Duration),
    /// The retry budget is spent.
    Budget,
    /// Every attempt is used.
    Attempts,
}

impl fmt::Display for NoRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deadline => f.write_str("no time left before the deadline"),
            Self::RetryAfterTooLong(wait) => {
                write!(
                    f,
                    "the provider asked to wait {wait:?}, longer than we wait"
                )
            }
            Self::Budget => f.write_str("the retry budget is spent"),
            Self::Attempts => f.write_str("every attempt is used"),
        }
    }
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`, honouring any
    /// `retry-after` up to `max_retry_after`.
    pub fn new(initial: Duration, max: Duration, max_retry_after: Duration) -> Self {
        Self {
            initial,
            max,
            max_retry_after,
        }
    }

    /// The upper bound of the delay before retry `retry` (1 = the first).
    pub fn bound(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry `retry`: uniform in `[0, bound]` (full
    /// jitter spreads retries of many callers that failed together), and at
    /// least the server's `retry_after`; refused when that wait is too long
    /// or would pass `deadline`.
    pub fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Result<Duration, NoRetry> {
        if let Some(wait) = retry_after
            && wait > self.max_retry_after
        {
            return Err(NoRetry::RetryAfterTooLong(wait));
        }
        let bound = self.bound(retry);
        let jittered = bound.mul_f64(fastrand::f64());
        let delay = retry_after.map_or(jittered, |wait| wait.max(jittered));
        if let Some(deadline) = deadline
            && Instant::now() + delay >= deadline
        {
            return Err(NoRetry::Deadline);
        }
        Ok(delay)
    }
}

/// Caps retries at a share of the calls (shared by every call it covers).
#[derive(Clone)]
pub struct RetryBudget {
    budget: Arc<TpsBudget>,
    ratio: f32,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// The budget of `config` (which passed [`RetryConfig::validate`]; out
    /// of range values are clamped rather than panicking).
    pub fn new(config: &RetryConfig) -> Self {
        let ttl = config
            .budget_ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = config.budget_ratio.clamp(0.0, 1000.0);
        let min = config.budget_min_per_second.min(1_000_000);
        Self {
            budget: Arc::new(TpsBudget::new(ttl, min, ratio)),
            ratio,
        }
    }

    /// Counts one call (not a retry).
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

// === as a tower retry policy ===

/// What a [`RetryPolicy`]'s classifier says about a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done: a success, or a failure not worth retrying.
    Done,
    /// Retry, waiting at least this long when the server said so.
    Retry(Option<Duration>),
}

/// Names a retry's reason for metrics: the classifier's label.
pub type Classify<Req, Res, E> =
    Arc<dyn Fn(&Req, &Result<Res, E>) -> (Verdict, &'static str) + Send + Sync>;

/// Observes each retry made (its reason), e.g. to count them.
pub type OnRetry = Arc<dyn Fn(&'static str) + Send + Sync>;

/// A `tower::retry::Policy` with backoff, budget, attempts and a deadline.
pub struct RetryPolicy<Req, Res, E> {
    config: Arc<RetryConfig>,
    budget: RetryBudget,
    classify: Classify<Req, Res, E>,
    on_retry: Option<OnRetry>,
    deadline: Option<Instant>,
    attempt: u32,
}

impl<Req, Res, E> Clone for RetryPolicy<Req, Res, E> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            budget: self.budget.clone(),
            classify: Arc::clone(&self.classify),
            on_retry: self.on_retry.clone(),
            deadline: self.deadline,
            attempt: self.attempt,
        }
    }
}

impl<Req, Res, E> fmt::Debug for RetryPolicy<Req, Res, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("config", &self.config)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl<Req, Res, E> RetryPolicy<Req, Res, E> {
    /// A policy of `config` drawing on `budget`, retrying what `classify`
    /// says to.
    pub fn new(
        config: RetryConfig,
        budget: RetryBudget,
        classify: impl Fn(&Req, &Result<Res, E>) -> (Verdict, &'static str) + Send + Sync + 'static,
    ) -> Self {
        Self {
            config: Arc::new(config),
            budget,
            classify: Arc::new(classify),
            on_retry: None,
            deadline: None,
            attempt: 1,
        }
    }

    /// Calls `on_retry` with the reason of each retry.
    pub fn on_retry(mut self, on_retry: impl Fn(&'static str) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(on_retry));
        self
    }

    /// This policy for one call that must end by `deadline`.
    pub fn with_deadline(&self, deadline: Option<Instant>) -> Self {
        let mut policy = self.clone();
        policy.deadline = deadline;
        policy.attempt = 1;
        policy
    }
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for RetryPolicy<Req, Res, E> {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, request: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if self.attempt == 1 {
            self.budget.deposit();
        }
        let (verdict, reason) = (self.classify)(request, result);
        let Verdict::Retry(retry_after) = verdict else {
            return None;
        };
        if self.attempt >= self.config.max_attempts {
            return None;
        }
        let delay = self
            .config
            .backoff()
            .delay(self.attempt, retry_after, self.deadline)
            .ok()?;
        if !self.budget.withdraw() {
            return None;
        }
        self.attempt += 1;
        if let Some(on_retry) = &self.on_retry {
            on_retry(reason);
        }
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    #[test]
    fn the_bound_doubles_up_to_the_cap_and_the_delay_is_within_it() {
        let backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(5),
        );
        assert_eq!(backoff.bound(1), Duration::from_millis(100));
        assert_eq!(backoff.bound(2), Duration::from_millis(200));
        assert_eq!(backoff.bound(4), Duration::from_millis(800));
        assert_eq!(backoff.bound(5), Duration::from_secs(1));
        assert_eq!(backoff.bound(99), Duration::from_secs(1));
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let delay = backoff.delay(3, None, None).unwrap();
            assert!(delay <= Duration::from_millis(400));
            distinct.insert(delay);
        }
        // Jitter: not all the same.
        assert!(distinct.len() > 10);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_floors_the_delay_and_the_deadline_and_cap_refuse() {
        let backoff = Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(10),
            Duration::from_secs(5),
        );
        let delay = backoff
            .delay(1, Some(Duration::from_secs(2)), None)
            .unwrap();
        assert_eq!(delay, Duration::from_secs(2));
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(6)), None),
            Err(NoRetry::RetryAfterTooLong(Duration::from_secs(6)))
        );
        let soon = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(2)), Some(soon)),
            Err(NoRetry::Deadline)
        );
        assert!(backoff.delay(1, None, Some(soon)).is_ok());
    }

    #[test]
    fn the_budget_caps_retries_at_its_share() {
        let budget = RetryBudget::new(&RetryConfig {
            budget_ratio: 0.25,
            budget_min_per_second: 0,
            ..RetryConfig::default()
        });
        for _ in 0..100 {
            budget.deposit();
        }
        let mut retries = 0;
        while budget.withdraw() {
            retries += 1;
        }
        assert_eq!(retries, 25);
    }

    #[test]
    fn settings_are_checked() {
        RetryConfig::default().validate().unwrap();
        for (bad, field) in [
            (
                RetryConfig {
                    max_attempts: 0,
                    ..RetryConfig::default()
                },
                "max_attempts",
            ),
            (
                RetryConfig {
                    budget_ttl: Duration::from_secs(120),
                    ..RetryConfig::default()
                },
                "budget_ttl",
            ),
            (
                RetryConfig {
                    initial_backoff: Duration::from_secs(9),
                    ..RetryConfig::default()
                },
                "initial_backoff",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().0, field);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_tower_policy_retries_transient_failures_up_to_the_attempts() {
        let config = RetryConfig {
            max_attempts: 3,
            ..RetryConfig::default()
        };
        let budget = RetryBudget::new(&config);
        let retried = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&retried);
        let policy =
            RetryPolicy::new(
                config,
                budget,
                |_: &u32, result: &Result<u32, &str>| match result {
                    Err("transient") => (Verdict::Retry(None), "transient"),
                    _ => (Verdict::Done, "done"),
                },
            )
            .on_retry(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            });
        let calls = Arc::new(AtomicU32::new(0));

        // Fails twice, then succeeds: two retries.
        let seen = Arc::clone(&calls);
        let service = ServiceBuilder::new()
            .retry(policy.with_deadline(None))
            .service_fn(move |request: u32| {
                let call = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    if call < 2 {
                        Err("transient")
                    } else {
                        Ok(request)
                    }
                }
            });
        assert_eq!(service.oneshot(7).await.unwrap(), 7);
        assert_eq!(retried.load(Ordering::SeqCst), 2);

        // A permanent failure is not retried.
        let seen = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&seen);
        let service = ServiceBuilder::new()
            .retry(policy.with_deadline(None))
            .service_fn(move |_: u32| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Err::<u32, _>("permanent") }
            });
        assert_eq!(service.oneshot(1).await.unwrap_err(), "permanent");
        assert_eq!(seen.load(Ordering::SeqCst), 1);

        // Always transient: three attempts in all.
        let seen = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&seen);
        let service = ServiceBuilder::new()
            .retry(policy.with_deadline(None))
            .service_fn(move |_: u32| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Err::<u32, _>("transient") }
            });
        assert!(service.oneshot(1).await.is_err());
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }
}
