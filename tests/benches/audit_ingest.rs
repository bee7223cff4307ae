//! What the audit trail costs: sustained ingestion into the real audit
//! service (real gRPC on loopback, hash chain, group commit) on SQLite and on
//! PostgreSQL, the latency of `emit` at the caller with the real producer
//! sending to that service in the background, and the tail lag across
//! replicas. Run with `make bench`.
//!
//! Ingestion: `PRODUCERS` concurrent clients each send `Record` batches of
//! `BATCH` events (the producer library's default batch size), spread over
//! four tenants (four chains), until `EVENTS` events are stored.
//!
//! Tail lag: two replicas on one PostgreSQL database, a `Subscribe` stream on
//! each; `TAIL_EVENTS` events recorded one at a time through replica A. Each
//! lag runs from the `Record` call on A to the event's receipt by the
//! stream, on A itself (the writer's live tail in memory) and on B (the
//! commit's NOTIFY, B's listener, a read of the store). The replicas poll
//! only every 30 s, so no figure comes from the poll.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::indexing_slicing,
    reason = "a benchmark program"
)]

use std::time::{Duration, Instant};

use agentmesh_audit_client::{AuditClient, AuditConfig};
use agentmesh_kit::Listeners;
use agentmesh_proto::audit::v1::{
    self as pb, AuditEvent, EventType, LlmCallDetails, Outcome, audit_event::Details,
    audit_service_client::AuditServiceClient, subscribe_response::Item,
};
use agentmesh_tests::{percentile, test_server_config, wait_serving};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

const PRODUCERS: usize = 8;
const BATCH: usize = 500;
const EVENTS: usize = 200_000;
const EMITS: usize = 200_000;
const TAIL_EVENTS: usize = 1000;

fn event(n: usize) -> AuditEvent {
    AuditEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        r#type: EventType::LlmCall as i32,
        service: "bench".into(),
        tenant: format!("tenant-{}", n % 4),
        subject: "bench-user".into(),
        run_id: format!("run-{}", n / 10),
        outcome: Outcome::Success as i32,
        details: Some(Details::LlmCall(LlmCallDetails {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            route: "default".into(),
            input_tokens: 812,
            output_tokens: 97,
            estimated_cost_usd: Some(0.000_18),
            ..Default::default()
        })),
        ..Default::default()
    }
}

struct Service {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), agentmesh_kit::ServeError>>,
}

async fn start(url: String) -> Service {
    let mut config = agentmesh_audit::Config {
        server: test_server_config(),
        ..Default::default()
    };
    config.storage.url = Some(url);
    config.storage.max_connections = 16;
    // The tail lag must not come from the fallback poll.
    config.subscribe_heartbeat = Duration::from_secs(30);
    let listeners = Listeners::bind(&config.server).await.unwrap();
    let addr = listeners.grpc_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agentmesh_audit::serve_with_listeners(
        config,
        listeners,
        stop.clone().cancelled_owned(),
    ));
    wait_serving(
        agentmesh_tests::channel(addr),
        "agentmesh.audit.v1.AuditService",
    )
    .await;
    Service { addr, stop, task }
}

impl Service {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Sends `EVENTS` events from `PRODUCERS` clients; returns events/s.
async fn ingest(service: &Service) -> f64 {
    let client = AuditServiceClient::new(agentmesh_tests::channel(service.addr))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    // Build the batches first: the figure is the service's, not the encoder's.
    let batches: Vec<Vec<AuditEvent>> = (0..EVENTS / BATCH)
        .map(|b| (0..BATCH).map(|i| event(b * BATCH + i)).collect())
        .collect();
    let started = Instant::now();
    let stored: usize = futures::stream::iter(batches)
        .map(|events| {
            let mut client = client.clone();
            async move {
                let response = client
                    .record(pb::RecordRequest { events })
                    .await
                    .unwrap()
                    .into_inner();
                usize::try_from(response.accepted_count).unwrap()
            }
        })
        .buffer_unordered(PRODUCERS)
        .fold(0, |sum, n| async move { sum + n })
        .await;
    let elapsed = started.elapsed();
    assert_eq!(stored, EVENTS);
    EVENTS as f64 / elapsed.as_secs_f64()
}

/// A `Subscribe` stream of the benchmark's events on `service`, live once
/// this returns; each event's id and arrival time go to the channel.
async fn follow(service: &Service) -> tokio::sync::mpsc::UnboundedReceiver<(String, Instant)> {
    let mut stream = AuditServiceClient::new(agentmesh_tests::channel(service.addr))
        .subscribe(pb::SubscribeRequest {
            filter: Some(pb::EventFilter {
                types: vec![EventType::LlmCall as i32],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The first heartbeat follows the (empty) replay: the stream is live.
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first.item, Some(Item::Heartbeat(_))), "{first:?}");
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(response)) = stream.next().await {
            if let Some(Item::Event(event)) = response.item
                && sender.send((event.event_id, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    receiver
}

/// The lags from `Record` on `a` to receipt on `a` and on `b`.
async fn tail_lag(a: &Service, b: &Service) -> (Vec<Duration>, Vec<Duration>) {
    let (mut on_a, mut on_b) = (follow(a).await, follow(b).await);
    let mut client = AuditServiceClient::new(agentmesh_tests::channel(a.addr));
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for n in 0..TAIL_EVENTS {
        let event = event(n);
        let id = event.event_id.clone();
        let sent = Instant::now();
        client
            .record(pb::RecordRequest {
                events: vec![event],
            })
            .await
            .unwrap();
        for (receiver, lags) in [(&mut on_a, &mut same), (&mut on_b, &mut other)] {
            let (got, at) = agentmesh_tests::within(
                "the event on a subscriber",
                Duration::from_secs(10),
                receiver.recv(),
            )
            .await
            .unwrap();
            assert_eq!(got, id);
            lags.push(at - sent);
        }
    }
    (same, other)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let data = tempfile::tempdir().unwrap();

        let sqlite = start(format!("sqlite://{}", data.path().join("audit.db").display())).await;
        let sqlite_rate = ingest(&sqlite).await;
        println!("audit ingest, SQLite:     {sqlite_rate:>9.0} events/s ({EVENTS} events, {PRODUCERS} producers x batches of {BATCH})");

        // emit() at the caller, the producer sending to the service meanwhile.
        let config = AuditConfig {
            url: format!("http://{}", sqlite.addr),
            spool_dir: data.path().join("spool"),
            ..AuditConfig::default()
        };
        let registry = prometheus::Registry::new();
        let producer = AuditClient::start(&config, "bench", &registry).unwrap();
        let mut latencies = Vec::with_capacity(EMITS);
        let prepared: Vec<AuditEvent> = (0..EMITS).map(event).collect();
        let started = Instant::now();
        for event in prepared {
            let before = Instant::now();
            producer.emit(event);
            latencies.push(before.elapsed());
            // About 100,000 events/s offered: a busy service, not a tight loop.
            if latencies.len() % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let offered = started.elapsed();
        producer.flush().await;
        let delivered = started.elapsed();
        producer.shutdown().await;
        latencies.sort_unstable();
        let emit = quantiles_us(&latencies);
        println!(
            "emit at the caller:       p50 {:?}, p99 {:?}, max {:?} ({EMITS} emits over {offered:.2?}; all delivered after {delivered:.2?}, spool {} bytes)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
            producer.spooled_bytes(),
        );
        sqlite.stop().await;

        let server = agentmesh_testkit::postgres::shared().await;
        let postgres = start(server.create_database("audit_bench").await).await;
        let postgres_rate = ingest(&postgres).await;
        println!("audit ingest, PostgreSQL: {postgres_rate:>9.0} events/s ({EVENTS} events, {PRODUCERS} producers x batches of {BATCH})");
        postgres.stop().await;

        let url = server.create_database("audit_tail_bench").await;
        let (a, b) = (start(url.clone()).await, start(url).await);
        let (mut same, mut other) = tail_lag(&a, &b).await;
        for (on, lags) in [("A", &mut same), ("B", &mut other)] {
            lags.sort_unstable();
            println!(
                "audit tail, Record on A to Subscribe on {on}: p50 {:?}, p99 {:?}, max {:?} ({TAIL_EVENTS} events one at a time, PostgreSQL)",
                percentile(lags, 0.5),
                percentile(lags, 0.99),
                lags[lags.len() - 1],
            );
        }
        a.stop().await;
        b.stop().await;

        // The same figures as one JSON line, for bench/run.py's report.
        println!(
            "{}",
            serde_json::json!({
                "bench": "audit_ingest",
                "events": EVENTS,
                "producers": PRODUCERS,
                "batch": BATCH,
                "sqlite_events_per_s": sqlite_rate.round(),
                "postgres_events_per_s": postgres_rate.round(),
                "emits": EMITS,
                "emit_us": emit,
                "tail_events": TAIL_EVENTS,
                "tail_same_replica_us": quantiles_us(&same),
                "tail_other_replica_us": quantiles_us(&other),
            })
        );
    });
}

/// p50, p99 and max of sorted `latencies`, in µs.
fn quantiles_us(latencies: &[Duration]) -> serde_json::Value {
    let us = |d: Duration| (d.as_secs_f64() * 1e9).round() / 1e3;
    serde_json::json!({
        "p50": us(percentile(latencies, 0.5)),
        "p99": us(percentile(latencies, 0.99)),
        "max": us(latencies[latencies.len() - 1]),
    })
}
