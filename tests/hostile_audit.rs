//! The real audit binary against hostile callers: a tenant cannot pre-claim
//! another tenant's event ids, a CSV export does not carry spreadsheet
//! formulas, and concurrent `VerifyChain` calls on a large chain are bounded
//! (refused with a retry delay beyond the limits) while `Record` keeps
//! working.

#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::time::Duration;

use agentmesh_proto::audit::v1::{
    self as pb, AuditEvent, EventFilter, EventType, RecordStatus, ToolCallDetails,
    audit_event::Details, audit_service_client::AuditServiceClient,
};
use agentmesh_tests::{RunningBinary, channel, wait_serving, within};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

const STEP: Duration = Duration::from_secs(60);

fn event(id: &str, tenant: &str, tool: &str) -> AuditEvent {
    AuditEvent {
        event_id: id.to_owned(),
        r#type: EventType::ToolCall as i32,
        service: "tool-runner".into(),
        tenant: tenant.into(),
        details: Some(Details::ToolCall(ToolCallDetails {
            tool: tool.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn start(dir: &tempfile::TempDir) -> (RunningBinary, AuditServiceClient<Channel>) {
    let service = RunningBinary::start("agentmesh-audit", &[], &[], dir.path()).await;
    wait_serving(channel(service.grpc), "").await;
    let client = AuditServiceClient::new(channel(service.grpc));
    (service, client)
}

async fn record(
    client: &AuditServiceClient<Channel>,
    events: Vec<AuditEvent>,
) -> pb::RecordResponse {
    within(
        "Record",
        STEP,
        client.clone().record(pb::RecordRequest { events }),
    )
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn a_tenant_cannot_pre_claim_another_tenants_event_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (_service, client) = start(&dir).await;
    let claimed = record(&client, vec![event("invoice-42", "mallory", "calculator")]).await;
    assert_eq!(claimed.results[0].status(), RecordStatus::Accepted);
    let real = record(&client, vec![event("invoice-42", "acme", "calculator")]).await;
    assert_eq!(real.results[0].status(), RecordStatus::Accepted, "{real:?}");
    // Still idempotent within the tenant.
    let again = record(&client, vec![event("invoice-42", "acme", "calculator")]).await;
    assert_eq!(again.results[0].status(), RecordStatus::Duplicate);
    let acme = within(
        "Query",
        STEP,
        client.clone().query(pb::QueryRequest {
            filter: Some(EventFilter {
                tenants: vec!["acme".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(acme.events.len(), 1);
    assert_eq!(acme.events[0].event_id, "invoice-42");
}

#[tokio::test]
async fn csv_exports_neutralise_spreadsheet_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let (_service, client) = start(&dir).await;
    let mut hostile = event("e1", "acme", "@SUM(1+1)*cmd|' /C calc'!A0");
    hostile
        .attributes
        .insert("note".into(), "=HYPERLINK(\"http://evil\",\"x\")".into());
    hostile.reason = "-2+3".into();
    record(&client, vec![hostile]).await;
    let mut stream = within(
        "Export",
        STEP,
        client.clone().export(pb::ExportRequest {
            filter: Some(EventFilter {
                tenants: vec!["acme".into()],
                ..Default::default()
            }),
            format: pb::ExportFormat::Csv as i32,
            order: 0,
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap().data);
    }
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let header = reader.headers().unwrap().clone();
    let row = reader.records().next().unwrap().unwrap();
    let cell = |name: &str| {
        let index = header.iter().position(|h| h == name).unwrap();
        row[index].to_owned()
    };
    assert_eq!(
        cell("attributes.note"),
        "'=HYPERLINK(\"http://evil\",\"x\")"
    );
    assert_eq!(cell("tool_call.tool"), "'@SUM(1+1)*cmd|' /C calc'!A0");
    assert_eq!(cell("reason"), "'-2+3");
    assert_eq!(cell("event_id"), "e1");
    for field in row.iter() {
        assert!(
            !field.starts_with(['=', '+', '-', '@', '\t', '\r']) || field.parse::<f64>().is_ok(),
            "{field:?}"
        );
    }
}

/// One VerifyChain answer: Ok(events checked) or the refusal's code and
/// retry delay.
async fn verify(client: AuditServiceClient<Channel>) -> Result<i64, (Code, Option<Duration>)> {
    match within(
        "VerifyChain",
        STEP,
        client.clone().verify_chain(pb::VerifyChainRequest {
            chain: "tenant:acme".into(),
            ..Default::default()
        }),
    )
    .await
    {
        Ok(response) => {
            let response = response.into_inner();
            assert!(response.ok, "{response:?}");
            Ok(response.events_checked)
        }
        Err(status) => Err((
            status.code(),
            status
                .get_details_retry_info()
                .and_then(|retry| retry.retry_delay),
        )),
    }
}

#[tokio::test]
async fn concurrent_chain_verifications_are_bounded_and_record_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (_service, client) = start(&dir).await;
    const EVENTS: i64 = 6000;
    for batch in 0..EVENTS / 1000 {
        let events = (0..1000)
            .map(|i| event(&format!("v{batch}-{i}"), "acme", "calculator"))
            .collect();
        record(&client, events).await;
    }
    // Sixteen calls for one chain at once: one walks it, the others are
    // refused with a retry delay; all that walk find it intact. Whether two
    // calls overlap is the scheduler's; a few rounds make a refusal certain
    // in practice, and every round checks every answer.
    let mut refused = 0;
    for _round in 0..5 {
        let calls: Vec<_> = (0..16)
            .map(|_| tokio::spawn(verify(client.clone())))
            .collect();
        let recorded = record(&client, vec![event("during", "globex", "calculator")]).await;
        assert_ne!(recorded.results[0].status(), RecordStatus::Rejected);
        for call in calls {
            match call.await.unwrap() {
                Ok(checked) => assert_eq!(checked, EVENTS),
                Err((code, delay)) => {
                    assert_eq!(code, Code::ResourceExhausted);
                    assert!(delay.is_some_and(|d| !d.is_zero()), "{delay:?}");
                    refused += 1;
                }
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "no verification was refused in five rounds of 16"
    );
    // Once they are done, the chain verifies again.
    assert_eq!(verify(client.clone()).await, Ok(EVENTS));
}
