//! The in-memory queue and the sender task: how emitted events reach the
//! audit service, or the spool when it is away.
//!
//! ```text
//! push ─▶ queue (Mutex<VecDeque>) ─▶ sender task ─┬─▶ Record            (spool empty, service up)
//!                                                  └─▶ spool.append      (spool non-empty, or service down)
//!                                    spool.read_batch ─▶ Record ─▶ spool.consume   (replay, oldest first)
//! ```
//!
//! * [`Shared::push`] takes a mutex, appends, and wakes the sender when the
//!   queue becomes non-empty or reaches a batch; it never awaits and never
//!   does I/O while the sender runs.
//! * The sender task takes a batch once [`AuditConfig::batch_size`] events
//!   are queued or the oldest has waited [`AuditConfig::flush_interval`],
//!   redacts it, and sends it — unless the spool holds anything or the
//!   service is known to be down, in which case the batch goes behind the
//!   spooled ones, so the audit service sees events in emission order. A
//!   failed `Record` (any error, or no answer within
//!   [`AuditConfig::send_timeout`]) spools the batch and marks the service
//!   down; one warning per outage. While down, the oldest spooled batch is
//!   retried every [`AuditConfig::retry_interval`], doubling up to 30 s; once
//!   it is acknowledged the spool is replayed batch after batch.
//! * Events the audit service answers REJECTED are invalid; they are logged
//!   and counted, never re-sent.
//! * A full spool stops the queue from being drained (both policies) until
//!   replay makes room. Then [`SpoolFullPolicy::Block`] makes `push` wait for
//!   room once the queue is full, and [`SpoolFullPolicy::DropOldest`] makes
//!   it drop the oldest queued event for each new one, counted in
//!   `agentmesh_audit_events_dropped_total`. With `drop_oldest` the newest
//!   `queue_capacity` events are kept in memory and sent when the service is
//!   back.
//! * Blocking happens only when the spool is full *and* the audit service
//!   away *and* the queue full. On a multi-threaded Tokio runtime the blocked
//!   emitter uses `block_in_place`, so the runtime keeps running the other
//!   tasks (this sender included); on a current-thread runtime it cannot
//!   block without stopping the sender itself, so the queue grows past its
//!   capacity instead (logged).
//! * [`Shared::shutdown`] flushes within [`AuditConfig::shutdown_timeout`],
//!   then spools whatever is still queued (even past `max_spool_bytes`: a
//!   bounded overshoot beats losing events) and stops the task. Later events
//!   are written to the spool by `push` itself, synchronously.
//!
//! Durability: an event is safe once it is acknowledged or its batch's
//! `sync_data` returned, so `kill -9` loses nothing that was spooled. Events
//! still in memory at that moment (queued, or in a batch being sent) are
//! lost; that window is at most `flush_interval` plus one `send_timeout`.
//! Replayed events may be sent twice after a crash; `Record` is idempotent.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use agentmesh_kit::client::MeshChannel;
use agentmesh_kit::metrics::GrpcClientMetrics;
use agentmesh_proto::audit::v1::audit_service_client::AuditServiceClient;
use agentmesh_proto::audit::v1::{AuditEvent, RecordRequest, RecordStatus};
use prometheus::core::Collector;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::redact::Redactor;
use crate::spool::Spool;
use crate::{AuditConfig, AuditError, SpoolFullPolicy, code_name};

/// The longest wait between two attempts to reach an absent audit service.
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// At most one "dropping events" / "queue full" log line per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

// === Shared ===

/// The producer's state shared by every clone of an `AuditClient`.
pub(crate) struct Shared {
    service: &'static str,
    /// `None` when auditing is off.
    active: Option<Arc<Active>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("service", &self.service)
            .field("enabled", &self.active.is_some())
            .field("queued", &self.queued())
            .field("spooled_bytes", &self.spooled_bytes())
            .finish()
    }
}

/// Starts the producer of `service` (see [`crate::AuditClient::start`]).
pub(crate) fn start(
    config: &AuditConfig,
    service: &'static str,
    registry: &Registry,
    client_metrics: &GrpcClientMetrics,
) -> Result<Arc<Shared>, AuditError> {
    if config.url.is_empty() {
        tracing::warn!(service, "audit disabled: events are discarded");
        return Ok(Shared::disabled(service));
    }
    let redactor = Redactor::new(&config.redact_patterns)
        .map_err(|err| AuditError::Config(format!("audit.redact_patterns: {err}")))?;
    // The lazy channel spawns its connection task: check for a runtime first
    // rather than panic inside tonic.
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        AuditError::Config("AuditClient::start must be called within a Tokio runtime".to_owned())
    })?;
    let channel = agentmesh_kit::client::channel_with_metrics(&config.url, client_metrics)
        .map_err(|err| AuditError::Config(format!("audit.url {:?}: {err}", config.url)))?;
    let dir = config.spool_dir.join(service);
    let spool = Spool::open(&dir).map_err(|source| AuditError::Spool {
        path: dir.clone(),
        source,
    })?;
    let spooled = spool.total_bytes();
    if spooled > 0 {
        tracing::info!(
            service,
            spool = %dir.display(),
            bytes = spooled,
            "audit spool holds events from an earlier run; replaying them once the audit service answers"
        );
    }
    let metrics = Metrics::new(registry)
        .map_err(|err| AuditError::Config(format!("audit metrics: {err}")))?;
    metrics.spool_bytes.set(gauge_value(spooled));
    let (done, _) = watch::channel(0);
    let active = Arc::new(Active {
        service,
        settings: Settings::from(config),
        redactor,
        queue: Mutex::new(Queue {
            events: VecDeque::new(),
            state: State::Running,
            last_log: None,
            unlogged_drops: 0,
        }),
        not_full: Condvar::new(),
        wake: Notify::new(),
        pushed: AtomicU64::new(0),
        done,
        flush_waiters: AtomicUsize::new(0),
        spool: Mutex::new(spool),
        spool_bytes: AtomicU64::new(spooled),
        metrics,
        task: Mutex::new(None),
        url: config.url.clone(),
        link: Mutex::new(Link::default()),
    });
    let sender = Sender::new(Arc::clone(&active), AuditServiceClient::new(channel));
    let task = runtime.spawn(sender.run());
    *lock(&active.task) = Some(task);
    Ok(Arc::new(Shared {
        service,
        active: Some(active),
    }))
}

impl Shared {
    pub(crate) fn disabled(service: &'static str) -> Arc<Self> {
        Arc::new(Self {
            service,
            active: None,
        })
    }

    pub(crate) fn service(&self) -> &'static str {
        self.service
    }

    pub(crate) fn push(&self, event: AuditEvent) {
        if let Some(active) = &self.active {
            active.push(event);
        }
    }

    pub(crate) fn capture_limit(&self) -> Option<usize> {
        self.active.as_ref()?.settings.capture_limit
    }

    /// `text` with its secrets redacted (for captured content).
    pub(crate) fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.active {
            Some(active) => active.redactor.redact(text),
            None => Cow::Borrowed(text),
        }
    }

    pub(crate) fn add_secret(&self, secret: &str) {
        if let Some(active) = &self.active {
            active.redactor.add_secret(secret);
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.active.as_ref().map_or(0, |active| {
            let pushed = active.pushed.load(Ordering::Acquire);
            let done = *active.done.borrow();
            usize::try_from(pushed.saturating_sub(done)).unwrap_or(usize::MAX)
        })
    }

    pub(crate) fn spooled_bytes(&self) -> u64 {
        self.active
            .as_ref()
            .map_or(0, |active| active.spool_bytes.load(Ordering::Acquire))
    }

    /// Where delivery stands, for health checks.
    pub(crate) fn delivery(&self) -> crate::Delivery {
        match &self.active {
            None => crate::Delivery {
                enabled: false,
                url: String::new(),
                reachable: true,
                last_error: None,
                spooled_bytes: 0,
                queued: 0,
            },
            Some(active) => {
                let link = lock(&active.link).clone();
                crate::Delivery {
                    enabled: true,
                    url: active.url.clone(),
                    reachable: !link.down,
                    last_error: link.last_error,
                    spooled_bytes: active.spool_bytes.load(Ordering::Acquire),
                    queued: self.queued(),
                }
            }
        }
    }

    pub(crate) async fn flush(&self) {
        if let Some(active) = &self.active {
            active.flush().await;
        }
    }

    pub(crate) async fn shutdown(&self) {
        let Some(active) = &self.active else {
            return;
        };
        let timeout = active.settings.shutdown_timeout;
        if tokio::time::timeout(timeout, active.flush()).await.is_err() {
            tracing::warn!(
                service = self.service,
                queued = self.queued(),
                "audit: not everything was sent within the shutdown timeout; spooling the rest"
            );
        }
        active.begin_draining();
        let task = lock(&active.task).take();
        if let Some(task) = task {
            // The task finishes the call in flight (bounded by send_timeout),
            // spools the queue and ends.
            if let Err(err) = task.await {
                tracing::error!(service = self.service, error = %err, "audit sender task failed");
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last client is gone without a shutdown: let the task spool what
        // is queued and end, rather than idle forever.
        if let Some(active) = &self.active {
            active.begin_draining();
        }
    }
}

// === Active ===

/// What the clients and the sender task share.
struct Active {
    service: &'static str,
    settings: Settings,
    redactor: Redactor,
    queue: Mutex<Queue>,
    /// Signalled whenever the queue shrinks, for emitters blocked on a full
    /// queue.
    not_full: Condvar,
    /// Wakes the sender task.
    wake: Notify,
    /// Events pushed so far.
    pushed: AtomicU64,
    /// Events settled so far: acknowledged, rejected, spooled or dropped.
    done: watch::Sender<u64>,
    /// Callers waiting in `flush`: the sender then sends partial batches at
    /// once instead of waiting for the flush interval.
    flush_waiters: AtomicUsize,
    spool: Mutex<Spool>,
    /// Mirror of the spool's size, readable without its lock.
    spool_bytes: AtomicU64,
    metrics: Metrics,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The audit service's URL, for health reasons.
    url: String,
    /// How the last call to the audit service went, for health checks.
    link: Mutex<Link>,
}

/// How the last call to the audit service went.
#[derive(Debug, Clone, Default)]
struct Link {
    /// The last call failed (the sender is spooling and retrying).
    down: bool,
    /// Why, as the last failed call said.
    last_error: Option<String>,
}

struct Queue {
    events: VecDeque<AuditEvent>,
    state: State,
    /// When a rate-limited warning was last logged by an emitter.
    last_log: Option<Instant>,
    unlogged_drops: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The sender task takes from the queue.
    Running,
    /// Shutting down: the task spools what is queued; pushes still queue so
    /// that they stay behind older events.
    Draining,
    /// The task is gone; pushes go straight to the spool.
    Stopped,
}

/// The configuration, with out-of-range values made harmless (the
/// configuration is validated before; this only guards against misuse).
#[derive(Debug, Clone, Copy)]
struct Settings {
    queue_capacity: usize,
    batch_size: usize,
    flush_interval: Duration,
    send_timeout: Duration,
    max_spool_bytes: u64,
    policy: SpoolFullPolicy,
    retry_interval: Duration,
    shutdown_timeout: Duration,
    capture_limit: Option<usize>,
}

impl From<&AuditConfig> for Settings {
    fn from(config: &AuditConfig) -> Self {
        let at_least = |value: Duration| value.max(Duration::from_millis(1));
        Self {
            queue_capacity: config.queue_capacity.max(1),
            batch_size: config.batch_size.max(1),
            flush_interval: at_least(config.flush_interval),
            send_timeout: at_least(config.send_timeout),
            max_spool_bytes: config.max_spool_bytes,
            policy: config.spool_full_policy,
            retry_interval: at_least(config.retry_interval).min(MAX_RETRY_INTERVAL),
            shutdown_timeout: config.shutdown_timeout,
            capture_limit: config.capture_content.then_some(config.max_capture_bytes),
        }
    }
}

impl Active {
    fn push(&self, event: AuditEvent) {
        self.metrics.emitted.inc();
        let mut dropped = 0;
        let mut queue = lock(&self.queue);
        loop {
            if queue.state == State::Stopped {
                drop(queue);
                self.settle(dropped);
                self.spool_directly(event);
                return;
            }
            if queue.events.len() < self.settings.queue_capacity {
                break;
            }
            match self.settings.policy {
                SpoolFullPolicy::DropOldest => {
                    if queue.events.pop_front().is_some() {
                        dropped += 1;
                        queue.unlogged_drops += 1;
                        self.metrics.dropped.inc();
                        if let Some(count) = take_log_turn(&mut queue) {
                            tracing::error!(
                                service = self.service,
                                dropped = count,
                                "audit queue full and spool full or unreachable: dropping the oldest events (spool_full_policy = drop_oldest)"
                            );
                        }
                    }
                    break;
                }
                SpoolFullPolicy::Block => {
                    let (guard, blocked) = self.wait_for_room(queue);
                    queue = guard;
                    if !blocked {
                        break;
                    }
                }
            }
        }
        queue.events.push_back(event);
        self.pushed.fetch_add(1, Ordering::AcqRel);
        let len = queue.events.len();
        drop(queue);
        self.settle(dropped);
        self.metrics.queue_depth.set(gauge_value(len));
        if len == 1 || len == self.settings.batch_size {
            self.wake.notify_one();
        }
    }

    /// Waits until the queue has room (policy `block`). Returns whether it
    /// could block at all: not on a current-thread runtime, where the sender
    /// task would be stopped too.
    fn wait_for_room<'a>(
        &'a self,
        mut queue: MutexGuard<'a, Queue>,
    ) -> (MutexGuard<'a, Queue>, bool) {
        let capacity = self.settings.queue_capacity;
        let full =
            |queue: &mut Queue| queue.events.len() >= capacity && queue.state != State::Stopped;
        let flavor = tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor());
        if take_log_turn(&mut queue).is_some() {
            if matches!(flavor, Ok(RuntimeFlavor::CurrentThread)) {
                tracing::error!(
                    service = self.service,
                    capacity,
                    "audit queue full and spool full: cannot block on a current-thread runtime; the queue grows past its capacity"
                );
            } else {
                tracing::error!(
                    service = self.service,
                    capacity,
                    "audit queue full and spool full: emitters block until the audit service is back (spool_full_policy = block)"
                );
            }
        }
        match flavor {
            Ok(RuntimeFlavor::CurrentThread) => (queue, false),
            Ok(_) => {
                // Hand this worker's other tasks to another thread while we
                // wait, so the sender task keeps running.
                let guard = tokio::task::block_in_place(|| {
                    self.not_full
                        .wait_while(queue, full)
                        .unwrap_or_else(PoisonError::into_inner)
                });
                (guard, true)
            }
            Err(_) => {
                let guard = self
                    .not_full
                    .wait_while(queue, full)
                    .unwrap_or_else(PoisonError::into_inner);
                (guard, true)
            }
        }
    }

    /// After shutdown: redact, append and fsync on the caller's thread.
    fn spool_directly(&self, mut event: AuditEvent) {
        self.pushed.fetch_add(1, Ordering::AcqRel);
        self.redactor.redact_event(&mut event);
        let written = {
            let mut spool = lock(&self.spool);
            let written = spool.append(std::slice::from_ref(&event));
            self.note_spool_bytes(spool.total_bytes());
            written
        };
        match written {
            Ok(()) => self.metrics.spooled.inc(),
            Err(err) => {
                self.metrics.dropped.inc();
                tracing::error!(
                    service = self.service,
                    event_id = %event.event_id,
                    error = %err,
                    "audit spool: cannot write an event emitted after shutdown; it is lost"
                );
            }
        }
        self.settle(1);
    }

    async fn flush(&self) {
        let target = self.pushed.load(Ordering::Acquire);
        let mut done = self.done.subscribe();
        if *done.borrow_and_update() >= target {
            return;
        }
        let _waiting = FlushWaiter::new(&self.flush_waiters);
        self.wake.notify_one();
        // The sender lives as long as `self`: this ends once the events are
        // settled.
        let _ = done.wait_for(|done| *done >= target).await;
    }

    fn begin_draining(&self) {
        {
            let mut queue = lock(&self.queue);
            if queue.state == State::Running {
                queue.state = State::Draining;
            }
        }
        self.wake.notify_one();
        self.not_full.notify_all();
    }

    fn state(&self) -> State {
        lock(&self.queue).state
    }

    /// Spools everything queued and stops taking events: pushes go to the
    /// spool from now on. Idempotent.
    fn final_drain(&self) {
        let mut spooled = 0;
        loop {
            let mut batch: Vec<AuditEvent> = {
                let mut queue = lock(&self.queue);
                if queue.events.is_empty() {
                    queue.state = State::Stopped;
                    break;
                }
                queue.events.drain(..).collect()
            };
            self.not_full.notify_all();
            for event in &mut batch {
                self.redactor.redact_event(event);
            }
            let n = batch.len();
            let written = {
                let mut spool = lock(&self.spool);
                let written = spool.append(&batch);
                self.note_spool_bytes(spool.total_bytes());
                written
            };
            match written {
                Ok(()) => {
                    spooled += n;
                    self.metrics.spooled.inc_by(n as u64);
                }
                Err(err) => {
                    self.metrics.dropped.inc_by(n as u64);
                    tracing::error!(
                        service = self.service,
                        events = n,
                        error = %err,
                        "audit spool: cannot write the queue at shutdown; these events are lost"
                    );
                }
            }
            self.settle(n);
        }
        self.not_full.notify_all();
        self.metrics.queue_depth.set(0);
        if spooled > 0 {
            tracing::info!(
                service = self.service,
                events = spooled,
                "audit: queued events spooled at shutdown; they are sent at the next start"
            );
        }
    }

    /// Counts `n` events as settled, waking `flush` callers.
    fn settle(&self, n: usize) {
        if n > 0 {
            self.done.send_modify(|done| *done += n as u64);
        }
    }

    fn note_spool_bytes(&self, bytes: u64) {
        self.spool_bytes.store(bytes, Ordering::Release);
        self.metrics.spool_bytes.set(gauge_value(bytes));
    }

    fn spooled_bytes(&self) -> u64 {
        self.spool_bytes.load(Ordering::Acquire)
    }

    /// Runs `f` on the spool on a blocking thread (it fsyncs). `None` if that
    /// thread could not run it (the runtime is shutting down) or panicked.
    async fn on_spool<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Spool) -> R + Send + 'static,
    ) -> Option<R> {
        let active = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || {
            let mut spool = lock(&active.spool);
            let result = f(&mut spool);
            active.note_spool_bytes(spool.total_bytes());
            result
        })
        .await;
        match result {
            Ok(result) => Some(result),
            Err(err) => {
                tracing::error!(service = self.service, error = %err, "audit spool: the blocking task failed");
                None
            }
        }
    }
}

/// Rate limit for warnings logged by emitters: `Some(drops since the last
/// line)` when it is time for another line.
fn take_log_turn(queue: &mut Queue) -> Option<u64> {
    let now = Instant::now();
    if queue
        .last_log
        .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
    {
        return None;
    }
    queue.last_log = Some(now);
    Some(std::mem::take(&mut queue.unlogged_drops))
}

/// Counts a `flush` caller for as long as it waits, even if its future is
/// dropped (a timeout).
struct FlushWaiter<'a>(&'a AtomicUsize);

impl<'a> FlushWaiter<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for FlushWaiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spools the queue if the sender task ends in any way, including being
/// dropped with its runtime.
struct DrainOnDrop(Arc<Active>);

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        self.0.final_drain();
    }
}

// === the sender task ===

struct Sender {
    active: Arc<Active>,
    client: AuditServiceClient<MeshChannel>,
    settings: Settings,
    /// The audit service failed the last call.
    down: bool,
    /// Current wait between attempts while down.
    retry_delay: Duration,
    next_attempt: Instant,
    /// When the oldest queued event is due, once the sender has seen it.
    deadline: Option<Instant>,
    /// Taking from the queue is paused after a spool write failed.
    paused_until: Option<Instant>,
    /// Inside a spool-full episode (logged and counted once).
    spool_full: bool,
    /// Inside a spool-error episode (logged once).
    spool_failing: bool,
    /// Events per call; lowered if the audit service refuses the batch size.
    batch_limit: usize,
}

impl Sender {
    fn new(active: Arc<Active>, client: AuditServiceClient<MeshChannel>) -> Self {
        let settings = active.settings;
        Self {
            active,
            client,
            settings,
            down: false,
            retry_delay: settings.retry_interval,
            next_attempt: Instant::now(),
            deadline: None,
            paused_until: None,
            spool_full: false,
            spool_failing: false,
            batch_limit: settings.batch_size,
        }
    }

    async fn run(mut self) {
        let guard = DrainOnDrop(Arc::clone(&self.active));
        while self.active.state() == State::Running {
            let replayed = self.replay_step().await;
            let took = self.queue_step().await;
            if !replayed && !took {
                self.wait().await;
            }
        }
        // Spool what is left on a blocking thread; the guard only repeats it
        // (a no-op) or does it if this could not run.
        let active = Arc::clone(&self.active);
        let _ = tokio::task::spawn_blocking(move || active.final_drain()).await;
        drop(guard);
    }

    /// Sends the oldest spooled batch, when there is one and it is time.
    /// Returns whether the spool shrank.
    async fn replay_step(&mut self) -> bool {
        let now = Instant::now();
        if self.active.spooled_bytes() == 0
            || (self.down && now < self.next_attempt)
            || self.paused(now)
        {
            return false;
        }
        let limit = self.batch_limit;
        let events = match self
            .active
            .on_spool(move |spool| spool.read_batch(limit))
            .await
        {
            Some(Ok(events)) => events,
            Some(Err(err)) => {
                self.spool_error(&err);
                return false;
            }
            None => {
                self.pause();
                return false;
            }
        };
        if events.is_empty() {
            // Only unreadable records were left; the spool now knows.
            return false;
        }
        let n = events.len();
        match self.record(events).await {
            Ok(()) => {
                self.mark_up();
                match self.active.on_spool(move |spool| spool.consume(n)).await {
                    Some(Ok(())) => self.spool_failing = false,
                    Some(Err(err)) => self.spool_error(&err),
                    None => self.pause(),
                }
                true
            }
            Err(status) => {
                self.mark_down(&status, n);
                false
            }
        }
    }

    /// Takes a batch from the queue when one is due, and sends or spools it.
    /// Returns whether it took one.
    async fn queue_step(&mut self) -> bool {
        let now = Instant::now();
        if self.paused(now) {
            return false;
        }
        let spool_bytes = self.active.spooled_bytes();
        let must_spool = self.down || spool_bytes > 0;
        if spool_bytes < self.settings.max_spool_bytes {
            self.spool_full = false;
        } else if must_spool {
            // Leave the events in the queue: replay makes room, or the
            // emitters meet the policy once the queue is full.
            if !self.spool_full {
                self.spool_full = true;
                self.active.metrics.spool_full.inc();
                tracing::error!(
                    service = self.active.service,
                    spool_bytes,
                    max_spool_bytes = self.settings.max_spool_bytes,
                    policy = ?self.settings.policy,
                    "audit spool full while the audit service is away: events stay in memory until it is back"
                );
            }
            return false;
        }
        let mut batch = {
            let mut queue = lock(&self.active.queue);
            let len = queue.events.len();
            if len == 0 {
                self.deadline = None;
                return false;
            }
            let deadline = *self
                .deadline
                .get_or_insert(now + self.settings.flush_interval);
            let due = len >= self.batch_limit
                || now >= deadline
                || queue.state != State::Running
                || self.active.flush_waiters.load(Ordering::Acquire) > 0;
            if !due {
                return false;
            }
            let batch: Vec<AuditEvent> = queue.events.drain(..len.min(self.batch_limit)).collect();
            if queue.events.is_empty() {
                self.deadline = None;
            }
            self.active
                .metrics
                .queue_depth
                .set(gauge_value(queue.events.len()));
            batch
        };
        self.active.not_full.notify_all();
        for event in &mut batch {
            self.active.redactor.redact_event(event);
        }
        if must_spool {
            self.spool_batch(batch).await;
        } else {
            let n = batch.len();
            match self.record(batch.clone()).await {
                Ok(()) => {
                    self.mark_up();
                    self.active.settle(n);
                }
                Err(status) => {
                    self.mark_down(&status, n);
                    self.spool_batch(batch).await;
                }
            }
        }
        true
    }

    async fn spool_batch(&mut self, batch: Vec<AuditEvent>) {
        let n = batch.len();
        let written = self
            .active
            .on_spool(move |spool| {
                let written = spool.append(&batch);
                (batch, written)
            })
            .await;
        match written {
            Some((_, Ok(()))) => {
                self.spool_failing = false;
                self.active.metrics.spooled.inc_by(n as u64);
                self.active.settle(n);
            }
            Some((batch, Err(err))) => {
                // Keep the events (in memory, in order) and try again later.
                self.spool_error(&err);
                self.requeue(batch);
            }
            None => {
                self.active.metrics.dropped.inc_by(n as u64);
                self.active.settle(n);
                tracing::error!(
                    service = self.active.service,
                    events = n,
                    "audit: events lost (spool task failed)"
                );
            }
        }
    }

    /// Puts a batch back at the front of the queue.
    fn requeue(&mut self, batch: Vec<AuditEvent>) {
        let mut queue = lock(&self.active.queue);
        for event in batch.into_iter().rev() {
            queue.events.push_front(event);
        }
        self.active
            .metrics
            .queue_depth
            .set(gauge_value(queue.events.len()));
    }

    fn spool_error(&mut self, err: &io::Error) {
        if !self.spool_failing {
            self.spool_failing = true;
            tracing::error!(
                service = self.active.service,
                error = %err,
                "audit spool: read or write failed; events stay in memory and it is retried"
            );
        }
        self.pause();
    }

    /// Stops using the spool (and the queue, which may need it) for one
    /// retry interval after a spool error, instead of spinning on it.
    fn pause(&mut self) {
        self.paused_until = Some(Instant::now() + self.retry_delay);
    }

    fn paused(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| now < until) {
            return true;
        }
        self.paused_until = None;
        false
    }

    /// One `Record` call. `Ok` once the audit service answered (per-event
    /// rejections included); `Err` when the batch must be retried.
    async fn record(&mut self, events: Vec<AuditEvent>) -> Result<(), tonic::Status> {
        let n = events.len();
        let mut request = tonic::Request::new(RecordRequest { events });
        request.set_timeout(self.settings.send_timeout);
        let call = self.client.record(request);
        let response = match tokio::time::timeout(self.settings.send_timeout, call).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(tonic::Status::deadline_exceeded(format!(
                    "no answer within send_timeout ({:?})",
                    self.settings.send_timeout
                )));
            }
        };
        let mut rejected = 0;
        for result in &response.results {
            if result.status == RecordStatus::Rejected as i32 {
                rejected += 1;
                let message = result
                    .error
                    .as_ref()
                    .map_or("", |status| status.message.as_str());
                tracing::error!(
                    service = self.active.service,
                    event_id = %result.event_id,
                    error = %message,
                    "audit service rejected an event as invalid; it is not stored (re-sending would not help)"
                );
            }
        }
        let sent = n.saturating_sub(rejected);
        self.active.metrics.sent.inc_by(sent as u64);
        self.active.metrics.rejected.inc_by(rejected as u64);
        Ok(())
    }

    fn mark_down(&mut self, status: &tonic::Status, batch: usize) {
        self.active.metrics.send_failures.inc();
        *lock(&self.active.link) = Link {
            down: true,
            last_error: Some(format!(
                "{}: {}",
                code_name(status.code()),
                status.message()
            )),
        };
        if status.code() == tonic::Code::InvalidArgument && batch > 1 {
            // The audit service refuses the batch itself, most likely its
            // size: smaller batches may pass where retrying cannot.
            self.batch_limit = (batch / 2).max(1);
            tracing::warn!(
                service = self.active.service,
                error = %status.message(),
                batch_size = self.batch_limit,
                "audit service refused a batch; sending smaller batches"
            );
        }
        if self.down {
            self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY_INTERVAL);
        } else {
            self.down = true;
            self.retry_delay = self.settings.retry_interval;
            tracing::warn!(
                service = self.active.service,
                code = code_name(status.code()),
                error = %status.message(),
                retry_in = ?self.retry_delay,
                "audit service unreachable or failing; spooling events until it answers"
            );
        }
        self.next_attempt = Instant::now() + self.retry_delay;
    }

    fn mark_up(&mut self) {
        lock(&self.active.link).down = false;
        if self.down {
            let bytes = self.active.spooled_bytes();
            tracing::info!(
                service = self.active.service,
                bytes,
                "audit service reachable again; replaying {bytes} bytes"
            );
            self.down = false;
            self.retry_delay = self.settings.retry_interval;
        }
    }

    /// Sleeps until something may be due: a push, a flush, a shutdown, the
    /// oldest event's deadline, or the next attempt to reach the service.
    async fn wait(&mut self) {
        let spooled = self.active.spooled_bytes() > 0;
        let wake_at = [
            self.deadline,
            (self.down && spooled).then_some(self.next_attempt),
            self.paused_until,
        ]
        .into_iter()
        .flatten()
        .min();
        let notified = self.active.wake.notified();
        match wake_at {
            Some(at) => {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => notified.await,
        }
    }
}

// === metrics ===

struct Metrics {
    queue_depth: IntGauge,
    spool_bytes: IntGauge,
    emitted: IntCounter,
    sent: IntCounter,
    spooled: IntCounter,
    dropped: IntCounter,
    rejected: IntCounter,
    send_failures: IntCounter,
    spool_full: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them; a registration failure (e.g.
    /// the same registry used twice) is logged, the metrics then still count
    /// but are not exported.
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            queue_depth: IntGauge::new(
                "agentmesh_audit_queue_depth",
                "Audit events held in memory, waiting to be sent or spooled.",
            )?,
            spool_bytes: IntGauge::new(
                "agentmesh_audit_spool_bytes",
                "Bytes of audit events in the local spool, waiting for the audit service.",
            )?,
            emitted: IntCounter::new(
                "agentmesh_audit_events_emitted_total",
                "Audit events emitted by this service.",
            )?,
            sent: IntCounter::new(
                "agentmesh_audit_events_sent_total",
                "Audit events acknowledged by the audit service (stored now or already stored).",
            )?,
            spooled: IntCounter::new(
                "agentmesh_audit_events_spooled_total",
                "Audit events written to the local spool because the audit service was away or the spool not yet replayed.",
            )?,
            dropped: IntCounter::new(
                "agentmesh_audit_events_dropped_total",
                "Audit events discarded: queue full with a full spool under spool_full_policy drop_oldest, or spool unwritable at shutdown.",
            )?,
            rejected: IntCounter::new(
                "agentmesh_audit_events_rejected_total",
                "Audit events the audit service rejected as invalid (not stored; not re-sent).",
            )?,
            send_failures: IntCounter::new(
                "agentmesh_audit_send_failures_total",
                "Record calls to the audit service that failed or timed out (their events were spooled).",
            )?,
            spool_full: IntCounter::new(
                "agentmesh_audit_spool_full_total",
                "Times the audit spool reached max_spool_bytes while the audit service was away.",
            )?,
        };
        let collectors: [Box<dyn Collector>; 9] = [
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.spool_bytes.clone()),
            Box::new(metrics.emitted.clone()),
            Box::new(metrics.sent.clone()),
            Box::new(metrics.spooled.clone()),
            Box::new(metrics.dropped.clone()),
            Box::new(metrics.rejected.clone()),
            Box::new(metrics.send_failures.clone()),
            Box::new(metrics.spool_full.clone()),
        ];
        for collector in collectors {
            if let Err(err) = registry.register(collector) {
                tracing::warn!(error = %err, "audit client metric not registered; it is not exported");
            }
        }
        Ok(metrics)
    }
}

fn gauge_value<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
