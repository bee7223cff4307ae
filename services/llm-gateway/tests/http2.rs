//! A provider spoken to over HTTP/2 (`http2 = true`): the fault provider in
//! its HTTP/2 mode (h2c, prior knowledge), which speaks nothing else. Unary
//! and streamed calls, many at once, come back whole, and every request went
//! over HTTP/2. Without the setting the gateway speaks HTTP/1.1, which that
//! provider does not understand: the call fails, it is not answered by
//! something else.

mod common;

use agentmesh_llm_gateway::ProviderKind;
use agentmesh_proto::llm::v1::{FinishReason, GenerateRequest, GenerateStreamRequest};
use agentmesh_testkit::fault_provider::{FaultConfig, FaultProvider, expected_answer};
use common::{TestGateway, config_with, finished, provider, stream_all, text_of, user};

const TOKENS: usize = 5;

async fn http2_provider() -> FaultProvider {
    FaultProvider::start(FaultConfig {
        answer_tokens: TOKENS,
        http2: true,
        ..FaultConfig::named("h2")
    })
    .await
}

async fn gateway(upstream: &FaultProvider, http2: bool) -> TestGateway {
    let mut spoken = provider(ProviderKind::Openai, &upstream.base_url(), "");
    spoken.http2 = http2;
    TestGateway::start(config_with(
        vec![("h2", spoken)],
        vec![("over-h2", "h2/gpt-4o-mini")],
    ))
    .await
}

fn unary() -> GenerateRequest {
    GenerateRequest {
        model: "over-h2".into(),
        messages: vec![user("say your tokens")],
        ..GenerateRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_provider_set_to_http2_go_over_http2_whole() {
    let upstream = http2_provider().await;
    let gateway = gateway(&upstream, true).await;
    let client = gateway.client().await;
    let answer = expected_answer("h2", TOKENS);

    let mut calls = tokio::task::JoinSet::new();
    for call in 0..16 {
        let mut client = client.clone();
        calls.spawn(async move {
            if call % 2 == 0 {
                let response = client.generate(unary()).await.unwrap().into_inner();
                response.message.unwrap().content
            } else {
                let request = GenerateStreamRequest {
                    model: "over-h2".into(),
                    messages: vec![user("say your tokens")],
                    ..GenerateStreamRequest::default()
                };
                let (events, status) = stream_all(&mut client, request).await.unwrap();
                assert!(status.is_none(), "{status:?}");
                assert_eq!(finished(&events).finish_reason(), FinishReason::Stop);
                text_of(&events)
            }
        });
    }
    while let Some(text) = calls.join_next().await {
        assert_eq!(text.unwrap(), answer);
    }
    assert_eq!(upstream.requests(), 16);
    assert_eq!(upstream.http2_requests(), 16, "every request over HTTP/2");
    assert_eq!(upstream.outcomes().ok, 16);
    gateway.stop().await;
}

#[tokio::test]
async fn without_the_setting_the_gateway_speaks_http1_which_that_provider_refuses() {
    let upstream = http2_provider().await;
    let gateway = gateway(&upstream, false).await;
    let mut client = gateway.client().await;
    let status = client.generate(unary()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(upstream.http2_requests(), 0);
    gateway.stop().await;
}
