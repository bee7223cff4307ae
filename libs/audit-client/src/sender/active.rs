//! The live state behind a handle: the queue, the link to the sender task,
//! the spool, and the rules for pushing (wait for room, drop the oldest, or
//! spool directly), flushing and the final drain at shutdown.

use super::*;

// === Active ===

/// What the clients and the sender task share.
pub(super) struct Active {
    pub(super) service: &'static str,
    pub(super) settings: Settings,
    pub(super) redactor: Redactor,
    pub(super) queue: Mutex<Queue>,
    /// Signalled whenever the queue shrinks, for emitters blocked on a full
    /// queue.
    pub(super) not_full: Condvar,
    /// Wakes the sender task.
    pub(super) wake: Notify,
    /// Events pushed so far.
    pub(super) pushed: AtomicU64,
    /// Events settled so far: acknowledged, rejected, spooled or dropped.
    pub(super) done: watch::Sender<u64>,
    /// Callers waiting in `flush`: the sender then sends partial batches at
    /// once instead of waiting for the flush interval.
    pub(super) flush_waiters: AtomicUsize,
    pub(super) spool: Mutex<Spool>,
    /// Mirror of the spool's size, readable without its lock.
    pub(super) spool_bytes: AtomicU64,
    pub(super) metrics: Metrics,
    pub(super) task: Mutex<Option<JoinHandle<()>>>,
    /// The audit service's URL, for health reasons.
    pub(super) url: String,
    /// How the last call to the audit service went, for health checks.
    pub(super) link: Mutex<Link>,
}

/// How the last call to the audit service went.
#[derive(Debug, Clone, Default)]
pub(super) struct Link {
    /// The last call failed (the sender is spooling and retrying).
    pub(super) down: bool,
    /// Why, as the last failed call said.
    pub(super) last_error: Option<String>,
}

pub(super) struct Queue {
    pub(super) events: VecDeque<AuditEvent>,
    pub(super) state: State,
    /// When a rate-limited warning was last logged by an emitter.
    pub(super) last_log: Option<Instant>,
    pub(super) unlogged_drops: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
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
pub(super) struct Settings {
    pub(super) queue_capacity: usize,
    pub(super) batch_size: usize,
    pub(super) flush_interval: Duration,
    pub(super) send_timeout: Duration,
    pub(super) max_spool_bytes: u64,
    pub(super) policy: SpoolFullPolicy,
    pub(super) retry_interval: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) capture_limit: Option<usize>,
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
    pub(super) fn push(&self, event: AuditEvent) {
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
    pub(super) fn wait_for_room<'a>(
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
    pub(super) fn spool_directly(&self, mut event: AuditEvent) {
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

    pub(super) async fn flush(&self) {
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

    pub(super) fn begin_draining(&self) {
        {
            let mut queue = lock(&self.queue);
            if queue.state == State::Running {
                queue.state = State::Draining;
            }
        }
        self.wake.notify_one();
        self.not_full.notify_all();
    }

    pub(super) fn state(&self) -> State {
        lock(&self.queue).state
    }

    /// Spools everything queued and stops taking events: pushes go to the
    /// spool from now on. Idempotent.
    pub(super) fn final_drain(&self) {
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
    pub(super) fn settle(&self, n: usize) {
        if n > 0 {
            self.done.send_modify(|done| *done += n as u64);
        }
    }

    pub(super) fn note_spool_bytes(&self, bytes: u64) {
        self.spool_bytes.store(bytes, Ordering::Release);
        self.metrics.spool_bytes.set(gauge_value(bytes));
    }

    pub(super) fn spooled_bytes(&self) -> u64 {
        self.spool_bytes.load(Ordering::Acquire)
    }

    /// Runs `f` on the spool on a blocking thread (it fsyncs). `None` if that
    /// thread could not run it (the runtime is shutting down) or panicked.
    pub(super) async fn on_spool<R: Send + 'static>(
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
pub(super) fn take_log_turn(queue: &mut Queue) -> Option<u64> {
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
pub(super) struct FlushWaiter<'a>(&'a AtomicUsize);

impl<'a> FlushWaiter<'a> {
    pub(super) fn new(count: &'a AtomicUsize) -> Self {
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
pub(super) struct DrainOnDrop(pub(super) Arc<Active>);

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        self.0.final_drain();
    }
}
