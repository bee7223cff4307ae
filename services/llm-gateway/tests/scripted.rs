//! The gateway with its default configuration, as the offline demo runs it:
//! the scripted demo model's tool-using conversations through real gRPC,
//! custom rules files, ListModels, model resolution and request validation.

mod common;

use std::time::Duration;

use agentmesh_kit::{Listeners, ServerConfig};
use agentmesh_llm_gateway::{AuditConfig, Config, ProviderConfig, ProviderKind, RouteConfig};
use agentmesh_proto::llm::v1::{
    FinishReason, GenerateRequest, GenerateStreamRequest, ListModelsRequest, Message, Role,
    TextDelta, ToolCall, ToolCallDelta, ToolSpec, generate_stream_response::Event,
};
use common::{TestGateway, UNSET_ENV_VAR, finished, stream_all, text_of, user, within};
use tonic::Code;
use tonic_types::StatusExt;

fn calculator_spec() -> ToolSpec {
    ToolSpec {
        name: "calculator".into(),
        description: "Evaluates an arithmetic expression.".into(),
        parameters_json: r#"{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}"#.into(),
    }
}

#[tokio::test]
async fn the_demo_model_answers_arithmetic_through_the_calculator() {
    // The defaults, demo pace included: what `agentmesh` runs offline.
    let gateway = TestGateway::start(Config::default()).await;
    let mut client = gateway.client().await;
    let question = user("What is 17 * 23 + sqrt(144)?");

    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            messages: vec![question.clone()],
            tools: vec![calculator_spec()],
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    assert!(error.is_none(), "{error:?}");
    let deltas: Vec<&ToolCallDelta> = events
        .iter()
        .filter_map(|event| match event {
            Event::ToolCallDelta(delta) => Some(delta),
            _ => None,
        })
        .collect();
    assert_eq!(
        (
            deltas[0].index,
            deltas[0].id.as_str(),
            deltas[0].name.as_str()
        ),
        (0, "call_1", "calculator")
    );
    assert!(
        deltas.len() >= 3,
        "id and name, then at least two fragments: {deltas:?}"
    );
    assert!(
        deltas[1..]
            .iter()
            .all(|delta| delta.id.is_empty() && delta.name.is_empty())
    );
    let done = finished(&events);
    let call = done.message.as_ref().unwrap().tool_calls[0].clone();
    assert_eq!(
        call.arguments_json,
        r#"{"expression": "17 * 23 + sqrt(144)"}"#
    );
    let streamed: String = deltas
        .iter()
        .map(|delta| delta.arguments_json_delta.as_str())
        .collect();
    assert_eq!(streamed, call.arguments_json);
    assert_eq!(done.finish_reason, i32::from(FinishReason::ToolCalls));
    assert_eq!(done.provider, "scripted");
    assert_eq!(done.model, "demo");
    assert_eq!(done.route, "default");
    assert_eq!(done.attempts, 1);
    let usage = done.usage.unwrap();
    assert!(usage.tokens_estimated);
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0);

    let (events, error) = stream_all(
        &mut client,
        GenerateStreamRequest {
            messages: vec![
                question,
                Message {
                    role: Role::Assistant.into(),
                    tool_calls: vec![call],
                    ..Message::default()
                },
                Message {
                    role: Role::Tool.into(),
                    content: r#"{"result":403}"#.into(),
                    tool_call_id: "call_1".into(),
                    name: "calculator".into(),
                    ..Message::default()
                },
            ],
            tools: vec![calculator_spec()],
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    assert!(error.is_none(), "{error:?}");
    let words: Vec<Event> = ["The ", "answer ", "is ", "403."]
        .into_iter()
        .map(|text| Event::TextDelta(TextDelta { text: text.into() }))
        .collect();
    assert_eq!(events[..events.len() - 1], words[..]);
    let done = finished(&events);
    assert_eq!(done.message.as_ref().unwrap().content, "The answer is 403.");
    assert_eq!(done.finish_reason, i32::from(FinishReason::Stop));
    assert_eq!(done.usage.unwrap().output_tokens, 4);
    gateway.stop().await;
}

#[tokio::test]
async fn generate_answers_the_same_way_in_one_response() {
    let gateway = TestGateway::start(common::config_with(vec![], vec![])).await;
    let mut client = gateway.client().await;
    let response = client
        .generate(GenerateRequest {
            model: "fast".into(),
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
            id: "call_1".into(),
            name: "calculator".into(),
            arguments_json: r#"{"expression": "2+2"}"#.into(),
        }]
    );
    assert_eq!(response.provider, "scripted");
    assert_eq!(response.route, "fast");
    assert!(!response.response_id.is_empty());

    let response = client
        .generate(GenerateRequest {
            model: "scripted/demo".into(),
            messages: vec![
                user("What is 2+2?"),
                message,
                Message {
                    role: Role::Tool.into(),
                    content: r#"{"result":4}"#.into(),
                    tool_call_id: "call_1".into(),
                    ..Message::default()
                },
            ],
            ..GenerateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.message.unwrap().content, "The answer is 4.");
    assert_eq!(response.route, "");
    gateway.stop().await;
}

#[tokio::test]
async fn a_rules_file_escapes_captures_for_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        r#"
        pace = "0s"
        [[rules]]
        on = "user"
        match = '^search (?P<query>.+)$'
        tool_calls = [{ name = "search", arguments = '{"query": "${query}"}' }]
        "#,
    )
    .unwrap();
    let mut config = common::config_with(vec![], vec![]);
    config.providers.insert(
        "rules".into(),
        ProviderConfig {
            rules_file: path.display().to_string(),
            ..ProviderConfig::new(ProviderKind::Scripted)
        },
    );
    let gateway = TestGateway::start(config).await;
    let mut client = gateway.client().await;
    let query = r#"the "best" \ path"#;
    let response = client
        .generate(GenerateRequest {
            model: "rules/custom".into(),
            messages: vec![user(&format!("search {query}"))],
            ..GenerateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let arguments = &response.message.unwrap().tool_calls[0].arguments_json;
    let parsed: serde_json::Value = serde_json::from_str(arguments).unwrap();
    assert_eq!(parsed["query"], query);
    assert_eq!(response.model, "custom");
    assert_eq!(response.provider, "rules");

    // A message no rule matches gets an answer saying so.
    let (events, _) = stream_all(
        &mut client,
        GenerateStreamRequest {
            model: "rules/custom".into(),
            messages: vec![user("hello")],
            ..GenerateStreamRequest::default()
        },
    )
    .await
    .unwrap();
    assert!(
        text_of(&events).starts_with("No scripted rule matched the last message (\"hello\")"),
        "{}",
        text_of(&events)
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_bad_rules_file_stops_the_start_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        "[[rules]]\ntext = \"fine\"\n[[rules]]\ntext = \"a\"\ntool_calls = [{ name = \"t\" }]\n",
    )
    .unwrap();
    let mut config = Config {
        server: ServerConfig {
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 0,
            admin_port: Some(0),
            ..ServerConfig::default()
        },
        audit: AuditConfig::disabled(),
        ..Config::default()
    };
    config.providers.insert(
        "scripted".into(),
        ProviderConfig {
            rules_file: path.display().to_string(),
            ..ProviderConfig::new(ProviderKind::Scripted)
        },
    );
    let err = agentmesh_kit::config::validate(&config).unwrap_err();
    assert_eq!(err.setting, "llm_gateway.providers.scripted.rules_file");
    assert!(
        err.message
            .contains("rules[1]: has both `text` and `tool_calls`"),
        "{err}"
    );

    let listeners = Listeners::bind(&config.server).await.unwrap();
    let err = within(
        "a refused start",
        Box::pin(agentmesh_llm_gateway::serve_with_listeners(
            config,
            listeners,
            std::future::pending(),
        )),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("llm_gateway.providers.scripted.rules_file"),
        "{err}"
    );
    assert!(err.contains("rules[1]"), "{err}");
}

#[tokio::test]
async fn list_models_lists_routes_with_targets_and_availability() {
    let mut config = Config::default();
    config.providers.insert(
        "openai".into(),
        ProviderConfig {
            api_key_env: UNSET_ENV_VAR.into(),
            ..ProviderConfig::new(ProviderKind::Openai)
        },
    );
    config.routes.insert(
        "smart".into(),
        RouteConfig::new("openai/gpt-4o", "a real model"),
    );
    let gateway = TestGateway::start(config).await;
    let mut client = gateway.client().await;
    let listed = client
        .list_models(ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed
        .models
        .iter()
        .map(|model| model.name.as_str())
        .collect();
    assert_eq!(names, ["default", "fast", "smart"]);
    assert!(listed.next_page_token.is_empty());
    let default = &listed.models[0];
    assert!(default.is_default && default.available);
    assert_eq!(default.targets[0].provider, "scripted");
    assert_eq!(default.targets[0].provider_kind, "scripted");
    assert_eq!(default.targets[0].model, "demo");
    assert_eq!(
        default.targets[0].input_usd_per_million_tokens, None,
        "the demo model has no price"
    );
    let smart = &listed.models[2];
    assert!(!smart.is_default);
    assert!(!smart.available, "its key variable is not set");
    assert_eq!(smart.description, "a real model");
    assert_eq!(smart.targets[0].provider_kind, "openai");
    assert_eq!(smart.targets[0].input_usd_per_million_tokens, Some(2.50));
    assert_eq!(smart.targets[0].output_usd_per_million_tokens, Some(10.00));

    let page = client
        .list_models(ListModelsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.models.len(), 2);
    let rest = client
        .list_models(ListModelsRequest {
            page_size: 2,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.models[0].name, "smart");
    assert!(rest.next_page_token.is_empty());

    let status = client
        .list_models(ListModelsRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "page_size"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn invalid_requests_name_their_fields_and_unknown_models_are_not_found() {
    let gateway = TestGateway::start(common::config_with(vec![], vec![])).await;
    let mut client = gateway.client().await;
    let status = client
        .generate_stream(GenerateStreamRequest {
            messages: vec![
                user("hi"),
                Message {
                    role: Role::Tool.into(),
                    content: "{}".into(),
                    ..Message::default()
                },
            ],
            tools: vec![ToolSpec {
                name: "calc".into(),
                parameters_json: "{not json".into(),
                ..ToolSpec::default()
            }],
            temperature: Some(3.0),
            ..GenerateStreamRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect();
    assert_eq!(
        fields,
        [
            "messages[1].tool_call_id",
            "tools[0].parameters_json",
            "temperature"
        ]
    );

    let status = client
        .generate(GenerateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("messages"),
        "{}",
        status.message()
    );

    for model in ["no-such-route", "nope/model"] {
        let status = client
            .generate(GenerateRequest {
                model: model.into(),
                messages: vec![user("hi")],
                ..GenerateRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{model}");
        assert!(
            status.message().contains(model.split('/').next().unwrap()),
            "{}",
            status.message()
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_client_can_drop_a_paced_stream_midway() {
    // An hour between words: the caller takes the first word and leaves; the
    // gateway goes on serving others.
    let mut config = common::config_with(vec![], vec![]);
    config.providers.insert(
        "scripted".into(),
        ProviderConfig {
            pace: Some(Duration::from_secs(3600)),
            ..ProviderConfig::new(ProviderKind::Scripted)
        },
    );
    let gateway = TestGateway::start(config).await;
    let mut client = gateway.client().await;
    let mut stream = client
        .generate_stream(GenerateStreamRequest {
            messages: vec![user("Tell me everything")],
            ..GenerateStreamRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = within("the first word", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first.event, Some(Event::TextDelta(_))),
        "{first:?}"
    );
    drop(stream);
    let response = within(
        "another call",
        client.list_models(ListModelsRequest::default()),
    )
    .await
    .unwrap();
    assert!(!response.into_inner().models.is_empty());
    gateway.stop().await;
}
