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
//!
//! # Layout
//!
//! * this module: [`Shared`], the handle's side (push, capture limits,
//!   delivery health, shutdown) and [`start`];
//! * `active`: the live queue, the push policies and the final drain;
//! * `task`: the sender task (send, spool, replay, down and up);
//! * `metrics`: the sender's gauges and counters.

mod active;
mod metrics;
mod task;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use agentmesh_kit::client::MeshChannel;
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
use active::*;
use metrics::*;
use task::*;

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
    clients: &agentmesh_kit::client::Clients,
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
    let channel = clients
        .channel(&config.url)
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

fn gauge_value<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
