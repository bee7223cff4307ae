//! Two alerting binaries on one PostgreSQL database: one leads (evaluates
//! and notifies), the other stands by answering reads from the database.
//! While both live every alert is notified once; when the leader is killed
//! with SIGKILL in the middle of a burst, or stopped, the standby takes
//! over and every notification still arrives exactly once. A standby
//! forwards writes and WatchAlerts to the leader at the address it
//! advertises, authorized there as the original caller; without a leader
//! address it answers UNAVAILABLE saying why.
#![expect(clippy::unwrap_used, reason = "tests")]
#![expect(clippy::indexing_slicing, reason = "a test fails by panicking")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agentmesh_proto::alerting::v1::{self as pb, alerting_service_client::AlertingServiceClient};
use agentmesh_proto::audit::v1::{AuditEvent, audit_service_client::AuditServiceClient};
use agentmesh_testkit::eventually;
use agentmesh_tests::{RunningBinary, channel, free_port, http_get, wait_serving};
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
    write_config_with(dir, audit, hook, url, "")
}

/// [`write_config`] with `more` settings of the section (e.g. `[auth]`).
fn write_config_with(
    dir: &Path,
    audit: SocketAddr,
    hook: SocketAddr,
    url: &str,
    more: &str,
) -> String {
    let extra = format!(
        "{}\n[storage]\nurl = \"{url}\"\n\n[leader]\nretry = \"200ms\"\n\n{more}",
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

/// A replica advertising `advertise` as its address (its own by default:
/// the port is chosen before it starts).
async fn start_advertising(config: &str, dir: &Path, advertise: Option<&str>) -> RunningBinary {
    let port = free_port().to_string();
    let own = format!("http://127.0.0.1:{port}");
    let replica = RunningBinary::start(
        "agentmesh-alerting",
        &["--config", config, "--port", &port],
        &[(
            "AGENTMESH_ALERTING__LEADER__ADVERTISE_URL",
            advertise.unwrap_or(&own),
        )],
        dir,
    )
    .await;
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
    assert!(refused.message().contains("advertise_url"), "{refused:?}");

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

/// Two advertising replicas on the database `name`: (leader, standby).
async fn advertising_pair(dir: &Path, config: &str) -> (RunningBinary, RunningBinary) {
    let first = start_advertising(config, dir, None).await;
    let second = start_advertising(config, dir, None).await;
    if the_leader(&[&first, &second]).await == 0 {
        (first, second)
    } else {
        (second, first)
    }
}

fn labels(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn silence_of(alertname: &str) -> pb::CreateSilenceRequest {
    pb::CreateSilenceRequest {
        silence: Some(pb::Silence {
            matchers: vec![pb::Matcher {
                name: "alertname".into(),
                value: alertname.into(),
                r#type: pb::MatchType::Equal as i32,
            }],
            ends_at: Some((std::time::SystemTime::now() + Duration::from_secs(3600)).into()),
            created_by: "ops@example.com".into(),
            comment: "maintenance".into(),
            ..Default::default()
        }),
    }
}

/// The next WatchAlerts message about the alert `fingerprint`.
async fn change_of(
    stream: &mut tonic::Streaming<pb::WatchAlertsResponse>,
    fingerprint: &str,
) -> pb::WatchAlertsResponse {
    loop {
        let message = next_change(stream).await;
        if message
            .alert
            .as_ref()
            .is_some_and(|alert| alert.fingerprint == fingerprint)
        {
            return message;
        }
    }
}

/// The next WatchAlerts message that is not a heartbeat.
async fn next_change(
    stream: &mut tonic::Streaming<pb::WatchAlertsResponse>,
) -> pb::WatchAlertsResponse {
    loop {
        let message = agentmesh_tests::within(
            "a WatchAlerts message",
            Duration::from_secs(20),
            stream.message(),
        )
        .await
        .unwrap()
        .unwrap();
        if message.r#type != pb::AlertChangeType::Heartbeat as i32 {
            return message;
        }
    }
}

/// The silences `addr` lists, by id, with their states.
async fn silences(addr: SocketAddr) -> BTreeMap<String, i32> {
    client(addr)
        .list_silences(pb::ListSilencesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .silences
        .into_iter()
        .map(|silence| (silence.id, silence.state))
        .collect()
}

#[tokio::test]
async fn a_standby_forwards_writes_and_watches_to_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let audit_served = start_audit(dir.path()).await;
    let (hook, hook_addr) = Hook::start().await;
    let postgres = agentmesh_testkit::postgres::shared().await;
    let url = postgres.create_database("alerting_forwarding").await;
    let config = write_config(dir.path(), audit_served.addr, hook_addr, &url);
    let (leading, standby) = advertising_pair(dir.path(), &config).await;

    // A watch through the standby: the leader's snapshot (empty), then its
    // changes.
    let mut watch = client(standby.grpc)
        .watch_alerts(pb::WatchAlertsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = next_change(&mut watch).await;
    assert_eq!(
        first.r#type,
        pb::AlertChangeType::SnapshotEnd as i32,
        "{first:?}"
    );

    // FireAlert through the standby: the leader holds the alert, notifies
    // it once, and the standby's watch streams it.
    let pushed = labels(&[("alertname", "Pushed"), ("tool", "pushed")]);
    let fired = client(standby.grpc)
        .fire_alert(pb::FireAlertRequest {
            labels: pushed.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert_eq!(fired.labels, pushed);
    let listed = client(leading.grpc)
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert!(
        listed
            .iter()
            .any(|alert| alert.fingerprint == fired.fingerprint),
        "{listed:?}"
    );
    let change = change_of(&mut watch, &fired.fingerprint).await;
    assert_eq!(
        change.r#type,
        pb::AlertChangeType::StateChanged as i32,
        "{change:?}"
    );
    let payloads = exactly(&hook, 1, Duration::from_secs(2)).await;
    assert_eq!(payloads[0]["groupLabels"]["alertname"], "Pushed");

    // CreateSilence through the standby silences at the leader: an alert
    // it matches is not notified.
    let silence = client(standby.grpc)
        .create_silence(silence_of("Quiet"))
        .await
        .unwrap()
        .into_inner()
        .silence
        .unwrap();
    assert_eq!(
        silences(leading.grpc).await.get(&silence.id),
        Some(&(pb::SilenceState::Active as i32))
    );
    let quiet = client(standby.grpc)
        .fire_alert(pb::FireAlertRequest {
            labels: labels(&[("alertname", "Quiet"), ("tool", "quiet")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert_eq!(quiet.silenced_by, std::slice::from_ref(&silence.id));
    let change = change_of(&mut watch, &quiet.fingerprint).await;
    assert_eq!(
        change.alert.unwrap().silenced_by,
        std::slice::from_ref(&silence.id),
        "the standby streams the leader's marks"
    );
    exactly(&hook, 1, Duration::from_secs(1)).await;

    // DeleteSilence through the standby expires it at the leader.
    let deleted = client(standby.grpc)
        .delete_silence(pb::DeleteSilenceRequest {
            id: silence.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .silence
        .unwrap();
    assert_eq!(deleted.state, pb::SilenceState::Expired as i32);
    assert_eq!(
        silences(leading.grpc).await.get(&silence.id),
        Some(&(pb::SilenceState::Expired as i32))
    );
    // The leader's answers pass through unchanged, errors included.
    let missing = client(standby.grpc)
        .delete_silence(pb::DeleteSilenceRequest {
            id: "no-such-silence".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(!leads(&standby).await);
    audit_served.stop().await;
}

/// Holds the leader lock from outside, as a replica would.
async fn hold_the_lock(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let granted: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(0x616c_6572_7469_6e67_i64)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(granted);
    conn
}

fn canary() -> pb::FireAlertRequest {
    pb::FireAlertRequest {
        labels: labels(&[("alertname", "Canary")]),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_standby_that_cannot_reach_a_leader_answers_unavailable_saying_why() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let audit_served = start_audit(dir.path()).await;
    let (_hook, hook_addr) = Hook::start().await;
    let postgres = agentmesh_testkit::postgres::shared().await;
    let url = postgres.create_database("alerting_no_leader").await;
    let config = write_config(dir.path(), audit_served.addr, hook_addr, &url);

    // No replica leads (the lock is held elsewhere): nothing to forward to.
    let lock = hold_the_lock(&url).await;
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let first = start_advertising(&config, dir.path(), Some(&nowhere)).await;
    let refused = client(first.grpc).fire_alert(canary()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("no leader is known"),
        "{refused:?}"
    );
    let refused = client(first.grpc)
        .watch_alerts(pb::WatchAlertsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("no leader is known"),
        "{refused:?}"
    );
    // Reads are still answered.
    client(first.grpc)
        .list_silences(pb::ListSilencesRequest::default())
        .await
        .unwrap();

    // The replica leads, advertising an address nobody listens at: a
    // standby cannot reach it and says so.
    lock.close().await.unwrap();
    eventually("the replica to lead", Duration::from_secs(20), || async {
        leads(&first).await.then_some(())
    })
    .await;
    let second = start_advertising(&config, dir.path(), None).await;
    assert!(!leads(&second).await);
    let refused = client(second.grpc).fire_alert(canary()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("the leader at {nowhere} could not take the call")),
        "{refused:?}"
    );

    // A call a standby forwarded is never forwarded again.
    let mut looped = tonic::Request::new(canary());
    looped.metadata_mut().insert(
        "x-alerting-forwarded-by",
        tonic::metadata::MetadataValue::from_static("alerting-standby"),
    );
    let refused = client(second.grpc).fire_alert(looped).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("forwarded"), "{refused:?}");
    audit_served.stop().await;
}

#[expect(dead_code, reason = "the access tests share more than this file uses")]
#[path = "access_support.rs"]
mod access_support;

#[tokio::test]
async fn a_forwarded_call_is_authorized_as_its_original_caller() {
    use access_support::{Keys, bearer};
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::write(
        dir.path(),
        &[
            (
                "alerting",
                "",
                "alerting",
                &["service", "audit:read", "audit:write", "admin"],
            ),
            ("oncall", "", "oncall", &["alerts:read"]),
            ("operator", "", "operator", &["alerts:read", "alerts:write"]),
        ],
    );
    let credential = dir.path().join("alerting.key");
    std::fs::write(&credential, format!("{}\n", keys.key("alerting"))).unwrap();
    let auth = format!(
        "[auth]\nmethods = [\"api_key\"]\nkeys_file = {:?}\ncredential_file = {:?}\n",
        keys.path.display().to_string(),
        credential.display().to_string(),
    );
    let audit_served = start_audit(dir.path()).await;
    let (hook, hook_addr) = Hook::start().await;
    let postgres = agentmesh_testkit::postgres::shared().await;
    let url = postgres.create_database("alerting_forwarded_auth").await;
    let config = write_config_with(dir.path(), audit_served.addr, hook_addr, &url, &auth);
    let (leading, standby) = advertising_pair(dir.path(), &config).await;

    // The operator's write through the standby takes effect at the leader;
    // the on-call reader watches it through the standby.
    let fired = client(standby.grpc)
        .fire_alert(bearer(canary(), keys.key("operator")))
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    let mut watch = client(standby.grpc)
        .watch_alerts(bearer(
            pb::WatchAlertsRequest::default(),
            keys.key("oncall"),
        ))
        .await
        .unwrap()
        .into_inner();
    let snapshot = change_of(&mut watch, &fired.fingerprint).await;
    assert_eq!(
        snapshot.r#type,
        pb::AlertChangeType::Snapshot as i32,
        "{snapshot:?}"
    );
    exactly(&hook, 1, Duration::from_secs(1)).await;
    // The reader may not write, through either replica.
    for replica in [&standby, &leading] {
        let denied = client(replica.grpc)
            .fire_alert(bearer(canary(), keys.key("oncall")))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    }
    // Nor by a call marked as forwarded for them with the service's own
    // credential (whose `admin` scope would allow it): the leader checks
    // the end user's scopes.
    let mut forged = bearer(canary(), keys.key("alerting"));
    for (name, value) in [
        ("x-alerting-forwarded-by", "alerting-standby"),
        ("x-agentmesh-subject", "oncall"),
        ("x-agentmesh-scopes", "alerts:read"),
    ] {
        forged
            .metadata_mut()
            .insert(name, tonic::metadata::MetadataValue::from_static(value));
    }
    let denied = client(leading.grpc).fire_alert(forged).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("forwarded for lacks the scope alerts:write"),
        "{denied:?}"
    );
    exactly(&hook, 1, Duration::from_secs(1)).await;
    audit_served.stop().await;
}
