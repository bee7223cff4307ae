//! What a load test is asked to do.

use std::time::Duration;

/// How hard to push.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Calls per second, each sent at its scheduled time whatever the
    /// earlier calls are doing (open loop).
    Rate(f64),
    /// This many calls in flight, each sent when one ends (closed loop).
    Concurrency(usize),
}

/// A load test: how hard, how long, at most how many calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Rate or concurrency.
    pub load: Load,
    /// How long to send calls for.
    pub duration: Duration,
    /// At most this many calls (whichever of this and the duration ends first).
    pub requests: Option<u64>,
    /// A call not finished this long after it was due counts as failed
    /// (`timeout`); calls still in flight this long after the last send are
    /// abandoned the same way.
    pub timeout: Duration,
}
