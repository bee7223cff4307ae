//! Retries that cannot become a retry storm: exponential backoff with full
//! jitter, a floor from the server's `retry-after`, a stop at the caller's
//! deadline, and a budget that caps retries at a fraction of the traffic.
//!
//! [`Retries`] holds the settings and the one budget a service shares
//! across its calls; the attempt loop ([`crate::attempt`]) applies them to
//! each call:
//!
//! ```text
//! budget.deposit()                       once per call
//! attempt ── fails, retryable ──▶ backoff.delay(n, retry_after, deadline)?
//!                                   └─ budget.withdraw()? ─▶ sleep ─▶ attempt
//! ```
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
    /// The caller's deadline had passed when the attempt failed.
    DeadlinePassed,
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
            Self::DeadlinePassed => f.write_str("the caller's deadline passed"),
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

/// The retry settings and the one budget shared by every call of a
/// service, so that retries stay a small share of all its calls. Cheap to
/// clone (the budget is shared).
#[derive(Debug, Clone)]
pub struct Retries {
    config: RetryConfig,
    budget: RetryBudget,
}

impl Retries {
    /// The settings of `config` and a budget of its own.
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            config: config.clone(),
            budget: RetryBudget::new(config),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// The shared budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
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

#[cfg(test)]
mod tests {
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
}
