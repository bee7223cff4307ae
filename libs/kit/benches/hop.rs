//! What one hop through the service kit costs, against a bare tonic server.
//!
//! Both servers answer `grpc.health.v1.Health/Check` on loopback with
//! TCP_NODELAY; the kit's adds every layer a real service gets (propagation,
//! metrics, load shedding, drain). One connection, sequential calls for
//! latency, then 8 calls in flight for throughput. Run with `make bench`.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    reason = "a benchmark program; percentiles index a full, sorted sample"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_kit::{Listeners, ServerConfig, ServiceHost, StartupError};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const CALLS: usize = 20_000;
const IN_FLIGHT: usize = 8;
const THROUGHPUT_TIME: Duration = Duration::from_secs(3);

async fn bare_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The reporter owns the statuses the health service answers with: keep it
    // alive as long as the server.
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await
            .unwrap();
    });
    addr
}

async fn kit_server() -> SocketAddr {
    let config = ServerConfig {
        host: [127, 0, 0, 1].into(),
        port: 0,
        admin_port: Some(0),
        ..ServerConfig::default()
    };
    let listeners = Listeners::bind(&config).await.unwrap();
    let addr = listeners.grpc_addr().unwrap();
    let host = ServiceHost::new("bench", &config);
    tokio::spawn(async move {
        host.serve(
            listeners,
            || async { Ok::<(), StartupError>(()) },
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn client(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = agentmesh_kit::client::plain_channel(&format!("http://{addr}")).unwrap();
    let mut client = HealthClient::new(channel);
    // Warm up, and wait for the kit's server to turn SERVING.
    for _ in 0..1_000 {
        let _ = client.check(HealthCheckRequest::default()).await;
    }
    client
}

struct Figures {
    median_us: f64,
    p99_us: f64,
    calls_per_second: f64,
}

async fn measure(addr: SocketAddr) -> Figures {
    let mut client = client(addr).await;
    let mut latencies = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let start = Instant::now();
        client.check(HealthCheckRequest::default()).await.unwrap();
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;

    let deadline = Instant::now() + THROUGHPUT_TIME;
    let workers = (0..IN_FLIGHT).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                client.check(HealthCheckRequest::default()).await.unwrap();
                done += 1;
            }
            done
        })
    });
    let mut total = 0u64;
    for worker in workers.collect::<Vec<_>>() {
        total += worker.await.unwrap();
    }
    Figures {
        median_us: micros(latencies[CALLS / 2]),
        p99_us: micros(latencies[CALLS * 99 / 100]),
        calls_per_second: total as f64 / THROUGHPUT_TIME.as_secs_f64(),
    }
}

#[tokio::main]
async fn main() {
    let bare = measure(bare_server().await).await;
    let kit = measure(kit_server().await).await;
    println!(
        "unary Health/Check on loopback, one connection ({CALLS} sequential calls; {IN_FLIGHT} in flight for {THROUGHPUT_TIME:?})"
    );
    println!(
        "{:<12} {:>12} {:>12} {:>14}",
        "server", "median µs", "p99 µs", "calls/s"
    );
    for (name, f) in [("bare tonic", &bare), ("kit", &kit)] {
        println!(
            "{name:<12} {:>12.1} {:>12.1} {:>14.0}",
            f.median_us, f.p99_us, f.calls_per_second
        );
    }
    println!(
        "kit / bare: median ×{:.2}, p99 ×{:.2}, throughput ×{:.2}; added median {:.1} µs",
        kit.median_us / bare.median_us,
        kit.p99_us / bare.p99_us,
        kit.calls_per_second / bare.calls_per_second,
        kit.median_us - bare.median_us
    );
}
