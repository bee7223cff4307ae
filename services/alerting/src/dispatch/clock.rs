//! The dispatcher's wall clock, which tests replace.
//!
//! Nflog timestamps, the `repeat_interval` check and alerts' start times are
//! wall-clock readings ([`SystemTime`]); timers run on tokio's clock. A
//! [`Clock`] is read wherever the former is needed, so a test can move it by
//! hand ([`ManualClock`]).

use std::fmt;
use std::sync::Arc;
#[cfg(test)]
use std::sync::{Mutex, PoisonError};
#[cfg(test)]
use std::time::Duration;
use std::time::SystemTime;

/// Where the dispatcher reads wall-clock time: nflog timestamps, the
/// `repeat_interval` check and alerts' start times are `SystemTime`s. Timers
/// use tokio's clock. Tests substitute a clock they move by hand.
#[derive(Clone)]
pub(crate) struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system's clock.
    pub(crate) fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    /// A clock reading `now`.
    #[cfg(test)]
    pub(crate) fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The current time.
    pub(crate) fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Clock").field(&self.now()).finish()
    }
}

/// A clock that stands still until moved (for tests of time-dependent
/// code).
#[derive(Debug, Clone)]
#[cfg(test)]
pub(crate) struct ManualClock(Arc<Mutex<SystemTime>>);

#[cfg(test)]
impl ManualClock {
    /// A clock standing at `start`.
    pub(crate) fn new(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// A [`Clock`] reading this one.
    pub(crate) fn clock(&self) -> Clock {
        let inner = Arc::clone(&self.0);
        Clock::from_fn(move || *inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Moves it forward by `by`.
    pub(crate) fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.checked_add(by).unwrap_or(*now);
    }

    /// Sets it to `to`.
    pub(crate) fn set(&self, to: SystemTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}
