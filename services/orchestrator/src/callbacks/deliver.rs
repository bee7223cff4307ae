//! The delivery task (one per replica): claims due callbacks from the
//! outbox, makes one attempt each (in parallel, up to `max_in_flight`),
//! and records how it went.
//!
//! ```text
//! loop: claim due rows (lease) ─▶ attempt each in its own task:
//!         sign ─▶ POST through the egress client (destination checked
//!         again after resolution; no redirects; the attempt's timeout)
//!         ─▶ schedule::settle ─▶ store (fenced by the claim)
//!         ─▶ metrics; audit once settled: delivered, given up, refused
//!       wait: an attempt ended | a new callback was stored here | poll
//! ```
//!
//! A delivery is marked delivered only after a 2xx answer, and a delivered
//! row is never claimed again: the receiver sees a delivery twice only if
//! this replica dies (or cannot record the answer) between the answer and
//! its recording. Attempts are numbered when claimed, so one that a crash
//! cut short is counted too.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_egress::{EgressError, read_capped};
use agentmesh_kit::time::now_micros;
use agentmesh_proto::audit::v1::{AuditEvent, CallbackDetails, EventType, Outcome, audit_event};
use reqwest::Url;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::schedule::{self, Sent};
use super::{Callbacks, payload, sign};
use crate::metrics::AttemptOutcome;
use crate::store::{DueCallback, Settled, Store};

/// Bytes of a receiver's answer read (and dropped) so its connection can
/// be reused.
const ANSWER_BYTES: usize = 4096;
/// Tries at recording an attempt's outcome.
const SETTLE_TRIES: u32 = 4;

/// Delivers due callbacks until the task is aborted (see the module's
/// doc); `owner` names this replica in its claims.
pub(crate) async fn deliver(callbacks: Arc<Callbacks>, store: Store, owner: String) {
    if !store.is_shared() {
        // SQLite has one process, this one: a claim left in the file is a
        // previous run's, cut short by a crash.
        match store.release_callback_claims(None).await {
            Ok(0) => {}
            Ok(released) => {
                tracing::info!(
                    released,
                    "callbacks claimed by a previous process are due again"
                );
            }
            Err(err) => tracing::warn!(error = %err, "cannot release stale callback claims"),
        }
    }
    let config = &callbacks.config;
    let lease = i64::try_from(config.claim_lease().as_micros()).unwrap_or(i64::MAX);
    let mut in_flight = JoinSet::new();
    let mut counted: Option<Instant> = None;
    loop {
        callbacks.secrets.refresh();
        let free = config.max_in_flight.saturating_sub(in_flight.len());
        if free > 0 {
            match store
                .claim_callbacks(&owner, now_micros().saturating_add(lease), free)
                .await
            {
                Ok(due) => {
                    for due in due {
                        in_flight.spawn(attempt(
                            Arc::clone(&callbacks),
                            store.clone(),
                            owner.clone(),
                            due,
                        ));
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot claim due callbacks"),
            }
        }
        if counted.is_none_or(|at| at.elapsed() >= config.poll_interval) {
            counted = Some(Instant::now());
            match store.pending_callbacks().await {
                Ok(pending) => callbacks.metrics.outbox_depth(pending),
                Err(err) => tracing::debug!(error = %err, "cannot count pending callbacks"),
            }
        }
        tokio::select! {
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            () = callbacks.due.notified() => {}
            () = tokio::time::sleep(config.poll_interval) => {}
        }
    }
}

/// One attempt at `due`, recorded.
async fn attempt(callbacks: Arc<Callbacks>, store: Store, owner: String, due: DueCallback) {
    let (body, kind) = payload::envelope(&due.payload, &due.delivery_id, due.attempt);
    let sent = callbacks.send(&due, body, &kind).await;
    let now = now_micros();
    let age =
        Duration::from_micros(u64::try_from(now.saturating_sub(due.create_time)).unwrap_or(0));
    let (settled, outcome) = schedule::settle(
        &callbacks.config,
        sent,
        due.attempt,
        age,
        now,
        0.8 + 0.4 * fastrand::f64(),
    );
    callbacks.metrics.attempt(outcome, age.as_secs_f64());
    let mut delay = Duration::from_millis(100);
    for tries in 1..=SETTLE_TRIES {
        match store
            .settle_callback(&due.delivery_id, &owner, &settled)
            .await
        {
            Ok(true) => {
                callbacks.record(&due, &kind, &settled, outcome, age);
                return;
            }
            Ok(false) => {
                tracing::warn!(delivery_id = %due.delivery_id, "the claim on a callback ran out during its attempt; another replica attempts it again");
                return;
            }
            Err(err) if tries == SETTLE_TRIES => {
                tracing::warn!(delivery_id = %due.delivery_id, error = %err, "cannot record a callback attempt; it is attempted again once its claim runs out");
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

impl Callbacks {
    /// Signs and POSTs one attempt's `body` (of type `kind`).
    async fn send(&self, due: &DueCallback, body: Vec<u8>, kind: &str) -> Sent {
        let Some(secrets) = self.secrets.for_tenant(&due.tenant) else {
            return Sent::Failed {
                status: 0,
                error: "no callback secret is configured for the run's tenant".into(),
            };
        };
        let Ok(url) = Url::parse(&due.url) else {
            return Sent::Refused("the stored callback URL is not a URL".into());
        };
        let timestamp = now_micros().div_euclid(1_000_000);
        let signature = sign::signature_header(&secrets, timestamp, &body);
        let request = self
            .client
            .request(reqwest::Method::POST, url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(sign::SIGNATURE_HEADER, signature)
            .header(sign::DELIVERY_HEADER, &due.delivery_id)
            .header(sign::EVENT_HEADER, kind)
            .timeout(self.config.timeout)
            .body(body)
            .build();
        let request = match request {
            Ok(request) => request,
            Err(err) => {
                return Sent::Refused(format!(
                    "the callback request cannot be built: {}",
                    agentmesh_kit::status::error_chain(&err.without_url())
                ));
            }
        };
        match self.client.send(request).await {
            Ok(answer) => {
                let status = answer.status();
                // Read a little so the connection can be reused; the
                // content does not matter.
                let _ = read_capped(answer, ANSWER_BYTES).await;
                if status.is_success() {
                    Sent::Delivered(status.as_u16())
                } else if status.is_redirection() {
                    Sent::Failed {
                        status: status.as_u16(),
                        error: format!(
                            "the receiver answered {status}; redirects are not followed"
                        ),
                    }
                } else {
                    Sent::Failed {
                        status: status.as_u16(),
                        error: format!("the receiver answered {status}"),
                    }
                }
            }
            Err(EgressError::Refused(refusal)) => Sent::Refused(refusal.to_string()),
            Err(err) => Sent::Failed {
                status: 0,
                error: err.to_string(),
            },
        }
    }

    /// Logs a settled attempt and, when it is the delivery's last word
    /// (delivered, given up, refused), records it in the audit log.
    fn record(
        &self,
        due: &DueCallback,
        kind: &str,
        settled: &Settled,
        outcome: AttemptOutcome,
        age: Duration,
    ) {
        let (audit_outcome, status, error) = match settled {
            Settled::Delivered { status } => {
                tracing::info!(run_id = %due.run_id, delivery_id = %due.delivery_id, attempt = due.attempt, status, "callback delivered");
                (Outcome::Success, *status, "")
            }
            Settled::Retry { error, .. } => {
                tracing::info!(run_id = %due.run_id, delivery_id = %due.delivery_id, attempt = due.attempt, %error, "callback attempt failed; retrying later");
                return;
            }
            Settled::GaveUp { status, error } => {
                tracing::warn!(run_id = %due.run_id, delivery_id = %due.delivery_id, attempt = due.attempt, %error, "gave up on a callback");
                let outcome = if outcome == AttemptOutcome::Refused {
                    Outcome::Denied
                } else {
                    Outcome::Failure
                };
                (outcome, *status, error.as_str())
            }
        };
        self.audit
            .emit(self.audit_event(due, kind, audit_outcome, status, error, age));
    }

    /// The RUN_CALLBACK audit event of a settled delivery: the URL's host
    /// only (its path and query may carry secrets), never a secret.
    fn audit_event(
        &self,
        due: &DueCallback,
        kind: &str,
        outcome: Outcome,
        status: u16,
        error: &str,
        age: Duration,
    ) -> AuditEvent {
        let mut event = self.audit.event(EventType::RunCallback);
        event.run_id.clone_from(&due.run_id);
        event.tenant.clone_from(&due.tenant);
        event.outcome = outcome.into();
        error.clone_into(&mut event.reason);
        event.details = Some(audit_event::Details::Callback(CallbackDetails {
            delivery_id: due.delivery_id.clone(),
            event: kind.to_owned(),
            host: Url::parse(&due.url)
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned))
                .unwrap_or_default(),
            attempts: due.attempt,
            http_status: i32::from(status),
            error: error.to_owned(),
            delay: Some(agentmesh_audit_client::duration(age)),
        }));
        event
    }
}
