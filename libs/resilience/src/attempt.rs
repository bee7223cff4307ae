//! The attempt loop: one call made of attempts at a sequence of targets (a
//! target and its fallbacks), with retries that back off, draw on the
//! service's retry budget and never wait past the caller's deadline, and
//! circuit breakers asked before every attempt.
//!
//! The loop owns the decisions; the caller owns what an attempt is and what
//! a failure means, through [`Attempts`]:
//!
//! ```text
//! AttemptLoop::new(retries, deadline)    the call counts in the budget
//!   .targets(circuits).run(&mut caller)
//!
//! ┌▶ the target's circuit gives leave?  open ─▶ caller.refused ─▶ fall back (no budget) or stop
//! │  caller.attempt ─▶ Ok ─▶ circuit: success ─▶ the answer
//! │     │ Err ─▶ circuit: caller.circuit_failure (a failure, or nothing)
//! │     ▼ caller.classify ─▶ Verdict (retry? fall back? retry-after)
//! │  the deadline passed?                                     ─▶ stop
//! │  retry, attempts left here, the backoff ends before the
//! │  deadline (and lasts at least retry-after), budget          ─▶ retry after the backoff
//! │  else fall back, a next target, budget                      ─▶ the next target, at once
//! │  else                                                       ─▶ stop: the last failure
//! │  caller.between (e.g. a stream's reset) ─▶ caller.wait(backoff)
//! └──┘
//! ```
//!
//! Every decision is handed to [`Attempts::observe`] as an [`AttemptEvent`]
//! (retries counted, attempts logged), and the call ends with
//! [`Attempted`]: the answer or the last failure, the attempts made, and why
//! retrying stopped early ([`Attempted::summary`] words it for a status).
//!
//! A streaming caller can run an attempt that has already sent output: its
//! classifier sees the failure (and its own state) and decides whether a
//! retry is still allowed, and [`Attempts::between`] runs after each
//! decision and before the wait, where it can tell its client to discard
//! the partial answer, or end the call when the client has gone.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::circuit::{CallPermit, CircuitBreaker, CircuitOpen};
use crate::retry::{Backoff, NoRetry, Retries, RetryBudget};

/// What a caller's classifier says about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The failure's label, e.g. the `reason` of a retries counter.
    pub reason: &'static str,
    /// Another attempt at the same target may succeed.
    pub retry: bool,
    /// When no retry is made at this target, the next target may answer.
    pub fall_back: bool,
    /// How long the target asked to wait before another attempt.
    pub retry_after: Option<Duration>,
}

impl Verdict {
    /// Not worth another attempt anywhere: the failure is the answer.
    pub fn stop(reason: &'static str) -> Self {
        Self {
            reason,
            retry: false,
            fall_back: false,
            retry_after: None,
        }
    }

    /// Worth retrying at the same target.
    pub fn retry(reason: &'static str) -> Self {
        Self {
            retry: true,
            ..Self::stop(reason)
        }
    }

    /// Worth trying the next target (without retrying this one).
    pub fn fall_back(reason: &'static str) -> Self {
        Self {
            fall_back: true,
            ..Self::stop(reason)
        }
    }

    /// This verdict, also falling back (or not) once no retry is made.
    #[must_use]
    pub fn or_fall_back(self, fall_back: bool) -> Self {
        Self { fall_back, ..self }
    }

    /// This verdict, with the target's `retry-after`.
    #[must_use]
    pub fn with_retry_after(self, retry_after: Option<Duration>) -> Self {
        Self {
            retry_after,
            ..self
        }
    }
}

/// The attempt about to be made.
#[derive(Debug)]
pub struct Attempt<'a, E> {
    /// Its number in the call, from 1, across targets.
    pub number: u32,
    /// The target's index in the sequence given to the loop.
    pub target: usize,
    /// Its number at this target, from 1.
    pub at_target: u32,
    /// The failure that led to it (a retry's or a fallback's), if any.
    pub after: Option<&'a E>,
}

/// What comes after a failure, handed to [`Attempts::between`].
#[derive(Debug)]
pub struct Next<'a, E> {
    /// The failure.
    pub failure: &'a E,
    /// The target that failed (or whose circuit refused).
    pub from: usize,
    /// The target of the next attempt (`from` for a retry).
    pub target: usize,
    /// The number the next attempt will have, if its circuit lets it.
    pub attempt: u32,
    /// A retry waits this long first; `None` for a fallback, made at once.
    pub wait: Option<Duration>,
    /// Whether the failure came from an attempt; `false` when the target's
    /// circuit refused before anything was sent.
    pub attempted: bool,
}

/// A decision of the loop, as [`Attempts::observe`] sees it.
#[derive(Debug)]
pub enum AttemptEvent<'a, E> {
    /// An attempt starts (its circuit gave leave).
    Attempting {
        /// Its number in the call, from 1.
        number: u32,
        /// Its target.
        target: usize,
        /// Its number at this target, from 1.
        at_target: u32,
        /// The reason of the failure it retries, for a retry at the same
        /// target.
        retry: Option<&'static str>,
    },
    /// A failed attempt will be retried at the same target after `delay`
    /// (drawn from the budget already).
    Retrying {
        /// The target.
        target: usize,
        /// The failed attempt's number in the call.
        attempt: u32,
        /// The classifier's reason.
        reason: &'static str,
        /// The wait before the retry.
        delay: Duration,
        /// The failure.
        failure: &'a E,
    },
    /// The next target will be tried (a fallback after an attempt drew on
    /// the budget already).
    FallingBack {
        /// The target that failed or refused.
        from: usize,
        /// The next target.
        to: usize,
        /// The classifier's reason.
        reason: &'static str,
        /// Whether `from` was attempted (`false`: its circuit refused).
        attempted: bool,
        /// The failure.
        failure: &'a E,
    },
    /// A retry or fallback the failure allowed is not made: the budget is
    /// spent, or the deadline does not leave time for it.
    NotRetrying {
        /// The target that failed.
        target: usize,
        /// Why not.
        why: NoRetry,
        /// The failure.
        failure: &'a E,
    },
}

/// What a call's caller supplies to the loop: one attempt, and what its
/// failures mean. One value carries the caller's state through the call, so
/// every hook can use it (a stream's sender, its usage so far).
pub trait Attempts {
    /// An attempt's answer.
    type Output: Send;
    /// An attempt's failure.
    type Error: Send;

    /// Makes one attempt at `attempt.target`. Bounding it by the deadline
    /// is the caller's: it knows how a timeout should read.
    fn attempt(
        &mut self,
        attempt: Attempt<'_, Self::Error>,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;

    /// Whether a failure is worth another attempt, here or at the next
    /// target. Called for every failure, so the caller can also refuse a
    /// retry its own state no longer allows.
    fn classify(&self, failure: &Self::Error) -> Verdict;

    /// The failure a failed attempt counts against its target's circuit,
    /// or `None` when it says nothing about the target's health: then it
    /// counts for nothing.
    ///
    /// The rule every caller follows: only the target's failures count —
    /// no connection, a server error (5xx), the target's own time limit
    /// passing, a broken stream. The caller's are never the target's: its
    /// deadline passing first (an attempt bounded by the caller's deadline
    /// that ends there says nothing of a target that would have answered
    /// within its own limit), its cancel (a client that went away), a
    /// request the target rejects as invalid (400/404/422, too long a
    /// context), a quota the target enforces (429). Otherwise a flood of
    /// short-deadline or malformed calls from one caller opens the circuit
    /// for every other caller.
    fn circuit_failure(&self, failure: &Self::Error) -> Option<String>;

    /// The failure that stands for a refusal by `open`'s circuit, given
    /// the failure before it, if any. The loop then only falls back (when
    /// [`Attempts::classify`] allows it) or stops with it.
    fn refused(&mut self, open: CircuitOpen, previous: Option<Self::Error>) -> Self::Error;

    /// Runs after a failure once the next step is decided, before the wait:
    /// bookkeeping such as a stream's reset. An error ends the call with it.
    fn between(
        &mut self,
        next: Next<'_, Self::Error>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = next;
        std::future::ready(Ok(()))
    }

    /// Waits `delay` before a retry; an error ends the call with it (a
    /// stream whose client went away need not wait).
    fn wait(&mut self, delay: Duration) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async move {
            tokio::time::sleep(delay).await;
            Ok(())
        }
    }

    /// Sees every decision, to count and log it.
    fn observe(&mut self, event: AttemptEvent<'_, Self::Error>) {
        let _ = event;
    }
}

/// How a call ended.
#[derive(Debug)]
pub struct Attempted<T, E> {
    /// The answer, or the last failure.
    pub result: Result<T, E>,
    /// Attempts made (refusals by a circuit are not attempts).
    pub attempts: u32,
    /// The target of the last attempt or refusal.
    pub target: usize,
    /// Why retrying stopped before the attempts were used up, if it did.
    /// Once set it stays, even if a fallback was made after it.
    pub stopped: Option<NoRetry>,
}

impl<T, E> Attempted<T, E> {
    /// `after N attempts; no further retry: <why>`, for a status message;
    /// `None` after a single attempt that nothing cut short.
    pub fn summary(&self) -> Option<String> {
        if self.attempts <= 1 && self.stopped.is_none() {
            return None;
        }
        let mut summary = format!("after {} attempts", self.attempts);
        if let Some(why) = self.stopped {
            summary.push_str("; no further retry: ");
            summary.push_str(&why.to_string());
        }
        Some(summary)
    }
}

/// One call's loop: the settings, the deadline and the targets' circuits.
#[derive(Debug)]
pub struct AttemptLoop {
    max_attempts: u32,
    backoff: Backoff,
    budget: RetryBudget,
    deadline: Option<Instant>,
    /// One per target, in order; `None` for an unguarded target.
    circuits: Vec<Option<CircuitBreaker>>,
    first_permit: Option<CallPermit>,
}

/// Where a call is.
#[derive(Debug, Default)]
struct Position {
    target: usize,
    at_target: u32,
    attempts: u32,
    stopped: Option<NoRetry>,
}

impl Position {
    fn end<T, E>(self, result: Result<T, E>) -> Attempted<T, E> {
        Attempted {
            result,
            attempts: self.attempts,
            target: self.target,
            stopped: self.stopped,
        }
    }
}

/// The step after a failure.
#[derive(Debug, Clone, Copy)]
enum Step {
    Retry {
        delay: Duration,
        reason: &'static str,
    },
    FallBack,
    Stop,
}

impl AttemptLoop {
    /// The loop of one call under `retries`, ending by `deadline`; counts
    /// the call in the budget that retries draw on. Without
    /// [`AttemptLoop::target`] it has one unguarded target.
    pub fn new(retries: &Retries, deadline: Option<Instant>) -> Self {
        retries.budget().deposit();
        let config = retries.config();
        Self {
            max_attempts: config.max_attempts.max(1),
            backoff: config.backoff(),
            budget: retries.budget().clone(),
            deadline,
            circuits: Vec::new(),
            first_permit: None,
        }
    }

    /// Adds a target, guarded by `circuit` when given.
    #[must_use]
    pub fn target(mut self, circuit: Option<CircuitBreaker>) -> Self {
        self.circuits.push(circuit);
        self
    }

    /// Adds targets in fallback order.
    #[must_use]
    pub fn targets(mut self, circuits: impl IntoIterator<Item = Option<CircuitBreaker>>) -> Self {
        self.circuits.extend(circuits);
        self
    }

    /// Leave for the first attempt, taken by the caller before the loop
    /// (e.g. when admitting the call, so a refusal is answered at once).
    #[must_use]
    pub fn first_permit(mut self, permit: CallPermit) -> Self {
        self.first_permit = Some(permit);
        self
    }

    /// Runs the call to its end.
    pub async fn run<A: Attempts>(mut self, caller: &mut A) -> Attempted<A::Output, A::Error> {
        let mut at = Position::default();
        let mut given = self.first_permit.take();
        // The last failure, and the reason when the next attempt retries it.
        let mut previous: Option<(A::Error, Option<&'static str>)> = None;
        loop {
            let permit = match given
                .take()
                .map_or_else(|| self.leave(at.target), |p| Ok(Some(p)))
            {
                Ok(permit) => permit,
                Err(open) => {
                    let failure = caller.refused(open, previous.take().map(|(failure, _)| failure));
                    let verdict = caller.classify(&failure);
                    let step = self.fall_back(caller, &mut at, &failure, verdict, false);
                    if let Err(ended) = self.between(caller, &at, &failure, step, false).await {
                        return at.end(Err(ended.unwrap_or(failure)));
                    }
                    previous = Some((failure, None));
                    continue;
                }
            };
            at.attempts += 1;
            at.at_target += 1;
            caller.observe(AttemptEvent::Attempting {
                number: at.attempts,
                target: at.target,
                at_target: at.at_target,
                retry: previous.as_ref().and_then(|(_, retry)| *retry),
            });
            let attempt = Attempt {
                number: at.attempts,
                target: at.target,
                at_target: at.at_target,
                after: previous.as_ref().map(|(failure, _)| failure),
            };
            let result = caller.attempt(attempt).await;
            settle(caller, permit, &result);
            let failure = match result {
                Ok(output) => return at.end(Ok(output)),
                Err(failure) => failure,
            };
            let verdict = caller.classify(&failure);
            let step = self.decide(caller, &mut at, &failure, verdict);
            if let Err(ended) = self.between(caller, &at, &failure, step, true).await {
                return at.end(Err(ended.unwrap_or(failure)));
            }
            let retry = match step {
                Step::Retry { reason, .. } => Some(reason),
                Step::FallBack | Step::Stop => None,
            };
            previous = Some((failure, retry));
        }
    }

    /// Leave from `target`'s circuit, if it has one.
    fn leave(&self, target: usize) -> Result<Option<CallPermit>, CircuitOpen> {
        self.circuits
            .get(target)
            .and_then(Option::as_ref)
            .map(CircuitBreaker::try_acquire)
            .transpose()
    }

    fn targets_len(&self) -> usize {
        self.circuits.len().max(1)
    }

    /// What follows a failed attempt: a retry here, the next target, or
    /// the end.
    fn decide<A: Attempts>(
        &self,
        caller: &mut A,
        at: &mut Position,
        failure: &A::Error,
        verdict: Verdict,
    ) -> Step {
        // Past the deadline no attempt could finish in time, anywhere.
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            self.not_retrying(caller, at, failure, NoRetry::DeadlinePassed);
            return Step::Stop;
        }
        if verdict.retry && at.at_target < self.max_attempts {
            match self
                .backoff
                .delay(at.at_target, verdict.retry_after, self.deadline)
            {
                Ok(delay) if self.budget.withdraw() => {
                    caller.observe(AttemptEvent::Retrying {
                        target: at.target,
                        attempt: at.attempts,
                        reason: verdict.reason,
                        delay,
                        failure,
                    });
                    return Step::Retry {
                        delay,
                        reason: verdict.reason,
                    };
                }
                Ok(_) => self.not_retrying(caller, at, failure, NoRetry::Budget),
                Err(why) => self.not_retrying(caller, at, failure, why),
            }
        }
        self.fall_back(caller, at, failure, verdict, true)
    }

    /// Moves to the next target when the verdict allows it and there is
    /// one; a fallback after an attempt draws on the budget like a retry.
    fn fall_back<A: Attempts>(
        &self,
        caller: &mut A,
        at: &mut Position,
        failure: &A::Error,
        verdict: Verdict,
        attempted: bool,
    ) -> Step {
        if !verdict.fall_back || at.target + 1 >= self.targets_len() {
            return Step::Stop;
        }
        if attempted && !self.budget.withdraw() {
            self.not_retrying(caller, at, failure, NoRetry::Budget);
            return Step::Stop;
        }
        caller.observe(AttemptEvent::FallingBack {
            from: at.target,
            to: at.target + 1,
            reason: verdict.reason,
            attempted,
            failure,
        });
        at.target += 1;
        at.at_target = 0;
        Step::FallBack
    }

    fn not_retrying<A: Attempts>(
        &self,
        caller: &mut A,
        at: &mut Position,
        failure: &A::Error,
        why: NoRetry,
    ) {
        at.stopped = Some(why);
        caller.observe(AttemptEvent::NotRetrying {
            target: at.target,
            why,
            failure,
        });
    }

    /// After a failure: `Err(None)` when the call ends with it (a stop),
    /// `Err(Some(_))` when the caller's hooks end it with another failure,
    /// `Ok` when the next attempt follows.
    async fn between<A: Attempts>(
        &self,
        caller: &mut A,
        at: &Position,
        failure: &A::Error,
        step: Step,
        attempted: bool,
    ) -> Result<(), Option<A::Error>> {
        let (from, wait) = match step {
            Step::Stop => return Err(None),
            Step::Retry { delay, .. } => (at.target, Some(delay)),
            Step::FallBack => (at.target.saturating_sub(1), None),
        };
        let next = Next {
            failure,
            from,
            target: at.target,
            attempt: at.attempts + 1,
            wait,
            attempted,
        };
        caller.between(next).await.map_err(Some)?;
        if let Some(delay) = wait {
            caller.wait(delay).await.map_err(Some)?;
        }
        Ok(())
    }
}

/// Reports an attempt's outcome to the circuit that gave it leave.
fn settle<A: Attempts>(
    caller: &A,
    permit: Option<CallPermit>,
    result: &Result<A::Output, A::Error>,
) {
    let Some(permit) = permit else { return };
    match result {
        Ok(_) => permit.success(),
        Err(failure) => match caller.circuit_failure(failure) {
            Some(reason) => permit.failure(&reason),
            // Says nothing about the target's health: counts for nothing.
            None => drop(permit),
        },
    }
}

#[cfg(test)]
mod tests;
