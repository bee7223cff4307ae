//! The LLM gateway against careless and hostile callers, as real binaries:
//! a flood of short-deadline GenerateStream calls against a slow provider
//! leaves its circuit CLOSED and other tenants served; callers arriving
//! while a half-open circuit's probe is out are refused with a real retry
//! delay; a path-like model name and a schema that is not one are
//! INVALID_ARGUMENT. The provider is the test kit's fault provider, which
//! speaks OpenAI's wire format over loopback.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agentmesh_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use agentmesh_proto::llm::v1::{
    GenerateRequest, GenerateStreamRequest, Message, Role, ToolSpec,
    generate_stream_response::Event,
};
use agentmesh_testkit::eventually;
use agentmesh_testkit::fault_provider::{Fault, FaultConfig, FaultMix, FaultProvider};
use agentmesh_tests::{RunningBinary, channel, http_get, wait_serving, within};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// The one guarded target of the gateway under test.
const TARGET: &str = "slow/fault";
/// Calls in the flood of short deadlines (several times the streak that
/// opens the circuit).
const FLOOD: usize = 40;

/// Starts the gateway binary in `dir` with one route, `slow`, to the fault
/// provider at `base_url`, whose own time limits are long (30 s): only a
/// caller's deadline can cut its calls short. The circuit opens after 5
/// failures in a row, stays open for `open_for`, and a probe holds its
/// place for 20 s.
async fn start_gateway(dir: &Path, base_url: &str, open_for: &str) -> RunningBinary {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[llm_gateway]
default_route = "slow"

[llm_gateway.audit]
url = ""

[llm_gateway.providers.slow]
kind = "openai"
base_url = "{base_url}"
connect_timeout = "5s"
first_token_timeout = "30s"
request_timeout = "30s"

[llm_gateway.routes.slow]
target = "{TARGET}"
fallbacks = []

[llm_gateway.retry]
max_attempts = 1

[llm_gateway.circuit_breaker]
consecutive_failures = 5
failure_ratio = 0.0
open_for = "{open_for}"
half_open_probes = 1
probe_timeout = "20s"
"#
        ),
    )
    .unwrap();
    let gateway = RunningBinary::start(
        "agentmesh-llm-gateway",
        &["--config", config.to_str().unwrap()],
        &[],
        dir,
    )
    .await;
    wait_serving(channel(gateway.grpc), "").await;
    gateway
}

fn client(gateway: &RunningBinary) -> LlmGatewayServiceClient<Channel> {
    LlmGatewayServiceClient::new(channel(gateway.grpc))
}

fn stream_request(tenant: &str, deadline: Duration) -> tonic::Request<GenerateStreamRequest> {
    let mut request = tonic::Request::new(GenerateStreamRequest {
        messages: vec![Message {
            role: Role::User.into(),
            content: "hello".into(),
            ..Message::default()
        }],
        ..GenerateStreamRequest::default()
    });
    request
        .metadata_mut()
        .insert("x-agentmesh-tenant", tenant.parse().unwrap());
    request.set_timeout(deadline);
    request
}

/// Streams a call to its end: `Ok` when it finished well, else its status
/// (a call that fails after output sends `finished` with
/// FINISH_REASON_ERROR, then the status).
async fn stream(
    mut client: LlmGatewayServiceClient<Channel>,
    request: tonic::Request<GenerateStreamRequest>,
) -> Result<(), tonic::Status> {
    let mut events = client.generate_stream(request).await?.into_inner();
    let mut finished = false;
    while let Some(message) = events.next().await {
        if let Some(Event::Finished(_)) = message?.event {
            finished = true;
        }
    }
    if finished {
        Ok(())
    } else {
        Err(tonic::Status::internal(
            "the stream ended without finishing",
        ))
    }
}

/// A metric's value summed over the series whose line starts with
/// `prefix` (a name, or a name and labels); 0 when there is none.
async fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    values(admin, prefix).await.iter().sum::<f64>() + 0.0
}

/// The values of the series whose line starts with `prefix`.
async fn values(admin: SocketAddr, prefix: &str) -> Vec<f64> {
    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

/// The target's circuit state gauge: 0 closed, 1 open, 2 half-open.
async fn circuit(admin: SocketAddr) -> f64 {
    let values = values(admin, &circuit_state()).await;
    assert_eq!(values.len(), 1, "one circuit state series for {TARGET}");
    values[0]
}

fn circuit_state() -> String {
    // Other labels (`service`) follow the target's.
    format!("agentmesh_circuit_state{{target=\"{TARGET}\"")
}

/// Calls whose end the gateway has recorded (every outcome).
async fn ended_calls(admin: SocketAddr) -> f64 {
    metric(admin, "gen_ai_client_operation_duration_seconds_count").await
}

#[tokio::test]
async fn a_flood_of_short_deadlines_leaves_the_circuit_closed_and_others_served() {
    let dir = tempfile::tempdir().unwrap();
    // 8 tokens, 100 ms apart: an answer takes about 800 ms, four times the
    // flood's deadline, and well within the provider's own limits.
    let provider = FaultProvider::start(FaultConfig {
        pace: Duration::from_millis(100),
        ..FaultConfig::named("slow")
    })
    .await;
    let gateway = start_gateway(dir.path(), &provider.base_url(), "30s").await;
    assert_eq!(circuit(gateway.admin).await, 0.0);

    let flood = futures::stream::iter(0..FLOOD)
        .map(|_| {
            stream(
                client(&gateway),
                stream_request("flooder", Duration::from_millis(200)),
            )
        })
        .buffer_unordered(10)
        .collect::<Vec<_>>();
    let results = within("the flood", Duration::from_secs(120), flood).await;
    for result in &results {
        let status = result
            .as_ref()
            .expect_err("a 200 ms call finished an 800 ms answer");
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
    }
    // Every flood call has ended at the gateway too (its outcome settled
    // with the circuit before its end is counted).
    eventually(
        "the gateway to record the end of every flood call",
        Duration::from_secs(60),
        || async { (ended_calls(gateway.admin).await >= FLOOD as f64).then_some(()) },
    )
    .await;
    assert_eq!(
        circuit(gateway.admin).await,
        0.0,
        "the callers' deadlines opened the provider's circuit"
    );
    assert_eq!(
        metric(gateway.admin, "agentmesh_circuit_transitions_total").await,
        0.0
    );

    // Another tenant, with time to wait, is served as before.
    for _ in 0..3 {
        stream(
            client(&gateway),
            stream_request("patient", Duration::from_secs(30)),
        )
        .await
        .unwrap();
    }
    assert_eq!(circuit(gateway.admin).await, 0.0);
}

#[tokio::test]
async fn callers_refused_while_the_probe_is_out_get_a_real_retry_delay() {
    let dir = tempfile::tempdir().unwrap();
    let provider = FaultProvider::start(FaultConfig::named("slow")).await;
    let gateway = start_gateway(dir.path(), &provider.base_url(), "1s").await;

    // The provider fails: five 503s open the circuit.
    provider.set_down(true);
    for _ in 0..5 {
        let status = stream(
            client(&gateway),
            stream_request("anyone", Duration::from_secs(30)),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(circuit(gateway.admin).await, 1.0);
    let refused = stream(
        client(&gateway),
        stream_request("anyone", Duration::from_secs(30)),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");

    // It answers again, but the first call (the probe) hangs: while it is
    // out, every other caller is refused at once with the time until the
    // probe's place frees up, never "now".
    provider.set_down(false);
    provider.set_faults(FaultMix::only(Fault::Hang));
    let prober = tokio::spawn({
        let client = client(&gateway);
        async move {
            loop {
                let result = stream(
                    client.clone(),
                    stream_request("prober", Duration::from_secs(10)),
                )
                .await;
                match result {
                    // Refused by the open circuit: its cool-down is not over.
                    Err(status) if status.code() == Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => return other,
                }
            }
        }
    });
    eventually(
        "the probe to reach the provider",
        Duration::from_secs(30),
        || async { (provider.open_hangs() >= 1).then_some(()) },
    )
    .await;
    assert_eq!(circuit(gateway.admin).await, 2.0);
    let others = futures::future::join_all((0..10).map(|_| {
        stream(
            client(&gateway),
            stream_request("waiting", Duration::from_secs(30)),
        )
    }))
    .await;
    for result in others {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let message = status.message();
        assert!(message.contains("half-open"), "{message}");
        assert!(!message.contains("0ns"), "{message}");
        let delay = status
            .get_details_retry_info()
            .and_then(|retry| retry.retry_delay)
            .expect("a retry delay");
        // The probe's place frees up within its 20 s probe_timeout.
        assert!(
            delay > Duration::ZERO && delay <= Duration::from_secs(20),
            "{delay:?}"
        );
    }
    // Only the probe reached the provider.
    assert_eq!(provider.open_hangs(), 1);
    prober.abort();
}

#[tokio::test]
async fn path_like_model_names_and_non_schemas_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let provider = FaultProvider::start(FaultConfig::named("slow")).await;
    let gateway = start_gateway(dir.path(), &provider.base_url(), "30s").await;
    let message = Message {
        role: Role::User.into(),
        content: "hello".into(),
        ..Message::default()
    };
    let status = client(&gateway)
        .generate(GenerateRequest {
            model: "scripted/../../x".into(),
            messages: vec![message.clone()],
            ..GenerateRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "model");

    let status = client(&gateway)
        .generate(GenerateRequest {
            messages: vec![message],
            tools: vec![ToolSpec {
                name: "fruit".into(),
                parameters_json: r#"{"type":"banana"}"#.into(),
                ..ToolSpec::default()
            }],
            ..GenerateRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("tool `fruit`"),
        "{}",
        status.message()
    );
    // Nothing reached the provider.
    assert_eq!(provider.requests(), 0);
}
