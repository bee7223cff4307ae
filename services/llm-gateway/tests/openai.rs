//! The OpenAI adapter over the wire: recorded Chat Completions streams and
//! responses served by a fake provider in awkward pieces, read back through
//! the gateway's real gRPC API; and the request the adapter sends.

mod common;

use agentmesh_llm_gateway::ProviderKind;
use agentmesh_proto::llm::v1::{
    FinishReason, GenerateRequest, GenerateStreamRequest, Message, Role, ToolCall, ToolSpec,
};
use common::{
    FakeProvider, Reply, TestGateway, call_delta, config_with, finished, present_env_var, provider,
    resets, stream_all, text, text_of, user, wire,
};
use serde_json::json;

/// A gateway whose route `gpt` goes to the fake provider as `openai/gpt-4o-mini`.
async fn gateway_for(fake: &FakeProvider, key_env: &str) -> TestGateway {
    let config = config_with(
        vec![(
            "openai",
            provider(ProviderKind::Openai, &fake.url("/v1"), key_env),
        )],
        vec![("gpt", "openai/gpt-4o-mini")],
    );
    TestGateway::start(config).await
}

#[tokio::test]
async fn text_streams_through_awkward_chunks_with_usage() {
    let fake = FakeProvider::start(Reply::Stream {
        body: wire("openai_text.sse"),
        cut: false,
    })
    .await;
    let (key_env, key) = present_env_var();
    let gateway = gateway_for(&fake, &key_env).await;
    let mut client = gateway.client().await;

    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            model: "gpt".into(),
            messages: vec![user("What is 17 × 23?")],
            temperature: Some(0.2),
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        events[..3],
        [text("Voilà"), text(": 17 × 23"), text(" = 391 🙂")]
    );
    assert_eq!(events.len(), 4, "{events:?}");
    let done = finished(&events);
    let message = done.message.as_ref().unwrap();
    assert_eq!(message.role, i32::from(Role::Assistant));
    assert_eq!(message.content, "Voilà: 17 × 23 = 391 🙂");
    assert_eq!(done.finish_reason, i32::from(FinishReason::Stop));
    assert_eq!(done.provider_finish_reason, "stop");
    assert_eq!(done.provider, "openai");
    assert_eq!(done.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(done.route, "gpt");
    assert_eq!(done.response_id, "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG");
    assert_eq!(done.attempts, 1);
    let usage = done.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.total_tokens),
        (25, 11, 36)
    );
    assert!(!usage.tokens_estimated);
    // gpt-4o-mini's built-in price: $0.15 in, $0.60 out per million tokens.
    let cost = usage
        .estimated_cost_usd
        .expect("gpt-4o-mini has a built-in price");
    assert!(
        (cost - (25.0 * 0.15 + 11.0 * 0.60) / 1e6).abs() < 1e-12,
        "{cost}"
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(sent.headers["authorization"], format!("Bearer {key}"));
    assert_eq!(sent.headers["content-type"], "application/json");
    assert_eq!(
        sent.body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "What is 17 × 23?"}],
            "temperature": 0.2,
            // Not OpenAI's own URL: the field every compatible server knows.
            "max_tokens": 4096,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
    gateway.stop().await;
}

#[tokio::test]
async fn tool_calls_split_across_chunks_are_relayed_and_assembled() {
    let fake = FakeProvider::start(Reply::Stream {
        body: wire("openai_tool_calls.sse"),
        cut: false,
    })
    .await;
    let gateway = gateway_for(&fake, "").await;
    let mut client = gateway.client().await;

    let conversation = vec![
        Message {
            role: Role::System.into(),
            content: "Use the tools.".into(),
            ..Message::default()
        },
        user("What is 2+2?"),
        Message {
            role: Role::Assistant.into(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "calculator".into(),
                arguments_json: "{\"expression\":\"2+2\"}".into(),
            }],
            ..Message::default()
        },
        Message {
            role: Role::Tool.into(),
            content: "{\"result\":4}".into(),
            tool_call_id: "call_1".into(),
            name: "calculator".into(),
            ..Message::default()
        },
        user("And 17 * 23, and the time in Zürich?"),
    ];
    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            model: "openai/gpt-4o".into(),
            messages: conversation,
            tools: vec![
                ToolSpec {
                    name: "calculator".into(),
                    description: "Evaluates an arithmetic expression.".into(),
                    parameters_json: r#"{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}"#.into(),
                },
                ToolSpec {
                    name: "current_time".into(),
                    description: "The current time.".into(),
                    parameters_json: String::new(),
                },
            ],
            parallel_tool_calls: Some(true),
            max_output_tokens: 300,
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        events[..events.len() - 1],
        [
            call_delta(0, "call_kd3nU3bRrFvjHhEoP0QpzHfy", "calculator", ""),
            call_delta(0, "", "", "{\"ex"),
            call_delta(0, "", "", "pression\": \"17 * "),
            call_delta(0, "", "", "23\"}"),
            call_delta(1, "call_Wl3AFq0iWQ6NtMmkBdvwBqYV", "current_time", ""),
            call_delta(1, "", "", "{\"timezone\": \"Europe/Zürich\"}"),
        ]
    );
    let done = finished(&events);
    let message = done.message.as_ref().unwrap();
    assert_eq!(message.content, "");
    assert_eq!(
        message.tool_calls,
        [
            ToolCall {
                id: "call_kd3nU3bRrFvjHhEoP0QpzHfy".into(),
                name: "calculator".into(),
                arguments_json: "{\"expression\": \"17 * 23\"}".into(),
            },
            ToolCall {
                id: "call_Wl3AFq0iWQ6NtMmkBdvwBqYV".into(),
                name: "current_time".into(),
                arguments_json: "{\"timezone\": \"Europe/Zürich\"}".into(),
            },
        ]
    );
    assert_eq!(done.finish_reason, i32::from(FinishReason::ToolCalls));
    assert_eq!(done.route, "", "addressed directly");
    assert_eq!(done.provider, "openai");
    let usage = done.usage.unwrap();
    assert_eq!(
        (
            usage.input_tokens,
            usage.output_tokens,
            usage.total_tokens,
            usage.cached_input_tokens,
            usage.reasoning_tokens
        ),
        (112, 47, 159, 64, 12)
    );

    let sent = &fake.requests()[0];
    assert!(
        !sent.headers.contains_key("authorization"),
        "no key configured, none sent"
    );
    assert_eq!(
        sent.body["messages"],
        json!([
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"2+2\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"result\":4}"},
            {"role": "user", "content": "And 17 * 23, and the time in Zürich?"},
        ])
    );
    assert_eq!(
        sent.body["tools"],
        json!([
            {"type": "function", "function": {
                "name": "calculator",
                "description": "Evaluates an arithmetic expression.",
                "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
            }},
            {"type": "function", "function": {
                "name": "current_time",
                "description": "The current time.",
                "parameters": {"type": "object", "properties": {}},
            }},
        ])
    );
    assert_eq!(sent.body["parallel_tool_calls"], json!(true));
    assert_eq!(sent.body["max_tokens"], json!(300));
    assert_eq!(sent.body["model"], json!("gpt-4o"));
    gateway.stop().await;
}

#[tokio::test]
async fn generate_maps_a_completion() {
    let fake = FakeProvider::start(Reply::Body {
        status: 200,
        headers: vec![("content-type", "application/json".to_owned())],
        body: wire("openai_completion.json"),
    })
    .await;
    let gateway = gateway_for(&fake, "").await;
    let mut client = gateway.client().await;
    let response = client
        .generate(GenerateRequest {
            model: "gpt".into(),
            messages: vec![user("What is 2+2?")],
            ..GenerateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let message = response.message.unwrap();
    assert_eq!(
        message.tool_calls,
        [ToolCall {
            id: "call_DdmO9pD3xa9XTPNJ32zg2hcA".into(),
            name: "calculator".into(),
            arguments_json: "{\"expression\":\"2+2\"}".into(),
        }]
    );
    assert_eq!(response.finish_reason, i32::from(FinishReason::ToolCalls));
    assert_eq!(response.provider_finish_reason, "tool_calls");
    assert_eq!(response.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(response.route, "gpt");
    assert_eq!(response.attempts, 1);
    let usage = response.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.total_tokens),
        (82, 17, 99)
    );

    let sent = &fake.requests()[0];
    assert!(sent.body.get("stream").is_none(), "{}", sent.body);
    gateway.stop().await;
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_with_finished_error_then_the_status() {
    let fake = FakeProvider::start(Reply::Stream {
        body: wire("openai_error_midstream.sse"),
        cut: false,
    })
    .await;
    let gateway = gateway_for(&fake, "").await;
    let mut client = gateway.client().await;
    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            model: "gpt".into(),
            messages: vec![user("Tell me a story")],
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(events[0], text("Once upon"));
    let done = finished(&events);
    assert_eq!(done.finish_reason, i32::from(FinishReason::Error));
    assert_eq!(done.message.as_ref().unwrap().content, "Once upon");
    assert!(done.usage.unwrap().tokens_estimated);
    let error = error.expect("the stream must end with an error");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error
            .message()
            .contains("provider openai (model gpt-4o-mini)"),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("The server had an error"),
        "{}",
        error.message()
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_finished_error_then_unavailable() {
    // The text stream up to the middle of its third event, then the
    // connection closes without ending the chunked body.
    let body = wire("openai_text.sse");
    let third = body
        .windows(6)
        .enumerate()
        .filter(|(_, window)| *window == b"data: ")
        .nth(2)
        .map(|(at, _)| at)
        .unwrap();
    let fake = FakeProvider::start(Reply::Stream {
        body: body[..third + 40].to_vec(),
        cut: true,
    })
    .await;
    let gateway = gateway_for(&fake, "").await;
    let mut client = gateway.client().await;
    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            model: "gpt".into(),
            messages: vec![user("What is 17 × 23?")],
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    // Cut streams are retried, each after a reset: three attempts.
    assert_eq!(resets(&events), 2);
    assert_eq!(text_of(&events), "Voilà");
    let done = finished(&events);
    assert_eq!(done.attempts, 3);
    assert_eq!(done.finish_reason, i32::from(FinishReason::Error));
    let usage = done.usage.unwrap();
    assert!(usage.tokens_estimated);
    assert!(usage.output_tokens > 0);
    let error = error.expect("the stream must end with an error");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error.message().contains("broke mid-stream"),
        "{}",
        error.message()
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_stream_ending_without_done_is_not_an_answer() {
    let fake = FakeProvider::start(Reply::Stream {
        body: wire("openai_no_done.sse"),
        cut: false,
    })
    .await;
    let gateway = gateway_for(&fake, "").await;
    let mut client = gateway.client().await;
    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            model: "gpt".into(),
            messages: vec![user("What is 17 × 23?")],
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(text_of(&events), "Voilà: 17 × 23");
    assert_eq!(resets(&events), 2);
    assert_eq!(
        finished(&events).finish_reason,
        i32::from(FinishReason::Error)
    );
    let error = error.expect("the stream must end with an error");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(error.message().contains("[DONE]"), "{}", error.message());
    gateway.stop().await;
}
