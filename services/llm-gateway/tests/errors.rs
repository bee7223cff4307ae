//! Provider failures as the caller sees them: each HTTP error, a refused
//! connection, a provider that never answers, a missing key and the caller's
//! own deadline become the gRPC status the contract names, with a message
//! that says which provider failed and never contains the key.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_kit::RequestContext;
use agentmesh_llm_gateway::{Gateway, LlmGatewayServiceImpl, ProviderKind};
use agentmesh_proto::llm::v1::llm_gateway_service_server::LlmGatewayService;
use agentmesh_proto::llm::v1::{GenerateRequest, GenerateStreamRequest};
use common::{
    FakeProvider, Reply, TestGateway, UNSET_ENV_VAR, config_with, present_env_var, provider, user,
    within,
};
use tonic::Code;
use tonic_types::StatusExt;

fn request() -> GenerateRequest {
    GenerateRequest {
        model: "gpt".into(),
        messages: vec![user("hi")],
        ..GenerateRequest::default()
    }
}

/// Calls Generate, then GenerateStream, through a gateway whose route `gpt`
/// goes to `base_url`, without retries (these tests are about how one
/// failure maps to a status; retries have their own tests); both must fail
/// the same way; returns the status.
async fn failure(
    base_url: &str,
    key_env: &str,
    tune: impl Fn(&mut agentmesh_llm_gateway::ProviderConfig),
) -> tonic::Status {
    let mut openai = provider(ProviderKind::Openai, base_url, key_env);
    tune(&mut openai);
    let mut config = config_with(
        vec![("openai", openai)],
        vec![("gpt", "openai/gpt-4o-mini")],
    );
    config.retry.max_attempts = 1;
    let gateway = TestGateway::start(config).await;
    let mut client = gateway.client().await;
    let unary = within("Generate", client.generate(request()))
        .await
        .unwrap_err();
    let streamed = within("GenerateStream", async {
        let mut stream = client
            .generate_stream(GenerateStreamRequest {
                model: "gpt".into(),
                messages: vec![user("hi")],
                ..GenerateStreamRequest::default()
            })
            .await?
            .into_inner();
        stream.message().await
    })
    .await
    .unwrap_err();
    assert_eq!(unary.code(), streamed.code(), "{unary:?} / {streamed:?}");
    gateway.stop().await;
    unary
}

fn no_tuning(_: &mut agentmesh_llm_gateway::ProviderConfig) {}

#[tokio::test]
async fn http_400_is_invalid_argument_with_the_providers_message_and_field() {
    let fake = FakeProvider::start(Reply::json(
        400,
        r#"{"error":{"message":"Invalid value for 'temperature': must be at most 2.","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#,
    ))
    .await;
    let status = failure(&fake.url("/v1"), "", no_tuning).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("provider openai (model gpt-4o-mini)"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("Invalid value for 'temperature'"),
        "{}",
        status.message()
    );
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "temperature");
}

#[tokio::test]
async fn http_401_is_permission_denied_and_never_echoes_the_key() {
    let (key_env, key) = present_env_var();
    let body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
    );
    let fake = FakeProvider::start(Reply::json(401, &body)).await;
    let status = failure(&fake.url("/v1"), &key_env, no_tuning).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("Incorrect API key provided"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains(&key),
        "the key leaked: {}",
        status.message()
    );
    // The key was sent, just refused.
    assert_eq!(
        fake.requests()[0].headers["authorization"],
        format!("Bearer {key}")
    );
}

#[tokio::test]
async fn http_403_is_permission_denied() {
    let fake = FakeProvider::start(Reply::json(
        403,
        r#"{"error":{"message":"Country not supported","type":"permission_error"}}"#,
    ))
    .await;
    assert_eq!(
        failure(&fake.url("/v1"), "", no_tuning).await.code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn http_404_is_not_found() {
    let fake = FakeProvider::start(Reply::json(
        404,
        r#"{"error":{"message":"The model `gpt-4o-mini` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
    ))
    .await;
    let status = failure(&fake.url("/v1"), "", no_tuning).await;
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("does not exist"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn http_429_is_resource_exhausted_with_the_retry_delay() {
    let fake = FakeProvider::start(Reply::Body {
        status: 429,
        headers: vec![
            ("content-type", "application/json".to_owned()),
            ("retry-after", "7".to_owned()),
        ],
        body: br#"{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#.to_vec(),
    })
    .await;
    let status = failure(&fake.url("/v1"), "", no_tuning).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("Rate limit reached"),
        "{}",
        status.message()
    );
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn http_500_and_503_are_unavailable() {
    for (code, body) in [
        (
            500,
            r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error"}}"#,
        ),
        (503, "<html><body>Service Unavailable</body></html>"),
    ] {
        let fake = FakeProvider::start(Reply::json(code, body)).await;
        let status = failure(&fake.url("/v1"), "", no_tuning).await;
        assert_eq!(status.code(), Code::Unavailable, "{code}");
        assert!(
            status.message().contains(&format!("HTTP {code}")),
            "{}",
            status.message()
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let status = failure(&format!("http://{addr}/v1"), "", no_tuning).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("cannot reach"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_provider_that_never_answers_hits_the_time_limits() {
    let fake = FakeProvider::start(Reply::Silence).await;
    let mut config = config_with(
        vec![(
            "openai",
            agentmesh_llm_gateway::ProviderConfig {
                first_token_timeout: Duration::from_millis(300),
                request_timeout: Duration::from_millis(600),
                ..provider(ProviderKind::Openai, &fake.url("/v1"), "")
            },
        )],
        vec![("gpt", "openai/gpt-4o-mini")],
    );
    // Six timeouts in a row would open the circuit; this test is about the
    // time limits.
    config.circuit_breaker.consecutive_failures = 0;
    let gateway = TestGateway::start(config).await;
    let mut client = gateway.client().await;
    // A stream must start within first_token_timeout...
    let status = within("GenerateStream", async {
        let mut stream = client
            .generate_stream(GenerateStreamRequest {
                model: "gpt".into(),
                messages: vec![user("hi")],
                ..GenerateStreamRequest::default()
            })
            .await?
            .into_inner();
        stream.message().await
    })
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().contains("first_token_timeout (300ms)"),
        "{}",
        status.message()
    );
    // ...a one-shot answer, whose headers come when it is complete, within
    // request_timeout.
    let status = within("Generate", client.generate(request()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("request_timeout (600ms)"),
        "{}",
        status.message()
    );
    // Timeouts are retried: three attempts each.
    assert!(
        status.message().contains("after 3 attempts"),
        "{}",
        status.message()
    );
    assert_eq!(fake.requests().len(), 6);
    gateway.stop().await;
}

#[tokio::test]
async fn a_stream_without_events_hits_the_first_token_timeout() {
    let fake = FakeProvider::start(Reply::HeadersThenSilence).await;
    let config = config_with(
        vec![(
            "openai",
            agentmesh_llm_gateway::ProviderConfig {
                first_token_timeout: Duration::from_millis(300),
                ..provider(ProviderKind::Openai, &fake.url("/v1"), "")
            },
        )],
        vec![("gpt", "openai/gpt-4o-mini")],
    );
    let gateway = TestGateway::start(config).await;
    let mut client = gateway.client().await;
    let status = within("GenerateStream", async {
        let mut stream = client
            .generate_stream(GenerateStreamRequest {
                model: "gpt".into(),
                messages: vec![user("hi")],
                ..GenerateStreamRequest::default()
            })
            .await?
            .into_inner();
        stream.message().await
    })
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    gateway.stop().await;
}

#[tokio::test]
async fn a_missing_key_is_failed_precondition_naming_the_variable() {
    let fake = FakeProvider::start(Reply::Silence).await;
    let status = failure(&fake.url("/v1"), UNSET_ENV_VAR, no_tuning).await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        format!(
            "provider openai (model gpt-4o-mini): environment variable {UNSET_ENV_VAR} is not set"
        )
    );
    assert!(
        fake.requests().is_empty(),
        "nothing may be sent without the key"
    );
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_provider_call() {
    // The handlers called directly, inside a request context whose deadline
    // is near, so it is the gateway's own limit that ends the call.
    let fake = FakeProvider::start(Reply::Silence).await;
    let config = config_with(
        vec![(
            "openai",
            provider(ProviderKind::Openai, &fake.url("/v1"), ""),
        )],
        vec![("gpt", "openai/gpt-4o-mini")],
    );
    let service = LlmGatewayServiceImpl::new(Arc::new(Gateway::from_config(&config).unwrap()));
    let context = || {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_static("300m"));
        RequestContext::from_incoming(&mut headers, Instant::now())
    };

    let status = within(
        "Generate",
        context().scope(service.generate(tonic::Request::new(request()))),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().contains("caller's deadline"),
        "{}",
        status.message()
    );

    let stream_request = tonic::Request::new(GenerateStreamRequest {
        model: "gpt".into(),
        messages: vec![user("hi")],
        ..GenerateStreamRequest::default()
    });
    let status = within(
        "GenerateStream",
        context().scope(service.generate_stream(stream_request)),
    )
    .await
    .err()
    .expect("the stream must fail");
    assert_eq!(status.code(), Code::DeadlineExceeded);
}
