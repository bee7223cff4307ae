//! Scheduling calls: open loop at a fixed rate, or closed loop with a fixed
//! number in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::plan::{Load, Plan};
use crate::summary::{Recorded, Summary};

/// Something to call.
pub trait Target: Send + Sync + 'static {
    /// Makes one call.
    fn call(&self) -> BoxFuture<'static, Outcome>;
}

/// Live totals, for a progress display.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls sent.
    pub sent: AtomicU64,
    /// Calls that succeeded.
    pub ok: AtomicU64,
    /// Calls that failed.
    pub failed: AtomicU64,
}

impl Counters {
    fn record(&self, result: &Result<(), String>) {
        let counter = if result.is_ok() {
            &self.ok
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One finished call: its latency from its due time, and how it went (its
/// times to the first event and token from its due time too).
type Finished = (Duration, Outcome);

/// Runs `plan` against `target`, updating `counters` as calls end.
pub async fn drive(plan: Plan, target: Arc<dyn Target>, counters: Arc<Counters>) -> Summary {
    let begun = Instant::now();
    let (finished, max_send_lag) = match plan.load {
        Load::Rate(rate) => open_loop(plan, rate, target, &counters).await,
        Load::Concurrency(workers) => closed_loop(plan, workers, target, &counters).await,
    };
    let mut recorded = Recorded::default();
    for (latency, outcome) in finished {
        recorded.add(latency, outcome);
    }
    recorded.summarise(plan, begun.elapsed(), max_send_lag)
}

/// One call due at `due`, bounded by the plan's timeout from then.
async fn timed_call(target: &dyn Target, due: Instant, timeout: Duration) -> Finished {
    let sent = Instant::now();
    let call = target.call();
    match tokio::time::timeout_at(due + timeout, call).await {
        Ok(mut outcome) => {
            let lag = sent.saturating_duration_since(due);
            outcome.first_event = outcome.first_event.map(|first| first + lag);
            outcome.tokens.first = outcome.tokens.first.map(|first| first + lag);
            (due.elapsed(), outcome)
        }
        Err(_) => (due.elapsed(), Outcome::failed("timeout", None)),
    }
}

async fn open_loop(
    plan: Plan,
    rate: f64,
    target: Arc<dyn Target>,
    counters: &Arc<Counters>,
) -> (Vec<Finished>, Duration) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(f64::MIN_POSITIVE));
    let start = Instant::now() + Duration::from_millis(10);
    let end = start + plan.duration;
    let mut calls = JoinSet::new();
    let mut finished = Vec::new();
    let mut max_lag = Duration::ZERO;
    let mut index: u32 = 0;
    loop {
        let due = start + interval * index;
        if due >= end || plan.requests.is_some_and(|limit| u64::from(index) >= limit) {
            break;
        }
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(due.elapsed());
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let (target, counters) = (Arc::clone(&target), Arc::clone(counters));
        calls.spawn(async move {
            let call = timed_call(target.as_ref(), due, plan.timeout).await;
            counters.record(&call.1.result);
            call
        });
        // Reap what has ended, so a long test does not hold every task.
        while let Some(done) = calls.try_join_next() {
            finished.extend(done.ok());
        }
        index = index.saturating_add(1);
    }
    while let Some(done) = calls.join_next().await {
        finished.extend(done.ok());
    }
    (finished, max_lag)
}

async fn closed_loop(
    plan: Plan,
    workers: usize,
    target: Arc<dyn Target>,
    counters: &Arc<Counters>,
) -> (Vec<Finished>, Duration) {
    let end = Instant::now() + plan.duration;
    let budget = Arc::new(AtomicU64::new(plan.requests.unwrap_or(u64::MAX)));
    let mut tasks = JoinSet::new();
    for _ in 0..workers.max(1) {
        let (target, counters, budget) = (
            Arc::clone(&target),
            Arc::clone(counters),
            Arc::clone(&budget),
        );
        tasks.spawn(async move {
            let mut finished = Vec::new();
            while Instant::now() < end && take_one(&budget) {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                let call = timed_call(target.as_ref(), Instant::now(), plan.timeout).await;
                counters.record(&call.1.result);
                finished.push(call);
            }
            finished
        });
    }
    let mut finished = Vec::new();
    while let Some(done) = tasks.join_next().await {
        finished.extend(done.unwrap_or_default());
    }
    (finished, Duration::ZERO)
}

/// Takes one call from the budget; false when it is spent.
fn take_one(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Tokens;

    /// A target that answers after `delay`, failing every `fail_every`th call.
    struct Sleepy {
        delay: Duration,
        calls: AtomicU64,
        fail_every: u64,
    }

    impl Target for Sleepy {
        fn call(&self) -> BoxFuture<'static, Outcome> {
            let delay = self.delay;
            let number = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            let fail = self.fail_every != 0 && number.is_multiple_of(self.fail_every);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if fail {
                    Outcome::failed("UNAVAILABLE", Some(delay / 2))
                } else {
                    Outcome::ok(Some(delay / 2)).with_tokens(Tokens {
                        first: Some(delay / 4),
                        gaps: vec![delay / 8; 3],
                        step_to_first: Vec::new(),
                    })
                }
            })
        }
    }

    fn sleepy(delay_ms: u64, fail_every: u64) -> Arc<dyn Target> {
        Arc::new(Sleepy {
            delay: Duration::from_millis(delay_ms),
            calls: AtomicU64::new(0),
            fail_every,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_rate_sends_on_schedule_and_counts_errors_by_class() {
        let plan = Plan {
            load: Load::Rate(100.0),
            duration: Duration::from_secs(1),
            requests: None,
            timeout: Duration::from_secs(5),
        };
        let counters = Arc::new(Counters::default());
        let summary = drive(plan, sleepy(20, 10), Arc::clone(&counters)).await;
        assert_eq!(summary.sent, 100);
        assert_eq!(summary.ok, 90);
        assert_eq!(summary.errors.get("UNAVAILABLE"), Some(&10));
        assert_eq!(counters.ok.load(Ordering::Relaxed), 90);
        let latency = summary.latency_ms.unwrap();
        assert!((20.0..21.0).contains(&latency.p50), "{latency:?}");
        let first = summary.first_event_ms.unwrap();
        assert!((10.0..11.0).contains(&first.p50), "{first:?}");
        let first_token = summary.first_token_ms.unwrap();
        assert!((5.0..6.0).contains(&first_token.p50), "{first_token:?}");
        let gaps = summary.token_gap_ms.unwrap();
        assert_eq!((gaps.count, gaps.p50), (270, 2.5), "{gaps:?}");
        assert_eq!(summary.step_first_token_ms, None);
    }

    /// A call stuck behind a stall counts from when it was due: the
    /// latencies of an open loop do not hide a slow server.
    #[tokio::test(start_paused = true)]
    async fn latencies_count_from_the_scheduled_time() {
        struct Stalling(AtomicU64);
        impl Target for Stalling {
            fn call(&self) -> BoxFuture<'static, Outcome> {
                let first = self.0.fetch_add(1, Ordering::Relaxed) == 0;
                Box::pin(async move {
                    if first {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Outcome::ok(None)
                })
            }
        }
        let plan = Plan {
            load: Load::Rate(10.0),
            duration: Duration::from_secs(1),
            requests: None,
            timeout: Duration::from_secs(5),
        };
        let summary = drive(plan, Arc::new(Stalling(AtomicU64::new(0))), Arc::default()).await;
        let latency = summary.latency_ms.unwrap();
        assert!(latency.max >= 500.0, "{latency:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_concurrency_stops_at_the_request_limit_and_times_out_slow_calls() {
        let plan = Plan {
            load: Load::Concurrency(4),
            duration: Duration::from_secs(60),
            requests: Some(10),
            timeout: Duration::from_millis(5),
        };
        let summary = drive(plan, sleepy(20, 0), Arc::default()).await;
        assert_eq!(summary.sent, 10);
        assert_eq!(summary.ok, 0);
        assert_eq!(summary.errors.get("timeout"), Some(&10));
        assert!(summary.latency_ms.is_none());
    }
}
