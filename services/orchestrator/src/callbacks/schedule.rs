//! What happens after an attempt: delivered, tried again after a backoff,
//! or given up — the outbox arithmetic, kept apart from the I/O so it can
//! be tested on its own.
//!
//! The wait before attempt `n + 1` is `initial_backoff × 2^(n-1)`, at most
//! `max_backoff`, times a jitter of ±20% (so the deliveries to a receiver
//! that was down do not all come back at the same instant). A delivery is
//! given up after `max_attempts` attempts, or when its next attempt would
//! fall after `max_age` from the step or end it reports. A refused
//! destination (it resolved to an address the policy does not allow) is
//! given up at once: the refusal is the policy working, not a fault to wait
//! out.

use std::time::Duration;

use crate::config::CallbacksConfig;
use crate::metrics::AttemptOutcome;
use crate::store::Settled;

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sent {
    /// The receiver answered this 2xx status.
    Delivered(u16),
    /// No 2xx: the status (0 without an answer) and why.
    Failed { status: u16, error: String },
    /// The destination was refused; why.
    Refused(String),
}

/// The wait after attempt `attempt` (from 1), before jitter.
pub(super) fn backoff(config: &CallbacksConfig, attempt: i32) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    config
        .initial_backoff
        .saturating_mul(1 << doublings)
        .min(config.max_backoff)
}

/// What to store after attempt `due_attempt` of a callback `age` old went
/// as `sent`, at `now` (micros); `jitter` is a factor in 0.8..=1.2.
pub(super) fn settle(
    config: &CallbacksConfig,
    sent: Sent,
    attempt: i32,
    age: Duration,
    now: i64,
    jitter: f64,
) -> (Settled, AttemptOutcome) {
    match sent {
        Sent::Delivered(status) => (Settled::Delivered { status }, AttemptOutcome::Delivered),
        Sent::Refused(error) => (
            Settled::GaveUp { status: 0, error },
            AttemptOutcome::Refused,
        ),
        Sent::Failed { status, error } => {
            let wait = backoff(config, attempt).mul_f64(jitter.clamp(0.8, 1.2));
            let too_many = u32::try_from(attempt).unwrap_or(u32::MAX) >= config.max_attempts;
            if too_many || age.saturating_add(wait) > config.max_age {
                return (Settled::GaveUp { status, error }, AttemptOutcome::GivenUp);
            }
            let at = now.saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX));
            (
                Settled::Retry { at, status, error },
                AttemptOutcome::Retrying,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CallbacksConfig {
        CallbacksConfig {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(600),
            max_attempts: 20,
            max_age: Duration::from_secs(24 * 3600),
            ..CallbacksConfig::default()
        }
    }

    fn failed() -> Sent {
        Sent::Failed {
            status: 503,
            error: "the receiver answered 503".into(),
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_its_ceiling() {
        let config = config();
        let waits: Vec<u64> = (1..=12).map(|n| backoff(&config, n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600]);
        // Huge attempt numbers neither overflow nor exceed the ceiling.
        assert_eq!(backoff(&config, i32::MAX), Duration::from_secs(600));
        assert_eq!(backoff(&config, 0), Duration::from_secs(2));
        // 20 attempts take about 17 minutes of doubling, then 10 a piece.
        let total: u64 = (1..20).map(|n| backoff(&config, n).as_secs()).sum();
        assert_eq!(total, 1022 + 10 * 600);
    }

    #[test]
    fn a_failure_is_retried_after_the_backoff_with_its_jitter() {
        let config = config();
        let now = 1_000_000_000;
        let (settled, outcome) = settle(&config, failed(), 3, Duration::ZERO, now, 1.0);
        assert_eq!(outcome, AttemptOutcome::Retrying);
        assert_eq!(
            settled,
            Settled::Retry {
                at: now + 8_000_000,
                status: 503,
                error: "the receiver answered 503".into(),
            }
        );
        for (jitter, wait) in [
            (0.8, 6_400_000),
            (1.2, 9_600_000),
            (5.0, 9_600_000),
            (0.0, 6_400_000),
        ] {
            let (Settled::Retry { at, .. }, _) =
                settle(&config, failed(), 3, Duration::ZERO, now, jitter)
            else {
                panic!("not retried");
            };
            assert_eq!(at - now, wait, "jitter {jitter}");
        }
    }

    #[test]
    fn the_last_attempt_and_an_old_delivery_are_given_up() {
        let config = config();
        let (settled, outcome) = settle(&config, failed(), 20, Duration::ZERO, 0, 1.0);
        assert_eq!(outcome, AttemptOutcome::GivenUp);
        assert!(matches!(settled, Settled::GaveUp { status: 503, .. }));
        assert_eq!(
            settle(&config, failed(), 19, Duration::ZERO, 0, 1.0).1,
            AttemptOutcome::Retrying
        );
        // Its next attempt would fall after max_age.
        let old = Duration::from_secs(24 * 3600 - 100);
        assert_eq!(
            settle(&config, failed(), 10, old, 0, 1.0).1,
            AttemptOutcome::GivenUp
        );
        assert_eq!(
            settle(&config, failed(), 2, old, 0, 1.0).1,
            AttemptOutcome::Retrying
        );
    }

    #[test]
    fn deliveries_and_refusals_are_final() {
        let config = config();
        assert_eq!(
            settle(&config, Sent::Delivered(204), 1, Duration::ZERO, 0, 1.0),
            (
                Settled::Delivered { status: 204 },
                AttemptOutcome::Delivered
            )
        );
        let (settled, outcome) = settle(
            &config,
            Sent::Refused("destination refused".into()),
            1,
            Duration::ZERO,
            0,
            1.0,
        );
        assert_eq!(outcome, AttemptOutcome::Refused);
        assert!(matches!(settled, Settled::GaveUp { status: 0, .. }));
    }
}
