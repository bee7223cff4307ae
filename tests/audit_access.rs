//! Tenant isolation of the audit trail, on SQLite and on PostgreSQL: the
//! audit service with API-key auth, keys for tenants acme and globex, a
//! service key that records, an admin key, and a key naming no tenant.
//! acme never sees a globex event through Query, Export, Subscribe, Report
//! or VerifyChain, and is refused (PERMISSION_DENIED) when it names globex;
//! admin sees both; a key without `audit:write` cannot Record, and one with
//! it cannot record for another tenant. The audit service's own refusals
//! land in its own log.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

#[path = "access_support.rs"]
mod access_support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use access_support::{Keys, bearer, id_of, unknown_key};
use agentmesh_auth::{AuthConfig, Method};
use agentmesh_kit::Listeners;
use agentmesh_proto::audit::v1::{
    self as pb, AuditEvent, EventFilter, EventType, Outcome, ToolCallDetails, audit_event::Details,
    audit_service_client::AuditServiceClient, subscribe_response::Item,
};
use agentmesh_testkit::eventually;
use agentmesh_tests::{test_server_config, wait_serving};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The keys of the tests: (name, tenant, subject, scopes).
const KEYS: &[(&str, &str, &str, &[&str])] = &[
    (
        "service",
        "",
        "tool-runner",
        &["service", "audit:write", "tools:execute"],
    ),
    ("acme", "acme", "alice", &["audit:read"]),
    ("acme_writer", "acme", "ci", &["audit:read", "audit:write"]),
    ("globex", "globex", "bob", &["audit:read"]),
    ("admin", "", "ops", &["admin"]),
    ("platform", "", "dashboards", &["audit:read"]),
];

/// An audit service with API-key auth, in this process, on a fresh
/// database.
struct Audit {
    client: AuditServiceClient<Channel>,
    keys: Keys,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), agentmesh_kit::ServeError>>,
    _data: tempfile::TempDir,
    _postgres: Option<std::sync::Arc<agentmesh_testkit::postgres::PostgresServer>>,
}

impl Audit {
    async fn start(backend: Backend) -> Self {
        let data = tempfile::tempdir().unwrap();
        let keys = Keys::write(data.path(), KEYS);
        let (url, postgres) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", data.path().join("audit.db").display()),
                None,
            ),
            Backend::Postgres => {
                let server = agentmesh_testkit::postgres::shared().await;
                (server.create_database("audit").await, Some(server))
            }
        };
        let mut config = agentmesh_audit::Config {
            server: test_server_config(),
            auth: AuthConfig {
                methods: vec![Method::ApiKey],
                keys_file: Some(keys.path.clone()),
                audit_interval: Duration::from_millis(200),
                ..AuthConfig::default()
            },
            ..Default::default()
        };
        config.storage.url = Some(url);
        config.subscribe_heartbeat = Duration::from_millis(200);
        let listeners = Listeners::bind(&config.server).await.unwrap();
        let addr = listeners.grpc_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(agentmesh_audit::serve_with_listeners(
            config,
            listeners,
            stop.clone().cancelled_owned(),
        ));
        let channel = agentmesh_tests::channel(addr);
        wait_serving(channel.clone(), "agentmesh.audit.v1.AuditService").await;
        Self {
            client: AuditServiceClient::new(channel),
            keys,
            stop,
            task,
            _data: data,
            _postgres: postgres,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }

    fn client(&self) -> AuditServiceClient<Channel> {
        self.client.clone()
    }

    async fn record(
        &self,
        key: &str,
        events: Vec<AuditEvent>,
    ) -> Result<pb::RecordResponse, tonic::Status> {
        self.client()
            .record(bearer(pb::RecordRequest { events }, self.keys.key(key)))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn query(
        &self,
        key: &str,
        filter: EventFilter,
    ) -> Result<Vec<AuditEvent>, tonic::Status> {
        let request = pb::QueryRequest {
            filter: Some(filter),
            order: pb::SortOrder::OldestFirst as i32,
            page_size: 1000,
            page_token: String::new(),
        };
        self.client()
            .query(bearer(request, self.keys.key(key)))
            .await
            .map(|response| response.into_inner().events)
    }

    async fn export(
        &self,
        key: &str,
        filter: EventFilter,
    ) -> Result<Vec<serde_json::Value>, tonic::Status> {
        let request = pb::ExportRequest {
            filter: Some(filter),
            format: pb::ExportFormat::Jsonl as i32,
            order: pb::SortOrder::OldestFirst as i32,
        };
        let mut stream = self
            .client()
            .export(bearer(request, self.keys.key(key)))
            .await?
            .into_inner();
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            text.extend(chunk?.data);
        }
        Ok(String::from_utf8(text)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect())
    }

    async fn report(
        &self,
        key: &str,
        tenants: &[&str],
    ) -> Result<pb::ReportResponse, tonic::Status> {
        let now = SystemTime::now();
        let request = pb::ReportRequest {
            kind: pb::ReportKind::Usage as i32,
            filter: Some(EventFilter {
                start_time: Some((now - Duration::from_secs(3600)).into()),
                end_time: Some((now + Duration::from_secs(3600)).into()),
                tenants: texts(tenants),
                ..Default::default()
            }),
            group_by: vec![pb::ReportDimension::Tenant as i32],
            ..Default::default()
        };
        self.client()
            .report(bearer(request, self.keys.key(key)))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn verify(
        &self,
        key: &str,
        chain: &str,
    ) -> Result<pb::VerifyChainResponse, tonic::Status> {
        let request = pb::VerifyChainRequest {
            chain: chain.into(),
            ..Default::default()
        };
        self.client()
            .verify_chain(bearer(request, self.keys.key(key)))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn subscribe(
        &self,
        key: &str,
        filter: EventFilter,
    ) -> Result<tonic::Streaming<pb::SubscribeResponse>, tonic::Status> {
        let request = pb::SubscribeRequest {
            filter: Some(filter),
            after_cursor: String::new(),
            from_beginning: true,
        };
        self.client()
            .subscribe(bearer(request, self.keys.key(key)))
            .await
            .map(tonic::Response::into_inner)
    }
}

fn texts(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

fn tool_call(id: &str, tenant: &str) -> AuditEvent {
    AuditEvent {
        event_id: id.to_owned(),
        r#type: EventType::ToolCall as i32,
        service: "tool-runner".into(),
        tenant: tenant.into(),
        outcome: Outcome::Success as i32,
        details: Some(Details::ToolCall(ToolCallDetails {
            tool: "calculator".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn tool_calls() -> EventFilter {
    EventFilter {
        types: vec![EventType::ToolCall as i32],
        ..Default::default()
    }
}

fn of_tenants(tenants: &[&str]) -> EventFilter {
    EventFilter {
        tenants: texts(tenants),
        ..tool_calls()
    }
}

fn ids(events: &[AuditEvent]) -> Vec<&str> {
    events.iter().map(|event| event.event_id.as_str()).collect()
}

fn assert_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
}

/// The service records for both tenants and for none.
async fn seed(audit: &Audit) {
    let recorded = audit
        .record(
            "service",
            vec![
                tool_call("a1", "acme"),
                tool_call("g1", "globex"),
                tool_call("a2", "acme"),
                tool_call("g2", "globex"),
                tool_call("s1", ""),
            ],
        )
        .await
        .unwrap();
    assert_eq!(recorded.accepted_count, 5, "{recorded:?}");
}

/// Runs a test body on both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    )*};
}

on_both_backends!(
    a_tenant_reads_only_its_own_events,
    a_tenant_subscribes_only_to_its_own_events,
    admin_reads_every_tenant,
    only_writers_record_and_only_for_their_tenant,
    the_audit_services_own_refusals_are_in_its_log,
);

async fn a_tenant_reads_only_its_own_events(backend: Backend) {
    let audit = Audit::start(backend).await;
    seed(&audit).await;

    assert_eq!(
        ids(&audit.query("acme", tool_calls()).await.unwrap()),
        ["a1", "a2"]
    );
    assert_eq!(
        ids(&audit.query("acme", of_tenants(&["acme"])).await.unwrap()),
        ["a1", "a2"]
    );
    assert_eq!(
        ids(&audit.query("globex", tool_calls()).await.unwrap()),
        ["g1", "g2"]
    );
    assert_denied(
        audit.query("acme", of_tenants(&["globex"])).await,
        "Query naming globex",
    );
    assert_denied(
        audit.query("acme", of_tenants(&["acme", "globex"])).await,
        "Query naming both",
    );
    assert_denied(
        audit.query("acme", of_tenants(&[""])).await,
        "Query for no tenant",
    );
    assert_denied(
        audit.query("platform", tool_calls()).await,
        "Query by a key without a tenant",
    );

    let exported = audit.export("acme", tool_calls()).await.unwrap();
    let tenants: Vec<&str> = exported
        .iter()
        .map(|line| line["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme", "acme"], "{exported:?}");
    assert_denied(
        audit.export("acme", of_tenants(&["globex"])).await,
        "Export naming globex",
    );

    let report = audit.report("acme", &[]).await.unwrap();
    let groups: Vec<&str> = report
        .rows
        .iter()
        .map(|row| row.group["tenant"].as_str())
        .collect();
    assert_eq!(groups, ["acme"], "{report:?}");
    let Some(pb::report_row::Metrics::Usage(totals)) = report.totals.unwrap().metrics else {
        panic!("no usage totals");
    };
    assert_eq!(totals.tool_calls, 2);
    assert_denied(
        audit.report("acme", &["globex"]).await,
        "Report naming globex",
    );

    let verified = audit.verify("acme", "").await.unwrap();
    assert!(verified.ok && verified.chains_checked == 1, "{verified:?}");
    assert!(audit.verify("acme", "tenant:acme").await.unwrap().ok);
    for chain in ["tenant:globex", "system", "tenant:nobody"] {
        assert_denied(audit.verify("acme", chain).await, chain);
    }
    audit.stop().await;
}

/// The events of a stream up to its first live heartbeat.
async fn replayed(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    loop {
        match next(stream).await {
            Item::Event(event) => events.push(event),
            Item::Heartbeat(heartbeat) if heartbeat.live => return events,
            Item::Heartbeat(_) => {}
        }
    }
}

async fn next(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> Item {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the subscription stalled")
        .expect("the subscription ended")
        .unwrap()
        .item
        .unwrap()
}

async fn a_tenant_subscribes_only_to_its_own_events(backend: Backend) {
    let audit = Audit::start(backend).await;
    seed(&audit).await;
    let mut acme = audit.subscribe("acme", tool_calls()).await.unwrap();
    assert_eq!(ids(&replayed(&mut acme).await), ["a1", "a2"]);
    let mut admin = audit.subscribe("admin", tool_calls()).await.unwrap();
    assert_eq!(
        ids(&replayed(&mut admin).await),
        ["a1", "g1", "a2", "g2", "s1"]
    );

    // The live tail: globex's event comes first, acme's stream skips it.
    audit
        .record(
            "service",
            vec![tool_call("g3", "globex"), tool_call("a3", "acme")],
        )
        .await
        .unwrap();
    let live = loop {
        if let Item::Event(event) = next(&mut acme).await {
            break event;
        }
    };
    assert_eq!(live.event_id, "a3");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let Item::Event(event) = next(&mut admin).await {
            seen.push(event.event_id);
        }
    }
    assert_eq!(seen, ["g3", "a3"]);

    assert_denied(
        audit.subscribe("acme", of_tenants(&["globex"])).await,
        "Subscribe naming globex",
    );
    assert_denied(
        audit.subscribe("platform", tool_calls()).await,
        "Subscribe without a tenant",
    );
    drop((acme, admin));
    audit.stop().await;
}

async fn admin_reads_every_tenant(backend: Backend) {
    let audit = Audit::start(backend).await;
    seed(&audit).await;
    assert_eq!(
        ids(&audit.query("admin", tool_calls()).await.unwrap()),
        ["a1", "g1", "a2", "g2", "s1"]
    );
    assert_eq!(
        ids(&audit.query("admin", of_tenants(&["globex"])).await.unwrap()),
        ["g1", "g2"]
    );
    let exported = audit.export("admin", tool_calls()).await.unwrap();
    let tenants: BTreeSet<&str> = exported
        .iter()
        .map(|line| line["tenant"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(tenants, BTreeSet::from(["", "acme", "globex"]));
    let report = audit.report("admin", &[]).await.unwrap();
    let groups: BTreeSet<&str> = report
        .rows
        .iter()
        .map(|row| row.group["tenant"].as_str())
        .collect();
    assert!(
        groups.is_superset(&BTreeSet::from(["acme", "globex"])),
        "{report:?}"
    );
    let verified = audit.verify("admin", "").await.unwrap();
    assert!(verified.ok && verified.chains_checked >= 3, "{verified:?}");
    assert!(audit.verify("admin", "tenant:globex").await.unwrap().ok);
    audit.stop().await;
}

async fn only_writers_record_and_only_for_their_tenant(backend: Backend) {
    let audit = Audit::start(backend).await;
    assert_denied(
        audit.record("acme", vec![tool_call("r1", "acme")]).await,
        "Record without audit:write",
    );

    // An end user's writer key: its own tenant and subject fill the gaps.
    let recorded = audit
        .record("acme_writer", vec![tool_call("w1", "")])
        .await
        .unwrap();
    assert_eq!(recorded.accepted_count, 1);
    let stored = audit.query("admin", tool_calls()).await.unwrap();
    assert_eq!(ids(&stored), ["w1"]);
    assert_eq!(
        (stored[0].tenant.as_str(), stored[0].subject.as_str()),
        ("acme", "ci")
    );
    // Never for another tenant: the whole batch is refused.
    let forged = audit
        .record(
            "acme_writer",
            vec![tool_call("w2", "acme"), tool_call("w3", "globex")],
        )
        .await
        .expect_err("recording for globex");
    assert_eq!(forged.code(), Code::PermissionDenied);
    assert!(forged.message().contains("events[1].tenant"), "{forged:?}");
    assert_eq!(
        ids(&audit.query("admin", tool_calls()).await.unwrap()),
        ["w1"]
    );
    // A service recording for itself sets the tenant (and may leave none).
    audit
        .record(
            "service",
            vec![tool_call("x1", "globex"), tool_call("x2", "")],
        )
        .await
        .unwrap();
    let stored = audit.query("admin", tool_calls()).await.unwrap();
    let tenants: Vec<&str> = stored.iter().map(|event| event.tenant.as_str()).collect();
    assert_eq!(tenants, ["acme", "globex", ""]);
    assert_eq!(
        stored[2].subject, "",
        "a service's own event names no subject"
    );
    audit.stop().await;
}

async fn the_audit_services_own_refusals_are_in_its_log(backend: Backend) {
    let audit = Audit::start(backend).await;
    let wrong = unknown_key();
    let wrong_id = agentmesh_auth::keys::ApiKey::parse(&wrong)
        .unwrap()
        .id()
        .to_owned();
    for _ in 0..5 {
        let refused = audit
            .client()
            .query(bearer(pb::QueryRequest::default(), &wrong))
            .await
            .expect_err("an unknown key");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    let anonymous = audit
        .client()
        .query(pb::QueryRequest::default())
        .await
        .expect_err("no key");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert_denied(
        audit.record("acme", vec![tool_call("r1", "acme")]).await,
        "Record without audit:write",
    );

    // The first refusal at once, the other four as one event with their
    // count once the interval ends: five in all.
    let failures = EventFilter {
        types: vec![EventType::Authentication as i32],
        outcomes: vec![Outcome::Denied as i32],
        services: texts(&["audit"]),
        ..Default::default()
    };
    let events = eventually(
        "the audit service's own failed authentications",
        Duration::from_secs(10),
        || async {
            let events = audit.query("admin", failures.clone()).await.unwrap();
            let counted: i32 = events
                .iter()
                .filter_map(|event| match &event.details {
                    Some(Details::Access(access)) if access.credential_id == wrong_id => {
                        Some(access.count.max(1))
                    }
                    _ => None,
                })
                .sum();
            (counted == 5).then_some(events)
        },
    )
    .await;
    assert!(
        events
            .iter()
            .all(|event| !format!("{event:?}").contains(&wrong)),
        "the secret never reaches the log"
    );
    // The denied Record is an AUTHORIZATION event of acme's, which acme
    // may read; the failures of unknown callers are outside any tenant.
    let denials = EventFilter {
        types: vec![EventType::Authorization as i32],
        ..Default::default()
    };
    let seen = eventually("acme's denied Record", Duration::from_secs(10), || async {
        let events = audit.query("acme", denials.clone()).await.unwrap();
        (!events.is_empty()).then_some(events)
    })
    .await;
    let Some(Details::Access(access)) = &seen[0].details else {
        panic!("no access details: {seen:?}");
    };
    assert_eq!(access.permission, "audit:write");
    assert_eq!(access.credential_id, id_of(audit.keys.key("acme")));
    assert!(events.iter().all(|event| event.tenant.is_empty()));
    assert!(
        audit.query("acme", failures).await.unwrap().is_empty(),
        "failures of unknown callers are not acme's to read"
    );
    audit.stop().await;
}
