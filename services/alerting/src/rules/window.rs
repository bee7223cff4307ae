//! The sliding window of one rule group: how many matching events (and how
//! many of them failed) fell within the last `window` — or, for a count
//! with `sum_of`, the sum of a field over them — in bounded memory whatever
//! the traffic.
//!
//! Time is cut into buckets of `window / 600` (at least 1 ms), numbered from
//! the Unix epoch. The window keeps, oldest first, only the buckets that hold
//! events — a sparse ring — with the running totals beside them, so adding
//! an event and reading the totals are O(1) for events in stream order.
//! [`Window::prune`] drops the buckets that slid out at `now`; the caller
//! never adds buckets more than one window before or after its clock (late
//! events are ignored, events from a clock far ahead are clamped), so at most
//! about 2 × 600 buckets exist. The window's edge is exact to one bucket: an
//! event counts while its bucket is among the last `len` buckets up to
//! `now`'s.
//!
//! The buckets are what the evaluator persists ([`Bucket`] serializes as
//! `[index, total, failed]`); [`Window::restore`] reads them back, re-cutting
//! them when the rule's window (so its bucket size) changed meanwhile.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How many buckets a window is cut into.
const BUCKETS: u128 = 600;
/// The smallest bucket, in nanoseconds.
const MIN_RESOLUTION: u128 = 1_000_000;

/// Matching events within one bucket: `[index, total, failed]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bucket(pub(crate) u64, pub(crate) u64, pub(crate) u64);

/// A sliding window of (total, failed) event counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// Nanoseconds per bucket.
    resolution: u64,
    /// Buckets the window spans.
    len: u64,
    /// The buckets holding events, by increasing index.
    buckets: VecDeque<Bucket>,
    total: u64,
    failed: u64,
}

impl Window {
    /// An empty window spanning `span` (more than zero; the configuration
    /// checks it).
    pub(crate) fn new(span: Duration) -> Self {
        let resolution = resolution_for(span);
        let span = span.as_nanos().max(1);
        let len = span.div_ceil(u128::from(resolution)).max(1);
        Self {
            resolution,
            len: u64::try_from(len).unwrap_or(u64::MAX),
            buckets: VecDeque::new(),
            total: 0,
            failed: 0,
        }
    }

    /// Nanoseconds per bucket.
    pub(crate) fn resolution(&self) -> u64 {
        self.resolution
    }

    /// The bucket number of `time` (0 before the epoch).
    pub(crate) fn index(&self, time: SystemTime) -> u64 {
        index(time, self.resolution)
    }

    /// True when an event in bucket `at` has already slid out of the window
    /// at bucket `now`.
    pub(crate) fn is_out(&self, at: u64, now: u64) -> bool {
        at.saturating_add(self.len) <= now
    }

    /// The latest bucket an event may be put in at bucket `now`: one window
    /// ahead, so that a producer's clock far in the future cannot keep an
    /// event counting for long, nor make the buckets grow.
    pub(crate) fn latest(&self, now: u64) -> u64 {
        now.saturating_add(self.len)
    }

    /// Counts one event in bucket `at`.
    #[cfg(test)]
    pub(crate) fn add(&mut self, at: u64, failed: bool) {
        self.add_many(at, 1, failed);
    }

    /// Counts `n` in bucket `at` (one event, or the value a `sum_of`
    /// condition reads from it), all failed or none.
    pub(crate) fn add_many(&mut self, at: u64, n: u64, failed: bool) {
        let failed = if failed { n } else { 0 };
        self.total = self.total.saturating_add(n);
        self.failed = self.failed.saturating_add(failed);
        match self.buckets.back_mut() {
            // The common case: events in stream order.
            Some(last) if last.0 == at => {
                last.1 = last.1.saturating_add(n);
                last.2 = last.2.saturating_add(failed);
            }
            Some(last) if last.0 > at => match self.buckets.binary_search_by_key(&at, |b| b.0) {
                Ok(found) => {
                    if let Some(bucket) = self.buckets.get_mut(found) {
                        bucket.1 = bucket.1.saturating_add(n);
                        bucket.2 = bucket.2.saturating_add(failed);
                    }
                }
                Err(position) => self.buckets.insert(position, Bucket(at, n, failed)),
            },
            _ => self.buckets.push_back(Bucket(at, n, failed)),
        }
    }

    /// Drops the buckets that slid out of the window at bucket `now`.
    pub(crate) fn prune(&mut self, now: u64) {
        while let Some(first) = self.buckets.front() {
            if !self.is_out(first.0, now) {
                break;
            }
            self.total = self.total.saturating_sub(first.1);
            self.failed = self.failed.saturating_sub(first.2);
            self.buckets.pop_front();
        }
    }

    /// Events in the window (after [`prune`](Self::prune)).
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Failed events in the window (after [`prune`](Self::prune)).
    pub(crate) fn failed(&self) -> u64 {
        self.failed
    }

    /// True when no bucket holds an event.
    pub(crate) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The buckets, oldest first, to persist.
    pub(crate) fn buckets(&self) -> Vec<Bucket> {
        self.buckets.iter().copied().collect()
    }

    /// A window spanning `span` holding persisted `buckets` cut at
    /// `resolution` nanoseconds; re-cut when the resolution differs.
    pub(crate) fn restore(
        span: Duration,
        resolution: u64,
        buckets: &[Bucket],
    ) -> Result<Self, String> {
        if resolution == 0 {
            return Err("the bucket size is 0".to_owned());
        }
        let mut window = Self::new(span);
        let mut sorted: Vec<Bucket> = Vec::with_capacity(buckets.len());
        for bucket in buckets {
            if bucket.2 > bucket.1 {
                return Err(format!(
                    "bucket {} has more failed events ({}) than events ({})",
                    bucket.0, bucket.2, bucket.1
                ));
            }
            let at = if resolution == window.resolution {
                bucket.0
            } else {
                // The bucket's start, in the new size.
                let start = u128::from(bucket.0) * u128::from(resolution);
                u64::try_from(start / u128::from(window.resolution)).unwrap_or(u64::MAX)
            };
            sorted.push(Bucket(at, bucket.1, bucket.2));
        }
        sorted.sort_by_key(|bucket| bucket.0);
        for bucket in sorted {
            window.total = window.total.saturating_add(bucket.1);
            window.failed = window.failed.saturating_add(bucket.2);
            match window.buckets.back_mut() {
                Some(last) if last.0 == bucket.0 => {
                    last.1 = last.1.saturating_add(bucket.1);
                    last.2 = last.2.saturating_add(bucket.2);
                }
                _ => window.buckets.push_back(bucket),
            }
        }
        Ok(window)
    }
}

/// The bucket size of a window spanning `span`: a 600th, at least 1 ms.
fn resolution_for(span: Duration) -> u64 {
    let resolution = (span.as_nanos() / BUCKETS).max(MIN_RESOLUTION);
    u64::try_from(resolution).unwrap_or(u64::MAX)
}

/// The bucket number of `time` for buckets of `resolution` nanoseconds.
fn index(time: SystemTime, resolution: u64) -> u64 {
    let nanos = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    u64::try_from(nanos / u128::from(resolution.max(1))).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    #[test]
    fn buckets_are_a_600th_of_the_window_at_least_a_millisecond() {
        let minute = Window::new(Duration::from_secs(60));
        assert_eq!(minute.resolution(), 100_000_000);
        assert_eq!(minute.len, 600);
        let short = Window::new(Duration::from_millis(100));
        assert_eq!(short.resolution(), 1_000_000);
        assert_eq!(short.len, 100);
        let tiny = Window::new(Duration::from_micros(10));
        assert_eq!(tiny.len, 1);
        let odd = Window::new(Duration::from_nanos(60_000_000_001));
        assert_eq!(odd.len, 601, "the window is covered whole");
    }

    #[test]
    fn events_slide_out_after_the_window() {
        let mut window = Window::new(Duration::from_secs(60));
        window.add(window.index(at(0)), false);
        window.add(window.index(at(30)), true);
        window.add(window.index(at(30)), true);
        assert_eq!((window.total(), window.failed()), (3, 2));
        window.prune(window.index(at(59)));
        assert_eq!(window.total(), 3);
        window.prune(window.index(at(60)));
        assert_eq!(
            (window.total(), window.failed()),
            (2, 2),
            "the first event slid out"
        );
        window.prune(window.index(at(91)));
        assert!(window.is_empty());
        assert_eq!((window.total(), window.failed()), (0, 0));
    }

    #[test]
    fn sums_count_each_event_as_its_value() {
        let mut window = Window::new(Duration::from_secs(60));
        window.add_many(window.index(at(0)), 19, true);
        window.add_many(window.index(at(0)), 1, false);
        window.add_many(window.index(at(30)), 5, true);
        assert_eq!((window.total(), window.failed()), (25, 24));
        assert_eq!(window.buckets().len(), 2);
        window.prune(window.index(at(60)));
        assert_eq!((window.total(), window.failed()), (5, 5));
    }

    #[test]
    fn out_of_order_events_land_in_their_bucket() {
        let mut window = Window::new(Duration::from_secs(60));
        for second in [10, 5, 20, 5, 15] {
            window.add(window.index(at(second)), false);
        }
        let indexes: Vec<u64> = window.buckets().iter().map(|b| b.0).collect();
        let mut sorted = indexes.clone();
        sorted.sort_unstable();
        assert_eq!(indexes, sorted);
        assert_eq!(window.buckets().len(), 4);
        assert_eq!(window.total(), 5);
    }

    #[test]
    fn memory_stays_bounded_under_heavy_traffic() {
        let mut window = Window::new(Duration::from_secs(60));
        let start = window.index(at(0));
        // One event every millisecond for ten minutes, pruning as the
        // evaluator does.
        for ms in 0..600_000u64 {
            let time = at(0) + Duration::from_millis(ms);
            window.add(window.index(time), false);
            if ms % 1000 == 0 {
                window.prune(window.index(time));
            }
        }
        assert!(window.buckets.len() <= 611, "{}", window.buckets.len());
        assert!(window.index(at(600)) > start);
    }

    #[test]
    fn late_and_future_limits() {
        let window = Window::new(Duration::from_secs(60));
        let now = window.index(at(100));
        assert!(window.is_out(window.index(at(40)), now));
        assert!(!window.is_out(window.index(at(41)), now));
        assert_eq!(window.latest(now), window.index(at(160)));
    }

    #[test]
    fn restore_keeps_or_recuts_buckets() {
        let mut window = Window::new(Duration::from_secs(60));
        window.add(window.index(at(1)), true);
        window.add(window.index(at(2)), false);
        let same = Window::restore(
            Duration::from_secs(60),
            window.resolution(),
            &window.buckets(),
        )
        .unwrap();
        assert_eq!(same, window);
        // The window became 10 minutes: 1 s buckets, both events in two.
        let longer = Window::restore(
            Duration::from_secs(600),
            window.resolution(),
            &window.buckets(),
        )
        .unwrap();
        assert_eq!((longer.total(), longer.failed()), (2, 1));
        assert_eq!(longer.buckets()[0].0, longer.index(at(1)));
        // A longer window cut coarser merges buckets.
        let coarse = Window::restore(
            Duration::from_secs(6000),
            window.resolution(),
            &window.buckets(),
        )
        .unwrap();
        assert_eq!(coarse.buckets().len(), 1);
        assert_eq!(coarse.total(), 2);
        assert!(Window::restore(Duration::from_secs(60), 0, &[]).is_err());
        assert!(Window::restore(Duration::from_secs(60), 1, &[Bucket(1, 1, 2)]).is_err());
    }

    #[test]
    fn times_before_the_epoch_are_bucket_zero() {
        let window = Window::new(Duration::from_secs(60));
        assert_eq!(
            window.index(SystemTime::UNIX_EPOCH - Duration::from_secs(5)),
            0
        );
    }
}
