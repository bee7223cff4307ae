//! The gateway under injected faults: two OpenAI-compatible providers that
//! each fail 30% of their calls at random (500, 429 with retry-after, hangs,
//! streams cut mid-way), behind one route with a fallback. Every answer a
//! caller assembles (honouring resets) must be exactly one provider's whole
//! answer, nearly every call must succeed, and the providers must see no
//! more requests than the retry budget allows.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentmesh_llm_gateway::{Config, ProviderKind, RouteConfig};
use agentmesh_proto::llm::v1::{
    FinishReason, GenerateRequest, GenerateStreamRequest, generate_stream_response::Event,
};
use agentmesh_resilience::{CircuitConfig, RetryConfig};
use agentmesh_testkit::fault_provider::{
    Fault, FaultConfig, FaultMix, FaultProvider, expected_answer,
};
use common::{TestGateway, config_with, provider, user};

/// Calls made in all; half unary, half streamed.
const CALLS: usize = 10_000;
/// Calls in flight at once.
const CONCURRENCY: usize = 48;
/// Tokens of each provider's answer.
const TOKENS: usize = 6;

fn faults() -> FaultMix {
    FaultMix::NONE
        .with(Fault::Error500, 0.075)
        .with(Fault::RateLimited429, 0.075)
        .with(Fault::Hang, 0.075)
        .with(Fault::CutStream, 0.075)
}

async fn fault_provider(name: &str, seed: u64) -> FaultProvider {
    FaultProvider::start(FaultConfig {
        answer_tokens: TOKENS,
        faults: faults(),
        seed,
        retry_after: Duration::from_millis(20),
        cut_after_tokens: 2,
        ..FaultConfig::named(name)
    })
    .await
}

fn gateway_config(
    primary: &FaultProvider,
    secondary: &FaultProvider,
    retry: RetryConfig,
) -> Config {
    // A hang is detected by these limits. They are generous next to the
    // fault provider's instant answers because on a loaded machine (CI runs
    // many test processes on two cores) a healthy answer can take a few
    // hundred milliseconds, and a healthy answer cut off by a limit is a
    // failure the gateway cannot recover from through a fallback whose answer
    // is equally slow.
    let tuned = |url: &str| agentmesh_llm_gateway::ProviderConfig {
        first_token_timeout: Duration::from_millis(1_000),
        request_timeout: Duration::from_millis(2_000),
        ..provider(ProviderKind::Openai, url, "")
    };
    let mut config = config_with(
        vec![
            ("primary", tuned(&primary.base_url())),
            ("secondary", tuned(&secondary.base_url())),
        ],
        vec![],
    );
    config.routes.insert(
        "chain".into(),
        RouteConfig::new("primary/model-a", "two targets").with_fallbacks(["secondary/model-b"]),
    );
    config.retry = retry;
    // Random failures at 30% make streaks of five common over 10,000
    // calls; a streak of ten (or a majority over the window) is an outage.
    config.circuit_breaker = CircuitConfig {
        consecutive_failures: 10,
        failure_ratio: 0.6,
        minimum_calls: 50,
        ..CircuitConfig::default()
    };
    config
}

#[derive(Debug, Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    spliced: AtomicUsize,
    resets: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_upstream_faults_with_a_fallback_still_answer_every_call_whole() {
    let primary = fault_provider("primary", 7).await;
    let secondary = fault_provider("secondary", 11).await;
    let retry = RetryConfig {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        budget_ratio: 0.5,
        budget_min_per_second: 10,
        budget_ttl: Duration::from_secs(10),
        max_retry_after: Duration::from_secs(1),
    };
    let gateway = TestGateway::start(gateway_config(&primary, &secondary, retry.clone())).await;
    let client = gateway.client().await;
    let answers = Arc::new([
        expected_answer("primary", TOKENS),
        expected_answer("secondary", TOKENS),
    ]);
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let mut client = client.clone();
        let (answers, tally, next) = (Arc::clone(&answers), Arc::clone(&tally), Arc::clone(&next));
        workers.spawn(async move {
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if call >= CALLS {
                    return;
                }
                let answer = if call % 2 == 0 {
                    unary(&mut client).await
                } else {
                    streamed(&mut client, &tally).await
                };
                match answer {
                    Some(text) if answers.contains(&text) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(text) => {
                        eprintln!("spliced answer: {text:?}");
                        tally.spliced.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(result) = workers.join_next().await {
            result.unwrap();
        }
    })
    .await
    .expect("10,000 calls within 10 minutes");
    let elapsed = started.elapsed();

    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let spliced = tally.spliced.load(Ordering::Relaxed);
    let upstream = primary.requests() + secondary.requests();
    // The budget: a share of the calls, plus the reserve per budget window.
    let windows = elapsed.as_secs_f64() / retry.budget_ttl.as_secs_f64() + 1.0;
    let allowed = CALLS as f64 * (1.0 + f64::from(retry.budget_ratio))
        + f64::from(retry.budget_min_per_second) * retry.budget_ttl.as_secs_f64() * windows;
    eprintln!(
        "{CALLS} calls in {elapsed:?}: {ok} ok, {failed} failed, {spliced} spliced, {} resets; \
         upstream {upstream} requests (primary {:?}, secondary {:?}); budget allows {allowed:.0}",
        tally.resets.load(Ordering::Relaxed),
        primary.outcomes(),
        secondary.outcomes(),
    );
    assert_eq!(spliced, 0, "no caller may receive a spliced answer");
    assert!(
        ok * 1000 >= CALLS * 999,
        "{ok} of {CALLS} calls succeeded; at least 99.9% must"
    );
    assert!(
        (upstream as f64) <= allowed,
        "upstream saw {upstream} requests; the retry budget allows {allowed:.0}"
    );
    // Faults really happened, and the gateway really retried.
    assert!(primary.outcomes().hang > 0 && primary.outcomes().cut_stream > 0);
    assert!(upstream as usize > CALLS);
    gateway.stop().await;
}

/// One Generate call: its text, or `None` when it failed.
async fn unary(
    client: &mut agentmesh_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient<
        tonic::transport::Channel,
    >,
) -> Option<String> {
    let response = client
        .generate(GenerateRequest {
            model: "chain".into(),
            messages: vec![user("say your tokens")],
            ..GenerateRequest::default()
        })
        .await
        .ok()?
        .into_inner();
    (response.finish_reason == FinishReason::Stop as i32).then(|| {
        response
            .message
            .map(|message| message.content)
            .unwrap_or_default()
    })
}

/// One GenerateStream call, assembled as a consumer must (a reset discards
/// what came before it); `None` when it failed. The assembled text must also
/// be the `finished` message's.
async fn streamed(
    client: &mut agentmesh_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient<
        tonic::transport::Channel,
    >,
    tally: &Tally,
) -> Option<String> {
    let mut stream = client
        .generate_stream(GenerateStreamRequest {
            model: "chain".into(),
            messages: vec![user("say your tokens")],
            ..GenerateStreamRequest::default()
        })
        .await
        .ok()?
        .into_inner();
    let mut text = String::new();
    loop {
        match stream.message().await.ok()??.event? {
            Event::TextDelta(delta) => text.push_str(&delta.text),
            Event::Reset(_) => {
                tally.resets.fetch_add(1, Ordering::Relaxed);
                text.clear();
            }
            Event::ToolCallDelta(_) => return Some("unexpected tool call".into()),
            Event::Finished(finished) => {
                if finished.finish_reason != FinishReason::Stop as i32 {
                    return None;
                }
                let content = finished.message.map(|m| m.content).unwrap_or_default();
                if content != text {
                    return Some(format!("deltas {text:?} but finished {content:?}"));
                }
                // The stream must end here, with OK.
                return match stream.message().await {
                    Ok(None) => Some(text),
                    _ => None,
                };
            }
        }
    }
}
