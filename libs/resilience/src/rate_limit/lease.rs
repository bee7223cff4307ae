//! Leases of cells from a shared GCRA row, and the local state of one
//! meter (a key's requests or tokens) that spends them.
//!
//! A [`LeaseStore`] keeps one row per meter holding its theoretical arrival
//! time (TAT). A lease asks the row, atomically, for between `min` and `max`
//! cells: the row grants as many as its GCRA allows up to `max` (none when
//! fewer than `min` fit), moves its TAT forward by the cells granted, and
//! says how long until `max(min, 1)` more would fit. The same call carries
//! an adjustment: cells to charge (a debt: tokens used beyond an estimate)
//! or to give back (an over-estimate), applied before the grant.
//!
//! A replica spends leased cells from memory ([`MeterState`]): a call takes
//! its cells without any round trip while enough are held; a lease happens
//! when they run short (the caller waits for it) or, in the background,
//! when they run low (so callers rarely wait). Leased cells expire after
//! the lease time, unspent ones are lost, never handed back: a replica that
//! stops (or crashes) costs the others at most what it holds.
//!
//! ```text
//! take(n) ─▶ expired chunks dropped (batch halves when cells were left)
//!         ─▶ n held?            yes ─▶ spend them; at most batch/2 left? ─▶ refill in the background
//!         ─▶ a refusal cached?  yes ─▶ Refused(until then)
//!         ─▶ Short: lease [n − held, max(n, batch) − held] cells, then settle
//! ```
//!
//! The batch adapts: it starts at 1, doubles at each lease while leased
//! cells are spent before they expire, halves when some expire unspent,
//! and never exceeds `max_batch` (at most `burst / N` for N replicas and at
//! most what the meter emits in one lease time). A replica then holds at
//! most `max_batch` cells of a meter, and every cell it spends was leased
//! less than one lease time before.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

/// The longest span a row's arithmetic handles (a year, in nanoseconds):
/// bursts and debts beyond it are capped, so a TAT never overflows.
const MAX_SPAN_NS: i64 = 366 * 24 * 3600 * 1_000_000_000;

/// The GCRA of one meter: a cell every `interval_ns`, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds between two cells (at least 1).
    pub interval_ns: i64,
    /// Cells allowed at once.
    pub burst: u64,
}

impl Gcra {
    /// `per_period` cells per `period`, `burst` at once; `None` for a rate
    /// of 0 (unlimited).
    pub fn new(per_period: u64, period: Duration, burst: u64) -> Option<Self> {
        if per_period == 0 {
            return None;
        }
        let period_ns = i64::try_from(period.as_nanos()).unwrap_or(MAX_SPAN_NS);
        let interval_ns = (period_ns / i64::try_from(per_period).unwrap_or(i64::MAX)).max(1);
        Some(Self {
            interval_ns,
            burst: burst.max(1),
        })
    }

    /// The row's tolerance: how far its TAT may run ahead of now
    /// (`burst × interval`), capped at a year.
    pub fn tolerance_ns(&self) -> i64 {
        i64::try_from(self.burst)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.interval_ns)
            .min(MAX_SPAN_NS)
    }

    /// Cells emitted in `span` (rounded down).
    pub fn cells_in(&self, span: Duration) -> u64 {
        let span_ns = i64::try_from(span.as_nanos()).unwrap_or(MAX_SPAN_NS);
        u64::try_from(span_ns / self.interval_ns).unwrap_or(0)
    }

    /// `cells` as an adjustment the row can take: capped at a year's worth.
    fn adjustment(&self, cells: i64) -> i64 {
        let most = MAX_SPAN_NS / self.interval_ns;
        cells.clamp(-most, most)
    }
}

/// One lease asked of a [`LeaseStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The meter's row, e.g. `tenant/requests/acme`.
    pub row: String,
    /// Its GCRA, as this replica is configured.
    pub gcra: Gcra,
    /// Grant nothing unless at least this many cells fit.
    pub min: u64,
    /// Grant at most this many.
    pub max: u64,
    /// Cells to charge (positive) or give back (negative) first.
    pub adjust: i64,
}

/// What a lease got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Cells granted (0, or between `min` and `max`).
    pub granted: u64,
    /// How long until `max(min, 1)` more cells fit (zero when they do).
    pub wait: Duration,
}

/// A lease that failed: the store is unreachable, slow, or broken. Its
/// outcome is unknown (it may have been applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LeaseError(pub String);

/// A store of GCRA rows shared by replicas.
pub trait LeaseStore: fmt::Debug + Send + Sync + 'static {
    /// Applies `request` to its row atomically.
    fn lease<'a>(
        &'a self,
        request: &'a LeaseRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Lease, LeaseError>> + Send + 'a>>;
}

/// What taking cells from local state came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Take {
    /// Taken; `refill` asks the caller to start a background refill.
    Taken { refill: bool },
    /// The row refused this many cells recently: retry after this.
    Refused(Duration),
    /// Not enough cells held: a lease is needed.
    Short,
}

/// Cells leased together, usable until `expires`.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    cells: u64,
    expires: Instant,
}

/// One meter's leased cells and lease bookkeeping, in this process.
#[derive(Debug)]
pub(super) struct MeterState {
    /// Leased cells, oldest first.
    chunks: VecDeque<Chunk>,
    /// Cells the next lease tops up to.
    batch: u64,
    max_batch: u64,
    lease_time: Duration,
    /// Some leased cells expired unspent since the last lease.
    wasted: bool,
    leased_before: bool,
    /// The row refused `.1` cells; a call needing as many is refused
    /// locally until `.0`.
    refused: Option<(Instant, u64)>,
    /// Cells to charge (+) or give back (−) with the next lease.
    pending: i64,
    /// The adjustment carried by the lease in flight.
    in_flight: i64,
    /// A background refill is queued or running.
    pub(super) refilling: bool,
    /// A background flush of `pending` is scheduled.
    pub(super) flushing: bool,
    /// Last use, for forgetting idle keys.
    pub(super) used: Instant,
}

impl MeterState {
    /// Nothing held yet; leases of at most `max_batch` cells (at least 1),
    /// each usable for `lease_time`.
    pub(super) fn new(max_batch: u64, lease_time: Duration, now: Instant) -> Self {
        Self {
            chunks: VecDeque::new(),
            batch: 1,
            max_batch: max_batch.max(1),
            lease_time,
            wasted: false,
            leased_before: false,
            refused: None,
            pending: 0,
            in_flight: 0,
            refilling: false,
            flushing: false,
            used: now,
        }
    }

    /// Cells held and not expired (as of the last [`Self::expire`]).
    pub(super) fn held(&self) -> u64 {
        self.chunks.iter().map(|chunk| chunk.cells).sum()
    }

    /// Drops chunks that expired, noting cells lost unspent.
    fn expire(&mut self, now: Instant) {
        while let Some(chunk) = self.chunks.front() {
            if chunk.expires > now {
                break;
            }
            if chunk.cells > 0 {
                self.wasted = true;
            }
            self.chunks.pop_front();
        }
    }

    /// Spends `n` held cells, oldest first (the caller checked they are).
    fn spend(&mut self, mut n: u64) {
        while n > 0 {
            let Some(chunk) = self.chunks.front_mut() else {
                return;
            };
            let taken = chunk.cells.min(n);
            chunk.cells -= taken;
            n -= taken;
            if chunk.cells == 0 {
                self.chunks.pop_front();
            }
        }
    }

    /// Takes `n` cells from what is held, without waiting.
    pub(super) fn try_take(&mut self, n: u64, now: Instant) -> Take {
        self.expire(now);
        self.used = now;
        if self.held() >= n {
            self.spend(n);
            // Refill ahead only once demand proved itself (a batch of 2 or
            // more): a quiet key would let prefetched cells expire.
            let refill = !self.refilling && self.batch >= 2 && self.held() <= self.batch / 2;
            if refill {
                self.refilling = true;
            }
            return Take::Taken { refill };
        }
        match self.refused {
            Some((until, cells)) if now < until && n >= cells => Take::Refused(until - now),
            _ => Take::Short,
        }
    }

    /// Adapts the batch to what the last lease came to.
    fn adapt(&mut self) {
        if self.wasted {
            self.batch = (self.batch / 2).max(1);
        } else if self.leased_before {
            self.batch = self.batch.saturating_mul(2).min(self.max_batch);
        }
        self.wasted = false;
        self.leased_before = true;
    }

    /// The lease a caller short of `n` cells makes: at least what it lacks,
    /// topped up to the batch.
    pub(super) fn want(&mut self, n: u64, now: Instant) -> (u64, u64, i64) {
        self.expire(now);
        self.adapt();
        let held = self.held();
        let min = n.saturating_sub(held);
        let max = n.max(self.batch).saturating_sub(held);
        (min, max, self.carry())
    }

    /// The lease a background refill makes: whatever fits up to the batch.
    pub(super) fn want_refill(&mut self, now: Instant) -> (u64, u64, i64) {
        self.expire(now);
        self.adapt();
        (0, self.batch.saturating_sub(self.held()), self.carry())
    }

    /// The lease a flush makes: the adjustment alone.
    pub(super) fn want_flush(&mut self) -> (u64, u64, i64) {
        self.flushing = false;
        (0, 0, self.carry())
    }

    /// Hands the pending adjustment to the lease about to be made.
    fn carry(&mut self) -> i64 {
        self.in_flight = self.pending;
        self.pending = 0;
        self.in_flight
    }

    /// Records a lease's grant, then takes `n` cells from what is held
    /// (`n` = 0 for a background lease).
    pub(super) fn settle(&mut self, lease: &Lease, n: u64, now: Instant) -> Take {
        self.in_flight = 0;
        if lease.granted > 0 {
            self.chunks.push_back(Chunk {
                cells: lease.granted,
                expires: now + self.lease_time,
            });
            self.refused = None;
        }
        if self.held() >= n {
            self.spend(n);
            return Take::Taken { refill: false };
        }
        let wait = lease.wait.max(Duration::from_millis(1));
        self.refused = Some((now + wait, n.max(1)));
        Take::Refused(wait)
    }

    /// Records a lease that failed with an unknown outcome: a debt it
    /// carried is kept (charged again rather than lost), a credit dropped
    /// (never handed back twice), so an unknown outcome never admits more.
    pub(super) fn failed(&mut self) {
        if self.in_flight > 0 {
            self.pending = self.pending.saturating_add(self.in_flight);
        }
        self.in_flight = 0;
    }

    /// Adds `cells` (+ charge, − give back) to the next lease's adjustment;
    /// true when the caller should schedule a flush.
    pub(super) fn adjust(&mut self, cells: i64, gcra: &Gcra) -> bool {
        self.pending = gcra.adjustment(self.pending.saturating_add(cells));
        let flush = self.pending != 0 && !self.flushing;
        if flush {
            self.flushing = true;
        }
        flush
    }
}

/// The most cells one lease may take for a meter shared by `replicas`:
/// its share of the burst, and no more than it emits in one lease time
/// (at least 1).
pub(super) fn max_batch(gcra: &Gcra, replicas: u32, lease_time: Duration) -> u64 {
    let share = gcra.burst / u64::from(replicas.max(1));
    share.min(gcra.cells_in(lease_time)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(1);

    fn granted(cells: u64) -> Lease {
        Lease {
            granted: cells,
            wait: Duration::ZERO,
        }
    }

    #[test]
    fn gcra_parameters_come_from_the_rate_and_are_capped() {
        let gcra = Gcra::new(60, Duration::from_secs(60), 10).unwrap();
        assert_eq!(gcra.interval_ns, 1_000_000_000);
        assert_eq!(gcra.tolerance_ns(), 10_000_000_000);
        assert_eq!(gcra.cells_in(Duration::from_millis(2500)), 2);
        assert!(Gcra::new(0, Duration::from_secs(60), 10).is_none());
        // 60 billion tokens a minute: one a nanosecond, never 0.
        let fast = Gcra::new(600_000_000_000, Duration::from_secs(60), 1).unwrap();
        assert_eq!(fast.interval_ns, 1);
        // A burst of 4 billion cells a minute apart is capped at a year.
        let huge = Gcra::new(1, Duration::from_secs(60), u64::from(u32::MAX)).unwrap();
        assert_eq!(huge.tolerance_ns(), MAX_SPAN_NS);
        assert_eq!(huge.adjustment(i64::MAX), MAX_SPAN_NS / huge.interval_ns);
    }

    #[test]
    fn a_lease_takes_at_most_a_share_of_the_burst_and_one_lease_time() {
        // 600 a minute (10/s), burst 600, 2 replicas: 10 per lease of 1 s.
        let gcra = Gcra::new(600, Duration::from_secs(60), 600).unwrap();
        assert_eq!(max_batch(&gcra, 2, LEASE), 10);
        // Burst 8 over 4 replicas: 2 each.
        let gcra = Gcra::new(6000, Duration::from_secs(60), 8).unwrap();
        assert_eq!(max_batch(&gcra, 4, LEASE), 2);
        // 60 a minute: one a second, so one a lease.
        let gcra = Gcra::new(60, Duration::from_secs(60), 60).unwrap();
        assert_eq!(max_batch(&gcra, 2, LEASE), 1);
        // Never 0.
        let gcra = Gcra::new(1, Duration::from_secs(60), 1).unwrap();
        assert_eq!(max_batch(&gcra, 8, LEASE), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_batch_doubles_while_cells_are_spent_and_refills_ahead() {
        let now = Instant::now();
        let mut meter = MeterState::new(8, LEASE, now);
        assert_eq!(meter.try_take(1, now), Take::Short);
        // The first lease: just what the call needs.
        assert_eq!(meter.want(1, now), (1, 1, 0));
        assert_eq!(
            meter.settle(&granted(1), 1, now),
            Take::Taken { refill: false }
        );
        assert_eq!(meter.try_take(1, now), Take::Short);
        // Spent before it expired: the batch doubles, the lease tops up to it.
        assert_eq!(meter.want(1, now), (1, 2, 0));
        assert_eq!(
            meter.settle(&granted(2), 1, now),
            Take::Taken { refill: false }
        );
        // One left of a batch of 2: taking it asks for a refill, once.
        assert_eq!(meter.try_take(1, now), Take::Taken { refill: true });
        assert!(meter.refilling);
        assert_eq!(meter.want_refill(now), (0, 4, 0));
        meter.refilling = false;
        assert_eq!(
            meter.settle(&granted(4), 0, now),
            Take::Taken { refill: false }
        );
        assert_eq!(meter.held(), 4);
        assert_eq!(meter.try_take(1, now), Take::Taken { refill: false });
        assert_eq!(meter.try_take(1, now), Take::Taken { refill: true });
        // The batch never passes max_batch, and a replica never holds more.
        for _ in 0..5 {
            let (_, max, _) = meter.want_refill(now);
            meter.settle(&granted(max), 0, now);
            assert!(meter.held() <= 8, "{}", meter.held());
        }
        assert_eq!(meter.batch, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn unspent_cells_expire_and_halve_the_batch() {
        let now = Instant::now();
        let mut meter = MeterState::new(8, LEASE, now);
        meter.batch = 8;
        meter.leased_before = true;
        meter.settle(&granted(8), 0, now);
        assert_eq!(meter.try_take(3, now), Take::Taken { refill: false });
        let later = now + LEASE;
        // Expired: nothing is spent from a lease older than the lease time.
        assert_eq!(meter.try_take(1, later), Take::Short);
        assert_eq!(meter.want(1, later), (1, 4, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_cached_for_calls_needing_as_much() {
        let now = Instant::now();
        let mut meter = MeterState::new(4, LEASE, now);
        let (min, max, _) = meter.want(5, now);
        assert_eq!((min, max), (5, 5));
        let refused = Lease {
            granted: 0,
            wait: Duration::from_millis(300),
        };
        assert_eq!(
            meter.settle(&refused, 5, now),
            Take::Refused(Duration::from_millis(300))
        );
        // Answered locally, without a lease, until the wait is over…
        let soon = now + Duration::from_millis(100);
        assert_eq!(
            meter.try_take(5, soon),
            Take::Refused(Duration::from_millis(200))
        );
        // …except for a call needing less, which may fit.
        assert_eq!(meter.try_take(2, soon), Take::Short);
        assert_eq!(
            meter.try_take(5, now + Duration::from_millis(300)),
            Take::Short
        );
    }

    #[tokio::test(start_paused = true)]
    async fn adjustments_ride_the_next_lease_and_survive_a_failed_one_only_as_debts() {
        let now = Instant::now();
        let gcra = Gcra::new(600, Duration::from_secs(60), 600).unwrap();
        let mut meter = MeterState::new(4, LEASE, now);
        // A debt schedules one flush; more adjustments join it.
        assert!(meter.adjust(30, &gcra));
        assert!(!meter.adjust(-10, &gcra));
        assert_eq!(meter.want(1, now), (1, 1, 20));
        // The lease failed: the debt is kept for the next one.
        meter.failed();
        assert_eq!(meter.want_flush(), (0, 0, 20));
        meter.settle(&granted(0), 0, now);
        assert_eq!(meter.want_flush(), (0, 0, 0));
        // A credit whose lease failed is dropped.
        assert!(meter.adjust(-5, &gcra));
        assert_eq!(meter.want_flush(), (0, 0, -5));
        meter.failed();
        assert_eq!(meter.want_flush(), (0, 0, 0));
    }
}
