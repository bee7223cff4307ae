//! The producer against an in-process audit service that can be switched to
//! fail with UNAVAILABLE.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_proto::audit::v1::audit_service_server::{AuditService, AuditServiceServer};
use agentmesh_proto::audit::v1::{self as v1, AuditEvent, EventType, RecordStatus};
use prometheus::Registry;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::spool::Spool;
use crate::{AuditClient, AuditConfig, SpoolFullPolicy};

/// How long any single wait in these tests may take before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

const SERVICE: &str = "tester";

// === the fake audit service ===

#[derive(Default)]
struct Recorded {
    /// Stored events, in arrival order, each once.
    events: Mutex<Vec<AuditEvent>>,
    /// Size of each successful Record call.
    batches: Mutex<Vec<usize>>,
    failing: AtomicBool,
    failed_calls: AtomicUsize,
}

#[derive(Clone, Default)]
struct FakeAudit(Arc<Recorded>);

impl FakeAudit {
    fn set_failing(&self, failing: bool) {
        self.0.failing.store(failing, Ordering::SeqCst);
    }

    fn ids(&self) -> Vec<String> {
        self.0
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_id.clone())
            .collect()
    }

    fn events(&self) -> Vec<AuditEvent> {
        self.0.events.lock().unwrap().clone()
    }

    fn batches(&self) -> Vec<usize> {
        self.0.batches.lock().unwrap().clone()
    }

    fn failed_calls(&self) -> usize {
        self.0.failed_calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl AuditService for FakeAudit {
    type SubscribeStream = tokio_stream::Empty<Result<v1::SubscribeResponse, Status>>;
    type ExportStream = tokio_stream::Empty<Result<v1::ExportResponse, Status>>;

    async fn record(
        &self,
        request: Request<v1::RecordRequest>,
    ) -> Result<Response<v1::RecordResponse>, Status> {
        if self.0.failing.load(Ordering::SeqCst) {
            self.0.failed_calls.fetch_add(1, Ordering::SeqCst);
            return Err(Status::unavailable("test: the audit store is down"));
        }
        let events = request.into_inner().events;
        self.0.batches.lock().unwrap().push(events.len());
        let mut stored = self.0.events.lock().unwrap();
        let mut response = v1::RecordResponse::default();
        for (index, event) in events.into_iter().enumerate() {
            let mut result = v1::RecordResult {
                index: index as i32,
                event_id: event.event_id.clone(),
                ..v1::RecordResult::default()
            };
            if event.r#type == EventType::Unspecified as i32 {
                result.status = RecordStatus::Rejected as i32;
                result.error = Some(Default::default());
                if let Some(error) = result.error.as_mut() {
                    error.code = tonic::Code::InvalidArgument as i32;
                    error.message = "events[].type: required".to_owned();
                }
                response.rejected_count += 1;
            } else if stored.iter().any(|e| e.event_id == event.event_id) {
                result.status = RecordStatus::Duplicate as i32;
                response.duplicate_count += 1;
            } else {
                result.status = RecordStatus::Accepted as i32;
                response.accepted_count += 1;
                stored.push(event);
            }
            response.results.push(result);
        }
        Ok(Response::new(response))
    }

    async fn query(
        &self,
        _request: Request<v1::QueryRequest>,
    ) -> Result<Response<v1::QueryResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn subscribe(
        &self,
        _request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn export(
        &self,
        _request: Request<v1::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn report(
        &self,
        _request: Request<v1::ReportRequest>,
    ) -> Result<Response<v1::ReportResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn verify_chain(
        &self,
        _request: Request<v1::VerifyChainRequest>,
    ) -> Result<Response<v1::VerifyChainResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }
}

/// Serves a fake audit service on an ephemeral port; returns its URL.
async fn start_server() -> (String, FakeAudit) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let fake = FakeAudit::default();
    let server = tonic::transport::Server::builder()
        .add_service(AuditServiceServer::new(fake.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (format!("http://{address}"), fake)
}

/// A URL where nothing listens.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

// === helpers ===

fn config(url: &str, spool_dir: &Path) -> AuditConfig {
    AuditConfig {
        url: url.to_owned(),
        spool_dir: spool_dir.to_owned(),
        queue_capacity: 1000,
        batch_size: 5,
        flush_interval: Duration::from_millis(10),
        send_timeout: Duration::from_secs(2),
        retry_interval: Duration::from_millis(20),
        shutdown_timeout: Duration::from_secs(2),
        ..AuditConfig::default()
    }
}

fn event(client: &AuditClient, i: usize) -> AuditEvent {
    let mut event = client.event(EventType::ToolCall);
    event.event_id = id(i);
    event.reason = "r".repeat(50);
    event
}

fn id(i: usize) -> String {
    format!("event-{i:04}")
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(id).collect()
}

fn spool_dir(root: &Path) -> PathBuf {
    root.join(SERVICE)
}

fn spool_files(root: &Path) -> usize {
    match std::fs::read_dir(spool_dir(root)) {
        Ok(entries) => entries
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|entry| entry.file_name().to_string_lossy().ends_with(".spool"))
            })
            .count(),
        Err(_) => 0,
    }
}

/// Writes events straight into a service's spool, as an earlier run would
/// have.
fn prefill_spool(root: &Path, range: std::ops::Range<usize>) {
    let mut spool = Spool::open(&spool_dir(root)).unwrap();
    let events: Vec<AuditEvent> = range
        .map(|i| AuditEvent {
            event_id: id(i),
            r#type: EventType::Error as i32,
            reason: "from an earlier run".to_owned(),
            ..AuditEvent::default()
        })
        .collect();
    spool.append(&events).unwrap();
}

/// Everything still in a service's spool, oldest first.
fn spooled_ids(root: &Path) -> Vec<String> {
    let mut spool = Spool::open(&spool_dir(root)).unwrap();
    spool
        .read_batch(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

fn metric(registry: &Registry, name: &str) -> f64 {
    let families = registry.gather();
    let Some(family) = families.iter().find(|family| family.name() == name) else {
        panic!("metric {name} not registered");
    };
    let metric = &family.get_metric()[0];
    if name.ends_with("_total") {
        metric.get_counter().get_value()
    } else {
        metric.get_gauge().get_value()
    }
}

async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {PATIENCE:?}"),
    }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_batched_and_redacted() {
    let (url, server) = start_server().await;
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let client = AuditClient::start(&config(&url, tmp.path()), SERVICE, &registry).unwrap();
    client.add_secret("super-secret-key-1");
    for i in 0..23 {
        let mut event = event(&client, i);
        if i == 3 {
            event.reason = "called with super-secret-key-1 and Bearer abc.def".to_owned();
        }
        client.emit(event);
    }
    bounded("flush", client.flush()).await;
    assert_eq!(client.queued(), 0);
    assert_eq!(server.ids(), ids(0..23));
    let batches = server.batches();
    assert!(batches.iter().all(|&n| n <= 5), "{batches:?}");
    assert!(batches.contains(&5), "not batched: {batches:?}");
    let received = server.events();
    assert_eq!(
        received[3].reason,
        "called with [REDACTED] and Bearer [REDACTED]"
    );
    assert_eq!(received[0].service, SERVICE);
    assert_eq!(
        metric(&registry, "agentmesh_audit_events_emitted_total"),
        23.0
    );
    assert_eq!(metric(&registry, "agentmesh_audit_events_sent_total"), 23.0);
    assert_eq!(
        metric(&registry, "agentmesh_audit_events_spooled_total"),
        0.0
    );
    assert_eq!(metric(&registry, "agentmesh_audit_queue_depth"), 0.0);
    assert_eq!(spool_files(tmp.path()), 0);

    // A partial batch goes out after the flush interval, without a flush.
    client.emit(event(&client, 23));
    eventually("the lone event", || server.ids().len() == 24).await;

    // Invalid events are counted as rejected, never re-sent.
    let mut invalid = event(&client, 24);
    invalid.r#type = EventType::Unspecified as i32;
    client.emit(invalid);
    bounded("flush", client.flush()).await;
    assert_eq!(
        metric(&registry, "agentmesh_audit_events_rejected_total"),
        1.0
    );
    assert_eq!(spool_files(tmp.path()), 0);
    bounded("shutdown", client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_spools_then_replays_in_order() {
    let (url, server) = start_server().await;
    server.set_failing(true);
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let client = AuditClient::start(&config(&url, tmp.path()), SERVICE, &registry).unwrap();
    for i in 0..30 {
        client.emit(event(&client, i));
    }
    bounded("flush", client.flush()).await;
    assert!(server.failed_calls() >= 1);
    assert!(client.spooled_bytes() > 0);
    assert!(spool_files(tmp.path()) >= 1);
    assert_eq!(
        metric(&registry, "agentmesh_audit_events_spooled_total"),
        30.0
    );
    assert!(metric(&registry, "agentmesh_audit_send_failures_total") >= 1.0);
    assert!(metric(&registry, "agentmesh_audit_spool_bytes") > 0.0);

    // While the spool is being replayed, new events go behind it.
    server.set_failing(false);
    for i in 30..40 {
        client.emit(event(&client, i));
    }
    eventually("all events delivered", || server.ids().len() >= 40).await;
    assert_eq!(server.ids(), ids(0..40));
    eventually("the spool emptied", || {
        client.spooled_bytes() == 0 && spool_files(tmp.path()) == 0
    })
    .await;
    assert_eq!(metric(&registry, "agentmesh_audit_spool_bytes"), 0.0);
    assert_eq!(metric(&registry, "agentmesh_audit_events_sent_total"), 40.0);
    // Back to sending directly.
    let spooled_before = metric(&registry, "agentmesh_audit_events_spooled_total");
    client.emit(event(&client, 40));
    bounded("flush", client.flush()).await;
    assert_eq!(server.ids(), ids(0..41));
    assert_eq!(
        metric(&registry, "agentmesh_audit_events_spooled_total"),
        spooled_before
    );
    bounded("shutdown", client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_follows_delivery() {
    let (url, server) = start_server().await;
    server.set_failing(true);
    let tmp = tempfile::tempdir().unwrap();
    let client = AuditClient::start(&config(&url, tmp.path()), SERVICE, &Registry::new()).unwrap();
    let check = client.health_check();
    assert_eq!(check.name(), "audit");
    assert!(!check.is_required());
    client.emit(event(&client, 0));
    bounded("flush", client.flush()).await;
    let delivery = client.delivery();
    assert!(delivery.enabled && !delivery.reachable, "{delivery:?}");
    let reason = check.run(Duration::from_secs(5)).await.unwrap_err();
    assert!(reason.contains(&format!("{url} unreachable")), "{reason}");
    assert!(reason.contains("bytes in the spool"), "{reason}");

    server.set_failing(false);
    eventually("the spool replayed", || client.spooled_bytes() == 0).await;
    assert!(client.delivery().reachable);
    check.run(Duration::from_secs(5)).await.unwrap();
    bounded("shutdown", client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replays_an_existing_spool_first() {
    let (url, server) = start_server().await;
    let tmp = tempfile::tempdir().unwrap();
    prefill_spool(tmp.path(), 0..12);
    let registry = Registry::new();
    let client = AuditClient::start(&config(&url, tmp.path()), SERVICE, &registry).unwrap();
    assert!(client.spooled_bytes() > 0);
    for i in 12..15 {
        client.emit(event(&client, i));
    }
    eventually("the old and new events", || server.ids().len() >= 15).await;
    assert_eq!(server.ids(), ids(0..15));
    eventually("the spool emptied", || {
        client.spooled_bytes() == 0 && spool_files(tmp.path()) == 0
    })
    .await;
    bounded("shutdown", client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_service_down_keeps_events_in_the_spool() {
    let url = dead_url().await;
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let client = AuditClient::start(&config(&url, tmp.path()), SERVICE, &registry).unwrap();
    for i in 0..10 {
        client.emit(event(&client, i));
    }
    bounded("shutdown", client.shutdown()).await;
    assert_eq!(client.queued(), 0);
    // Emitted after shutdown: straight to the spool, behind the others.
    client.emit(event(&client, 10));
    assert_eq!(client.queued(), 0);
    assert_eq!(spooled_ids(tmp.path()), ids(0..11));
    assert_eq!(
        metric(&registry, "agentmesh_audit_events_spooled_total"),
        11.0
    );

    // The next run delivers them.
    drop(client);
    let (url, server) = start_server().await;
    let registry = Registry::new();
    let client = AuditClient::start(&config(&url, tmp.path()), SERVICE, &registry).unwrap();
    eventually("the spooled events", || server.ids().len() >= 11).await;
    assert_eq!(server.ids(), ids(0..11));
    bounded("shutdown", client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_spools_what_is_queued_when_the_flush_times_out() {
    let (url, server) = start_server().await;
    let tmp = tempfile::tempdir().unwrap();
    // A spool too full to take more, and a service that fails: nothing
    // leaves the queue until shutdown.
    prefill_spool(tmp.path(), 0..20);
    server.set_failing(true);
    let mut config = config(&url, tmp.path());
    config.max_spool_bytes = 100;
    config.shutdown_timeout = Duration::from_millis(100);
    let registry = Registry::new();
    let client = AuditClient::start(&config, SERVICE, &registry).unwrap();
    for i in 20..27 {
        client.emit(event(&client, i));
    }
    bounded("shutdown", client.shutdown()).await;
    assert_eq!(client.queued(), 0);
    assert_eq!(spooled_ids(tmp.path()), ids(0..27));
    assert_eq!(metric(&registry, "agentmesh_audit_spool_full_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_counts_drops_when_the_spool_is_full() {
    let (url, server) = start_server().await;
    let tmp = tempfile::tempdir().unwrap();
    prefill_spool(tmp.path(), 0..20);
    server.set_failing(true);
    let mut config = config(&url, tmp.path());
    config.queue_capacity = 10;
    config.max_spool_bytes = 100;
    config.spool_full_policy = SpoolFullPolicy::DropOldest;
    let registry = Registry::new();
    let client = AuditClient::start(&config, SERVICE, &registry).unwrap();
    for i in 20..45 {
        client.emit(event(&client, i));
    }
    // 25 emitted into a queue of 10 that cannot drain: the 15 oldest dropped.
    assert_eq!(
        metric(&registry, "agentmesh_audit_events_dropped_total"),
        15.0
    );
    assert_eq!(metric(&registry, "agentmesh_audit_queue_depth"), 10.0);
    assert_eq!(client.queued(), 10);
    eventually("the spool-full alarm", || {
        metric(&registry, "agentmesh_audit_spool_full_total") == 1.0
    })
    .await;

    // The service comes back: the spool, then the 10 newest events.
    server.set_failing(false);
    eventually("delivery", || server.ids().len() >= 30).await;
    let mut expected = ids(0..20);
    expected.extend(ids(35..45));
    assert_eq!(server.ids(), expected);
    bounded("flush", client.flush()).await;
    bounded("shutdown", client.shutdown()).await;
    assert_eq!(spool_files(tmp.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_policy_blocks_emitters_until_there_is_room() {
    let (url, server) = start_server().await;
    let tmp = tempfile::tempdir().unwrap();
    prefill_spool(tmp.path(), 0..20);
    server.set_failing(true);
    let mut config = config(&url, tmp.path());
    config.queue_capacity = 5;
    config.max_spool_bytes = 100;
    let registry = Registry::new();
    let client = AuditClient::start(&config, SERVICE, &registry).unwrap();
    for i in 20..25 {
        client.emit(event(&client, i));
    }
    // The sixth emit blocks (its thread, not the runtime) until the service
    // is back and the queue drains.
    let emitter = {
        let client = client.clone();
        std::thread::spawn(move || client.emit(event(&client, 25)))
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!emitter.is_finished());
    server.set_failing(false);
    eventually("the blocked emitter", || emitter.is_finished()).await;
    emitter.join().unwrap();
    eventually("delivery", || server.ids().len() >= 26).await;
    assert_eq!(server.ids(), ids(0..26));
    assert_eq!(
        metric(&registry, "agentmesh_audit_events_dropped_total"),
        0.0
    );
    bounded("shutdown", client.shutdown()).await;
}

#[tokio::test]
async fn disabled_client_discards_events() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = AuditConfig::disabled();
    config.spool_dir = tmp.path().to_owned();
    let client = AuditClient::start(&config, SERVICE, &Registry::new()).unwrap();
    client.emit(client.event(EventType::RunStarted));
    bounded("flush", client.flush()).await;
    assert_eq!(client.queued(), 0);
    assert_eq!(client.spooled_bytes(), 0);
    bounded("shutdown", client.shutdown()).await;
    assert!(!spool_dir(tmp.path()).exists());
}

#[tokio::test]
async fn metrics_registered_twice_do_not_stop_the_client() {
    let (url, server) = start_server().await;
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let first = AuditClient::start(&config(&url, tmp.path()), SERVICE, &registry).unwrap();
    let second =
        AuditClient::start(&config(&url, &tmp.path().join("b")), SERVICE, &registry).unwrap();
    second.emit(event(&second, 0));
    bounded("flush", second.flush()).await;
    assert_eq!(server.ids(), ids(0..1));
    bounded("shutdown", first.shutdown()).await;
    bounded("shutdown", second.shutdown()).await;
}

#[tokio::test]
async fn capture_redacts_before_cutting() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(&dead_url().await, tmp.path());
    config.capture_content = true;
    config.max_capture_bytes = 40;
    let client = AuditClient::start(&config, SERVICE, &Registry::new()).unwrap();
    client.add_secret("sekrit-value-123");
    let text = "key sekrit-value-123 and then a long tail of ordinary words";
    let captured = client.capture(text);
    assert_eq!(captured.size_bytes, text.len() as i64);
    assert_eq!(captured.sha256, crate::sha256_hex(text.as_bytes()));
    assert_eq!(
        captured.text.as_deref(),
        Some("key [REDACTED] and then a long tail of o")
    );
    assert!(captured.truncated);

    config.capture_content = false;
    let quiet = AuditClient::start(&config, "quiet", &Registry::new()).unwrap();
    let captured = quiet.capture(text);
    assert_eq!(captured.text, None);
    assert!(!captured.truncated);
    bounded("shutdown", client.shutdown()).await;
    bounded("shutdown", quiet.shutdown()).await;
}
