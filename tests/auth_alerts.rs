//! A brute-force burst, end to end, between real processes: the audit
//! service, the tool runner and the alerting service, all with API-key
//! auth from one keys file, each service presenting its own key to its
//! peers. 20 calls with a wrong key within a minute — to the tool runner
//! (whose refusals travel through its audit producer) and to the audit
//! service itself (whose refusals it appends to its own log) — make the
//! shipped `AuthenticationFailures` rule fire at each, seen through the
//! alerting service's ListAlerts; 19 do not.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

#[path = "access_support.rs"]
mod access_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use access_support::{Keys, bearer, id_of, unknown_key};
use agentmesh_proto::alerting::v1::{
    self as alerting, alerting_service_client::AlertingServiceClient,
};
use agentmesh_proto::audit::v1::{
    self as audit, EventFilter, EventType, Outcome, audit_event::Details,
    audit_service_client::AuditServiceClient,
};
use agentmesh_proto::tools::v1::{
    self as tools, tool_runner_service_client::ToolRunnerServiceClient,
};
use agentmesh_testkit::eventually;
use agentmesh_tests::{RunningBinary, channel, wait_serving};
use tonic::Code;

const KEYS: &[(&str, &str, &str, &[&str])] = &[
    (
        "tool-runner",
        "",
        "tool-runner",
        &["service", "audit:write"],
    ),
    (
        "alerting",
        "",
        "alerting",
        &["service", "audit:read", "audit:write", "admin"],
    ),
    ("oncall", "", "oncall", &["alerts:read"]),
    ("auditor", "", "auditor", &["admin"]),
    ("acme", "acme", "alice", &["tools:read", "audit:read"]),
];

/// `[<section>]` with API-key auth from `keys`, presenting the key
/// `credential` (if any) to peers; `extra` is more of the section.
fn config(
    dir: &Path,
    section: &str,
    keys: &Keys,
    credential: Option<&str>,
    extra: &str,
) -> PathBuf {
    let credential_file = credential.map(|name| {
        let path = dir.join(format!("{name}.key"));
        std::fs::write(&path, format!("{}\n", keys.key(name))).unwrap();
        format!("credential_file = {:?}\n", path.display().to_string())
    });
    let text = format!(
        "[{section}]\n{extra}\n[{section}.auth]\nmethods = [\"api_key\"]\nkeys_file = {:?}\naudit_interval = \"1s\"\n{}",
        keys.path.display().to_string(),
        credential_file.unwrap_or_default(),
    );
    let path = dir.join(format!("{section}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(name: &str, config: &Path, dir: &Path, service: &str) -> RunningBinary {
    let binary =
        RunningBinary::start(name, &["--config", config.to_str().unwrap()], &[], dir).await;
    wait_serving(channel(binary.grpc), service).await;
    binary
}

/// The firing `AuthenticationFailures` alerts, by service, with their
/// values.
async fn firing(alerting: SocketAddr, keys: &Keys) -> Vec<(String, f64)> {
    let request = alerting::ListAlertsRequest {
        states: vec![alerting::AlertState::Firing as i32],
        ..Default::default()
    };
    let mut client = AlertingServiceClient::new(channel(alerting));
    let alerts = client
        .list_alerts(bearer(request, keys.key("oncall")))
        .await
        .unwrap()
        .into_inner()
        .alerts;
    alerts
        .into_iter()
        .filter(|alert| {
            alert.labels.get("alertname").map(String::as_str) == Some("AuthenticationFailures")
        })
        .map(|alert| (alert.labels["service"].clone(), alert.value))
        .collect()
}

/// The failures of `credential` at `service` the audit log holds (the sum
/// of their counts).
async fn recorded_failures(audit: SocketAddr, keys: &Keys, service: &str, credential: &str) -> i32 {
    let request = audit::QueryRequest {
        filter: Some(EventFilter {
            types: vec![EventType::Authentication as i32],
            outcomes: vec![Outcome::Denied as i32],
            services: vec![service.to_owned()],
            ..Default::default()
        }),
        page_size: 1000,
        ..Default::default()
    };
    let events = AuditServiceClient::new(channel(audit))
        .query(bearer(request, keys.key("auditor")))
        .await
        .unwrap()
        .into_inner()
        .events;
    events
        .iter()
        .filter_map(|event| match &event.details {
            Some(Details::Access(access)) if access.credential_id == credential => {
                Some(access.count.max(1))
            }
            _ => None,
        })
        .sum()
}

/// `n` calls with `wrong` to the tool runner, each refused.
async fn guess_tools(addr: SocketAddr, wrong: &str, n: usize) {
    let mut client = ToolRunnerServiceClient::new(channel(addr));
    for _ in 0..n {
        let refused = client
            .list_tools(bearer(tools::ListToolsRequest::default(), wrong))
            .await
            .expect_err("a wrong key");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
}

/// `n` calls with `wrong` to the audit service, each refused.
async fn guess_audit(addr: SocketAddr, wrong: &str, n: usize) {
    let mut client = AuditServiceClient::new(channel(addr));
    for _ in 0..n {
        let refused = client
            .query(bearer(audit::QueryRequest::default(), wrong))
            .await
            .expect_err("a wrong key");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
}

#[tokio::test]
async fn twenty_failed_authentications_in_a_minute_fire_authentication_failures() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::write(dir.path(), KEYS);
    let audit_config = config(dir.path(), "audit", &keys, None, "");
    let audit = start(
        "agentmesh-audit",
        &audit_config,
        dir.path(),
        "agentmesh.audit.v1.AuditService",
    )
    .await;
    let audit_url = format!("http://{}", audit.grpc);
    let tools_config = config(
        dir.path(),
        "tool_runner",
        &keys,
        Some("tool-runner"),
        &format!("[tool_runner.audit]\nurl = {audit_url:?}\nflush_interval = \"50ms\"\n"),
    );
    let tool_runner = start(
        "agentmesh-tool-runner",
        &tools_config,
        dir.path(),
        "agentmesh.tools.v1.ToolRunnerService",
    )
    .await;
    let alerting_config = config(
        dir.path(),
        "alerting",
        &keys,
        Some("alerting"),
        &format!(
            "evaluation_interval = \"200ms\"\n[alerting.source]\nurl = {audit_url:?}\nreconnect_backoff = \"100ms\"\n\
             max_reconnect_backoff = \"500ms\"\n[alerting.audit]\nurl = {audit_url:?}\nflush_interval = \"50ms\"\n"
        ),
    );
    let alerting = start(
        "agentmesh-alerting",
        &alerting_config,
        dir.path(),
        "agentmesh.alerting.v1.AlertingService",
    )
    .await;

    // The operator API is behind alerts:read.
    let mut anonymous = AlertingServiceClient::new(channel(alerting.grpc));
    let refused = anonymous
        .list_alerts(alerting::ListAlertsRequest::default())
        .await
        .expect_err("no key");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = anonymous
        .list_alerts(bearer(
            alerting::ListAlertsRequest::default(),
            keys.key("acme"),
        ))
        .await
        .expect_err("a tenant's key");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // A valid call goes through.
    ToolRunnerServiceClient::new(channel(tool_runner.grpc))
        .list_tools(bearer(tools::ListToolsRequest::default(), keys.key("acme")))
        .await
        .unwrap();

    let wrong = unknown_key();
    let wrong_id = id_of(&wrong);
    // 19 failures at the tool runner: all recorded (one event at once, the
    // rest counted into one), and still no alert.
    guess_tools(tool_runner.grpc, &wrong, 19).await;
    eventually(
        "19 failures in the audit log",
        Duration::from_secs(20),
        || async {
            (recorded_failures(audit.grpc, &keys, "tool-runner", &wrong_id).await == 19)
                .then_some(())
        },
    )
    .await;
    // Several evaluations after the alerting service has seen them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        firing(alerting.grpc, &keys).await,
        [],
        "19 failures are below the threshold"
    );

    // The 20th, and 20 at the audit service itself.
    guess_tools(tool_runner.grpc, &wrong, 1).await;
    guess_audit(audit.grpc, &wrong, 20).await;
    let mut fired = eventually(
        "AuthenticationFailures firing at both",
        Duration::from_secs(30),
        || async {
            let fired = firing(alerting.grpc, &keys).await;
            (fired.len() == 2).then_some(fired)
        },
    )
    .await;
    fired.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        fired,
        [("audit".to_owned(), 20.0), ("tool-runner".to_owned(), 20.0)],
        "each alert sums the failures, not the events"
    );
    assert_eq!(
        recorded_failures(audit.grpc, &keys, "audit", &wrong_id).await,
        20
    );
    for binary in [&audit, &tool_runner, &alerting] {
        assert!(
            binary
                .log
                .lock()
                .unwrap()
                .iter()
                .all(|line| !line.contains(&wrong)),
            "the wrong key is never logged"
        );
    }
}
