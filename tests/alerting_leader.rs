//! Two alerting binaries on one PostgreSQL database: one leads (evaluates
//! and notifies), the other stands by answering reads from the database.
//! While both live every alert is notified once; when the leader is killed
//! with SIGKILL in the middle of a burst, or stopped, the standby takes
//! over and every notification still arrives exactly once.
#![expect(clippy::unwrap_used, reason = "tests")]
#![expect(clippy::indexing_slicing, reason = "a test fails by panicking")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agentmesh_proto::alerting::v1::{self as pb, alerting_service_client::AlertingServiceClient};
use agentmesh_proto::audit::v1::{AuditEvent, audit_service_client::AuditServiceClient};
use agentmesh_testkit::eventually;
use agentmesh_tests::{RunningBinary, channel, http_get, wait_serving};
use tonic::Code;

#[path = "alerting_support.rs"]
mod alerting_support;
use alerting_support::{
    ALERTING, Hook, alerting_toml, exactly, record, start_audit, tool_failure, webhook_route,
};

const TOOLS: usize = 12;

fn tool(i: usize) -> String {
    format!("tool-{i:02}")
}

/// Writes the alerting configuration (ToolFailing, the webhook route, the
/// PostgreSQL database `url`, a fast leader retry) into `dir`.
fn write_config(dir: &Path, audit: SocketAddr, hook: SocketAddr, url: &str) -> String {
    let extra = format!(
        "{}\n[storage]\nurl = \"{url}\"\n\n[leader]\nretry = \"200ms\"\n",
        webhook_route(hook)
    );
    let settings: toml::Table = toml::from_str(&alerting_toml(audit, "5m", &extra)).unwrap();
    let file = toml::Table::from_iter([("alerting".to_owned(), toml::Value::Table(settings))]);
    let path = dir.join("alerting.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn start_replica(config: &str, dir: &Path) -> RunningBinary {
    let replica = RunningBinary::start("agentmesh-alerting", &["--config", config], &[], dir).await;
    wait_serving(channel(replica.grpc), ALERTING).await;
    replica
}

/// The replica's `agentmesh_alerting_leader` gauge.
async fn leads(replica: &RunningBinary) -> bool {
    let (status, body) = http_get(replica.admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let value = body
        .lines()
        .filter_map(|line| line.strip_prefix("agentmesh_alerting_leader"))
        .find(|rest| rest.starts_with([' ', '{']))
        .and_then(|rest| rest.split_whitespace().last());
    assert!(value.is_some(), "no agentmesh_alerting_leader in {body}");
    value == Some("1")
}

/// Which of the two leads, once exactly one does.
async fn the_leader(replicas: &[&RunningBinary; 2]) -> usize {
    eventually("exactly one leader", Duration::from_secs(20), || async {
        match (leads(replicas[0]).await, leads(replicas[1]).await) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    })
    .await
}

fn client(addr: SocketAddr) -> AlertingServiceClient<tonic::transport::Channel> {
    AlertingServiceClient::new(channel(addr))
}

/// The firing alerts `addr` lists, by tool, with their values.
async fn firing(addr: SocketAddr) -> BTreeMap<String, f64> {
    client(addr)
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alerts
        .iter()
        .filter(|alert| alert.state == pb::AlertState::Firing as i32)
        .map(|alert| (alert.labels["tool"].clone(), alert.value))
        .collect()
}

/// One notification per tool in `tools`, all firing.
fn assert_once_each(payloads: &[serde_json::Value], tools: impl Iterator<Item = usize>) {
    let mut per_group: BTreeMap<String, usize> = BTreeMap::new();
    for payload in payloads {
        assert_eq!(payload["status"], "firing", "{payload}");
        *per_group
            .entry(payload["groupLabels"]["tool"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = tools.map(|i| (tool(i), 1)).collect();
    assert_eq!(per_group, expected);
}

/// `times` failures of each tool in `tools`.
fn failures(tools: std::ops::Range<usize>, times: usize) -> Vec<AuditEvent> {
    tools
        .flat_map(|i| (0..times).map(move |_| tool_failure(&tool(i))))
        .collect()
}

#[tokio::test]
async fn two_live_replicas_notify_each_alert_once_and_a_stopped_leader_hands_over() {
    let dir = tempfile::tempdir().unwrap();
    let audit_served = start_audit(dir.path()).await;
    let mut audit = AuditServiceClient::new(channel(audit_served.addr));
    let (hook, hook_addr) = Hook::start().await;
    let postgres = agentmesh_testkit::postgres::shared().await;
    let url = postgres.create_database("alerting_replicas").await;
    let config = write_config(dir.path(), audit_served.addr, hook_addr, &url);
    let first = start_replica(&config, dir.path()).await;
    let second = start_replica(&config, dir.path()).await;
    let leader = the_leader(&[&first, &second]).await;
    let (mut leading, standby) = if leader == 0 {
        (first, second)
    } else {
        (second, first)
    };

    // The standby answers reads from the database and sends writes to the
    // leader (UNAVAILABLE: retryable).
    let rules = client(standby.grpc)
        .list_rules(pb::ListRulesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert!(
        rules.iter().any(|rule| rule.name == "ToolFailing"),
        "{rules:?}"
    );
    let refused = client(standby.grpc)
        .fire_alert(pb::FireAlertRequest {
            labels: [("alertname".to_owned(), "Canary".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("standby"), "{refused:?}");

    record(&mut audit, failures(0..TOOLS, 5)).await;
    let payloads = exactly(&hook, TOOLS, Duration::from_secs(2)).await;
    assert_once_each(&payloads, 0..TOOLS);
    // Both list the same alerts: the standby reads what the leader stored.
    let expected: BTreeMap<String, f64> = (0..TOOLS).map(|i| (tool(i), 5.0)).collect();
    assert_eq!(firing(leading.grpc).await, expected);
    eventually(
        "the standby to list them",
        Duration::from_secs(20),
        || async { (firing(standby.grpc).await == expected).then_some(()) },
    )
    .await;
    assert!(!leads(&standby).await);

    // A stopped leader frees the lock: the standby leads and, from the
    // notification log, sends nothing again.
    leading.signal("TERM").await;
    let (exit, log) = leading.exit_and_log(Duration::from_secs(30)).await;
    assert!(exit.success(), "{log}");
    eventually("the standby to lead", Duration::from_secs(20), || async {
        leads(&standby).await.then_some(())
    })
    .await;
    assert_eq!(firing(standby.grpc).await, expected);
    let payloads = exactly(&hook, TOOLS, Duration::from_secs(2)).await;
    assert_once_each(&payloads, 0..TOOLS);
    audit_served.stop().await;
}

#[tokio::test]
async fn killing_the_leader_mid_burst_the_standby_neither_duplicates_nor_misses() {
    let dir = tempfile::tempdir().unwrap();
    let audit_served = start_audit(dir.path()).await;
    let mut audit = AuditServiceClient::new(channel(audit_served.addr));
    let (hook, hook_addr) = Hook::start().await;
    let postgres = agentmesh_testkit::postgres::shared().await;
    let url = postgres.create_database("alerting_takeover").await;
    let config = write_config(dir.path(), audit_served.addr, hook_addr, &url);
    let first = start_replica(&config, dir.path()).await;
    let second = start_replica(&config, dir.path()).await;
    let leader = the_leader(&[&first, &second]).await;
    let (mut killed, survivor) = if leader == 0 {
        (first, second)
    } else {
        (second, first)
    };

    // Half of the tools fail 5 times (their alerts fire), the other half 3.
    let mut first_half = failures(0..TOOLS / 2, 5);
    first_half.extend(failures(TOOLS / 2..TOOLS, 3));
    record(&mut audit, first_half).await;
    // The first half's notifications go out (and their notification log
    // entries are written: a kill between a delivery and that write would
    // re-send once, at-least-once as in Alertmanager); then the leader is
    // killed mid-burst.
    eventually(
        "the first half's notifications",
        Duration::from_secs(20),
        || async { (hook.payloads().len() >= TOOLS / 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    killed.child.kill().await.unwrap();
    let before_kill = hook.payloads().len();

    // The burst goes on: the other half's alerts fire on events only the
    // standby (the leader by then) sees.
    record(&mut audit, failures(TOOLS / 2..TOOLS, 2)).await;
    eventually("the standby to lead", Duration::from_secs(20), || async {
        leads(&survivor).await.then_some(())
    })
    .await;

    let payloads = exactly(&hook, TOOLS, Duration::from_secs(2)).await;
    assert_eq!(before_kill, TOOLS / 2, "{payloads:#?}");
    assert_once_each(&payloads, 0..TOOLS);
    // Nothing was counted twice or lost: each alert says 5 failures.
    let expected: BTreeMap<String, f64> = (0..TOOLS).map(|i| (tool(i), 5.0)).collect();
    assert_eq!(firing(survivor.grpc).await, expected);
    audit_served.stop().await;
}
