//! The gateway's cost and answer rate with and without injected provider
//! faults: the same load of GenerateStream calls through a route with a
//! fallback, first against two healthy OpenAI-compatible providers, then
//! against two that fail 30% of their calls (500, 429 with retry-after,
//! hangs, streams cut mid-way). Prints the latency percentiles, the share of
//! calls answered, and the upstream requests per call (the retry budget at
//! work). Run with `make bench`.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark program"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_kit::Listeners;
use agentmesh_llm_gateway::{AuditConfig, Config, ProviderConfig, ProviderKind, RouteConfig};
use agentmesh_proto::llm::v1::{
    FinishReason, GenerateStreamRequest, Message, Role, generate_stream_response::Event,
    llm_gateway_service_client::LlmGatewayServiceClient,
};
use agentmesh_resilience::{CircuitConfig, RetryConfig};
use agentmesh_testkit::fault_provider::{Fault, FaultConfig, FaultMix, FaultProvider};
use agentmesh_tests::{channel, percentile, test_server_config};
use tokio_util::sync::CancellationToken;

const CALLS: usize = 2000;

async fn scenario(name: &str, faults: FaultMix, concurrency: usize) {
    let mut providers = Vec::new();
    for (index, provider) in (0u64..).zip(["primary", "secondary"]) {
        providers.push((
            provider,
            FaultProvider::start(FaultConfig {
                faults,
                seed: 17 + index,
                retry_after: Duration::from_millis(20),
                cut_after_tokens: 2,
                ..FaultConfig::named(provider)
            })
            .await,
        ));
    }
    let mut config = Config {
        server: test_server_config(),
        audit: AuditConfig::disabled(),
        ..Config::default()
    };
    for (name, provider) in &providers {
        config.providers.insert(
            (*name).to_owned(),
            ProviderConfig {
                base_url: provider.base_url(),
                first_token_timeout: Duration::from_millis(250),
                request_timeout: Duration::from_millis(500),
                ..ProviderConfig::new(ProviderKind::Openai)
            },
        );
    }
    config.routes.insert(
        "chain".into(),
        RouteConfig::new("primary/a", "").with_fallbacks(["secondary/b"]),
    );
    config.retry = RetryConfig {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        budget_ratio: 0.5,
        ..RetryConfig::default()
    };
    config.circuit_breaker = CircuitConfig {
        consecutive_failures: 10,
        failure_ratio: 0.6,
        minimum_calls: 50,
        ..CircuitConfig::default()
    };
    let listeners = Listeners::bind(&config.server).await.unwrap();
    let addr = listeners.grpc_addr().unwrap();
    let stop = CancellationToken::new();
    let served = tokio::spawn(agentmesh_llm_gateway::serve_with_listeners(
        config,
        listeners,
        stop.clone().cancelled_owned(),
    ));
    let client = LlmGatewayServiceClient::new(channel(addr));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut results = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < CALLS {
                let began = Instant::now();
                let answered = call(&mut client).await;
                results.push((began.elapsed(), answered));
            }
            results
        });
    }
    let mut latencies = Vec::new();
    let mut answered = 0;
    while let Some(results) = workers.join_next().await {
        for (latency, ok) in results.unwrap() {
            latencies.push(latency);
            answered += usize::from(ok);
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let upstream: u64 = providers
        .iter()
        .map(|(_, provider)| provider.requests())
        .sum();
    #[expect(clippy::cast_precision_loss, reason = "a ratio")]
    let per_call = upstream as f64 / CALLS as f64;
    #[expect(clippy::cast_precision_loss, reason = "a ratio")]
    let rate = answered as f64 * 100.0 / CALLS as f64;
    println!(
        "{name:<22} {CALLS} streamed calls, {concurrency:>2} at once: p50 {:>9.3?}  p90 {:>9.3?}  p99 {:>9.3?}  \
         answered {rate:.2}%  upstream {per_call:.3} requests/call  {:.0} calls/s",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        CALLS as f64 / elapsed.as_secs_f64(),
    );
    stop.cancel();
    served.await.unwrap().unwrap();
}

async fn call(client: &mut LlmGatewayServiceClient<tonic::transport::Channel>) -> bool {
    let Ok(response) = client
        .generate_stream(GenerateStreamRequest {
            model: "chain".into(),
            messages: vec![Message {
                role: Role::User.into(),
                content: "say your tokens".into(),
                ..Message::default()
            }],
            ..GenerateStreamRequest::default()
        })
        .await
    else {
        return false;
    };
    let mut stream = response.into_inner();
    while let Ok(Some(message)) = stream.message().await {
        if let Some(Event::Finished(finished)) = message.event {
            return finished.finish_reason == FinishReason::Stop as i32;
        }
    }
    false
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let faulty = FaultMix::NONE
            .with(Fault::Error500, 0.075)
            .with(Fault::RateLimited429, 0.075)
            .with(Fault::Hang, 0.075)
            .with(Fault::CutStream, 0.075);
        // One at a time: the cost of a call; 32 at once: the throughput of
        // the gateway and both providers sharing this machine.
        for concurrency in [1, 32] {
            scenario("healthy providers", FaultMix::NONE, concurrency).await;
            scenario("30% upstream faults", faulty, concurrency).await;
        }
    });
}
