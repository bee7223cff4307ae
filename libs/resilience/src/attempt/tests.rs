//! The loop with a scripted caller, under tokio's paused clock: waits take
//! no real time and every instant is exact.

use std::collections::VecDeque;

use super::*;
use crate::circuit::{CircuitConfig, CircuitState};
use crate::retry::RetryConfig;

/// A failure: what the script's classifier reads.
#[derive(Debug, Clone, PartialEq)]
enum Fail {
    /// Retryable, and falls back once retries end.
    Transient,
    /// Retryable after the server's wait.
    Busy(Duration),
    /// Falls back without retrying.
    Unsupported,
    /// The caller's own mistake.
    Bad,
    /// A circuit refused.
    Open(String),
    /// The caller's hook ended the call.
    Gone,
}

/// Answers from a script, one per attempt, recording what the loop did.
struct Script {
    answers: VecDeque<Result<&'static str, Fail>>,
    /// How long each attempt takes.
    takes: Duration,
    started: Instant,
    /// (target, at_target, number, after, ms since start) of each attempt.
    attempts: Vec<(usize, u32, u32, Option<Fail>, u128)>,
    events: Vec<String>,
    /// `between` fails the call at this attempt number.
    gone_before: Option<u32>,
}

impl Script {
    fn new(answers: impl IntoIterator<Item = Result<&'static str, Fail>>) -> Self {
        Self {
            answers: answers.into_iter().collect(),
            takes: Duration::ZERO,
            started: Instant::now(),
            attempts: Vec::new(),
            events: Vec::new(),
            gone_before: None,
        }
    }

    fn targets(&self) -> Vec<usize> {
        self.attempts.iter().map(|attempt| attempt.0).collect()
    }

    fn times_ms(&self) -> Vec<u128> {
        self.attempts.iter().map(|attempt| attempt.4).collect()
    }
}

impl Attempts for Script {
    type Output = &'static str;
    type Error = Fail;

    async fn attempt(&mut self, attempt: Attempt<'_, Fail>) -> Result<&'static str, Fail> {
        self.attempts.push((
            attempt.target,
            attempt.at_target,
            attempt.number,
            attempt.after.cloned(),
            self.started.elapsed().as_millis(),
        ));
        tokio::time::sleep(self.takes).await;
        self.answers.pop_front().unwrap_or(Err(Fail::Bad))
    }

    fn classify(&self, failure: &Fail) -> Verdict {
        match failure {
            Fail::Transient => Verdict::retry("transient").or_fall_back(true),
            Fail::Busy(wait) => Verdict::retry("busy").with_retry_after(Some(*wait)),
            Fail::Unsupported => Verdict::fall_back("unsupported"),
            Fail::Open(_) => Verdict::fall_back("circuit_open"),
            Fail::Bad | Fail::Gone => Verdict::stop("bad"),
        }
    }

    fn circuit_failure(&self, failure: &Fail) -> Option<String> {
        matches!(failure, Fail::Transient).then(|| "transient".to_owned())
    }

    fn refused(&mut self, open: CircuitOpen, _previous: Option<Fail>) -> Fail {
        Fail::Open(open.target)
    }

    async fn between(&mut self, next: Next<'_, Fail>) -> Result<(), Fail> {
        self.events.push(format!(
            "between {}->{} next={} wait={:?} attempted={}",
            next.from, next.target, next.attempt, next.wait, next.attempted
        ));
        if self.gone_before == Some(next.attempt) {
            return Err(Fail::Gone);
        }
        Ok(())
    }

    fn observe(&mut self, event: AttemptEvent<'_, Fail>) {
        self.events.push(match event {
            AttemptEvent::Attempting {
                number,
                target,
                at_target,
                retry,
            } => format!("attempt {number} at {target}#{at_target} retry={retry:?}"),
            AttemptEvent::Retrying {
                target,
                attempt,
                reason,
                delay,
                ..
            } => format!("retry {target} after {attempt} ({reason}) in {delay:?}"),
            AttemptEvent::FallingBack {
                from,
                to,
                reason,
                attempted,
                ..
            } => format!("fall back {from}->{to} ({reason}) attempted={attempted}"),
            AttemptEvent::NotRetrying { target, why, .. } => {
                format!("not retrying at {target}: {why}")
            }
        });
    }
}

/// Settings with backoff bounds of 100ms, 200ms, 400ms… (jittered within
/// them) and budget to spare.
fn retries(max_attempts: u32) -> Retries {
    Retries::new(&RetryConfig {
        max_attempts,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        budget_ratio: 1.0,
        budget_min_per_second: 100,
        ..RetryConfig::default()
    })
}

/// Settings whose backoff is at most 1ms, so that a `retry-after` sets
/// every wait exactly.
fn floored(max_attempts: u32) -> Retries {
    Retries::new(&RetryConfig {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        budget_ratio: 1.0,
        budget_min_per_second: 100,
        ..RetryConfig::default()
    })
}

fn spent_budget(max_attempts: u32) -> Retries {
    Retries::new(&RetryConfig {
        max_attempts,
        budget_ratio: 0.0,
        budget_min_per_second: 0,
        ..RetryConfig::default()
    })
}

fn breaker(name: &str) -> CircuitBreaker {
    CircuitBreaker::new(
        name,
        CircuitConfig {
            consecutive_failures: 1,
            failure_ratio: 0.0,
            open_for: Duration::from_secs(10),
            ..CircuitConfig::default()
        },
    )
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_within_the_backoff_bounds() {
    let mut script = Script::new([Err(Fail::Transient), Err(Fail::Transient), Ok("done")]);
    let ended = AttemptLoop::new(&retries(5), None).run(&mut script).await;
    assert_eq!(ended.result, Ok("done"));
    assert_eq!(ended.attempts, 3);
    assert_eq!(ended.stopped, None);
    assert_eq!(ended.summary().as_deref(), Some("after 3 attempts"));
    let times = script.times_ms();
    assert_eq!(times.first(), Some(&0));
    // Full jitter: each wait within its doubling bound.
    assert!(times[1] <= 100, "{times:?}");
    assert!(times[2] - times[1] <= 200, "{times:?}");
    // Each retry quotes the failure it follows.
    assert_eq!(script.attempts[1].3, Some(Fail::Transient));
    assert_eq!(script.attempts[0].3, None);
}

#[tokio::test(start_paused = true)]
async fn attempts_per_target_are_capped() {
    let mut script = Script::new(std::iter::repeat_n(Err(Fail::Transient), 5));
    let ended = AttemptLoop::new(&retries(3), None).run(&mut script).await;
    assert_eq!(ended.result, Err(Fail::Transient));
    assert_eq!(ended.attempts, 3);
    // Using every attempt is not an early stop.
    assert_eq!(ended.stopped, None);
    assert_eq!(ended.summary().as_deref(), Some("after 3 attempts"));
}

#[tokio::test(start_paused = true)]
async fn no_retry_waits_past_the_deadline() {
    let wait = Duration::from_millis(300);
    let mut script = Script::new(std::iter::repeat_n(Err(Fail::Busy(wait)), 10));
    let deadline = Instant::now() + Duration::from_secs(1);
    let ended = AttemptLoop::new(&floored(10), Some(deadline))
        .run(&mut script)
        .await;
    // At 0, 300, 600 and 900ms; a fifth would start at 1.2s.
    assert_eq!(script.times_ms(), [0, 300, 600, 900]);
    assert_eq!(ended.stopped, Some(NoRetry::Deadline));
    assert_eq!(
        ended.summary().as_deref(),
        Some("after 4 attempts; no further retry: no time left before the deadline")
    );
    assert!(Instant::now() < deadline);
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_stops_retries_and_fallbacks() {
    let mut script = Script::new([Err(Fail::Transient), Ok("late")]);
    script.takes = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(1);
    let ended = AttemptLoop::new(&retries(3), Some(deadline))
        .targets([None, None])
        .run(&mut script)
        .await;
    assert_eq!(ended.result, Err(Fail::Transient));
    assert_eq!(ended.attempts, 1);
    assert_eq!(ended.stopped, Some(NoRetry::DeadlinePassed));
    assert_eq!(
        ended.summary().as_deref(),
        Some("after 1 attempts; no further retry: the caller's deadline passed")
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_stops_retries_and_fallbacks_after_an_attempt() {
    let mut script = Script::new([Err(Fail::Transient), Ok("never")]);
    let ended = AttemptLoop::new(&spent_budget(3), None)
        .targets([None, None])
        .run(&mut script)
        .await;
    assert_eq!(ended.result, Err(Fail::Transient));
    assert_eq!(ended.attempts, 1);
    assert_eq!(ended.stopped, Some(NoRetry::Budget));
    assert_eq!(
        ended.summary().as_deref(),
        Some("after 1 attempts; no further retry: the retry budget is spent")
    );
    assert_eq!(
        script.events,
        [
            "attempt 1 at 0#1 retry=None",
            // The retry, then the fallback, each refused by the budget.
            "not retrying at 0: the retry budget is spent",
            "not retrying at 0: the retry budget is spent",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_shared_by_the_calls() {
    // A retry per call, and no reserve.
    let retries = Retries::new(&RetryConfig {
        max_attempts: 5,
        budget_ratio: 1.0,
        budget_min_per_second: 0,
        ..RetryConfig::default()
    });
    // Two calls deposit; the first may spend both retries.
    let first = AttemptLoop::new(&retries, None);
    let second = AttemptLoop::new(&retries, None);
    let mut script = Script::new(std::iter::repeat_n(Err(Fail::Transient), 4));
    let ended = first.run(&mut script).await;
    assert_eq!(ended.attempts, 3);
    assert_eq!(ended.stopped, Some(NoRetry::Budget));
    let mut script = Script::new([Err(Fail::Transient), Ok("x")]);
    let ended = second.run(&mut script).await;
    assert_eq!(ended.attempts, 1);
    assert_eq!(ended.stopped, Some(NoRetry::Budget));
}

#[tokio::test(start_paused = true)]
async fn retry_after_floors_the_wait_and_a_long_one_stops() {
    let mut script = Script::new([Err(Fail::Busy(Duration::from_secs(5))), Ok("done")]);
    let ended = AttemptLoop::new(&floored(3), None).run(&mut script).await;
    assert_eq!(ended.result, Ok("done"));
    assert_eq!(script.times_ms(), [0, 5000]);

    // Longer than `max_retry_after` (10s): answered at once.
    let mut script = Script::new([Err(Fail::Busy(Duration::from_secs(60))), Ok("x")]);
    let ended = AttemptLoop::new(&retries(3), None).run(&mut script).await;
    assert_eq!(ended.result, Err(Fail::Busy(Duration::from_secs(60))));
    assert_eq!(
        ended.stopped,
        Some(NoRetry::RetryAfterTooLong(Duration::from_secs(60)))
    );
    assert_eq!(script.times_ms(), [0]);
}

#[tokio::test(start_paused = true)]
async fn targets_are_tried_in_order_after_their_retries() {
    let mut script = Script::new([
        Err(Fail::Transient),
        Err(Fail::Transient),
        Err(Fail::Unsupported),
        Ok("third"),
    ]);
    let ended = AttemptLoop::new(&retries(2), None)
        .targets([None, None, None])
        .run(&mut script)
        .await;
    assert_eq!(ended.result, Ok("third"));
    assert_eq!(ended.target, 2);
    assert_eq!(ended.attempts, 4);
    assert_eq!(script.targets(), [0, 0, 1, 2]);
    assert_eq!(
        script.attempts.iter().map(|a| a.1).collect::<Vec<_>>(),
        [1, 2, 1, 1]
    );
    // A fallback is made at once.
    let times = script.times_ms();
    assert_eq!(times[2], times[1]);
    assert_eq!(times[3], times[2]);
}

#[tokio::test(start_paused = true)]
async fn the_last_target_has_nowhere_to_fall_back() {
    let mut script = Script::new([Err(Fail::Unsupported), Err(Fail::Unsupported)]);
    let ended = AttemptLoop::new(&retries(3), None)
        .targets([None, None])
        .run(&mut script)
        .await;
    assert_eq!(ended.result, Err(Fail::Unsupported));
    assert_eq!(ended.attempts, 2);
    assert_eq!(ended.target, 1);
    assert_eq!(ended.stopped, None);
}

#[tokio::test(start_paused = true)]
async fn a_failure_classified_as_final_is_the_answer() {
    let mut script = Script::new([Err(Fail::Bad), Ok("never")]);
    let ended = AttemptLoop::new(&retries(5), None)
        .targets([None, None])
        .run(&mut script)
        .await;
    assert_eq!(ended.result, Err(Fail::Bad));
    assert_eq!(ended.attempts, 1);
    assert_eq!(ended.summary(), None);
    assert_eq!(script.events, ["attempt 1 at 0#1 retry=None"]);
}

#[tokio::test(start_paused = true)]
async fn the_observer_sees_every_decision_in_order() {
    let mut script = Script::new([
        Err(Fail::Busy(Duration::from_millis(500))),
        Err(Fail::Unsupported),
        Ok("second"),
    ]);
    AttemptLoop::new(&retries(3), None)
        .targets([None, None])
        .run(&mut script)
        .await
        .result
        .unwrap();
    assert_eq!(
        script.events,
        [
            "attempt 1 at 0#1 retry=None",
            "retry 0 after 1 (busy) in 500ms",
            "between 0->0 next=2 wait=Some(500ms) attempted=true",
            "attempt 2 at 0#2 retry=Some(\"busy\")",
            "fall back 0->1 (unsupported) attempted=true",
            "between 0->1 next=3 wait=None attempted=true",
            "attempt 3 at 1#1 retry=None",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_caller_can_end_the_call_between_attempts() {
    let mut script = Script::new([Err(Fail::Transient), Ok("never")]);
    script.gone_before = Some(2);
    let ended = AttemptLoop::new(&retries(3), None).run(&mut script).await;
    assert_eq!(ended.result, Err(Fail::Gone));
    assert_eq!(ended.attempts, 1);
    // It ended before the wait.
    assert_eq!(Instant::now(), script.started);
}

#[tokio::test(start_paused = true)]
async fn circuits_are_asked_before_each_attempt_and_told_the_outcome() {
    let first = breaker("first");
    let second = breaker("second");
    // A failure that counts opens the first circuit (one is enough here).
    let mut script = Script::new([Err(Fail::Transient), Ok("second")]);
    let ended = AttemptLoop::new(&retries(3), None)
        .targets([Some(first.clone()), Some(second.clone())])
        .run(&mut script)
        .await;
    assert_eq!(ended.result, Ok("second"));
    assert_eq!(first.state(), CircuitState::Open);
    // The retry found the first circuit open and fell back, without
    // drawing on the budget for the refusal.
    assert_eq!(script.targets(), [0, 1]);
    assert!(
        script
            .events
            .contains(&"fall back 0->1 (circuit_open) attempted=false".to_owned()),
        "{:?}",
        script.events
    );
    assert_eq!(second.state(), CircuitState::Closed);

    // Both open: refused without an attempt, the refusal is the answer.
    second.try_acquire().unwrap().failure("down");
    let mut script = Script::new([Ok("never")]);
    let ended = AttemptLoop::new(&retries(3), None)
        .targets([Some(first), Some(second)])
        .run(&mut script)
        .await;
    assert_eq!(ended.result, Err(Fail::Open("second".into())));
    assert_eq!(ended.attempts, 0);
    assert_eq!(ended.target, 1);
}

#[tokio::test(start_paused = true)]
async fn a_given_permit_serves_the_first_attempt() {
    let circuit = breaker("tool");
    let permit = circuit.try_acquire().unwrap();
    // Opened meanwhile by another call: the first attempt has its leave.
    circuit.try_acquire().unwrap().failure("other call");
    let mut script = Script::new([Err(Fail::Bad)]);
    let ended = AttemptLoop::new(&retries(3), None)
        .target(Some(circuit.clone()))
        .first_permit(permit)
        .run(&mut script)
        .await;
    assert_eq!(ended.result, Err(Fail::Bad));
    assert_eq!(ended.attempts, 1);
    // A failure that says nothing about the target leaves it as it was.
    assert_eq!(circuit.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_wait_is_the_callers_to_cut_short() {
    struct Impatient(Script);
    impl Attempts for Impatient {
        type Output = &'static str;
        type Error = Fail;
        fn attempt(
            &mut self,
            attempt: Attempt<'_, Fail>,
        ) -> impl Future<Output = Result<&'static str, Fail>> + Send {
            self.0.attempt(attempt)
        }
        fn classify(&self, failure: &Fail) -> Verdict {
            self.0.classify(failure)
        }
        fn circuit_failure(&self, failure: &Fail) -> Option<String> {
            self.0.circuit_failure(failure)
        }
        fn refused(&mut self, open: CircuitOpen, previous: Option<Fail>) -> Fail {
            self.0.refused(open, previous)
        }
        async fn wait(&mut self, _delay: Duration) -> Result<(), Fail> {
            Err(Fail::Gone)
        }
    }
    let mut caller = Impatient(Script::new([Err(Fail::Busy(Duration::from_secs(1)))]));
    let ended = AttemptLoop::new(&retries(3), None).run(&mut caller).await;
    assert_eq!(ended.result, Err(Fail::Gone));
    assert_eq!(Instant::now(), caller.0.started);
}
