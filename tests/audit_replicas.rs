//! Two audit binaries on one PostgreSQL database, each polling the database
//! only every 60 s (`subscribe_heartbeat`), so that only the commit
//! notifications (LISTEN/NOTIFY) can bring one replica's events to the
//! other's subscribers in time:
//!
//! * a subscriber on B gets an event recorded on A long before the poll
//!   would have found it;
//! * a burst recorded through both replicas at once reaches a subscriber on
//!   each, every event once, both in the same (log) order;
//! * a database restart loses nothing: events committed as soon as it is
//!   back — while the replicas are still reconnecting their listeners, so
//!   their notifications reach no one — still reach the subscriber promptly,
//!   because a listener that listens again wakes its subscribers once.
//!
//! "Promptly" is a bound far below the poll, not a timing claim; the lag
//! figures are the benchmark's (`make bench`, `audit_ingest`).

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agentmesh_proto::audit::v1::{
    self as pb, AuditEvent, EventFilter, EventType, Outcome, ToolCallDetails, audit_event::Details,
    audit_service_client::AuditServiceClient, subscribe_response::Item,
};
use agentmesh_testkit::eventually;
use agentmesh_tests::{RunningBinary, channel, http_get, wait_serving, within};
use futures::StreamExt;
use tonic::transport::Channel;

const AUDIT: &str = "agentmesh.audit.v1.AuditService";

/// The replicas' poll of the database: far longer than any test here waits.
const POLL: &str = "60s";

/// How long an event may take to reach a subscriber on the other replica:
/// a third of the poll, so that only a notification can deliver it in time.
const PROMPTLY: Duration = Duration::from_secs(20);

/// An audit binary on `url`, polling every [`POLL`], serving.
async fn start_replica(url: &str, dir: &Path) -> RunningBinary {
    let replica = RunningBinary::start(
        "agentmesh-audit",
        &[],
        &[
            ("AGENTMESH_AUDIT__STORAGE__URL", url),
            ("AGENTMESH_AUDIT__SUBSCRIBE_HEARTBEAT", POLL),
        ],
        dir,
    )
    .await;
    within(
        "the replica to be ready",
        Duration::from_secs(60),
        wait_serving(channel(replica.grpc), AUDIT),
    )
    .await;
    replica
}

/// The value of the replica's one series `name` (a counter, a gauge, a
/// histogram's `_count`).
async fn metric(replica: &RunningBinary, name: &str) -> f64 {
    let (status, body) = http_get(replica.admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter(|rest| rest.starts_with([' ', '{']))
        .find_map(|rest| rest.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

async fn listening(replica: &RunningBinary) -> bool {
    metric(replica, "agentmesh_audit_listener_connected").await == 1.0
}

async fn wait_listening(replica: &RunningBinary, expected: bool) {
    let what = format!("the listener to be connected: {expected}");
    eventually(&what, Duration::from_secs(30), || async {
        (listening(replica).await == expected).then_some(())
    })
    .await;
}

fn tool_call(id: &str) -> AuditEvent {
    AuditEvent {
        event_id: id.to_owned(),
        r#type: EventType::ToolCall as i32,
        service: "tool-runner".into(),
        tenant: "acme".into(),
        run_id: "run-1".into(),
        outcome: Outcome::Success as i32,
        details: Some(Details::ToolCall(ToolCallDetails {
            tool: "calculator".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Records `ids` through `addr`, retrying while the service answers
/// UNAVAILABLE (its database coming back); `Record` is idempotent by id.
async fn record(addr: SocketAddr, ids: &[String]) {
    let events: Vec<AuditEvent> = ids.iter().map(|id| tool_call(id)).collect();
    let client = AuditServiceClient::new(channel(addr));
    eventually("Record to succeed", Duration::from_secs(30), || {
        let request = pb::RecordRequest {
            events: events.clone(),
        };
        let mut client = client.clone();
        async move {
            match client.record(request).await {
                Ok(response) => Some(response.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => None,
                Err(status) => panic!("Record failed: {status:?}"),
            }
        }
    })
    .await;
}

/// A `Subscribe` stream of the tool calls, resumed from its last cursor
/// when it fails (as a consumer does).
struct Tail {
    client: AuditServiceClient<Channel>,
    stream: tonic::Streaming<pb::SubscribeResponse>,
    cursor: String,
}

fn tool_calls() -> EventFilter {
    EventFilter {
        types: vec![EventType::ToolCall as i32],
        ..Default::default()
    }
}

impl Tail {
    /// Subscribes from now on and waits for the first heartbeat: from then
    /// on the stream follows the live tail.
    async fn open(addr: SocketAddr) -> Self {
        let mut client = AuditServiceClient::new(channel(addr));
        let stream = client
            .subscribe(pb::SubscribeRequest {
                filter: Some(tool_calls()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut tail = Self {
            client,
            stream,
            cursor: String::new(),
        };
        let first = within("the first heartbeat", PROMPTLY, tail.stream.next())
            .await
            .unwrap()
            .unwrap();
        match first.item {
            Some(Item::Heartbeat(heartbeat)) => tail.cursor = heartbeat.cursor,
            other => panic!("expected a heartbeat first, got {other:?}"),
        }
        tail
    }

    /// The next `count` events, within [`PROMPTLY`] in all.
    async fn take(&mut self, count: usize) -> Vec<AuditEvent> {
        within(
            "the events on the other replica (only the poll, far later, would have brought them)",
            PROMPTLY,
            async {
                let mut events = Vec::with_capacity(count);
                while events.len() < count {
                    match self.stream.next().await {
                        Some(Ok(response)) => match response.item {
                            Some(Item::Event(event)) => {
                                self.cursor = event.cursor.clone();
                                events.push(event);
                            }
                            Some(Item::Heartbeat(heartbeat)) => self.cursor = heartbeat.cursor,
                            None => {}
                        },
                        // The stream failed (its replica lost the database)
                        // or ended: resume after the last cursor.
                        Some(Err(_)) | None => self.resubscribe().await,
                    }
                }
                events
            },
        )
        .await
    }

    async fn resubscribe(&mut self) {
        loop {
            let request = pb::SubscribeRequest {
                filter: Some(tool_calls()),
                after_cursor: self.cursor.clone(),
                from_beginning: false,
            };
            if let Ok(response) = self.client.subscribe(request).await {
                self.stream = response.into_inner();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn ids(events: &[AuditEvent]) -> Vec<String> {
    events.iter().map(|event| event.event_id.clone()).collect()
}

/// Each event once, in increasing cursor order.
fn assert_once_in_log_order(events: &[AuditEvent], expected: &HashSet<String>, replica: &str) {
    let seen: HashSet<String> = ids(events).into_iter().collect();
    assert_eq!(seen.len(), events.len(), "a repeat on {replica}");
    assert_eq!(&seen, expected, "missing or foreign events on {replica}");
    let cursors: Vec<i64> = events
        .iter()
        .map(|event| event.cursor.parse().unwrap())
        .collect();
    assert!(
        cursors.windows(2).all(|pair| pair[0] < pair[1]),
        "out of log order on {replica}: {cursors:?}"
    );
}

#[tokio::test]
async fn a_subscriber_on_either_replica_gets_the_other_replicas_commits_at_once() {
    let server = agentmesh_testkit::postgres::shared().await;
    let url = server.create_database("audit_replicas").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_replica(&url, dir_a.path()).await;
    let b = start_replica(&url, dir_b.path()).await;
    wait_listening(&a, true).await;
    wait_listening(&b, true).await;
    let mut on_a = Tail::open(a.grpc).await;
    let mut on_b = Tail::open(b.grpc).await;

    record(a.grpc, &["first".to_owned()]).await;
    assert_eq!(ids(&on_b.take(1).await), ["first"]);
    assert_eq!(ids(&on_a.take(1).await), ["first"]);

    // The burst: four writers per replica, each 25 Records of 4 events.
    let mut expected = HashSet::new();
    let mut writers = Vec::new();
    for (name, replica) in [("a", &a), ("b", &b)] {
        for writer in 0..4 {
            let batches: Vec<Vec<String>> = (0..25)
                .map(|batch| {
                    (0..4)
                        .map(|i| format!("{name}-{writer}-{batch}-{i}"))
                        .collect()
                })
                .collect();
            expected.extend(batches.iter().flatten().cloned());
            let addr = replica.grpc;
            writers.push(async move {
                for batch in batches {
                    record(addr, &batch).await;
                }
            });
        }
    }
    let ((), from_a, from_b) = tokio::join!(
        async {
            futures::future::join_all(writers).await;
        },
        on_a.take(expected.len()),
        on_b.take(expected.len()),
    );
    assert_once_in_log_order(&from_a, &expected, "replica A");
    assert_once_in_log_order(&from_b, &expected, "replica B");
    assert_eq!(ids(&from_a), ids(&from_b), "the replicas' orders differ");

    // The notifications did it, and the lag was observed.
    assert!(metric(&b, "agentmesh_audit_commit_notifications_total").await >= 1.0);
    assert!(metric(&b, "agentmesh_audit_tail_lag_seconds_count").await >= 401.0);
}

#[tokio::test]
async fn a_database_restart_loses_no_event() {
    let server = agentmesh_testkit::postgres::private().await;
    let url = server.create_database("audit_restart").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_replica(&url, dir_a.path()).await;
    let b = start_replica(&url, dir_b.path()).await;
    wait_listening(&a, true).await;
    wait_listening(&b, true).await;
    let mut on_b = Tail::open(b.grpc).await;
    let before: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    record(a.grpc, &before).await;
    assert_eq!(ids(&on_b.take(10).await), before);

    // Down for two seconds: B notices (its listener loses the connection).
    tokio::join!(
        server.restart(Duration::from_secs(2)),
        wait_listening(&b, false)
    );
    // As soon as the database is back: B's listener retries every second,
    // so these commits most likely notify no one on B.
    let mut after = Vec::new();
    let mut unheard = 0;
    for batch in 0..10 {
        let ids: Vec<String> = (0..10).map(|i| format!("after-{batch}-{i}")).collect();
        record(a.grpc, &ids).await;
        if !listening(&b).await {
            unheard += 1;
        }
        after.extend(ids);
    }
    let got = on_b.take(after.len()).await;
    assert_eq!(
        ids(&got),
        after,
        "lost, repeated or reordered across the restart"
    );
    wait_listening(&b, true).await;
    println!("batches committed while B was not listening: {unheard} of 10");
}
