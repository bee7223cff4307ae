//! "The provider is down" against "this gateway replica is in trouble", as a
//! caller (or a mesh) sees them over real gRPC from the gateway binary.
//!
//! Every status the gateway answers because of a provider carries a
//! `google.rpc.ErrorInfo` (domain `agentmesh`, reason `PROVIDER_…`, the
//! route, provider and model as metadata, never the key): a provider that
//! answers 503, one that cannot be reached, an open circuit, a 429 and a
//! provider that never answers. The UNAVAILABLE the gateway answers about
//! itself (load shedding at its call limit, shutting down) carries none.
//! The providers are the test kit's fault provider over loopback.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::path::Path;
use std::time::Duration;

use agentmesh_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use agentmesh_proto::llm::v1::{
    GenerateRequest, GenerateStreamRequest, Message, Role, generate_stream_response::Event,
};
use agentmesh_testkit::fault_provider::{Fault, FaultConfig, FaultMix, FaultProvider};
use agentmesh_tests::{RunningBinary, channel, wait_serving, within};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The variable holding the providers' API key, and its value: it must
/// never show in a status.
const KEY_ENV: &str = "GATEWAY_PROVIDER_ERRORS_TEST_KEY";
const KEY: &str = "sk-provider-errors-test-secret-0123456789";

/// Bounds every wait.
const PATIENCE: Duration = Duration::from_secs(30);

/// One provider section of the gateway's configuration: an OpenAI-compatible
/// server at `base_url` with a short first-token limit (a provider that
/// never answers is a provider timeout within a second).
fn provider_section(name: &str, base_url: &str) -> String {
    format!(
        r#"
[llm_gateway.providers.{name}]
kind = "openai"
base_url = "{base_url}"
api_key_env = "{KEY_ENV}"
connect_timeout = "5s"
first_token_timeout = "1s"
request_timeout = "60s"

[llm_gateway.routes.{name}]
target = "{name}/m-{name}"
fallbacks = []
"#
    )
}

/// Starts the gateway binary in `dir` with one route per `(name, base_url)`
/// (route `name` → target `name/m-{name}`), no retries, and circuits that
/// open after 3 failures in a row; `args` go to the command line.
async fn start_gateway(dir: &Path, providers: &[(&str, &str)], args: &[&str]) -> RunningBinary {
    let mut config = format!(
        r#"
[llm_gateway]
default_route = "{}"

[llm_gateway.audit]
url = ""

[llm_gateway.retry]
max_attempts = 1

[llm_gateway.circuit_breaker]
consecutive_failures = 3
failure_ratio = 0.0
open_for = "60s"
"#,
        providers.first().unwrap().0
    );
    for (name, base_url) in providers {
        config.push_str(&provider_section(name, base_url));
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut all_args = vec!["--config", path.to_str().unwrap()];
    all_args.extend_from_slice(args);
    let gateway =
        RunningBinary::start("agentmesh-llm-gateway", &all_args, &[(KEY_ENV, KEY)], dir).await;
    wait_serving(channel(gateway.grpc), "").await;
    gateway
}

fn client(gateway: &RunningBinary) -> LlmGatewayServiceClient<Channel> {
    LlmGatewayServiceClient::new(channel(gateway.grpc))
}

fn messages() -> Vec<Message> {
    vec![Message {
        role: Role::User.into(),
        content: "hello".into(),
        ..Message::default()
    }]
}

fn with_tenant<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-agentmesh-tenant", "acme".parse().unwrap());
    request.set_timeout(PATIENCE);
    request
}

async fn generate(gateway: &RunningBinary, route: &str) -> Status {
    let request = with_tenant(GenerateRequest {
        model: route.into(),
        messages: messages(),
        ..GenerateRequest::default()
    });
    within("Generate", PATIENCE, client(gateway).generate(request))
        .await
        .expect_err("the call fails")
}

/// A GenerateStream call to `route` that fails before any output: its
/// status.
async fn generate_stream(gateway: &RunningBinary, route: &str) -> Status {
    let request = with_tenant(GenerateStreamRequest {
        model: route.into(),
        messages: messages(),
        ..GenerateStreamRequest::default()
    });
    let call = async {
        let mut events = client(gateway).generate_stream(request).await?.into_inner();
        while let Some(message) = events.message().await? {
            assert!(
                !matches!(message.event, Some(Event::Finished(_))),
                "the stream finished: {message:?}"
            );
        }
        Ok::<(), Status>(())
    };
    within("GenerateStream", PATIENCE, call)
        .await
        .expect_err("the stream fails")
}

/// Asserts that `status` has `code` and the provider ErrorInfo `reason`
/// naming `route` (route, provider `route`, model `m-{route}`), and no key.
fn assert_provider_error(status: &Status, code: Code, reason: &str, route: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "agentmesh", "{status:?}");
    assert_eq!(info.metadata.get("route").map(String::as_str), Some(route));
    assert_eq!(
        info.metadata.get("provider").map(String::as_str),
        Some(route)
    );
    let model = format!("m-{route}");
    assert_eq!(info.metadata.get("model"), Some(&model));
    // The constants the crate exports are the strings on the wire.
    assert_eq!(info.domain, agentmesh_llm_gateway::ERROR_DOMAIN);
    assert_no_key(status);
}

fn assert_no_key(status: &Status) {
    assert!(!status.message().contains(KEY), "{status:?}");
    let details = status.details();
    assert!(
        !details.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
        "{status:?}"
    );
}

/// A loopback URL nothing listens on.
fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

#[tokio::test]
async fn statuses_caused_by_a_provider_carry_the_provider_error_info() {
    let dir = tempfile::tempdir().unwrap();
    let down = FaultProvider::start(FaultConfig::named("down")).await;
    down.set_down(true);
    let limited = FaultProvider::start(FaultConfig {
        faults: FaultMix::only(Fault::RateLimited429),
        retry_after: Duration::from_secs(2),
        ..FaultConfig::named("limited")
    })
    .await;
    let hangs = FaultProvider::start(FaultConfig {
        faults: FaultMix::only(Fault::Hang),
        ..FaultConfig::named("hangs")
    })
    .await;
    let gone = unreachable_url();
    let gateway = start_gateway(
        dir.path(),
        &[
            ("down", &down.base_url()),
            ("limited", &limited.base_url()),
            ("hangs", &hangs.base_url()),
            ("gone", &gone),
        ],
        &[],
    )
    .await;
    use agentmesh_llm_gateway::provider_reason::*;

    // A provider answering 503: UNAVAILABLE, unary and streamed.
    let status = generate(&gateway, "down").await;
    assert_provider_error(&status, Code::Unavailable, UNAVAILABLE, "down");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        info.metadata.get("http_status").map(String::as_str),
        Some("503")
    );
    let status = generate_stream(&gateway, "down").await;
    assert_provider_error(&status, Code::Unavailable, UNAVAILABLE, "down");
    // The third failure in a row opens the circuit; the next call is
    // refused without reaching the provider, still as the provider's
    // trouble, with a retry delay.
    let status = generate(&gateway, "down").await;
    assert_provider_error(&status, Code::Unavailable, UNAVAILABLE, "down");
    let requests = down.requests();
    assert_eq!(requests, 3);
    let status = generate(&gateway, "down").await;
    assert_provider_error(&status, Code::Unavailable, CIRCUIT_OPEN, "down");
    assert!(status.get_details_retry_info().is_some(), "{status:?}");
    assert_eq!(down.requests(), requests, "an open circuit calls nobody");

    // A provider nobody can reach.
    let status = generate(&gateway, "gone").await;
    assert_provider_error(&status, Code::Unavailable, UNAVAILABLE, "gone");
    let status = generate_stream(&gateway, "gone").await;
    assert_provider_error(&status, Code::Unavailable, UNAVAILABLE, "gone");

    // A provider rate-limiting the call: RESOURCE_EXHAUSTED with its delay.
    let status = generate(&gateway, "limited").await;
    assert_provider_error(&status, Code::ResourceExhausted, RATE_LIMITED, "limited");
    let retry = status.get_details_retry_info().unwrap();
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(2)));

    // A provider that never answers, within the gateway's limits for it.
    let status = generate_stream(&gateway, "hangs").await;
    assert_provider_error(&status, Code::DeadlineExceeded, TIMEOUT, "hangs");
}

/// The gateway's own UNAVAILABLE: at its limit of calls in flight, and
/// shutting down with a stream still open. Neither names a provider.
#[tokio::test]
async fn the_gateways_own_unavailable_carries_no_provider_error_info() {
    let dir = tempfile::tempdir().unwrap();
    // 60 tokens, 200 ms apart: the stream stays open for 12 s, long past
    // the shutdown's grace period below.
    let slow = FaultProvider::start(FaultConfig {
        answer_tokens: 60,
        pace: Duration::from_millis(200),
        ..FaultConfig::named("slow")
    })
    .await;
    let mut gateway = start_gateway(
        dir.path(),
        &[("slow", &slow.base_url())],
        &[
            "--set",
            "server.max_concurrent_requests=1",
            "--set",
            "server.grace_period=3s",
            "--set",
            "server.drain_delay=0s",
        ],
    )
    .await;

    // One stream in flight, its first token out: the gateway's one call.
    let request = with_tenant(GenerateStreamRequest {
        model: "slow".into(),
        messages: messages(),
        ..GenerateStreamRequest::default()
    });
    let mut events = within(
        "the stream's start",
        PATIENCE,
        client(&gateway).generate_stream(request),
    )
    .await
    .unwrap()
    .into_inner();
    let first = within("the first token", PATIENCE, events.message())
        .await
        .unwrap()
        .expect("an event");
    assert!(
        matches!(first.event, Some(Event::TextDelta(_))),
        "{first:?}"
    );

    // Shed: the second call is refused at once.
    let status = generate(&gateway, "slow").await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("at its limit"), "{status:?}");
    assert!(status.get_details_error_info().is_none(), "{status:?}");

    // Shutting down: the open stream is ended near the end of the grace
    // period, with the server's UNAVAILABLE.
    gateway.signal("TERM").await;
    let ended = async {
        loop {
            match events.message().await {
                Ok(Some(message)) => assert!(
                    !matches!(message.event, Some(Event::Finished(_))),
                    "the answer finished before the grace period ended"
                ),
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    };
    let status = within("the stream's end", PATIENCE, ended).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    assert!(status.get_details_error_info().is_none(), "{status:?}");
    let (exit, _) = gateway.exit_and_log(PATIENCE).await;
    assert!(exit.success(), "exit status {exit}");
}
