//! Forwarding to Prometheus Alertmanagers: every `resend_interval`, and
//! soon after any alert starts firing or resolves, post the firing and
//! recently resolved alerts to each configured Alertmanager, as Prometheus
//! does. A firing alert is sent with an end a few intervals ahead, so an
//! Alertmanager resolves it by itself if agentmesh stops re-sending.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_audit_client::AuditClient;
use agentmesh_proto::alerting::v1 as pb;
use agentmesh_proto::audit::v1::{EventType, NotificationDetails, Outcome, audit_event::Details};
use tokio::sync::broadcast::error::RecvError;

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::model::AlertState;
use crate::receivers::AlertmanagerForwarder;

/// How long after a change the post waits, so a burst of changes goes out
/// in one post.
const SETTLE: Duration = Duration::from_millis(200);

/// Forwards to one Alertmanager until the task is stopped.
pub(crate) async fn run(
    engine: Arc<Engine>,
    forwarder: AlertmanagerForwarder,
    metrics: Metrics,
    audit: AuditClient,
) {
    let mut changes = engine.subscribe();
    let mut failing = false;
    loop {
        let alerts: Vec<_> = engine
            .alerts()
            .await
            .into_iter()
            .filter(|alert| alert.state != AlertState::Pending && forwarder.matches(alert))
            .collect();
        if !alerts.is_empty() {
            let result = forwarder.post(&alerts, SystemTime::now()).await;
            metrics.forwarded(forwarder.label(), result.is_ok());
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!(alertmanager = %forwarder.label(), "alertmanager reachable again");
                    }
                    failing = false;
                }
                Err(err) => {
                    // Logged and audited once per failing stretch; the next
                    // interval re-sends everything anyway.
                    if !failing {
                        tracing::warn!(alertmanager = %forwarder.label(), error = %err, "alerts could not be posted to alertmanager; re-sending every interval");
                        let mut event = audit.event(EventType::Notification);
                        event.outcome = Outcome::Failure as i32;
                        event.reason = err.to_string();
                        event.details = Some(Details::Notification(NotificationDetails {
                            receiver: forwarder.label().to_owned(),
                            receiver_kind: "alertmanager".to_owned(),
                            group_key: String::new(),
                            status: "firing".to_owned(),
                            alert_count: i32::try_from(alerts.len()).unwrap_or(i32::MAX),
                            attempts: 1,
                            error: err.to_string(),
                        }));
                        audit.emit(event);
                    }
                    failing = true;
                }
            }
        }
        // Wait for the interval, or for an alert to fire or resolve.
        let deadline = tokio::time::sleep(forwarder.resend_interval());
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                change = changes.recv() => match change {
                    Ok(change) if change.kind == pb::AlertChangeType::StateChanged
                        && change.alert.state != AlertState::Pending =>
                    {
                        tokio::time::sleep(SETTLE).await;
                        break;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}
