//! [`SharedRateLimiter`]: rate limits that hold across replicas, their
//! state in a [`LeaseStore`] shared by every replica, and no round trip to
//! it on a call's path while leased cells last.
//!
//! ```text
//! admit(key) ─▶ store down (local mode)? ─▶ the fallback: a KeyedRateLimiter at 1/N
//!            │                               (and at most once a second, a probe lease)
//!            ▼
//!            tokens meter: take min(estimate, burst)  ┐ each: cells held ─▶ spent here
//!            requests meter: take 1                   ┘        short ─▶ wait for a lease
//!                                                             low ─▶ refill in the background
//! reconcile ─▶ the difference to the tokens meter's next lease (flushed within half a lease time)
//! ```
//!
//! A lease that fails or outlasts `timeout` switches the limiter to local
//! mode: every call is then decided by the fallback, an in-memory
//! [`KeyedRateLimiter`] with each limit divided by the expected replica
//! count, so N replicas together stay near the configured limit while the
//! store is down. A probe lease at most once a second brings the limiter
//! back to shared mode as soon as the store answers. Each change of mode is
//! reported once to the observer ([`LimiterEvent`]), as is every lease, so
//! a service logs and counts them.
//!
//! # The bound
//!
//! The row's GCRA admits at most `burst + w / interval` cells in any window
//! of length `w`. Replicas spend cells leased up to one lease time before
//! the window starts, and they hold at most `max_batch` each, so over any
//! window all replicas together admit at most
//! `burst + w / interval + min(N × max_batch, lease / interval)`; a window
//! that starts while no cells are held (a key at rest) gets no extra at all.
//! Tokens add, as in memory, the under-estimates of calls admitted before
//! their debt was charged.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::lease::{
    Gcra, Lease, LeaseError, LeaseRequest, LeaseStore, MeterState, Take, max_batch,
};
use super::local::{IDLE, MAX_KEYS};
use super::{
    Admit, KeyedLimiter, KeyedRateLimiter, Limit, PERIOD, RateLimited, Resource, TokenCharge, lock,
};

/// How often a limiter in local mode tries the store again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How a shared limiter shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedSettings {
    /// Replicas expected to share the store (N): while it is unreachable
    /// each enforces 1/N of every limit, and one lease takes at most 1/N
    /// of a burst.
    pub replicas: u32,
    /// How long leased cells stay usable; it bounds how far a replica's
    /// spending may trail its leases.
    pub lease: Duration,
    /// A lease slower than this counts as the store being down.
    pub timeout: Duration,
}

/// Where a shared limiter's decisions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterMode {
    /// From the shared store (leases).
    Shared,
    /// From this process alone, at 1/N of each limit: the store is down.
    Local,
}

impl LimiterMode {
    /// `shared` or `local`, as metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Local => "local",
        }
    }
}

/// What a shared limiter reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimiterEvent {
    /// The mode changed; `reason` is the store's error when it fell back.
    Mode {
        /// The new mode.
        mode: LimiterMode,
        /// Why, when the store failed.
        reason: Option<String>,
    },
    /// A lease answered, granting these cells (maybe none).
    Leased {
        /// Cells granted.
        granted: u64,
    },
    /// A lease failed.
    LeaseFailed,
}

type Observer = Arc<dyn Fn(&LimiterEvent) + Send + Sync>;

/// Rate limits for many keys shared by replicas through a [`LeaseStore`].
/// Cheap to clone.
#[derive(Clone)]
pub struct SharedRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Names the rows (`<scope>/<resource>/<key>`) and the metrics.
    scope: String,
    default: Limit,
    overrides: BTreeMap<String, Limit>,
    settings: SharedSettings,
    store: Arc<dyn LeaseStore>,
    /// Decides while the store is down, at 1/N of each limit.
    fallback: KeyedRateLimiter,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    local: AtomicBool,
    next_probe: Mutex<Instant>,
    observer: OnceLock<Observer>,
}

/// The meters of one key.
struct Entry {
    limit: Limit,
    requests: Option<Arc<Meter>>,
    tokens: Option<Arc<Meter>>,
}

/// One meter (a key's requests or tokens) and its row.
struct Meter {
    row: String,
    gcra: Gcra,
    state: Mutex<MeterState>,
    /// One lease at a time per meter: callers short of cells queue here,
    /// and find the cells the lease before them brought.
    leasing: tokio::sync::Mutex<()>,
}

/// How taking cells from a meter ended.
enum Taken {
    Yes,
    Refused(Duration),
    StoreDown,
}

impl fmt::Debug for SharedRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRateLimiter")
            .field("scope", &self.inner.scope)
            .field("default", &self.inner.default)
            .field("overrides", &self.inner.overrides)
            .field("settings", &self.inner.settings)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl SharedRateLimiter {
    /// Limits of `default` for every key, except those in `overrides`, for
    /// `scope` (e.g. `tenant`), kept in `store`.
    pub fn new(
        scope: &str,
        default: Limit,
        overrides: BTreeMap<String, Limit>,
        store: Arc<dyn LeaseStore>,
        settings: SharedSettings,
    ) -> Self {
        let fallback = KeyedRateLimiter::new(
            default.share(settings.replicas),
            overrides
                .iter()
                .map(|(key, limit)| (key.clone(), limit.share(settings.replicas)))
                .collect(),
        );
        Self {
            inner: Arc::new(Inner {
                scope: scope.to_owned(),
                default,
                overrides,
                settings,
                store,
                fallback,
                entries: Mutex::new(HashMap::new()),
                local: AtomicBool::new(false),
                next_probe: Mutex::new(Instant::now()),
                observer: OnceLock::new(),
            }),
        }
    }

    /// Reports mode changes and leases to `observer` (the first one set).
    pub fn on_event(&self, observer: impl Fn(&LimiterEvent) + Send + Sync + 'static) {
        // A second observer is ignored: one service watches its limiter.
        let _ = self.inner.observer.set(Arc::new(observer));
    }

    /// The scope the limiter was made for.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// Where decisions come from now.
    pub fn mode(&self) -> LimiterMode {
        if self.inner.local.load(Ordering::Acquire) {
            LimiterMode::Local
        } else {
            LimiterMode::Shared
        }
    }

    /// Cells held by this process for `key`'s requests (tests and
    /// benchmarks look at what a replica holds).
    pub fn held_requests(&self, key: &str) -> u64 {
        let limit = self.limit_of(key);
        self.inner
            .entry(key, limit)
            .requests
            .as_ref()
            .map_or(0, |meter| lock(&meter.state).held())
    }

    async fn admit_shared(&self, key: &str, estimated: u64) -> Result<TokenCharge, RateLimited> {
        let inner = &self.inner;
        let limit = inner.limit_of(key);
        if limit.is_unlimited() {
            return Ok(TokenCharge::new(key, 0));
        }
        let entry = inner.entry(key, limit);
        if inner.local.load(Ordering::Acquire) {
            self.probe(&entry);
            return inner.fall_back(key, estimated);
        }
        let mut charged = 0;
        if let Some(tokens) = &entry.tokens {
            // As in memory: a call over the whole burst passes when the
            // bucket is full, leaving the rest as debt.
            let need = estimated.min(tokens.gcra.burst);
            match self.take(tokens, need).await {
                Taken::Yes => {
                    charged = estimated;
                    self.adjust(tokens, cells(estimated - need));
                }
                Taken::Refused(wait) => {
                    return Err(refusal(key, Resource::Tokens, &limit, wait));
                }
                Taken::StoreDown => return inner.fall_back(key, estimated),
            }
        }
        if let Some(requests) = &entry.requests {
            let taken = self.take(requests, 1).await;
            if !matches!(taken, Taken::Yes)
                && let Some(tokens) = &entry.tokens
            {
                self.adjust(tokens, -cells(charged));
            }
            match taken {
                Taken::Yes => {}
                Taken::Refused(wait) => {
                    return Err(refusal(key, Resource::Requests, &limit, wait));
                }
                Taken::StoreDown => return inner.fall_back(key, estimated),
            }
        }
        Ok(TokenCharge::new(key, charged))
    }

    /// Takes `n` cells of `meter`: from what is held, else after a lease.
    async fn take(&self, meter: &Arc<Meter>, n: u64) -> Taken {
        if let Some(taken) = self.take_held(meter, n) {
            return taken;
        }
        let _leasing = meter.leasing.lock().await;
        // The lease this caller queued behind may have brought enough, or
        // failed: then the store is down and nobody waits for it again.
        if let Some(taken) = self.take_held(meter, n) {
            return taken;
        }
        if self.inner.local.load(Ordering::Acquire) {
            return Taken::StoreDown;
        }
        let (min, max, adjust) = lock(&meter.state).want(n, Instant::now());
        match self.lease(meter, min, max, adjust).await {
            Ok(lease) => match lock(&meter.state).settle(&lease, n, Instant::now()) {
                Take::Refused(wait) => Taken::Refused(wait),
                Take::Taken { .. } | Take::Short => Taken::Yes,
            },
            Err(()) => Taken::StoreDown,
        }
    }

    /// Takes `n` held cells, starting a refill when they run low; `None`
    /// when a lease is needed.
    fn take_held(&self, meter: &Arc<Meter>, n: u64) -> Option<Taken> {
        let taken = lock(&meter.state).try_take(n, Instant::now());
        match taken {
            Take::Taken { refill } => {
                if refill {
                    self.spawn_refill(meter);
                }
                Some(Taken::Yes)
            }
            Take::Refused(wait) => Some(Taken::Refused(wait)),
            Take::Short => None,
        }
    }

    /// One lease of `meter`, bounded by the timeout; a failure switches to
    /// local mode (and records the unknown outcome), a success to shared.
    async fn lease(&self, meter: &Meter, min: u64, max: u64, adjust: i64) -> Result<Lease, ()> {
        let request = LeaseRequest {
            row: meter.row.clone(),
            gcra: meter.gcra,
            min,
            max,
            adjust,
        };
        let inner = &self.inner;
        let result = tokio::time::timeout(inner.settings.timeout, inner.store.lease(&request))
            .await
            .unwrap_or_else(|_| {
                Err(LeaseError(format!(
                    "no answer within {:?}",
                    inner.settings.timeout
                )))
            });
        match result {
            Ok(lease) => {
                inner.report(&LimiterEvent::Leased {
                    granted: lease.granted,
                });
                if inner.local.swap(false, Ordering::AcqRel) {
                    inner.report(&LimiterEvent::Mode {
                        mode: LimiterMode::Shared,
                        reason: None,
                    });
                }
                Ok(lease)
            }
            Err(err) => {
                lock(&meter.state).failed();
                inner.report(&LimiterEvent::LeaseFailed);
                if !inner.local.swap(true, Ordering::AcqRel) {
                    *lock(&inner.next_probe) = Instant::now() + PROBE_EVERY;
                    inner.report(&LimiterEvent::Mode {
                        mode: LimiterMode::Local,
                        reason: Some(err.0),
                    });
                }
                Err(())
            }
        }
    }

    /// Refills `meter` in the background (its `refilling` flag is set).
    fn spawn_refill(&self, meter: &Arc<Meter>) {
        let limiter = self.clone();
        let refiller = Arc::clone(meter);
        let task = async move {
            let _leasing = refiller.leasing.lock().await;
            let (min, max, adjust) = lock(&refiller.state).want_refill(Instant::now());
            if let Ok(lease) = limiter.lease(&refiller, min, max, adjust).await {
                lock(&refiller.state).settle(&lease, 0, Instant::now());
            }
            lock(&refiller.state).refilling = false;
        };
        if spawn(task).is_none() {
            lock(&meter.state).refilling = false;
        }
    }

    /// Adds `cells` to `meter`'s next lease, flushing them within half a
    /// lease time when no lease comes first.
    fn adjust(&self, meter: &Arc<Meter>, cells: i64) {
        if cells == 0 || !lock(&meter.state).adjust(cells, &meter.gcra) {
            return;
        }
        let limiter = self.clone();
        let flusher = Arc::clone(meter);
        let delay = self.inner.settings.lease / 2;
        let task = async move {
            tokio::time::sleep(delay).await;
            let _leasing = flusher.leasing.lock().await;
            let (min, max, adjust) = lock(&flusher.state).want_flush();
            if adjust != 0
                && let Ok(lease) = limiter.lease(&flusher, min, max, adjust).await
            {
                lock(&flusher.state).settle(&lease, 0, Instant::now());
            }
        };
        if spawn(task).is_none() {
            lock(&meter.state).flushing = false;
        }
    }

    /// In local mode, at most once per [`PROBE_EVERY`]: a background lease
    /// to learn whether the store is back.
    fn probe(&self, entry: &Entry) {
        let now = Instant::now();
        {
            let mut next = lock(&self.inner.next_probe);
            if now < *next {
                return;
            }
            *next = now + PROBE_EVERY;
        }
        let Some(meter) = entry.requests.as_ref().or(entry.tokens.as_ref()) else {
            return;
        };
        let mut state = lock(&meter.state);
        if !state.refilling {
            state.refilling = true;
            drop(state);
            self.spawn_refill(meter);
        }
    }
}

impl Inner {
    fn limit_of(&self, key: &str) -> Limit {
        self.overrides.get(key).copied().unwrap_or(self.default)
    }

    fn report(&self, event: &LimiterEvent) {
        if let Some(observer) = self.observer.get() {
            observer(event);
        }
    }

    /// Decides a call locally, at 1/N of its limits.
    fn fall_back(&self, key: &str, estimated: u64) -> Result<TokenCharge, RateLimited> {
        let charge = self.fallback.admit_now(key, estimated)?;
        Ok(TokenCharge {
            fallback: true,
            ..charge
        })
    }

    fn entry(&self, key: &str, limit: Limit) -> Arc<Entry> {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(key)
            && entry.limit == limit
        {
            return Arc::clone(entry);
        }
        if entries.len() >= MAX_KEYS {
            let now = Instant::now();
            entries.retain(|_, entry| now.saturating_duration_since(entry.used()) < IDLE);
        }
        let entry = Arc::new(Entry {
            limit,
            requests: Gcra::new(
                u64::from(limit.requests_per_minute),
                PERIOD,
                u64::from(limit.effective_burst()),
            )
            .map(|gcra| self.meter(key, Resource::Requests, gcra)),
            tokens: Gcra::new(limit.tokens_per_minute, PERIOD, limit.tokens_per_minute)
                .map(|gcra| self.meter(key, Resource::Tokens, gcra)),
        });
        entries.insert(key.to_owned(), Arc::clone(&entry));
        entry
    }

    fn meter(&self, key: &str, resource: Resource, gcra: Gcra) -> Arc<Meter> {
        let lease = self.settings.lease;
        Arc::new(Meter {
            row: format!("{}/{}/{key}", self.scope, resource.as_str()),
            gcra,
            state: Mutex::new(MeterState::new(
                max_batch(&gcra, self.settings.replicas, lease),
                lease,
                Instant::now(),
            )),
            leasing: tokio::sync::Mutex::new(()),
        })
    }
}

impl Entry {
    /// When a call last used the key.
    fn used(&self) -> Instant {
        [&self.requests, &self.tokens]
            .into_iter()
            .flatten()
            .map(|meter| lock(&meter.state).used)
            .max()
            .unwrap_or_else(Instant::now)
    }
}

impl KeyedLimiter for SharedRateLimiter {
    fn limit_of(&self, key: &str) -> Limit {
        self.inner.limit_of(key)
    }

    fn is_unlimited(&self) -> bool {
        self.inner.default.is_unlimited() && self.inner.overrides.values().all(Limit::is_unlimited)
    }

    fn admit<'a>(&'a self, key: &'a str, estimated_tokens: u64) -> Admit<'a> {
        Box::pin(self.admit_shared(key, estimated_tokens))
    }

    fn reconcile(&self, charge: TokenCharge, actual_tokens: u64) {
        if charge.fallback {
            self.inner.fallback.reconcile(
                TokenCharge {
                    fallback: false,
                    ..charge
                },
                actual_tokens,
            );
            return;
        }
        let limit = self.limit_of(&charge.key);
        if limit.tokens_per_minute == 0 {
            return;
        }
        let entry = self.inner.entry(&charge.key, limit);
        if let Some(tokens) = &entry.tokens {
            self.adjust(
                tokens,
                cells(actual_tokens).saturating_sub(cells(charge.tokens)),
            );
        }
    }
}

/// A count of cells as a signed adjustment.
fn cells(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn refusal(key: &str, resource: Resource, limit: &Limit, wait: Duration) -> RateLimited {
    RateLimited {
        key: key.to_owned(),
        resource,
        limit: match resource {
            Resource::Requests => f64::from(limit.requests_per_minute),
            Resource::Tokens => limit.tokens_per_minute as f64,
        },
        retry_after: wait.max(Duration::from_millis(1)),
    }
}

/// Runs `task` on the current runtime; `None` outside one (the work is
/// then left for the next lease).
fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Option<()> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    // Detached on purpose: each task is one lease bounded by the timeout
    // (a flush sleeps half a lease time first), and holds its meter alive.
    drop(runtime.spawn(task));
    Some(())
}
