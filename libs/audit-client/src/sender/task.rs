//! The sender task: takes batches from the queue (or the spool, replaying
//! oldest first), sends them to the audit service, and spools what it cannot
//! send, marking the service down and up as answers come.

use super::*;

// === the sender task ===

pub(super) struct Sender {
    pub(super) active: Arc<Active>,
    pub(super) client: AuditServiceClient<MeshChannel>,
    pub(super) settings: Settings,
    /// The audit service failed the last call.
    pub(super) down: bool,
    /// Current wait between attempts while down.
    pub(super) retry_delay: Duration,
    pub(super) next_attempt: Instant,
    /// When the oldest queued event is due, once the sender has seen it.
    pub(super) deadline: Option<Instant>,
    /// Taking from the queue is paused after a spool write failed.
    pub(super) paused_until: Option<Instant>,
    /// Inside a spool-full episode (logged and counted once).
    pub(super) spool_full: bool,
    /// Inside a spool-error episode (logged once).
    pub(super) spool_failing: bool,
    /// Events per call; lowered if the audit service refuses the batch size.
    pub(super) batch_limit: usize,
}

impl Sender {
    pub(super) fn new(active: Arc<Active>, client: AuditServiceClient<MeshChannel>) -> Self {
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

    pub(super) async fn run(mut self) {
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
    pub(super) async fn replay_step(&mut self) -> bool {
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
    pub(super) async fn queue_step(&mut self) -> bool {
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

    pub(super) async fn spool_batch(&mut self, batch: Vec<AuditEvent>) {
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
    pub(super) fn requeue(&mut self, batch: Vec<AuditEvent>) {
        let mut queue = lock(&self.active.queue);
        for event in batch.into_iter().rev() {
            queue.events.push_front(event);
        }
        self.active
            .metrics
            .queue_depth
            .set(gauge_value(queue.events.len()));
    }

    pub(super) fn spool_error(&mut self, err: &io::Error) {
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
    pub(super) fn pause(&mut self) {
        self.paused_until = Some(Instant::now() + self.retry_delay);
    }

    pub(super) fn paused(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| now < until) {
            return true;
        }
        self.paused_until = None;
        false
    }

    /// One `Record` call. `Ok` once the audit service answered (per-event
    /// rejections included); `Err` when the batch must be retried.
    pub(super) async fn record(&mut self, events: Vec<AuditEvent>) -> Result<(), tonic::Status> {
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

    pub(super) fn mark_down(&mut self, status: &tonic::Status, batch: usize) {
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

    pub(super) fn mark_up(&mut self) {
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
    pub(super) async fn wait(&mut self) {
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
