//! The audit service through a real tonic client, every test on SQLite and
//! on PostgreSQL: idempotent Record with per-event rejections, Query filters
//! and pages, the hash chain and tampering, Subscribe across the replay/live
//! seam and across reconnects, Export as CSV and JSON Lines, Report sums
//! computed by the database, retention that keeps the chain verifiable.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

use std::collections::HashSet;
use std::time::Duration;

use agentmesh_kit::Listeners;
use agentmesh_proto::audit::v1::{
    self as pb, AuditEvent, EventFilter, EventType, LlmCallDetails, Outcome, RecordStatus,
    ToolCallDetails, audit_event::Details, audit_service_client::AuditServiceClient,
    subscribe_response::Item,
};
use agentmesh_tests::{test_server_config, wait_serving};
use futures::StreamExt;
use prost::Message;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// An audit service in this process, on a fresh database.
struct Audit {
    client: AuditServiceClient<Channel>,
    url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), agentmesh_kit::ServeError>>,
    _data: tempfile::TempDir,
    /// Keeps the PostgreSQL server up while the test runs.
    _postgres: Option<std::sync::Arc<agentmesh_testkit::postgres::PostgresServer>>,
}

impl Audit {
    async fn start(backend: Backend, tweak: impl FnOnce(&mut agentmesh_audit::Config)) -> Self {
        let data = tempfile::tempdir().unwrap();
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
            ..Default::default()
        };
        config.storage.url = Some(url.clone());
        config.subscribe_heartbeat = Duration::from_millis(200);
        tweak(&mut config);
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
            url,
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

    async fn record(&self, events: Vec<AuditEvent>) -> pb::RecordResponse {
        self.client
            .clone()
            .record(pb::RecordRequest { events })
            .await
            .unwrap()
            .into_inner()
    }

    async fn query(&self, filter: EventFilter) -> Vec<AuditEvent> {
        let mut client = self.client.clone();
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .query(pb::QueryRequest {
                    filter: Some(filter.clone()),
                    order: pb::SortOrder::OldestFirst as i32,
                    page_size: 7,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner();
            events.extend(page.events);
            if page.next_page_token.is_empty() {
                return events;
            }
            page_token = page.next_page_token;
        }
    }

    async fn verify(&self) -> pb::VerifyChainResponse {
        self.client
            .clone()
            .verify_chain(pb::VerifyChainRequest::default())
            .await
            .unwrap()
            .into_inner()
    }

    /// Runs SQL on the database directly, as someone with access to it.
    async fn sql(&self, statements: &[&str], body: Option<(&str, Vec<u8>)>) {
        macro_rules! run {
            ($conn:expr) => {{
                let mut conn = $conn;
                for statement in statements {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
                        .execute(&mut conn)
                        .await
                        .unwrap();
                }
                if let Some((event_id, body)) = body {
                    sqlx::query("UPDATE audit_events SET body = $1 WHERE event_id = $2")
                        .bind(body)
                        .bind(event_id)
                        .execute(&mut conn)
                        .await
                        .unwrap();
                }
            }};
        }
        if self.url.starts_with("sqlite") {
            run!(sqlx::SqliteConnection::connect(&self.url).await.unwrap());
        } else {
            run!(sqlx::PgConnection::connect(&self.url).await.unwrap());
        }
    }

    /// The body of a stored event, read directly.
    async fn body(&self, event_id: &str) -> Vec<u8> {
        let query = "SELECT body FROM audit_events WHERE event_id = $1";
        if self.url.starts_with("sqlite") {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(query)
                .bind(event_id)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        } else {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(query)
                .bind(event_id)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    }
}

fn tool_call(id: &str, tenant: &str, tool: &str, failed: bool) -> AuditEvent {
    AuditEvent {
        event_id: id.to_owned(),
        r#type: EventType::ToolCall as i32,
        service: "tool-runner".into(),
        tenant: tenant.into(),
        run_id: "run-1".into(),
        outcome: if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        } as i32,
        details: Some(Details::ToolCall(ToolCallDetails {
            tool: tool.into(),
            is_error: failed,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn llm_call(
    id: &str,
    tenant: &str,
    model: &str,
    input: i64,
    output: i64,
    cost: Option<f64>,
) -> AuditEvent {
    AuditEvent {
        event_id: id.to_owned(),
        r#type: EventType::LlmCall as i32,
        service: "llm-gateway".into(),
        tenant: tenant.into(),
        outcome: Outcome::Success as i32,
        details: Some(Details::LlmCall(LlmCallDetails {
            provider: "openai".into(),
            model: model.into(),
            input_tokens: input,
            output_tokens: output,
            estimated_cost_usd: cost,
            ..Default::default()
        })),
        ..Default::default()
    }
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
    record_is_idempotent_and_rejects_bad_events_alone,
    query_filters_orders_and_pages,
    tampering_is_named_by_verify_chain,
    subscribe_meets_the_live_tail_without_gap_or_duplicate,
    export_streams_csv_and_jsonl,
    report_sums_in_the_database,
    retention_keeps_the_chain_verifiable,
);

async fn record_is_idempotent_and_rejects_bad_events_alone(backend: Backend) {
    let audit = Audit::start(backend, |_| {}).await;
    let mut no_type = tool_call("e-bad", "", "calculator", false);
    no_type.r#type = 0;
    let mut huge = tool_call("e-huge", "", "calculator", false);
    huge.attributes.insert("blob".into(), "x".repeat(70 * 1024));
    let response = audit
        .record(vec![
            tool_call("e1", "acme", "calculator", false),
            tool_call("", "acme", "calculator", false),
            no_type,
            tool_call("e2", "acme", "calculator", false),
            huge,
            tool_call("e1", "acme", "calculator", false),
        ])
        .await;
    assert_eq!(
        (
            response.accepted_count,
            response.duplicate_count,
            response.rejected_count
        ),
        (2, 1, 3)
    );
    let statuses: Vec<RecordStatus> = response.results.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses,
        [
            RecordStatus::Accepted,
            RecordStatus::Rejected,
            RecordStatus::Rejected,
            RecordStatus::Accepted,
            RecordStatus::Rejected,
            RecordStatus::Duplicate,
        ]
    );
    let errors: Vec<String> = response
        .results
        .iter()
        .filter_map(|r| r.error.as_ref())
        .map(|e| e.message.clone())
        .collect();
    assert!(errors[0].contains("events[1].event_id"), "{errors:?}");
    assert!(errors[1].contains("events[2].type"), "{errors:?}");
    assert!(errors[2].contains("events[4].details"), "{errors:?}");
    assert_eq!(response.results[5].cursor, response.results[0].cursor);
    // Re-sending the whole batch stores nothing twice.
    let again = audit
        .record(vec![
            tool_call("e1", "acme", "calculator", false),
            tool_call("e2", "acme", "calculator", false),
        ])
        .await;
    assert_eq!((again.accepted_count, again.duplicate_count), (0, 2));
    let stored = audit
        .query(EventFilter {
            tenants: vec!["acme".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(
        stored
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["e1", "e2"]
    );
    assert_eq!(stored[0].chain, "tenant:acme");
    assert_eq!(stored[1].previous_hash, stored[0].hash);
    assert!(stored[0].record_time.is_some());
    // A bad batch fails as a whole.
    let empty = audit
        .client
        .clone()
        .record(pb::RecordRequest { events: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let too_many = audit
        .client
        .clone()
        .record(pb::RecordRequest {
            events: (0..1001)
                .map(|i| tool_call(&format!("m{i}"), "", "calculator", false))
                .collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(too_many.message().contains("1000"));
    audit.stop().await;
}

async fn query_filters_orders_and_pages(backend: Backend) {
    let audit = Audit::start(backend, |_| {}).await;
    let mut events = Vec::new();
    for i in 0..30 {
        let mut event = tool_call(
            &format!("t{i:02}"),
            if i % 2 == 0 { "acme" } else { "globex" },
            if i % 3 == 0 {
                "calculator"
            } else {
                "read_file"
            },
            i % 5 == 0,
        );
        event.time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + i,
            nanos: 0,
        });
        events.push(event);
    }
    events.push(llm_call("l1", "acme", "gpt-4o", 10, 5, Some(0.01)));
    audit.record(events).await;
    let all = audit.query(EventFilter::default()).await;
    // 31 recorded, plus the service's own CONFIG_LOADED.
    assert_eq!(all.len(), 32);
    let acme_calculator = audit
        .query(EventFilter {
            tenants: vec!["acme".into()],
            tools: vec!["calculator".into()],
            ..Default::default()
        })
        .await;
    let ids: Vec<&str> = acme_calculator
        .iter()
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(ids, ["t00", "t06", "t12", "t18", "t24"]);
    let failures = audit
        .query(EventFilter {
            outcomes: vec![Outcome::Failure as i32],
            ..Default::default()
        })
        .await;
    assert_eq!(failures.len(), 6);
    let window = audit
        .query(EventFilter {
            start_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_010,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_020,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(window.len(), 10);
    let models = audit
        .query(EventFilter {
            models: vec!["gpt-4o".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(models.len(), 1);
    // Newest first, one page.
    let newest = audit
        .client
        .clone()
        .query(pb::QueryRequest {
            filter: Some(EventFilter {
                tenants: vec!["globex".into()],
                ..Default::default()
            }),
            order: pb::SortOrder::NewestFirst as i32,
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        newest
            .events
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["t29", "t27", "t25"]
    );
    // A token used with another filter is refused.
    let misuse = audit
        .client
        .clone()
        .query(pb::QueryRequest {
            page_token: newest.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(misuse.code(), Code::InvalidArgument);
    assert!(misuse.message().contains("page_token"));
    audit.stop().await;
}

async fn tampering_is_named_by_verify_chain(backend: Backend) {
    let audit = Audit::start(backend, |_| {}).await;
    let events = (0..20)
        .map(|i| llm_call(&format!("c{i}"), "acme", "gpt-4o", 100, 10, Some(0.002)))
        .collect();
    audit.record(events).await;
    let intact = audit.verify().await;
    assert!(intact.ok, "{intact:?}");
    assert_eq!(intact.events_checked, 21);
    assert_eq!(intact.chains_checked, 2);

    // The log refuses changes through SQL.
    let refused = if audit.url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(&audit.url).await.unwrap();
        sqlx::query("UPDATE audit_events SET tenant = 'x'")
            .execute(&mut conn)
            .await
            .unwrap_err()
    } else {
        let mut conn = sqlx::PgConnection::connect(&audit.url).await.unwrap();
        sqlx::query("DELETE FROM audit_events")
            .execute(&mut conn)
            .await
            .unwrap_err()
    };
    assert!(refused.to_string().contains("append-only"), "{refused}");

    // Someone who can switch the guard off edits one event's details.
    let mut event = AuditEvent::decode(audit.body("c7").await.as_slice()).unwrap();
    if let Some(Details::LlmCall(call)) = &mut event.details {
        call.input_tokens = 1;
    }
    let guard_off: &[&str] = if audit.url.starts_with("sqlite") {
        &["DROP TRIGGER audit_events_no_update"]
    } else {
        &["ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"]
    };
    audit
        .sql(guard_off, Some(("c7", event.encode_to_vec())))
        .await;
    let tampered = audit.verify().await;
    assert!(!tampered.ok);
    let bad = tampered.first_bad_event.unwrap();
    assert_eq!(bad.event_id, "c7");
    assert_eq!(bad.kind(), pb::ChainBreakKind::ContentMismatch);
    assert_eq!(bad.chain, "tenant:acme");
    assert!(bad.message.contains("c7"));

    // Editing only an indexed column is caught too.
    audit
        .sql(
            &["UPDATE audit_events SET input_tokens = 5 WHERE event_id = 'c3'"],
            None,
        )
        .await;
    let bad = audit.verify().await.first_bad_event.unwrap();
    assert_eq!(bad.event_id, "c3");

    // A deleted event breaks the link of the next one.
    let delete: &[&str] = if audit.url.starts_with("sqlite") {
        &[
            "DROP TRIGGER audit_events_no_delete",
            "DELETE FROM audit_events WHERE event_id = 'c1'",
        ]
    } else {
        &["DELETE FROM audit_events WHERE event_id = 'c1'"]
    };
    audit.sql(delete, None).await;
    let bad = audit.verify().await.first_bad_event.unwrap();
    assert_eq!(bad.event_id, "c2");
    assert_eq!(bad.kind(), pb::ChainBreakKind::LinkMismatch);
    let unknown = audit
        .client
        .clone()
        .verify_chain(pb::VerifyChainRequest {
            chain: "tenant:nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    audit.stop().await;
}

/// Reads a subscription until `count` events arrived; returns them and the
/// cursor of the last.
async fn take_events(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    count: usize,
) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the subscription stalled")
            .expect("the subscription ended")
            .unwrap();
        if let Some(Item::Event(event)) = item.item {
            events.push(event);
        }
    }
    events
}

async fn subscribe_meets_the_live_tail_without_gap_or_duplicate(backend: Backend) {
    let audit = Audit::start(backend, |_| {}).await;
    let filter = EventFilter {
        types: vec![EventType::ToolCall as i32],
        ..Default::default()
    };
    audit
        .record(
            (0..250)
                .map(|i| tool_call(&format!("s{i:04}"), "acme", "calculator", false))
                .collect(),
        )
        .await;
    let mut stream = audit
        .client
        .clone()
        .subscribe(pb::SubscribeRequest {
            filter: Some(filter.clone()),
            after_cursor: String::new(),
            from_beginning: true,
        })
        .await
        .unwrap()
        .into_inner();
    // Writers keep going while the subscription replays.
    let writer = {
        let client = audit.client.clone();
        tokio::spawn(async move {
            for batch in 0..10 {
                let events = (0..25)
                    .map(|i| {
                        tool_call(
                            &format!("s{:04}", 250 + batch * 25 + i),
                            "acme",
                            "calculator",
                            false,
                        )
                    })
                    .collect();
                client
                    .clone()
                    .record(pb::RecordRequest { events })
                    .await
                    .unwrap();
                // Interleave some events the filter leaves out.
                client
                    .clone()
                    .record(pb::RecordRequest {
                        events: vec![llm_call(&format!("x{batch}"), "acme", "m", 1, 1, None)],
                    })
                    .await
                    .unwrap();
            }
        })
    };
    let first = take_events(&mut stream, 300).await;
    writer.await.unwrap();
    let rest = take_events(&mut stream, 200).await;
    drop(stream);
    let ids: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|e| e.event_id.clone())
        .collect();
    let expected: Vec<String> = (0..500).map(|i| format!("s{i:04}")).collect();
    assert_eq!(ids, expected, "events out of order, missing or repeated");
    // Reconnecting after the 300th event delivers exactly the rest.
    let resume = first[299].cursor.clone();
    let mut again = audit
        .client
        .clone()
        .subscribe(pb::SubscribeRequest {
            filter: Some(filter),
            after_cursor: resume,
            from_beginning: false,
        })
        .await
        .unwrap()
        .into_inner();
    let resumed = take_events(&mut again, 200).await;
    assert_eq!(
        resumed
            .iter()
            .map(|e| e.event_id.clone())
            .collect::<Vec<_>>(),
        expected[300..].to_vec()
    );
    // Nothing else arrives: the next item is a heartbeat.
    let next = tokio::time::timeout(Duration::from_secs(5), again.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(next.item, Some(Item::Heartbeat(ref h)) if h.live),
        "{next:?}"
    );
    let bad = audit
        .client
        .clone()
        .subscribe(pb::SubscribeRequest {
            after_cursor: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    audit.stop().await;
}

async fn export_streams_csv_and_jsonl(backend: Backend) {
    let audit = Audit::start(backend, |config| config.export_chunk_events = 40).await;
    let mut events: Vec<AuditEvent> = (0..100)
        .map(|i| llm_call(&format!("x{i:03}"), "acme", "gpt-4o", i, 2 * i, Some(0.5)))
        .collect();
    events[3]
        .attributes
        .insert("team".into(), "search, \"core\"".into());
    events[4].reason = "line one\nline two".into();
    audit.record(events).await;
    let filter = EventFilter {
        tenants: vec!["acme".into()],
        ..Default::default()
    };
    let mut stream = audit
        .client
        .clone()
        .export(pb::ExportRequest {
            filter: Some(filter.clone()),
            format: pb::ExportFormat::Csv as i32,
            order: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut csv_bytes = Vec::new();
    let mut chunks = 0;
    let mut content_type = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if chunks == 0 {
            content_type = chunk.content_type.clone();
        }
        chunks += 1;
        csv_bytes.extend_from_slice(&chunk.data);
    }
    assert_eq!(content_type, "text/csv");
    assert_eq!(chunks, 3, "100 events in chunks of 40");
    let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 100);
    assert_eq!(&records[7][column("event_id")], "x007");
    assert_eq!(&records[7][column("type")], "LLM_CALL");
    assert_eq!(&records[7][column("llm_call.output_tokens")], "14");
    assert_eq!(&records[3][column("attributes.team")], "search, \"core\"");
    assert_eq!(&records[4][column("reason")], "line one\nline two");
    assert!(records[0][column("time")].ends_with('Z'));

    let mut stream = audit
        .client
        .clone()
        .export(pb::ExportRequest {
            filter: Some(filter),
            format: pb::ExportFormat::Jsonl as i32,
            order: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap().data).unwrap());
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[5]["eventId"], "x005");
    assert_eq!(lines[5]["type"], "EVENT_TYPE_LLM_CALL");
    assert_eq!(lines[5]["llmCall"]["inputTokens"], "5");
    audit.stop().await;
}

async fn report_sums_in_the_database(backend: Backend) {
    let audit = Audit::start(backend, |_| {}).await;
    let hour = 1_767_225_600; // 2026-01-01T00:00:00Z
    let at = |event: AuditEvent, seconds: i64| AuditEvent {
        time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        ..event
    };
    audit
        .record(vec![
            at(
                llm_call("r1", "acme", "gpt-4o", 100, 10, Some(0.25)),
                hour + 60,
            ),
            at(
                llm_call("r2", "acme", "gpt-4o-mini", 50, 5, Some(0.5)),
                hour + 3700,
            ),
            at(llm_call("r3", "globex", "gpt-4o", 7, 3, None), hour + 3800),
            at(tool_call("r4", "acme", "calculator", true), hour + 120),
            at(tool_call("r5", "acme", "calculator", false), hour + 7300),
        ])
        .await;
    let range = EventFilter {
        start_time: Some(prost_types::Timestamp {
            seconds: hour,
            nanos: 0,
        }),
        end_time: Some(prost_types::Timestamp {
            seconds: hour + 3 * 3600,
            nanos: 0,
        }),
        ..Default::default()
    };
    let usage = audit
        .client
        .clone()
        .report(pb::ReportRequest {
            kind: pb::ReportKind::Usage as i32,
            filter: Some(range.clone()),
            bucket: pb::TimeBucket::Hour as i32,
            group_by: vec![pb::ReportDimension::Tenant as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let usage_of = |row: &pb::ReportRow| match &row.metrics {
        Some(pb::report_row::Metrics::Usage(u)) => *u,
        other => panic!("not usage: {other:?}"),
    };
    let totals = usage_of(usage.totals.as_ref().unwrap());
    assert_eq!(
        (totals.llm_calls, totals.input_tokens, totals.output_tokens),
        (3, 157, 18)
    );
    assert_eq!((totals.tool_calls, totals.tool_call_failures), (2, 1));
    assert!((totals.estimated_cost_usd - 0.75).abs() < 1e-9);
    // Hour 0: acme (r1, r4); hour 1: acme (r2), globex (r3); hour 2: acme (r5).
    let rows: Vec<(i64, String, i64, i64)> = usage
        .rows
        .iter()
        .map(|row| {
            let u = usage_of(row);
            (
                row.bucket_start.unwrap().seconds - hour,
                row.group["tenant"].clone(),
                u.llm_calls,
                u.tool_calls,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (0, "acme".to_owned(), 1, 1),
            (3600, "acme".to_owned(), 1, 0),
            (3600, "globex".to_owned(), 1, 0),
            (7200, "acme".to_owned(), 0, 1),
        ]
    );
    let cost = audit
        .client
        .clone()
        .report(pb::ReportRequest {
            kind: pb::ReportKind::Cost as i32,
            filter: Some(range.clone()),
            group_by: vec![pb::ReportDimension::Model as i32],
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cost.rows.len(), 1);
    assert!(!cost.next_page_token.is_empty());
    match cost.totals.unwrap().metrics {
        Some(pb::report_row::Metrics::Cost(c)) => {
            assert_eq!((c.llm_calls, c.unpriced_llm_calls), (3, 1))
        }
        other => panic!("{other:?}"),
    }
    let missing = audit
        .client
        .clone()
        .report(pb::ReportRequest {
            kind: pb::ReportKind::Usage as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("filter.start_time"));
    audit.stop().await;
}

async fn retention_keeps_the_chain_verifiable(backend: Backend) {
    let audit = Audit::start(backend, |config| {
        config.retention.max_age = Some(Duration::from_secs(3));
        config.retention.interval = Duration::from_millis(100);
        config.retention.batch_size = 7;
    })
    .await;
    let response = audit
        .record(
            (0..30)
                .map(|i| tool_call(&format!("old{i}"), "acme", "calculator", false))
                .collect(),
        )
        .await;
    let old_cursor = response.results[3].cursor.clone();
    let retention =
        agentmesh_testkit::eventually("a retention pass", Duration::from_secs(30), || async {
            let events = audit
                .query(EventFilter {
                    types: vec![EventType::Retention as i32],
                    ..Default::default()
                })
                .await;
            let deleted: i64 = events
                .iter()
                .filter_map(|e| match &e.details {
                    Some(Details::Retention(r)) => Some(r.deleted_count),
                    _ => None,
                })
                .sum();
            (deleted >= 31).then_some(events)
        })
        .await;
    assert!(!retention.is_empty());
    audit
        .record(
            (0..5)
                .map(|i| tool_call(&format!("new{i}"), "acme", "calculator", false))
                .collect(),
        )
        .await;
    let remaining: HashSet<String> = audit
        .query(EventFilter {
            tenants: vec!["acme".into()],
            ..Default::default()
        })
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert!(
        remaining.iter().all(|id| id.starts_with("new")),
        "{remaining:?}"
    );
    let verified = audit.verify().await;
    assert!(verified.ok, "{verified:?}");
    let gone = audit
        .client
        .clone()
        .subscribe(pb::SubscribeRequest {
            after_cursor: old_cursor,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(gone.code(), Code::OutOfRange);
    audit.stop().await;
}
