//! What the HTTP edge's OpenAI-compatible API adds, next to what LiteLLM's
//! proxy adds, through the same mock OpenAI upstream, at a fixed rate (open
//! loop: each call's latency counts from its scheduled send time, so a
//! stall is not hidden by the calls it delays).
//!
//! One run measures, in turn and with the same requests:
//!   upstream   a non-streaming chat completion straight to the mock
//!   gateway    `Generate` on the LLM gateway by gRPC (route → the mock)
//!   edge       `POST /v1/chat/completions` on the edge (→ the gateway)
//!   litellm    the same on LiteLLM's proxy (→ the mock), when the
//!              `litellm` command is installed (`pip install 'litellm[proxy]'`)
//! and prints p50/p99 of each, the edge's added latency over calling the
//! gateway by gRPC, and LiteLLM's over calling the upstream directly. Run
//! with `make bench`; EDGE_BENCH_RATE (calls/s, default 200) and
//! EDGE_BENCH_CALLS (default 2000) size it.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    reason = "a benchmark program"
)]

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agentmesh_kit::Listeners;
use agentmesh_llm_gateway::{AuditConfig, Config, ProviderConfig, ProviderKind, RouteConfig};
use agentmesh_proto::llm::v1::{
    GenerateRequest, Message, Role, llm_gateway_service_client::LlmGatewayServiceClient,
};
use agentmesh_testkit::fault_provider::{FaultConfig, FaultProvider};
use agentmesh_tests::{channel, free_port, percentile, test_server_config};
use tokio_util::sync::CancellationToken;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Calls `call` `calls` times at `rate` per second, each at its slot;
/// returns the latencies from the slots (failed calls are counted apart).
async fn open_loop<F, Fut>(rate: u64, calls: u64, call: F) -> (Vec<Duration>, u64)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..calls {
        let slot = start + interval.mul_f64(index as f64);
        tokio::time::sleep_until(slot.into()).await;
        let future = call();
        tasks.spawn(async move {
            let ok = future.await;
            (slot.elapsed(), ok)
        });
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    while let Some(result) = tasks.join_next().await {
        let (latency, ok) = result.unwrap();
        if ok {
            latencies.push(latency);
        } else {
            failed += 1;
        }
    }
    latencies.sort();
    (latencies, failed)
}

/// LiteLLM's proxy asks for a master key; the bench's own.
const MASTER_KEY: &str = "sk-agentmesh-bench-2f0c7e1b9d4a6c3e8b5f1a7d";

fn chat_body(model: &str) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "say your tokens"}],
    })
}

/// Starts LiteLLM's proxy in front of `upstream` on a free port, if the
/// command is installed.
async fn litellm(upstream: &str, dir: &std::path::Path) -> Option<(tokio::process::Child, String)> {
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "general_settings:\n  master_key: {MASTER_KEY}\nmodel_list:\n  - model_name: mock\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: {upstream}\n      api_key: sk-bench\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = tokio::process::Command::new("litellm")
        .args([
            "--config",
            config.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .env("LITELLM_LOG", "ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(answer) = client.get(format!("{base}/health/liveliness")).send().await
            && answer.status().is_success()
        {
            return Some((child, base));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("litellm did not come up within 60 s: skipped");
    None
}

/// What a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Upstream,
    Gateway,
    Edge,
    Litellm,
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Rounds per measurement: the targets take turns (in a rotating order),
/// so drift on the machine falls on all of them alike.
const ROUNDS: u64 = 4;

/// `calls` calls per target at `rate`, the targets interleaved in rounds;
/// the latencies (sorted) and failures of each target.
async fn interleaved(
    rate: u64,
    calls: u64,
    targets: &[Target],
    call: &impl Fn(Target) -> BoxFuture<'static, bool>,
) -> Vec<(Vec<Duration>, u64)> {
    let mut results: Vec<(Vec<Duration>, u64)> = vec![(Vec::new(), 0); targets.len()];
    for round in 0..ROUNDS {
        for turn in 0..targets.len() {
            let index = (turn + usize::try_from(round).unwrap()) % targets.len();
            let target = targets[index];
            let (latencies, failed) = open_loop(rate, calls / ROUNDS, || call(target)).await;
            results[index].0.extend(latencies);
            results[index].1 += failed;
        }
    }
    for (latencies, _) in &mut results {
        latencies.sort();
    }
    results
}

async fn grpc_call(mut grpc: LlmGatewayServiceClient<tonic::transport::Channel>) -> bool {
    grpc.generate(GenerateRequest {
        model: "mock".into(),
        messages: vec![Message {
            role: Role::User.into(),
            content: "say your tokens".into(),
            ..Message::default()
        }],
        ..GenerateRequest::default()
    })
    .await
    .is_ok()
}

fn report(name: &str, (latencies, failed): &(Vec<Duration>, u64)) -> (Duration, Duration) {
    let (p50, p99) = (percentile(latencies, 0.5), percentile(latencies, 0.99));
    let failed = *failed;
    println!(
        "{name:<10} p50 {:>8.3} ms  p99 {:>8.3} ms  ({} ok, {failed} failed)",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        latencies.len()
    );
    (p50, p99)
}

fn added(what: &str, over: (Duration, Duration), base: (Duration, Duration)) {
    let ms = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1000.0;
    println!(
        "{what:<44} p50 {:+.3} ms  p99 {:+.3} ms",
        ms(over.0, base.0),
        ms(over.1, base.1)
    );
}

/// An HTTP chat completion to `url`.
fn http_call(
    client: &reqwest::Client,
    url: &str,
    model: &str,
) -> impl Future<Output = bool> + Send + 'static {
    let request = client
        .post(url.to_owned())
        .bearer_auth(MASTER_KEY)
        .json(&chat_body(model));
    async move {
        match request.send().await {
            Ok(answer) => answer.status().is_success() && answer.bytes().await.is_ok(),
            Err(_) => false,
        }
    }
}

#[tokio::main]
async fn main() {
    agentmesh_kit::client::install_tls_crypto();
    let rate = setting("EDGE_BENCH_RATE", 200);
    let calls = setting("EDGE_BENCH_CALLS", 2000);
    let dir = tempfile::tempdir().unwrap();
    let upstream = FaultProvider::start(FaultConfig::named("mock")).await;

    let mut gateway_config = Config {
        server: test_server_config(),
        audit: AuditConfig::disabled(),
        ..Config::default()
    };
    gateway_config.providers.insert(
        "mock".to_owned(),
        ProviderConfig {
            base_url: upstream.base_url(),
            ..ProviderConfig::new(ProviderKind::Openai)
        },
    );
    gateway_config
        .routes
        .insert("mock".into(), RouteConfig::new("mock/gpt-4o-mini", ""));
    gateway_config.log.level = "warn".to_owned();
    let gateway_listeners = Listeners::bind(&gateway_config.server).await.unwrap();
    let gateway = gateway_listeners.grpc_addr().unwrap();
    let stop = CancellationToken::new();
    let served_gateway = tokio::spawn(agentmesh_llm_gateway::serve_with_listeners(
        gateway_config,
        gateway_listeners,
        stop.clone().cancelled_owned(),
    ));

    let edge_config = agentmesh_edge::Config {
        server: test_server_config(),
        llm_gateway_url: format!("http://{gateway}"),
        orchestrator_url: format!("http://{gateway}"),
        tool_runner_url: format!("http://{gateway}"),
        ..agentmesh_edge::Config::default()
    };
    let edge_listeners = Listeners::bind(&edge_config.server).await.unwrap();
    let edge = edge_listeners.grpc_addr().unwrap();
    let served_edge = tokio::spawn(agentmesh_edge::serve_with_listeners(
        edge_config,
        edge_listeners,
        stop.clone().cancelled_owned(),
    ));

    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let grpc = LlmGatewayServiceClient::new(channel(gateway));
    let upstream_url = format!("{}/chat/completions", upstream.base_url());
    let edge_url = format!("http://{edge}/v1/chat/completions");
    let litellm = litellm(&upstream.base_url(), dir.path()).await;
    let litellm_url = litellm
        .as_ref()
        .map(|(_, base)| format!("{base}/v1/chat/completions"));
    let call = |target: Target| -> BoxFuture<'static, bool> {
        match target {
            Target::Upstream => Box::pin(http_call(&http, &upstream_url, "gpt-4o-mini")),
            Target::Gateway => Box::pin(grpc_call(grpc.clone())),
            Target::Edge => Box::pin(http_call(&http, &edge_url, "mock")),
            Target::Litellm => match &litellm_url {
                Some(url) => Box::pin(http_call(&http, url, "mock")),
                None => Box::pin(std::future::ready(false)),
            },
        }
    };
    // Warm every path (connections, caches) before measuring.
    for target in [
        Target::Upstream,
        Target::Gateway,
        Target::Edge,
        Target::Litellm,
    ] {
        if target == Target::Litellm && litellm_url.is_none() {
            continue;
        }
        for _ in 0..50 {
            assert!(call(target).await, "{target:?} answers");
        }
    }

    println!(
        "edge_overhead: {calls} non-streaming chat completions per target at {rate}/s (open loop, targets interleaved in {ROUNDS} rounds)"
    );
    let targets = [Target::Upstream, Target::Gateway, Target::Edge];
    let results = interleaved(rate, calls, &targets, &call).await;
    let direct = report("upstream", &results[0]);
    let by_grpc = report("gateway", &results[1]);
    let by_edge = report("edge", &results[2]);
    added("edge over the gateway by gRPC:", by_edge, by_grpc);
    added(
        "edge (with the gateway) over the upstream:",
        by_edge,
        direct,
    );
    if litellm_url.is_some() {
        // LiteLLM's proxy does not hold the rate above (its queue grows
        // without bound): the comparison runs at a rate it holds.
        let slow = setting("EDGE_BENCH_LITELLM_RATE", 20);
        let slow_calls = setting("EDGE_BENCH_LITELLM_CALLS", 400);
        println!("at {slow}/s, {slow_calls} calls per target (a rate LiteLLM's proxy holds):");
        let targets = [Target::Upstream, Target::Edge, Target::Litellm];
        let results = interleaved(slow, slow_calls, &targets, &call).await;
        let direct = report("upstream", &results[0]);
        let by_edge = report("edge", &results[1]);
        let by_litellm = report("litellm", &results[2]);
        added(
            "edge (with the gateway) over the upstream:",
            by_edge,
            direct,
        );
        added("litellm over the upstream:", by_litellm, direct);
    } else {
        println!("litellm: not installed (pip install 'litellm[proxy]'): not compared");
    }
    drop(litellm);
    stop.cancel();
    served_edge.await.unwrap().unwrap();
    served_gateway.await.unwrap().unwrap();
}
