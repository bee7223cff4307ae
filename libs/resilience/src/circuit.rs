//! Circuit breakers: stop calling a target that keeps failing, and probe it
//! again after a cool-down.
//!
//! ```text
//!            N consecutive failures, or failure ratio ≥ R
//!            over the window with at least M calls
//!   CLOSED ──────────────────────────────────────────────▶ OPEN
//!     ▲                                                     │ open_for passes
//!     │ every probe succeeds       a probe fails            ▼
//!     └────────────────────── HALF_OPEN ──────────────▶ OPEN (again)
//! ```
//!
//! A caller asks [`CircuitBreaker::try_acquire`] before each call: in OPEN
//! it is refused at once ([`CircuitOpen`], with the time left), in HALF_OPEN
//! only `half_open_probes` calls at a time get through. The others are
//! refused at once too, never queued (a queue would hold callers for as long
//! as a slow probe takes), with the time until a probe place can free up at
//! the latest: a probe out for `probe_timeout` is presumed lost and its
//! place is given to the next caller, so a refusal never says "now" and a
//! probe that hangs cannot keep the circuit half-open for ever. The [`CallPermit`]
//! it gets says how the call ended ([`CallPermit::success`],
//! [`CallPermit::failure`]); a permit dropped without either (the caller went
//! away, or the error says nothing about the target's health, like a bad
//! request) counts for nothing. Every state change is handed to the
//! breaker's observer ([`CircuitBreaker::on_transition`]): services turn
//! them into CIRCUIT_OPENED / CIRCUIT_CLOSED audit events and a gauge.
//!
//! The attempt loop ([`crate::attempt`]) asks a target's breaker before each
//! attempt and reports each attempt's outcome to it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How a circuit breaker decides to open, and how it probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    /// Open after this many failures in a row; 0 = never on a streak.
    pub consecutive_failures: u32,
    /// Open when the share of failed calls over `window` reaches this (0 to
    /// 1); 0 = never on a ratio.
    pub failure_ratio: f64,
    /// The sliding window the ratio is computed over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Fewest calls in the window before the ratio counts, so two failures
    /// out of three calls do not open a circuit.
    pub minimum_calls: u32,
    /// How long an open circuit refuses calls before probing.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Calls let through at once while half-open; that many successes close
    /// the circuit, one failure opens it again.
    pub half_open_probes: u32,
    /// How long a half-open probe holds its place: after it the probe is
    /// presumed lost and another caller may probe. Callers refused while
    /// the probes are out are told to retry when the oldest probe's place
    /// frees up at the latest.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: Duration::from_secs(30),
            minimum_calls: 20,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
            probe_timeout: Duration::from_secs(30),
        }
    }
}

impl CircuitConfig {
    /// Checks the settings; the error names the field (relative to the
    /// section) and says what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.failure_ratio) {
            return Err((
                "failure_ratio",
                format!("must be between 0 and 1, not {}", self.failure_ratio),
            ));
        }
        if self.failure_ratio > 0.0 && self.window.is_zero() {
            return Err((
                "window",
                "must be positive when failure_ratio is set".into(),
            ));
        }
        if self.open_for.is_zero() {
            return Err(("open_for", "must be positive".into()));
        }
        if self.half_open_probes == 0 {
            return Err(("half_open_probes", "must be at least 1".into()));
        }
        if self.probe_timeout.is_zero() {
            return Err(("probe_timeout", "must be positive".into()));
        }
        Ok(())
    }
}

/// A circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// A few probe calls go through.
    HalfOpen,
}

impl CircuitState {
    /// `CLOSED`, `OPEN`, `HALF_OPEN`: the names audit events use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "CLOSED",
            Self::Open => "OPEN",
            Self::HalfOpen => "HALF_OPEN",
        }
    }

    /// 0 closed, 1 open, 2 half-open: the value of a state gauge.
    pub fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change, as the observer gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The guarded target, e.g. `openai/gpt-4o` or `tool:web_fetch`.
    pub target: String,
    /// State before.
    pub from: CircuitState,
    /// State after.
    pub to: CircuitState,
    /// Failures in a row at the change.
    pub consecutive_failures: u32,
    /// Failure share over the window at the change.
    pub failure_ratio: f64,
    /// How long the circuit stays open (for changes to OPEN).
    pub open_for: Duration,
    /// The error that caused the change to OPEN, if one did.
    pub last_error: String,
}

/// A call refused because the circuit is open (or half-open with every
/// probe place taken).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct CircuitOpen {
    /// The guarded target.
    pub target: String,
    /// Time until the circuit lets a probe through: never zero, so a
    /// caller that waits it does not come straight back.
    pub retry_in: Duration,
    /// Whether the circuit is half-open with its probes out (rather than
    /// open and cooling down).
    pub probing: bool,
}

impl CircuitOpen {
    fn describe(&self) -> String {
        // Whole milliseconds: the rest is noise to a person.
        let millis = u64::try_from(self.retry_in.as_millis()).unwrap_or(u64::MAX);
        let retry_in =
            humantime_serde::re::humantime::format_duration(Duration::from_millis(millis.max(1)));
        if self.probing {
            format!(
                "the circuit of {} is half-open after repeated failures and its probe calls are out; retry in {retry_in}",
                self.target
            )
        } else {
            format!(
                "the circuit of {} is open after repeated failures; it is probed again in {retry_in}",
                self.target
            )
        }
    }
}

/// The shortest retry delay a refusal gives, so it never reads as "now".
const MIN_RETRY_IN: Duration = Duration::from_millis(1);

/// Most outcomes a window keeps: under heavy traffic the ratio is over the
/// latest calls rather than the whole window, which bounds memory.
const MAX_WINDOW_CALLS: usize = 4096;

type Observer = Arc<dyn Fn(&Transition) + Send + Sync>;

/// A circuit breaker guarding one target. Cheap to clone (shared state).
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    target: String,
    config: CircuitConfig,
    state: Mutex<Inner>,
    observer: Mutex<Option<Observer>>,
}

struct Inner {
    state: CircuitState,
    consecutive_failures: u32,
    /// Outcomes in the window, oldest first: (when, failed).
    window: VecDeque<(Instant, bool)>,
    failures_in_window: u32,
    /// When an open circuit starts probing.
    open_until: Instant,
    /// Probes in flight while half-open (id, when admitted), at most
    /// `half_open_probes`; a probe out for `probe_timeout` leaves it.
    probes: Vec<(u64, Instant)>,
    /// The id of the next probe.
    next_probe: u64,
    /// The first probe id of the current half-open spell: outcomes of
    /// probes from an earlier spell count as plain calls.
    spell_start: u64,
    /// Successful probes so far, while half-open.
    probe_successes: u32,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("target", &self.shared.target)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A closed breaker for `target`.
    pub fn new(target: impl Into<String>, config: CircuitConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                target: target.into(),
                config,
                state: Mutex::new(Inner {
                    state: CircuitState::Closed,
                    consecutive_failures: 0,
                    window: VecDeque::new(),
                    failures_in_window: 0,
                    open_until: Instant::now(),
                    probes: Vec::new(),
                    next_probe: 0,
                    spell_start: 0,
                    probe_successes: 0,
                }),
                observer: Mutex::new(None),
            }),
        }
    }

    /// Calls `observer` on every state change (after the change, outside
    /// the breaker's lock). Replaces an earlier observer.
    pub fn on_transition(&self, observer: impl Fn(&Transition) + Send + Sync + 'static) {
        *lock(&self.shared.observer) = Some(Arc::new(observer));
    }

    /// The guarded target.
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// The settings.
    pub fn config(&self) -> &CircuitConfig {
        &self.shared.config
    }

    /// The state now (an open circuit whose cool-down ended reads as
    /// half-open, as the next call would find it).
    pub fn state(&self) -> CircuitState {
        let inner = lock(&self.shared.state);
        if inner.state == CircuitState::Open && Instant::now() >= inner.open_until {
            CircuitState::HalfOpen
        } else {
            inner.state
        }
    }

    /// Asks to make a call: a permit to report its outcome with, or the
    /// refusal of an open circuit (also when half-open with every probe
    /// place taken).
    pub fn try_acquire(&self) -> Result<CallPermit, CircuitOpen> {
        let now = Instant::now();
        let mut transition = None;
        let result = {
            let mut inner = lock(&self.shared.state);
            if inner.state == CircuitState::Open && now >= inner.open_until {
                inner.state = CircuitState::HalfOpen;
                inner.probes.clear();
                inner.spell_start = inner.next_probe;
                inner.probe_successes = 0;
                transition =
                    Some(self.transition(&inner, CircuitState::Open, CircuitState::HalfOpen, ""));
            }
            match inner.state {
                CircuitState::Closed => Ok(None),
                CircuitState::HalfOpen => self.probe(&mut inner, now),
                CircuitState::Open => Err(CircuitOpen {
                    target: self.shared.target.clone(),
                    retry_in: inner
                        .open_until
                        .saturating_duration_since(now)
                        .max(MIN_RETRY_IN),
                    probing: false,
                }),
            }
        };
        self.notify(transition);
        result.map(|probe| CallPermit {
            breaker: Some(self.clone()),
            probe,
        })
    }

    /// A probe place while half-open, or the refusal saying when one frees
    /// up at the latest (the oldest probe's `probe_timeout` ends).
    fn probe(&self, inner: &mut Inner, now: Instant) -> Result<Option<u64>, CircuitOpen> {
        let config = &self.shared.config;
        // Probes out for longer than probe_timeout are presumed lost.
        inner.probes.retain(|&(_, admitted)| {
            now.saturating_duration_since(admitted) < config.probe_timeout
        });
        if u32::try_from(inner.probes.len()).unwrap_or(u32::MAX) < config.half_open_probes {
            let id = inner.next_probe;
            inner.next_probe = inner.next_probe.wrapping_add(1);
            inner.probes.push((id, now));
            return Ok(Some(id));
        }
        let oldest = inner
            .probes
            .iter()
            .map(|&(_, admitted)| admitted)
            .min()
            .unwrap_or(now);
        Err(CircuitOpen {
            target: self.shared.target.clone(),
            retry_in: (oldest + config.probe_timeout)
                .saturating_duration_since(now)
                .max(MIN_RETRY_IN),
            probing: true,
        })
    }

    fn record(&self, probe: Option<u64>, failure: Option<&str>) {
        let now = Instant::now();
        let config = &self.shared.config;
        let mut transition = None;
        {
            let mut inner = lock(&self.shared.state);
            // The window, pruned to its length.
            if config.failure_ratio > 0.0 {
                inner.window.push_back((now, failure.is_some()));
                if failure.is_some() {
                    inner.failures_in_window += 1;
                }
                while let Some(&(at, failed)) = inner.window.front() {
                    let recent = now.saturating_duration_since(at) <= config.window;
                    if recent && inner.window.len() <= MAX_WINDOW_CALLS {
                        break;
                    }
                    inner.window.pop_front();
                    if failed {
                        inner.failures_in_window -= 1;
                    }
                }
            }
            if failure.is_some() {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
            } else {
                inner.consecutive_failures = 0;
            }
            // A probe of this half-open spell (one presumed lost still
            // counts: its answer speaks about the target all the same).
            let probe = probe.filter(|&id| id >= inner.spell_start);
            match (inner.state, failure) {
                (CircuitState::HalfOpen, _) if probe.is_some() => {
                    inner.probes.retain(|&(id, _)| Some(id) != probe);
                    if let Some(error) = failure {
                        transition =
                            Some(self.open(&mut inner, now, CircuitState::HalfOpen, error));
                    } else {
                        inner.probe_successes += 1;
                        if inner.probe_successes >= config.half_open_probes {
                            inner.state = CircuitState::Closed;
                            inner.window.clear();
                            inner.failures_in_window = 0;
                            transition = Some(self.transition(
                                &inner,
                                CircuitState::HalfOpen,
                                CircuitState::Closed,
                                "",
                            ));
                        }
                    }
                }
                (CircuitState::Closed, Some(error)) if self.should_open(&inner) => {
                    transition = Some(self.open(&mut inner, now, CircuitState::Closed, error));
                }
                // Calls that started before the circuit opened, and
                // successes while closed, change nothing more.
                _ => {}
            }
        }
        self.notify(transition);
    }

    fn should_open(&self, inner: &Inner) -> bool {
        let config = &self.shared.config;
        let streak = config.consecutive_failures > 0
            && inner.consecutive_failures >= config.consecutive_failures;
        let calls = u32::try_from(inner.window.len()).unwrap_or(u32::MAX);
        let ratio = config.failure_ratio > 0.0
            && calls >= config.minimum_calls.max(1)
            && ratio(inner) >= config.failure_ratio;
        streak || ratio
    }

    fn open(&self, inner: &mut Inner, now: Instant, from: CircuitState, error: &str) -> Transition {
        inner.state = CircuitState::Open;
        inner.open_until = now + self.shared.config.open_for;
        inner.probes.clear();
        inner.probe_successes = 0;
        self.transition(inner, from, CircuitState::Open, error)
    }

    fn release_probe(&self, probe: u64) {
        let mut inner = lock(&self.shared.state);
        if inner.state == CircuitState::HalfOpen {
            inner.probes.retain(|&(id, _)| id != probe);
        }
    }

    fn transition(
        &self,
        inner: &Inner,
        from: CircuitState,
        to: CircuitState,
        error: &str,
    ) -> Transition {
        Transition {
            target: self.shared.target.clone(),
            from,
            to,
            consecutive_failures: inner.consecutive_failures,
            failure_ratio: ratio(inner),
            open_for: self.shared.config.open_for,
            last_error: error.to_owned(),
        }
    }

    fn notify(&self, transition: Option<Transition>) {
        if let Some(transition) = transition {
            let observer = lock(&self.shared.observer).clone();
            if let Some(observer) = observer {
                observer(&transition);
            }
        }
    }
}

fn ratio(inner: &Inner) -> f64 {
    if inner.window.is_empty() {
        0.0
    } else {
        f64::from(inner.failures_in_window) / inner.window.len() as f64
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Leave to make one call; report how it ended.
#[must_use = "report the call's outcome with success() or failure()"]
pub struct CallPermit {
    breaker: Option<CircuitBreaker>,
    /// The probe's id, for a half-open probe.
    probe: Option<u64>,
}

impl fmt::Debug for CallPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallPermit")
            .field("probe", &self.probe.is_some())
            .finish_non_exhaustive()
    }
}

impl CallPermit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The call succeeded.
    pub fn success(mut self) {
        if let Some(breaker) = self.breaker.take() {
            breaker.record(self.probe, None);
        }
    }

    /// The call failed in a way that speaks about the target's health
    /// (connection refused, 5xx, timeout, a broken stream).
    pub fn failure(mut self, error: &str) {
        if let Some(breaker) = self.breaker.take() {
            breaker.record(self.probe, Some(error));
        }
    }
}

impl Drop for CallPermit {
    /// Neither outcome was reported: the call counts for nothing, and a
    /// probe's place is freed.
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take()
            && let Some(probe) = self.probe
        {
            breaker.release_probe(probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn breaker(config: CircuitConfig) -> (CircuitBreaker, Arc<Mutex<Vec<Transition>>>) {
        let breaker = CircuitBreaker::new("openai/gpt-4o", config);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        breaker.on_transition(move |transition| sink.lock().unwrap().push(transition.clone()));
        (breaker, seen)
    }

    fn streak_only(n: u32) -> CircuitConfig {
        CircuitConfig {
            consecutive_failures: n,
            failure_ratio: 0.0,
            open_for: Duration::from_secs(10),
            ..CircuitConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_a_streak_fails_fast_probes_and_closes() {
        let (breaker, seen) = breaker(streak_only(3));
        for _ in 0..2 {
            breaker.try_acquire().unwrap().failure("HTTP 500");
        }
        // A success breaks the streak.
        breaker.try_acquire().unwrap().success();
        for _ in 0..3 {
            breaker.try_acquire().unwrap().failure("HTTP 503");
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        let refused = breaker.try_acquire().unwrap_err();
        assert_eq!(refused.retry_in, Duration::from_secs(10));
        assert!(refused.to_string().contains("openai/gpt-4o"));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        let probe = breaker.try_acquire().unwrap();
        assert!(probe.is_probe());
        // Only one probe at a time.
        assert!(breaker.try_acquire().is_err());
        probe.success();
        assert_eq!(breaker.state(), CircuitState::Closed);

        let seen = seen.lock().unwrap();
        let changes: Vec<_> = seen.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            changes,
            [
                (CircuitState::Closed, CircuitState::Open),
                (CircuitState::Open, CircuitState::HalfOpen),
                (CircuitState::HalfOpen, CircuitState::Closed),
            ]
        );
        assert_eq!(seen[0].consecutive_failures, 3);
        assert_eq!(seen[0].last_error, "HTTP 503");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again_and_a_dropped_probe_frees_its_place() {
        let (breaker, _) = breaker(streak_only(1));
        breaker.try_acquire().unwrap().failure("refused");
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(breaker.try_acquire().unwrap());
        breaker.try_acquire().unwrap().failure("refused again");
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(
            breaker.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_a_ratio_only_with_enough_calls_in_the_window() {
        let config = CircuitConfig {
            consecutive_failures: 0,
            failure_ratio: 0.5,
            minimum_calls: 10,
            window: Duration::from_secs(30),
            ..CircuitConfig::default()
        };
        let (breaker, _) = breaker(config);
        // 4 failures of 8 calls: half, but too few calls.
        for index in 0..8 {
            let permit = breaker.try_acquire().unwrap();
            if index % 2 == 0 {
                permit.failure("500");
            } else {
                permit.success();
            }
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        // Old calls leave the window.
        tokio::time::advance(Duration::from_secs(31)).await;
        for _ in 0..4 {
            breaker.try_acquire().unwrap().success();
        }
        for _ in 0..5 {
            breaker.try_acquire().unwrap().failure("500");
        }
        // 5 of 9: over half, but 9 < 10 calls.
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.try_acquire().unwrap().failure("500");
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_refused_while_probes_are_out_get_a_real_retry_delay() {
        let config = CircuitConfig {
            half_open_probes: 2,
            probe_timeout: Duration::from_secs(4),
            ..streak_only(1)
        };
        let (breaker, _) = breaker(config);
        breaker.try_acquire().unwrap().failure("HTTP 503");
        tokio::time::advance(Duration::from_secs(10)).await;
        let first = breaker.try_acquire().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = breaker.try_acquire().unwrap();
        assert!(first.is_probe() && second.is_probe());
        // Every probe place is taken: refused with the time until the
        // oldest probe's place frees up, never zero.
        let refused = breaker.try_acquire().unwrap_err();
        assert!(refused.probing);
        assert_eq!(refused.retry_in, Duration::from_secs(3));
        let message = refused.to_string();
        assert!(message.contains("half-open"), "{message}");
        assert!(message.contains("retry in 3s"), "{message}");
        assert!(!message.contains("0ns"), "{message}");
        // Just before the oldest probe's time is up, still refused, with
        // the shortest delay rather than none.
        tokio::time::advance(Duration::from_millis(2999)).await;
        let refused = breaker.try_acquire().unwrap_err();
        assert_eq!(refused.retry_in, Duration::from_millis(1));
        // Then its place is given to the next caller.
        tokio::time::advance(Duration::from_millis(1)).await;
        let third = breaker.try_acquire().unwrap();
        assert!(third.is_probe());
        // The lost probe's late answer still counts, as do the others'.
        first.success();
        second.success();
        assert_eq!(breaker.state(), CircuitState::Closed);
        // A probe of a spell that is over counts as a plain call.
        third.failure("late");
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_from_an_earlier_spell_does_not_decide_the_next_one() {
        let config = CircuitConfig {
            probe_timeout: Duration::from_secs(1),
            ..streak_only(1)
        };
        let (breaker, _) = breaker(config);
        breaker.try_acquire().unwrap().failure("HTTP 503");
        tokio::time::advance(Duration::from_secs(10)).await;
        let stale = breaker.try_acquire().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        // The stale probe's place went to this one, which fails.
        breaker.try_acquire().unwrap().failure("HTTP 503");
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.try_acquire().unwrap();
        // The earlier spell's probe succeeding closes nothing.
        stale.success();
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        probe.success();
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn settings_are_checked() {
        CircuitConfig::default().validate().unwrap();
        let bad = CircuitConfig {
            failure_ratio: 1.5,
            ..CircuitConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "failure_ratio");
        let bad = CircuitConfig {
            half_open_probes: 0,
            ..CircuitConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "half_open_probes");
        let bad = CircuitConfig {
            probe_timeout: Duration::ZERO,
            ..CircuitConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "probe_timeout");
    }
}
