//! Two gateway binaries on one PostgreSQL database hold one tenant limit
//! together: with a tenant limit of 60 a minute (burst 5), callers hammering
//! both replicas for a few seconds are served at most the burst plus one a
//! second between them — not that much per replica — and every other call
//! is RESOURCE_EXHAUSTED. The replicas report the shared mode, and lease far
//! fewer times than they answer (refusals are answered from memory).

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentmesh_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use agentmesh_proto::llm::v1::{GenerateRequest, Message, Role};
use agentmesh_tests::{RunningBinary, channel, http_get, wait_serving};
use tonic::Code;

/// The tenant limit: 60 a minute, 5 at once.
const PER_MINUTE: u64 = 60;
const BURST: u64 = 5;
/// How long callers hammer the replicas.
const WINDOW: Duration = Duration::from_secs(4);
/// Concurrent callers per replica.
const CALLERS: usize = 3;

async fn start_gateway(dir: &Path, url: &str) -> RunningBinary {
    let config = format!(
        r#"
[llm_gateway.audit]
url = ""

[llm_gateway.providers.scripted]
kind = "scripted"
pace = "0s"

[llm_gateway.rate_limits.tenant]
requests_per_minute = {PER_MINUTE}
burst = {BURST}

[llm_gateway.shared_limits]
url = "{url}"
expected_replicas = 2
"#
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let gateway = RunningBinary::start(
        "agentmesh-llm-gateway",
        &["--config", path.to_str().unwrap()],
        &[],
        dir,
    )
    .await;
    wait_serving(channel(gateway.grpc), "").await;
    gateway
}

fn request() -> tonic::Request<GenerateRequest> {
    let mut request = tonic::Request::new(GenerateRequest {
        messages: vec![Message {
            role: Role::User.into(),
            content: "hello".into(),
            ..Message::default()
        }],
        ..GenerateRequest::default()
    });
    request
        .metadata_mut()
        .insert("x-agentmesh-tenant", "acme".parse().unwrap());
    request.set_timeout(Duration::from_secs(10));
    request
}

/// Calls served and refused by one replica.
#[derive(Debug, Default)]
struct Counts {
    served: AtomicU64,
    refused: AtomicU64,
}

/// Calls `gateway` from `CALLERS` loops until `until`.
async fn hammer(gateway: &RunningBinary, counts: &Arc<Counts>, until: Instant) {
    let callers = (0..CALLERS).map(|_| {
        let mut client = LlmGatewayServiceClient::new(channel(gateway.grpc));
        let counts = Arc::clone(counts);
        tokio::spawn(async move {
            while Instant::now() < until {
                match client.generate(request()).await {
                    Ok(_) => counts.served.fetch_add(1, Ordering::Relaxed),
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        counts.refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(status) => panic!("unexpected status {status:?}"),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    for caller in callers.collect::<Vec<_>>() {
        caller.await.unwrap();
    }
}

/// The sum of the `agentmesh_rate_limit_leases_total` series of `scope`.
fn leases(metrics: &str, scope: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("agentmesh_rate_limit_leases_total{")
                && line.contains(&format!("scope=\"{scope}\""))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_replicas_serve_a_tenant_its_limit_once_between_them() {
    let server = agentmesh_testkit::postgres::shared().await;
    let url = server.create_database("shared_limits").await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let replicas = [
        start_gateway(dirs[0].path(), &url).await,
        start_gateway(dirs[1].path(), &url).await,
    ];
    let counts = [Arc::new(Counts::default()), Arc::new(Counts::default())];

    let started = Instant::now();
    let until = started + WINDOW;
    tokio::join!(
        hammer(&replicas[0], &counts[0], until),
        hammer(&replicas[1], &counts[1], until),
    );
    // Calls admitted until the last one returned count.
    let elapsed = started.elapsed();

    let served: Vec<u64> = counts
        .iter()
        .map(|count| count.served.load(Ordering::Relaxed))
        .collect();
    let refused: Vec<u64> = counts
        .iter()
        .map(|count| count.refused.load(Ordering::Relaxed))
        .collect();
    let total: u64 = served.iter().sum();
    // The acceptance: at most the limit's rate over the window plus the
    // burst, across both replicas (one more for a cell due at the very end).
    let bound = BURST + elapsed.as_secs() * PER_MINUTE / 60 + 1;
    eprintln!(
        "served {served:?}, refused {refused:?} in {elapsed:?}: {total} in all, at most {bound}"
    );
    assert!(total <= bound, "{total} served, at most {bound} allowed");
    // Separate limits would have served up to twice that (each replica its
    // own burst and rate); together the burst was served in full.
    assert!(total >= BURST, "{served:?}");

    for (replica, count) in replicas.iter().zip(&counts) {
        let (_, metrics) = http_get(replica.admin, "/metrics").await;
        assert!(
            metrics.contains(
                r#"agentmesh_rate_limit_mode{mode="shared",scope="tenant",service="llm-gateway"} 1"#
            ),
            "{metrics}"
        );
        // No round trip per call: refusals come from memory.
        let calls = count.served.load(Ordering::Relaxed) + count.refused.load(Ordering::Relaxed);
        let leased = leases(&metrics, "tenant");
        assert!(
            leased > 0 && leased * 4 < calls,
            "{leased} leases for {calls} calls"
        );
    }
}
