//! What the alerting tests share: the audit service in this process, the
//! alerting settings with the rule "ToolFailing", a webhook receiver that
//! records what it is sent, and audit events of failing tools.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_kit::{Listeners, ServeError};
use agentmesh_proto::audit::v1::{
    self as audit, AuditEvent, EventType, Outcome, ToolCallDetails, audit_event::Details,
    audit_service_client::AuditServiceClient,
};
use agentmesh_testkit::eventually;
use agentmesh_tests::{channel, test_server_config, wait_serving, within};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub(crate) const ALERTING: &str = "agentmesh.alerting.v1.AlertingService";

/// A service in this process.
pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Served {
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        within("a service to stop", Duration::from_secs(15), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

pub(crate) async fn serve<F>(
    server: &agentmesh_kit::ServerConfig,
    run: impl FnOnce(Listeners, CancellationToken) -> F,
) -> Served
where
    F: Future<Output = Result<(), ServeError>> + Send + 'static,
{
    let listeners = Listeners::bind(server).await.unwrap();
    let addr = listeners.grpc_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(listeners, stop.clone()));
    wait_serving(channel(addr), "").await;
    Served { addr, stop, task }
}

/// The audit service on SQLite in `dir`.
pub(crate) async fn start_audit(dir: &Path) -> Served {
    let mut config = agentmesh_audit::Config {
        server: test_server_config(),
        ..Default::default()
    };
    config.storage.data_dir = dir.join("audit");
    config.subscribe_heartbeat = Duration::from_millis(200);
    let server = config.server.clone();
    serve(&server, |listeners, stop| {
        agentmesh_audit::serve_with_listeners(config, listeners, stop.cancelled_owned())
    })
    .await
}

/// The alerting service's settings for the tests: fast timings, the rule
/// "ToolFailing" (5 failures of one tool within `window`), and `extra` TOML
/// (receivers, route, …) on top.
pub(crate) fn alerting_toml(audit: SocketAddr, window: &str, extra: &str) -> String {
    format!(
        r#"
evaluation_interval = "100ms"
resolved_retention = "1m"

[source]
url = "http://{audit}"
reconnect_backoff = "100ms"
max_reconnect_backoff = "500ms"

[audit]
url = ""

[delivery]
initial_backoff = "50ms"
max_backoff = "200ms"

[[rules]]
name = "ToolFailing"
description = "A tool fails repeatedly"
severity = "warning"
group_by = ["tool"]
[rules.filter]
types = ["TOOL_CALL"]
outcomes = ["FAILURE"]
[rules.count]
threshold = 5
window = "{window}"
[rules.annotations]
summary = "tool {{{{tool}}}} failed {{{{count}}}} times in {{{{window}}}}"

{extra}
"#
    )
}

/// A webhook receiver and a route sending everything to it, grouped by
/// alert name and tool.
pub(crate) fn webhook_route(hook: SocketAddr) -> String {
    format!(
        r#"
[route]
receiver = "hook"
group_by = ["alertname", "tool"]
group_wait = "200ms"
group_interval = "500ms"
repeat_interval = "1h"

[[receivers]]
name = "hook"
[[receivers.webhook_configs]]
url = "http://{hook}/hook"
"#
    )
}

/// An HTTP server recording the JSON bodies POSTed to it.
#[derive(Clone, Default)]
pub(crate) struct Hook {
    received: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    pub(crate) async fn start() -> (Self, SocketAddr) {
        let hook = Self::default();
        let recorded = hook.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let recorded = recorded.clone();
                async move {
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    recorded.received.lock().unwrap().push(json);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hook, addr)
    }

    pub(crate) fn payloads(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap().clone()
    }
}

/// Waits for `count` payloads, then a little longer to see that no more come.
pub(crate) async fn exactly(hook: &Hook, count: usize, settle: Duration) -> Vec<serde_json::Value> {
    eventually(
        &format!("{count} webhook payloads"),
        Duration::from_secs(20),
        || async { (hook.payloads().len() >= count).then_some(()) },
    )
    .await;
    tokio::time::sleep(settle).await;
    let payloads = hook.payloads();
    assert_eq!(payloads.len(), count, "{payloads:#?}");
    payloads
}

/// A TOOL_CALL failure of `tool`, as the tool runner records it.
pub(crate) fn tool_failure(tool: &str) -> AuditEvent {
    AuditEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        time: Some(std::time::SystemTime::now().into()),
        r#type: EventType::ToolCall as i32,
        service: "tool-runner".into(),
        outcome: Outcome::Failure as i32,
        reason: "EXECUTION: boom".into(),
        details: Some(Details::ToolCall(ToolCallDetails {
            tool: tool.into(),
            is_error: true,
            error: "boom".into(),
            error_kind: "EXECUTION".into(),
            attempts: 1,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub(crate) async fn record(audit: &mut AuditServiceClient<Channel>, events: Vec<AuditEvent>) {
    let response = audit
        .record(audit::RecordRequest { events })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.rejected_count, 0, "{response:?}");
}
