//! The Anthropic adapter over the wire: recorded Messages API streams and
//! responses served by a fake provider in awkward pieces, read back through
//! the gateway's real gRPC API; and the request the adapter sends.

mod common;

use agentmesh_llm_gateway::ProviderKind;
use agentmesh_proto::llm::v1::{
    FinishReason, GenerateRequest, GenerateStreamRequest, Message, Role, ToolCall, ToolSpec,
    generate_stream_response::Event,
};
use common::{
    FakeProvider, Reply, TestGateway, call_delta, config_with, finished, present_env_var, provider,
    stream_all, text, user, wire,
};
use serde_json::json;

/// A gateway whose route `claude` goes to the fake provider.
async fn gateway_for(fake: &FakeProvider, key_env: &str) -> TestGateway {
    let config = config_with(
        vec![(
            "anthropic",
            provider(ProviderKind::Anthropic, &fake.url(""), key_env),
        )],
        vec![("claude", "anthropic/claude-sonnet-4")],
    );
    TestGateway::start(config).await
}

#[tokio::test]
async fn text_streams_through_awkward_chunks_with_usage() {
    let fake = FakeProvider::start(Reply::Stream {
        body: wire("anthropic_text.sse"),
        cut: false,
    })
    .await;
    let (key_env, key) = present_env_var();
    let gateway = gateway_for(&fake, &key_env).await;
    let mut client = gateway.client().await;
    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            model: "claude".into(),
            messages: vec![
                Message {
                    role: Role::System.into(),
                    content: "Answer in French.".into(),
                    ..Message::default()
                },
                user("How are you?"),
            ],
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(events[..2], [text("Bonjour, ça"), text(" va? 👋")]);
    assert_eq!(events.len(), 3, "{events:?}");
    let done = finished(&events);
    assert_eq!(done.message.as_ref().unwrap().content, "Bonjour, ça va? 👋");
    assert_eq!(done.finish_reason, i32::from(FinishReason::Stop));
    assert_eq!(done.provider_finish_reason, "end_turn");
    assert_eq!(done.provider, "anthropic");
    assert_eq!(done.model, "claude-sonnet-4-20250514");
    assert_eq!(done.route, "claude");
    assert_eq!(done.response_id, "msg_01XFDUDYJgAACzvnptvVoYEL");
    let usage = done.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.total_tokens),
        (25, 15, 40)
    );
    assert!(!usage.tokens_estimated);

    let sent = &fake.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(sent.headers["x-api-key"], key);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(!sent.headers.contains_key("authorization"));
    assert_eq!(
        sent.body,
        json!({
            "model": "claude-sonnet-4",
            "max_tokens": 4096,
            "system": "Answer in French.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "How are you?"}]}],
            "stream": true,
        })
    );
    gateway.stop().await;
}

#[tokio::test]
async fn text_and_tool_use_stream_with_tool_indexes_among_calls() {
    let fake = FakeProvider::start(Reply::Stream {
        body: wire("anthropic_tool_use.sse"),
        cut: false,
    })
    .await;
    let gateway = gateway_for(&fake, "").await;
    let mut client = gateway.client().await;
    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            model: "claude".into(),
            messages: vec![
                user("What is 2+2?"),
                Message {
                    role: Role::Assistant.into(),
                    tool_calls: vec![ToolCall {
                        id: "toolu_0".into(),
                        name: "calculator".into(),
                        arguments_json: "{\"expression\":\"2+2\"}".into(),
                    }],
                    ..Message::default()
                },
                Message {
                    role: Role::Tool.into(),
                    content: "{\"error\":\"calculator is warming up\"}".into(),
                    tool_call_id: "toolu_0".into(),
                    is_error: true,
                    ..Message::default()
                },
                user("Try again with 17 * 23 + sqrt(144)."),
            ],
            tools: vec![ToolSpec {
                name: "calculator".into(),
                description: "Evaluates an arithmetic expression.".into(),
                parameters_json:
                    r#"{"type":"object","properties":{"expression":{"type":"string"}}}"#.into(),
            }],
            max_output_tokens: 1000,
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        events[..events.len() - 1],
        [
            text("Let me work that out"),
            text(" — with the calculator."),
            call_delta(0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "calculator", ""),
            call_delta(0, "", "", "{\"expression\": \"17"),
            call_delta(0, "", "", " * 23 + sqrt(144)\"}"),
        ]
    );
    let done = finished(&events);
    let message = done.message.as_ref().unwrap();
    assert_eq!(
        message.content,
        "Let me work that out — with the calculator."
    );
    assert_eq!(
        message.tool_calls,
        [ToolCall {
            id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
            name: "calculator".into(),
            arguments_json: "{\"expression\": \"17 * 23 + sqrt(144)\"}".into(),
        }]
    );
    assert_eq!(done.finish_reason, i32::from(FinishReason::ToolCalls));
    assert_eq!(done.provider_finish_reason, "tool_use");
    let usage = done.usage.unwrap();
    // Anthropic counts cache reads apart; ours are part of the input.
    assert_eq!(
        (
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens,
            usage.total_tokens
        ),
        (600, 128, 89, 689)
    );

    let sent = &fake.requests()[0];
    assert!(
        !sent.headers.contains_key("x-api-key"),
        "no key configured, none sent"
    );
    assert_eq!(
        sent.body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_0", "name": "calculator", "input": {"expression": "2+2"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0", "content": "{\"error\":\"calculator is warming up\"}", "is_error": true},
                {"type": "text", "text": "Try again with 17 * 23 + sqrt(144)."},
            ]},
        ])
    );
    assert_eq!(
        sent.body["tools"],
        json!([{
            "name": "calculator",
            "description": "Evaluates an arithmetic expression.",
            "input_schema": {"type": "object", "properties": {"expression": {"type": "string"}}},
        }])
    );
    assert_eq!(sent.body["max_tokens"], json!(1000));
    gateway.stop().await;
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_with_finished_error_then_unavailable() {
    let fake = FakeProvider::start(Reply::Stream {
        body: wire("anthropic_error_midstream.sse"),
        cut: false,
    })
    .await;
    let gateway = gateway_for(&fake, "").await;
    let mut client = gateway.client().await;
    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            model: "claude".into(),
            messages: vec![user("Write a long essay")],
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    // An overloaded provider is retried (three attempts by default); each
    // attempt that sent output is followed by a reset.
    assert_eq!(events[0], text("Here is a long"));
    let resets: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            Event::Reset(reset) => Some(reset),
            _ => None,
        })
        .collect();
    assert_eq!(resets.len(), 2, "{events:?}");
    assert_eq!(resets[0].next_attempt, 2);
    assert_eq!(resets[0].abandoned_provider, "anthropic");
    assert_eq!(resets[0].abandoned_usage.as_ref().unwrap().input_tokens, 18);
    assert!(
        resets[0].reason.contains("retrying"),
        "{}",
        resets[0].reason
    );
    let done = finished(&events);
    assert_eq!(done.finish_reason, i32::from(FinishReason::Error));
    assert_eq!(done.attempts, 3);
    let usage = done.usage.unwrap();
    // The input count came with message_start, once per attempt; the output
    // is estimated.
    assert_eq!(usage.input_tokens, 3 * 18);
    assert!(usage.tokens_estimated);
    let error = error.expect("the stream must end with an error");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error.message().contains("overloaded_error: Overloaded"),
        "{}",
        error.message()
    );
    gateway.stop().await;
}

#[tokio::test]
async fn generate_maps_a_message() {
    let fake = FakeProvider::start(Reply::Body {
        status: 200,
        headers: vec![("content-type", "application/json".to_owned())],
        body: wire("anthropic_message.json"),
    })
    .await;
    let gateway = gateway_for(&fake, "").await;
    let mut client = gateway.client().await;
    let response = client
        .generate(GenerateRequest {
            model: "anthropic/claude-opus-4".into(),
            messages: vec![user("What is 2+2?")],
            ..GenerateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.message.unwrap().content, "The answer is 4.");
    assert_eq!(response.finish_reason, i32::from(FinishReason::Stop));
    assert_eq!(response.provider_finish_reason, "end_turn");
    assert_eq!(response.provider, "anthropic");
    assert_eq!(response.model, "claude-sonnet-4-20250514");
    assert_eq!(response.route, "");
    let usage = response.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (2095, 503));
    assert_eq!(fake.requests()[0].body["model"], json!("claude-opus-4"));
    gateway.stop().await;
}

#[tokio::test]
async fn overloaded_529_is_unavailable() {
    let fake = FakeProvider::start(Reply::json(
        529,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ))
    .await;
    let gateway = gateway_for(&fake, "").await;
    let mut client = gateway.client().await;
    let status = client
        .generate(GenerateRequest {
            model: "claude".into(),
            messages: vec![user("hi")],
            ..GenerateRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("HTTP 529"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("Overloaded"),
        "{}",
        status.message()
    );
    gateway.stop().await;
}
