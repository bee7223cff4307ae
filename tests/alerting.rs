//! The alerting service with real peers on loopback: tool failures recorded
//! by the real tool runner into the real audit service, read back through
//! its Subscribe stream; notifications to a local HTTP receiver in the
//! Alertmanager webhook format, to a real SMTP server (Python's aiosmtpd),
//! and to a real Prometheus Alertmanager; silences; kill -9 in the middle of
//! a burst; configuration and request errors.
#![expect(clippy::unwrap_used, reason = "tests")]
#![expect(clippy::indexing_slicing, reason = "a test fails by panicking")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::alerting::v1::{self as pb, alerting_service_client::AlertingServiceClient};
use agentmesh_proto::audit::v1::{AuditEvent, audit_service_client::AuditServiceClient};
use agentmesh_proto::tools::v1 as tools;
use agentmesh_testkit::eventually;
use agentmesh_tests::{
    RunningBinary, channel, free_port, test_server_config, wait_serving, within,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;
use tonic::transport::Channel;

#[path = "alerting_support.rs"]
mod alerting_support;
use alerting_support::{
    ALERTING, Hook, Served, alerting_toml, exactly, record, serve, start_audit, tool_failure,
    webhook_route,
};

/// Which database the alerting service keeps its state in.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The tool runner, sending its audit events to `audit`.
async fn start_tool_runner(dir: &Path, audit: SocketAddr) -> Served {
    let mut config = agentmesh_tool_runner::Config {
        server: test_server_config(),
        ..Default::default()
    };
    config.audit.url = format!("http://{audit}");
    config.audit.spool_dir = dir.join("tool-runner-spool");
    config.audit.flush_interval = Duration::from_millis(50);
    config.workspaces_dir = dir.join("workspaces");
    let server = config.server.clone();
    serve(&server, |listeners, stop| {
        agentmesh_tool_runner::serve_with_listeners(config, listeners, stop.cancelled_owned())
    })
    .await
}

async fn start_alerting(
    toml_text: &str,
    backend: Backend,
    dir: &Path,
) -> (
    Served,
    Option<Arc<agentmesh_testkit::postgres::PostgresServer>>,
) {
    let mut config: agentmesh_alerting::Config = toml::from_str(toml_text).unwrap();
    config.server = test_server_config();
    let postgres = match backend {
        Backend::Sqlite => {
            config.storage.data_dir = dir.join("alerting");
            None
        }
        Backend::Postgres => {
            let server = agentmesh_testkit::postgres::shared().await;
            config.storage.url = Some(server.create_database("alerting").await);
            Some(server)
        }
    };
    agentmesh_kit::config::validate(&config).unwrap();
    let server = config.server.clone();
    let served = serve(&server, |listeners, stop| {
        agentmesh_alerting::serve_with_listeners(config, listeners, stop.cancelled_owned())
    })
    .await;
    wait_serving(channel(served.addr), ALERTING).await;
    (served, postgres)
}

/// Calls the calculator with an expression that fails, `times` times.
async fn fail_the_calculator(tool_runner: SocketAddr, times: usize) {
    let mut client =
        tools::tool_runner_service_client::ToolRunnerServiceClient::new(channel(tool_runner));
    for i in 0..times {
        let result = client
            .execute_tool(tools::ExecuteToolRequest {
                tool: "calculator".into(),
                arguments_json: r#"{"expression": "1 / 0"}"#.into(),
                call_id: format!("failing-{i}"),
                run_id: "alerting-test".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(result.is_error, "1 / 0 is a tool error");
    }
}

fn client(addr: SocketAddr) -> AlertingServiceClient<Channel> {
    AlertingServiceClient::new(channel(addr))
}

async fn alerts(addr: SocketAddr, request: pb::ListAlertsRequest) -> Vec<pb::Alert> {
    client(addr)
        .list_alerts(request)
        .await
        .unwrap()
        .into_inner()
        .alerts
}

fn state(alert: &pb::Alert) -> pb::AlertState {
    pb::AlertState::try_from(alert.state).unwrap()
}

async fn a_failing_tool_fires_once_and_resolves_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let audit = start_audit(dir.path()).await;
    let tool_runner = start_tool_runner(dir.path(), audit.addr).await;
    let (hook, hook_addr) = Hook::start().await;
    let (alerting, _postgres) = start_alerting(
        &alerting_toml(audit.addr, "3s", &webhook_route(hook_addr)),
        backend,
        dir.path(),
    )
    .await;

    fail_the_calculator(tool_runner.addr, 5).await;

    // One firing alert...
    let firing = eventually("a firing alert", Duration::from_secs(20), || async {
        let listed = alerts(
            alerting.addr,
            pb::ListAlertsRequest {
                states: vec![pb::AlertState::Firing as i32],
                ..Default::default()
            },
        )
        .await;
        (listed.len() == 1).then(|| listed[0].clone())
    })
    .await;
    assert_eq!(firing.labels["alertname"], "ToolFailing");
    assert_eq!(firing.labels["tool"], "calculator");
    assert_eq!(firing.labels["severity"], "warning");
    assert_eq!(
        firing.annotations["summary"],
        "tool calculator failed 5 times in 3s"
    );
    assert_eq!(firing.rule, "ToolFailing");

    // ...and one webhook payload, as Alertmanager sends it.
    let payloads = exactly(&hook, 1, Duration::from_millis(1200)).await;
    let payload = &payloads[0];
    assert_eq!(payload["version"], "4");
    assert_eq!(payload["status"], "firing");
    assert_eq!(payload["receiver"], "hook");
    assert_eq!(payload["groupLabels"]["alertname"], "ToolFailing");
    assert_eq!(payload["groupLabels"]["tool"], "calculator");
    assert_eq!(payload["commonLabels"]["severity"], "warning");
    assert_eq!(
        payload["commonAnnotations"]["summary"],
        "tool calculator failed 5 times in 3s"
    );
    assert!(
        payload["groupKey"]
            .as_str()
            .unwrap()
            .contains("tool=\"calculator\""),
        "{payload}"
    );
    assert_eq!(payload["truncatedAlerts"], 0);
    let alert = &payload["alerts"][0];
    assert_eq!(payload["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["fingerprint"], firing.fingerprint.as_str());
    assert_eq!(alert["labels"]["tool"], "calculator");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        alert["startsAt"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok(),
        "{alert}"
    );
    assert!(alert.get("generatorURL").is_some(), "{alert}");

    // The failures stop; once the window passes, one resolved notice.
    let payloads = exactly(&hook, 2, Duration::from_millis(1200)).await;
    let resolved = &payloads[1];
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["groupKey"], payload["groupKey"]);
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let listed = alerts(alerting.addr, pb::ListAlertsRequest::default()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(state(&listed[0]), pb::AlertState::Resolved);

    alerting.stop().await;
    tool_runner.stop().await;
    audit.stop().await;
}

#[tokio::test]
async fn a_failing_tool_fires_once_and_resolves_once_on_sqlite() {
    a_failing_tool_fires_once_and_resolves_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_failing_tool_fires_once_and_resolves_once_on_postgres() {
    a_failing_tool_fires_once_and_resolves_once(Backend::Postgres).await;
}

/// Pushes a firing "Canary" alert (one per `instance`).
async fn fire_canary(alerting: SocketAddr, instance: &str) {
    client(alerting)
        .fire_alert(pb::FireAlertRequest {
            labels: [("alertname", "Canary"), ("instance", instance)]
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_silence_keeps_the_alert_listed_and_unnotified() {
    let dir = tempfile::tempdir().unwrap();
    let audit = start_audit(dir.path()).await;
    let tool_runner = start_tool_runner(dir.path(), audit.addr).await;
    let (hook, hook_addr) = Hook::start().await;
    // A second receiver for "Canary" alerts, which the silence does not
    // match: its notifications show how far the dispatcher has got.
    let (canary, canary_addr) = Hook::start().await;
    let routes = format!(
        r#"{}
[[route.routes]]
receiver = "canary"
matchers = ['alertname="Canary"']

[[receivers]]
name = "canary"
[[receivers.webhook_configs]]
url = "http://{canary_addr}/hook"
"#,
        webhook_route(hook_addr)
    );
    let (alerting, _) = start_alerting(
        &alerting_toml(audit.addr, "1m", &routes),
        Backend::Sqlite,
        dir.path(),
    )
    .await;
    let silence = client(alerting.addr)
        .create_silence(pb::CreateSilenceRequest {
            silence: Some(pb::Silence {
                matchers: vec![pb::Matcher {
                    name: "alertname".into(),
                    value: "ToolFailing".into(),
                    r#type: pb::MatchType::Equal as i32,
                }],
                ends_at: Some((std::time::SystemTime::now() + Duration::from_secs(3600)).into()),
                created_by: "ops@example.com".into(),
                comment: "calculator maintenance".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .silence
        .unwrap();
    assert!(!silence.id.is_empty());
    assert_eq!(silence.state, pb::SilenceState::Active as i32);

    fail_the_calculator(tool_runner.addr, 5).await;

    let silenced = eventually(
        "a firing, silenced alert",
        Duration::from_secs(20),
        || async {
            let listed = alerts(
                alerting.addr,
                pb::ListAlertsRequest {
                    states: vec![pb::AlertState::Firing as i32],
                    silenced: Some(true),
                    ..Default::default()
                },
            )
            .await;
            (listed.len() == 1).then(|| listed[0].clone())
        },
    )
    .await;
    assert_eq!(silenced.silenced_by, std::slice::from_ref(&silence.id));
    // The silenced alert's group flushes after group_wait, then every
    // group_interval, and would send at each flush. A canary group opened
    // after it flushes no earlier, and the one dispatcher flushes groups in
    // order of their due time (then age): so once the canary's first and
    // second notifications (after group_wait, then after one group_interval)
    // have arrived, the silenced group has flushed twice too.
    fire_canary(alerting.addr, "1").await;
    exactly(&canary, 1, Duration::ZERO).await;
    fire_canary(alerting.addr, "2").await;
    exactly(&canary, 2, Duration::ZERO).await;
    assert!(hook.payloads().is_empty(), "{:#?}", hook.payloads());

    // Expired, the silence lets the alert through at the next flush.
    let expired = client(alerting.addr)
        .delete_silence(pb::DeleteSilenceRequest {
            id: silence.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .silence
        .unwrap();
    assert_eq!(expired.state, pb::SilenceState::Expired as i32);
    let payloads = exactly(&hook, 1, Duration::from_millis(800)).await;
    assert_eq!(payloads[0]["status"], "firing");
    let listed = client(alerting.addr)
        .list_silences(pb::ListSilencesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .silences;
    assert_eq!(listed.len(), 1, "expired silences stay listed");

    alerting.stop().await;
    tool_runner.stop().await;
    audit.stop().await;
}

#[tokio::test]
async fn bad_requests_get_field_violations() {
    let dir = tempfile::tempdir().unwrap();
    let audit = start_audit(dir.path()).await;
    let (alerting, _) = start_alerting(
        &alerting_toml(audit.addr, "1m", ""),
        Backend::Sqlite,
        dir.path(),
    )
    .await;
    let mut client = client(alerting.addr);
    let violations = |status: &tonic::Status| -> Vec<String> {
        use tonic_types::StatusExt;
        status
            .get_details_bad_request()
            .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default()
    };

    let status = client
        .fire_alert(pb::FireAlertRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status), ["labels"]);

    let now = std::time::SystemTime::now();
    let status = client
        .create_silence(pb::CreateSilenceRequest {
            silence: Some(pb::Silence {
                matchers: vec![pb::Matcher {
                    name: "alertname".into(),
                    value: "X".into(),
                    r#type: 0,
                }],
                starts_at: Some((now + Duration::from_secs(3600)).into()),
                ends_at: Some((now + Duration::from_secs(60)).into()),
                created_by: "me".into(),
                comment: "why".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status), ["silence.ends_at"]);
    assert!(status.message().contains("after starts_at"), "{status:?}");

    let status = client
        .delete_silence(pb::DeleteSilenceRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // A watcher sees the snapshot end, then each change.
    let mut watch = client
        .watch_alerts(pb::WatchAlertsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = within(
        "the snapshot's end",
        Duration::from_secs(5),
        watch.message(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(first.r#type, pb::AlertChangeType::SnapshotEnd as i32);

    // A pushed alert: deduplicated by labels, resolved when its end passes.
    let labels: std::collections::HashMap<String, String> = [
        ("alertname".to_owned(), "Pushed".to_owned()),
        ("severity".to_owned(), "critical".to_owned()),
    ]
    .into();
    let first = client
        .fire_alert(pb::FireAlertRequest {
            labels: labels.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    let again = client
        .fire_alert(pb::FireAlertRequest {
            labels: labels.clone(),
            annotations: [("summary".to_owned(), "again".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert_eq!(first.fingerprint, again.fingerprint);
    assert_eq!(first.starts_at, again.starts_at);
    assert_eq!(state(&again), pb::AlertState::Firing);
    assert_eq!(again.severity, pb::Severity::Critical as i32);
    client
        .fire_alert(pb::FireAlertRequest {
            labels,
            ends_at: Some(std::time::SystemTime::now().into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let listed = alerts(alerting.addr, pb::ListAlertsRequest::default()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(state(&listed[0]), pb::AlertState::Resolved);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let change = within("a change", Duration::from_secs(5), watch.message())
            .await
            .unwrap()
            .unwrap();
        if change.r#type != pb::AlertChangeType::Heartbeat as i32 {
            seen.push((
                change.r#type,
                change.previous_state,
                change.alert.unwrap().state,
            ));
        }
    }
    let (firing, resolved) = (
        pb::AlertState::Firing as i32,
        pb::AlertState::Resolved as i32,
    );
    assert_eq!(
        seen,
        [
            (pb::AlertChangeType::StateChanged as i32, 0, firing),
            (pb::AlertChangeType::Updated as i32, firing, firing),
            (pb::AlertChangeType::StateChanged as i32, firing, resolved),
        ]
    );

    // The rules in effect: the shipped ones, with the test's ToolFailing.
    let rules = client
        .list_rules(pb::ListRulesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .rules;
    let names: Vec<&str> = rules.iter().map(|rule| rule.name.as_str()).collect();
    assert!(
        names.contains(&"ToolFailing") && names.len() >= 6,
        "{names:?}"
    );
    let tool_failing = rules
        .iter()
        .find(|rule| rule.name == "ToolFailing")
        .unwrap();
    assert!(!tool_failing.builtin);

    alerting.stop().await;
    audit.stop().await;
}

#[tokio::test]
async fn the_email_receiver_delivers_to_a_real_smtp_server() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/smtp_sink.py");
    let mut sink = tokio::process::Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sink.stdout.take().unwrap()).lines();
    let first = within(
        "the SMTP server to listen",
        Duration::from_secs(20),
        lines.next_line(),
    )
    .await
    .unwrap()
    .unwrap_or_default();
    let port: u16 = first
        .strip_prefix("listening ")
        .unwrap_or_else(|| {
            panic!("the SMTP sink did not start (is aiosmtpd installed?): {first:?}")
        })
        .parse()
        .unwrap();

    let audit = start_audit(dir.path()).await;
    let tool_runner = start_tool_runner(dir.path(), audit.addr).await;
    let route = format!(
        r#"
[route]
receiver = "ops-mail"
group_by = ["alertname", "tool"]
group_wait = "200ms"
group_interval = "500ms"
repeat_interval = "1h"

[[receivers]]
name = "ops-mail"
[[receivers.email_configs]]
to = "ops@example.com"
from = "agentmesh@example.com"
smarthost = "127.0.0.1:{port}"
tls = "none"
"#
    );
    let (alerting, _) = start_alerting(
        &alerting_toml(audit.addr, "1m", &route),
        Backend::Sqlite,
        dir.path(),
    )
    .await;
    fail_the_calculator(tool_runner.addr, 5).await;

    let line = within("an email", Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let mail: serde_json::Value = serde_json::from_str(&line).unwrap();
    let subject = mail["subject"].as_str().unwrap();
    assert!(subject.contains("FIRING"), "{mail}");
    assert!(subject.contains("ToolFailing"), "{mail}");
    assert_eq!(mail["rcpt_tos"][0], "ops@example.com");
    assert!(
        mail["from"]
            .as_str()
            .unwrap()
            .contains("agentmesh@example.com"),
        "{mail}"
    );
    assert!(
        mail["body"].as_str().unwrap().contains("calculator"),
        "{mail}"
    );
    assert!(!mail["message_id"].as_str().unwrap().is_empty(), "{mail}");

    drop(sink);
    alerting.stop().await;
    tool_runner.stop().await;
    audit.stop().await;
}

/// The Debian package's binary, or the upstream name.
fn alertmanager_binary() -> Option<std::path::PathBuf> {
    ["prometheus-alertmanager", "alertmanager"]
        .iter()
        .find_map(|name| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
}

#[tokio::test]
async fn forwarded_alerts_show_in_a_real_alertmanager() {
    let Some(binary) = alertmanager_binary() else {
        eprintln!(
            "SKIPPED: no Prometheus Alertmanager on PATH (install Debian's prometheus-alertmanager; .ci/run does)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let port = free_port();
    let _alertmanager = tokio::process::Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("am-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let am = format!("http://127.0.0.1:{port}");
    eventually(
        "Alertmanager to be ready",
        Duration::from_secs(30),
        || async {
            let ready = http.get(format!("{am}/-/ready")).send().await.ok()?;
            ready.status().is_success().then_some(())
        },
    )
    .await;

    let audit = start_audit(dir.path()).await;
    let extra = format!(
        r#"
[[alertmanagers]]
url = "{am}"
resend_interval = "1s"
"#
    );
    let (alerting, _) = start_alerting(
        &alerting_toml(audit.addr, "1m", &extra),
        Backend::Sqlite,
        dir.path(),
    )
    .await;
    client(alerting.addr)
        .fire_alert(pb::FireAlertRequest {
            labels: [
                ("alertname".to_owned(), "ProviderDown".to_owned()),
                ("provider".to_owned(), "openai".to_owned()),
                ("severity".to_owned(), "critical".to_owned()),
            ]
            .into(),
            annotations: [("summary".to_owned(), "openai answers 503".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let seen = eventually(
        "the alert in Alertmanager",
        Duration::from_secs(30),
        || async {
            let alerts: serde_json::Value = http
                .get(format!("{am}/api/v2/alerts"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            alerts
                .as_array()?
                .iter()
                .find(|alert| alert["labels"]["alertname"] == "ProviderDown")
                .cloned()
        },
    )
    .await;
    assert_eq!(seen["labels"]["provider"], "openai");
    assert_eq!(seen["annotations"]["summary"], "openai answers 503");
    assert_eq!(seen["status"]["state"], "active");

    alerting.stop().await;
    audit.stop().await;
}

#[tokio::test]
async fn killing_alerting_mid_burst_neither_duplicates_nor_misses_a_notification() {
    const TOOLS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let audit_served = start_audit(dir.path()).await;
    let mut audit = AuditServiceClient::new(channel(audit_served.addr));
    let (hook, hook_addr) = Hook::start().await;
    let config = dir.path().join("alerting.toml");
    let settings: toml::Table = toml::from_str(&alerting_toml(
        audit_served.addr,
        "5m",
        &webhook_route(hook_addr),
    ))
    .unwrap();
    let file = toml::Table::from_iter([("alerting".to_owned(), toml::Value::Table(settings))]);
    std::fs::write(&config, toml::to_string(&file).unwrap()).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let start = || RunningBinary::start("agentmesh-alerting", &args, &[], dir.path());
    let mut alerting = start().await;
    wait_serving(channel(alerting.grpc), ALERTING).await;

    // Half of the tools fail 5 times (their alerts fire), the other half 3.
    let tool = |i: usize| format!("tool-{i:02}");
    let mut first_half = Vec::new();
    for i in 0..TOOLS {
        let times = if i < TOOLS / 2 { 5 } else { 3 };
        first_half.extend((0..times).map(|_| tool_failure(&tool(i))));
    }
    record(&mut audit, first_half).await;
    // The first half's notifications go out (and their notification log
    // entries are written: a kill between a delivery and that write would
    // re-send once, at-least-once as in Alertmanager); then the process is
    // killed mid-burst.
    eventually(
        "the first half's notifications",
        Duration::from_secs(20),
        || async { (hook.payloads().len() >= TOOLS / 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    alerting.child.kill().await.unwrap();
    let before_kill = hook.payloads().len();

    // The burst goes on while the service is down: the other half's alerts
    // fire on the events it has not seen yet.
    let second_half: Vec<AuditEvent> = (TOOLS / 2..TOOLS)
        .flat_map(|i| (0..2).map(move |_| tool_failure(&tool(i))))
        .collect();
    record(&mut audit, second_half).await;
    let restarted = start().await;
    wait_serving(channel(restarted.grpc), ALERTING).await;

    let payloads = exactly(&hook, TOOLS, Duration::from_secs(2)).await;
    let mut per_group: BTreeMap<String, usize> = BTreeMap::new();
    for payload in &payloads {
        assert_eq!(payload["status"], "firing", "{payload}");
        *per_group
            .entry(payload["groupLabels"]["tool"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = (0..TOOLS).map(|i| (tool(i), 1)).collect();
    assert_eq!(
        per_group, expected,
        "{before_kill} notified before the kill"
    );
    // Nothing was counted twice: each alert says 5 failures.
    let listed = alerts(restarted.grpc, pb::ListAlertsRequest::default()).await;
    assert_eq!(listed.len(), TOOLS);
    for alert in &listed {
        assert_eq!(alert.value, 5.0, "{alert:?}");
        assert_eq!(state(alert), pb::AlertState::Firing);
    }
    audit_served.stop().await;
}

/// Starts the alerting binary with `config` as its file; it must refuse to
/// start. Returns what it printed on stderr.
async fn refused_at_start(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerting.toml");
    std::fs::write(&path, config).unwrap();
    let output = tokio::process::Command::new(agentmesh_tests::binary("agentmesh-alerting"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "--port",
            "0",
            "--admin-port",
            "0",
        ])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_malformed_rule_or_route_stops_the_service_naming_it() {
    let stderr = refused_at_start(
        r#"
[alerting]
[[alerting.rules]]
name = "Broken"
severity = "warning"
[alerting.rules.filter]
types = ["TOOL_CALL"]
[alerting.rules.count]
threshold = 5
"#,
    )
    .await;
    assert!(
        stderr.contains("alerting.rules[Broken].count.window"),
        "{stderr}"
    );

    let stderr = refused_at_start("[alerting.route]\nreceiver = \"nobody\"\n").await;
    assert!(stderr.contains("alerting.route.receiver"), "{stderr}");
    assert!(stderr.contains("nobody"), "{stderr}");
}
