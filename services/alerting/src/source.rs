//! The audit stream: `AuditService/Subscribe` from the position the service
//! reached, fed to the [`Engine`] in batches.
//!
//! Each batch (the events that are ready at once, up to `batch_size`) is
//! evaluated and committed together with the cursor of its last event, so a
//! restart resumes exactly after what was counted. Heartbeats move the
//! cursor through stretches the filter skips. A lost stream is reconnected
//! with backoff from the position reached; a position the audit log no
//! longer holds (OUT_OF_RANGE after retention) restarts from the rules'
//! longest window back.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_proto::alerting::v1 as alerting;
use agentmesh_proto::audit::v1::{
    AuditEvent, EventFilter, EventType, SubscribeRequest, SubscribeResponse,
    audit_service_client::AuditServiceClient, subscribe_response::Item,
};
use futures::FutureExt;
use futures::StreamExt;

use crate::config::SourceConfig;
use crate::engine::Engine;
use crate::leader::Fence;
use crate::metrics::Metrics;

/// What to ask the audit service for, from the rules in effect.
#[derive(Debug, Clone)]
pub(crate) struct Interest {
    /// The event types any enabled rule looks at; empty = all types.
    pub(crate) types: Vec<i32>,
    /// How far back a first start replays: the longest window of any rule.
    pub(crate) lookback: Duration,
}

impl Interest {
    /// The types and the longest window of the enabled rules.
    pub(crate) fn of(rules: &[alerting::Rule]) -> Self {
        let enabled: Vec<&alerting::Rule> = rules.iter().filter(|rule| rule.enabled).collect();
        let mut types: Vec<i32> = Vec::new();
        let mut every_type = enabled.is_empty();
        let mut lookback = Duration::ZERO;
        for rule in &enabled {
            let filter_types = rule
                .filter
                .as_ref()
                .map(|filter| filter.types.clone())
                .unwrap_or_default();
            if filter_types.is_empty() {
                every_type = true;
            }
            types.extend(filter_types);
            let window = match &rule.condition {
                Some(alerting::rule::Condition::Count(count)) => count.window,
                Some(alerting::rule::Condition::FailureRatio(ratio)) => ratio.window,
                Some(alerting::rule::Condition::Absence(absence)) => absence.duration,
                None => None,
            };
            if let Some(window) = window.and_then(|window| Duration::try_from(window).ok()) {
                lookback = lookback.max(window);
            }
        }
        types.sort_unstable();
        types.dedup();
        if every_type {
            types.clear();
        }
        // The audit service's own heartbeats carry the position through
        // stretches of other types, so narrowing the stream loses nothing.
        types.retain(|t| *t != EventType::Unspecified as i32);
        Self { types, lookback }
    }
}

/// Follows the audit stream until the task is stopped.
pub(crate) async fn run(
    engine: Arc<Engine>,
    config: SourceConfig,
    interest: Interest,
    metrics: Metrics,
    fence: Fence,
) {
    // Counted in the service's grpc_client_* metrics, and presenting the
    // service's own credential (which needs `audit:read` and `admin`: the
    // rules read every tenant's events); there is no request context to
    // forward here, so the channel forwards no end user's identity.
    let mut client = match metrics.clients().channel(&config.url) {
        Ok(channel) => AuditServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
        Err(err) => {
            // The URL was checked at start; this is unreachable in practice.
            tracing::error!(error = %err, url = %config.url, "the audit stream's address is unusable; no rule is evaluated");
            return;
        }
    };
    let mut backoff = config.reconnect_backoff;
    let mut restart_from_lookback = false;
    loop {
        let cursor = if restart_from_lookback {
            None
        } else {
            engine.cursor().await
        };
        restart_from_lookback = false;
        let request = subscribe_request(&interest, cursor.as_deref());
        match client.subscribe(request).await {
            Ok(response) => {
                tracing::info!(url = %config.url, after = cursor.as_deref().unwrap_or("(start)"), "audit stream connected");
                metrics.stream_connected(true);
                restart_from_lookback = follow(
                    &engine,
                    response.into_inner(),
                    &config,
                    &mut backoff,
                    &fence,
                )
                .await;
                metrics.stream_connected(false);
                metrics.stream_reconnect();
            }
            Err(status) => {
                if status.code() == tonic::Code::OutOfRange {
                    tracing::error!(error = %status.message(), "the audit log no longer holds the stream position; resuming from the rules' longest window back");
                    restart_from_lookback = true;
                    continue;
                }
                tracing::warn!(
                    url = %config.url,
                    code = ?status.code(),
                    error = %status.message(),
                    retry_in = ?backoff,
                    "the audit stream is unavailable; retrying"
                );
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(config.max_reconnect_backoff);
    }
}

/// The subscription from `cursor`, or (none yet) from the longest window
/// back.
fn subscribe_request(interest: &Interest, cursor: Option<&str>) -> SubscribeRequest {
    let filter = EventFilter {
        types: interest.types.clone(),
        // A first start replays the longest window back, so rules see
        // what happened just before the service started.
        start_time: cursor
            .is_none()
            .then(|| (SystemTime::now() - interest.lookback).into()),
        ..EventFilter::default()
    };
    SubscribeRequest {
        filter: Some(filter),
        from_beginning: cursor.is_none(),
        after_cursor: cursor.unwrap_or_default().to_owned(),
    }
}

/// Feeds a connected stream to the engine, batch by batch, until it ends or
/// fails; a batch that moved the position resets `backoff`. True when the
/// audit log no longer holds the position (resume from the lookback).
async fn follow(
    engine: &Engine,
    mut stream: tonic::Streaming<SubscribeResponse>,
    config: &SourceConfig,
    backoff: &mut Duration,
    fence: &Fence,
) -> bool {
    loop {
        let Some(first) = stream.next().await else {
            tracing::warn!("the audit stream ended; reconnecting");
            return false;
        };
        let mut items = vec![first];
        // Whatever else is already here joins the batch.
        while items.len() < config.batch_size {
            match stream.next().now_or_never() {
                Some(Some(item)) => items.push(item),
                _ => break,
            }
        }
        let (events, position, failure) = unpack(items);
        if !events.is_empty() || position.is_some() {
            // Only the leader advances the shared cursor.
            fence.ensure().await;
            engine.observe(&events, position).await;
            *backoff = config.reconnect_backoff;
        }
        if let Some(status) = failure {
            if status.code() == tonic::Code::OutOfRange {
                tracing::error!(
                    error = %status.message(),
                    "the audit log no longer holds the stream position (retention); \
                     resuming from the rules' longest window back"
                );
                return true;
            }
            tracing::warn!(code = ?status.code(), error = %status.message(), "the audit stream failed; reconnecting");
            return false;
        }
    }
}

/// A batch of stream items as the events in it, the position after it
/// (the last event's or heartbeat's cursor), and the error that ended it.
fn unpack(
    items: Vec<Result<SubscribeResponse, tonic::Status>>,
) -> (Vec<AuditEvent>, Option<String>, Option<tonic::Status>) {
    let mut events: Vec<AuditEvent> = Vec::with_capacity(items.len());
    let mut position: Option<String> = None;
    for item in items {
        match item {
            Ok(message) => match message.item {
                Some(Item::Event(event)) => {
                    // Joins the alerting side of a request to its logs
                    // elsewhere (debug level: one line per event).
                    tracing::debug!(
                        event_id = %event.event_id,
                        event_type = event.r#type().as_str_name(),
                        sequence = %event.cursor,
                        run_id = %event.run_id,
                        request_id = %event.request_id,
                        trace_id = %event.trace_id,
                        "evaluating audit event"
                    );
                    position = Some(event.cursor.clone());
                    events.push(event);
                }
                Some(Item::Heartbeat(heartbeat)) if !heartbeat.cursor.is_empty() => {
                    position = Some(heartbeat.cursor);
                }
                Some(Item::Heartbeat(_)) | None => {}
            },
            Err(status) => return (events, position, Some(status)),
        }
    }
    (events, position, None)
}

/// Between half and all of `backoff`, so replicas do not reconnect in step.
fn jitter(backoff: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let fraction = 0.5 + f64::from(nanos % 1000) / 2000.0;
    backoff.mul_f64(fraction)
}
