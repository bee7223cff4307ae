//! One trace per run, through every service: the five real binaries export
//! their spans over OTLP/gRPC to a trace collector in this test (a real
//! implementation of the OpenTelemetry collector's `TraceService`, from the
//! opentelemetry-proto definitions), and a client starts a run with its own
//! `traceparent` and `x-request-id`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_proto::orchestrator::v1 as orchestrator;
use agentmesh_tests::{RunningBinary, channel, wait_serving};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    status_code: i32,
    attributes: HashMap<String, Value>,
}

impl Span {
    fn text(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key)? {
            Value::StringValue(text) => Some(text),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key)? {
            Value::IntValue(value) => Some(*value),
            _ => None,
        }
    }
}

/// The OTLP trace collector: keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

fn text_of(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        _ => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, Value> {
    list.iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.as_ref()?.value.clone()?)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| {
                    resource
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "service.name")
                })
                .map(|kv| text_of(kv.value.as_ref()))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(Span {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        kind: span.kind,
                        status_code: span.status.map(|status| status.code).unwrap_or(0),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Self, String) {
        let collector = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
        });
        (collector, format!("http://{addr}"))
    }

    fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// What is wrong with the trace so far (empty: complete and well formed).
fn problems(spans: &[Span], client_span: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let services: HashSet<&str> = spans.iter().map(|span| span.service.as_str()).collect();
    for service in [
        "agentmesh-orchestrator",
        "agentmesh-llm-gateway",
        "agentmesh-tool-runner",
        "agentmesh-audit",
    ] {
        if !services.contains(service) {
            problems.push(format!("no span from {service}"));
        }
    }
    let ids: HashSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|span| !ids.contains(span.parent_span_id.as_str()))
        .collect();
    for root in &roots {
        if root.parent_span_id != client_span {
            problems.push(format!(
                "span {:?} of {} has parent {:?}, which is not in the trace",
                root.name, root.service, root.parent_span_id
            ));
        }
    }
    if roots.len() != 1 {
        problems.push(format!(
            "{} spans hang off the client's span, expected 1",
            roots.len()
        ));
    }
    for name in [
        "invoke_agent",
        "step 1",
        "chat",
        "execute_tool",
        "audit.write",
    ] {
        if !spans.iter().any(|span| span.name.starts_with(name)) {
            problems.push(format!("no {name:?} span"));
        }
    }
    if !spans
        .iter()
        .any(|span| span.name == "audit.write run_finished")
    {
        problems.push("the run's RUN_FINISHED write is not in the trace yet".to_owned());
    }
    problems
}

/// The five real binaries, exporting spans to `collector`'s endpoint.
struct TracedMesh {
    orchestrator: RunningBinary,
    gateway: RunningBinary,
    tool_runner: RunningBinary,
    audit: RunningBinary,
    alerting: RunningBinary,
}

impl TracedMesh {
    async fn start(dir: &std::path::Path, endpoint: &str) -> Self {
        let traced = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            // Export every 100 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "info,agentmesh=debug"),
        ];
        let start = |name: &'static str, extra: Vec<(&'static str, String)>| {
            let dir = dir.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            async move {
                let mut envs: Vec<(&str, &str)> = traced.to_vec();
                envs.extend(extra.iter().map(|(key, value)| (*key, value.as_str())));
                let service =
                    RunningBinary::start(&format!("agentmesh-{name}"), &[], &envs, &dir).await;
                wait_serving(channel(service.grpc), "").await;
                service
            }
        };

        let audit = start("audit", vec![]).await;
        let audit_url = format!("http://{}", audit.grpc);
        let tool_runner = start(
            "tool-runner",
            vec![("AGENTMESH_TOOL_RUNNER__AUDIT__URL", audit_url.clone())],
        )
        .await;
        let gateway = start(
            "llm-gateway",
            vec![("AGENTMESH_LLM_GATEWAY__AUDIT__URL", audit_url.clone())],
        )
        .await;
        let orchestrator = start(
            "orchestrator",
            vec![
                ("AGENTMESH_ORCHESTRATOR__AUDIT__URL", audit_url.clone()),
                (
                    "AGENTMESH_ORCHESTRATOR__LLM_GATEWAY_URL",
                    format!("http://{}", gateway.grpc),
                ),
                (
                    "AGENTMESH_ORCHESTRATOR__TOOL_RUNNER_URL",
                    format!("http://{}", tool_runner.grpc),
                ),
            ],
        )
        .await;
        let alerting = start(
            "alerting",
            vec![
                ("AGENTMESH_ALERTING__AUDIT__URL", audit_url.clone()),
                ("AGENTMESH_ALERTING__SOURCE__URL", audit_url),
            ],
        )
        .await;
        Self {
            orchestrator,
            gateway,
            tool_runner,
            audit,
            alerting,
        }
    }
}

// The client's own trace and span, as an instrumented client (or a sidecar in
// front of it) would send them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const REQUEST_ID: &str = "req-one-trace-7f3a";

/// Runs one objective with the client's trace context; the run's usage.
async fn run_traced(mesh: &TracedMesh) -> agentmesh_proto::llm::v1::Usage {
    let mut request = tonic::Request::new(orchestrator::RunRequest {
        objective: "What is 17 * 23 + sqrt(144)?".to_owned(),
        ..Default::default()
    });
    let metadata = request.metadata_mut();
    metadata.insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CLIENT_SPAN}-01").parse().unwrap(),
    );
    metadata.insert("x-request-id", REQUEST_ID.parse().unwrap());
    metadata.insert("x-agentmesh-tenant", "acme".parse().unwrap());
    let mut client = orchestrator::orchestrator_service_client::OrchestratorServiceClient::new(
        channel(mesh.orchestrator.grpc),
    );
    let mut stream = client.run(request).await.unwrap().into_inner();
    let mut usage = None;
    while let Some(message) = stream.message().await.unwrap() {
        match message.event.and_then(|event| event.event) {
            Some(orchestrator::run_event::Event::RunFinished(finished)) => {
                usage = finished.usage;
            }
            Some(orchestrator::run_event::Event::RunFailed(failed)) => {
                panic!("the run failed: {failed:?}")
            }
            _ => {}
        }
    }
    usage.expect("the run finished")
}

/// The spans arrive in batches: waits for the whole trace.
async fn whole_trace(collector: &Collector) -> Vec<Span> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let spans = collector.trace(TRACE_ID);
        let problems = problems(&spans, CLIENT_SPAN);
        if problems.is_empty() {
            return spans;
        }
        if tokio::time::Instant::now() > deadline {
            let shown: Vec<String> = spans
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {} ← {}",
                        s.service, s.name, s.span_id, s.parent_span_id
                    )
                })
                .collect();
            panic!("the trace is incomplete: {problems:#?}\nspans: {shown:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The root is the orchestrator's server span of the client's call.
fn check_root_span(spans: &[Span]) {
    let root = spans
        .iter()
        .find(|span| span.parent_span_id == CLIENT_SPAN)
        .unwrap();
    assert_eq!(root.service, "agentmesh-orchestrator");
    assert_eq!(
        root.name,
        "agentmesh.orchestrator.v1.OrchestratorService/Run"
    );
    assert_eq!(root.text("rpc.system"), Some("grpc"));
    assert_eq!(
        root.text("rpc.service"),
        Some("agentmesh.orchestrator.v1.OrchestratorService")
    );
    assert_eq!(root.text("rpc.method"), Some("Run"));
    assert_eq!(root.int("rpc.grpc.status_code"), Some(0));
    assert_eq!(root.kind, 2, "SPAN_KIND_SERVER");
}

/// Every hop: a client span in the caller, a server span in the callee.
fn check_hops(spans: &[Span]) {
    let by_id: BTreeMap<&str, &Span> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    for (service, method) in [
        ("agentmesh-llm-gateway", "GenerateStream"),
        ("agentmesh-tool-runner", "ExecuteToolStream"),
    ] {
        let server = spans
            .iter()
            .find(|span| span.service == service && span.text("rpc.method") == Some(method))
            .unwrap_or_else(|| panic!("no {method} server span in {service}"));
        let client = by_id[server.parent_span_id.as_str()];
        assert_eq!(client.service, "agentmesh-orchestrator");
        assert_eq!(client.kind, 3, "SPAN_KIND_CLIENT");
        assert_eq!(client.text("rpc.method"), Some(method));
    }
}

/// GenAI spans: the scripted provider's token counts, summed over the run's
/// model calls, are the run's usage; contents stay off spans.
fn check_model_call_spans(spans: &[Span], usage: &agentmesh_proto::llm::v1::Usage) {
    let chats: Vec<&Span> = spans
        .iter()
        .filter(|span| span.name.starts_with("chat "))
        .collect();
    assert!(chats.len() >= 2, "{chats:#?}");
    for chat in &chats {
        assert_eq!(chat.service, "agentmesh-llm-gateway");
        assert_eq!(chat.name, "chat demo");
        assert_eq!(chat.text("gen_ai.operation.name"), Some("chat"));
        assert_eq!(
            chat.text("gen_ai.provider.name"),
            Some("agentmesh.scripted")
        );
        assert_eq!(chat.text("gen_ai.request.model"), Some("demo"));
        assert!(chat.text("gen_ai.response.model").is_some());
        assert!(
            matches!(
                chat.attributes.get("gen_ai.response.finish_reasons"),
                Some(Value::ArrayValue(reasons)) if !reasons.values.is_empty()
            ),
            "{chat:?}"
        );
        assert!(
            matches!(
                chat.attributes.get("gen_ai.response.time_to_first_chunk"),
                Some(Value::DoubleValue(seconds)) if *seconds >= 0.0
            ),
            "{chat:?}"
        );
        // Contents stay off spans unless a setting opts in.
        assert!(!chat.attributes.contains_key("gen_ai.input.messages"));
    }
    let input: i64 = chats
        .iter()
        .map(|chat| chat.int("gen_ai.usage.input_tokens").unwrap())
        .sum();
    let output: i64 = chats
        .iter()
        .map(|chat| chat.int("gen_ai.usage.output_tokens").unwrap())
        .sum();
    assert_eq!(input, i64::from(usage.input_tokens));
    assert_eq!(output, i64::from(usage.output_tokens));
    assert!(input > 0 && output > 0);
}

/// The tool call, the agent and the audit writes each have their span.
fn check_tool_agent_and_audit_spans(spans: &[Span]) {
    let tool = spans
        .iter()
        .find(|span| span.name == "execute_tool calculator")
        .expect("the calculator's span");
    assert_eq!(tool.service, "agentmesh-tool-runner");
    assert_eq!(tool.text("gen_ai.tool.name"), Some("calculator"));
    assert!(!tool.attributes.contains_key("gen_ai.tool.call.arguments"));

    let agent = spans
        .iter()
        .find(|span| span.name.starts_with("invoke_agent "))
        .unwrap();
    assert_eq!(agent.text("gen_ai.operation.name"), Some("invoke_agent"));
    assert_eq!(agent.status_code, 0, "unset: the run succeeded");
    for write in spans
        .iter()
        .filter(|span| span.name.starts_with("audit.write"))
    {
        assert_eq!(write.service, "agentmesh-audit");
    }
}

/// The client's request id is in every service's log lines for the run, as
/// a JSON field.
async fn check_request_id_in_every_log(mesh: &TracedMesh) {
    let services = [
        ("orchestrator", &mesh.orchestrator),
        ("llm-gateway", &mesh.gateway),
        ("tool-runner", &mesh.tool_runner),
        ("audit", &mesh.audit),
        ("alerting", &mesh.alerting),
    ];
    let mut missing = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        missing.clear();
        for (name, service) in &services {
            let log = service.log.lock().unwrap();
            let lines: Vec<serde_json::Value> = log
                .iter()
                .filter(|line| line.contains(REQUEST_ID))
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect();
            if !lines.iter().any(|line| line["request_id"] == REQUEST_ID) {
                missing.push(*name);
            }
        }
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        missing.is_empty(),
        "no log line with request_id {REQUEST_ID} from {missing:?}"
    );
}

/// Logs and traces join: the orchestrator's lines for the run carry the trace
/// id, a span id and the tenant.
fn check_logs_join_the_trace(orchestrator: &RunningBinary) {
    let log = orchestrator.log.lock().unwrap();
    let joined = log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["request_id"] == REQUEST_ID && line["trace_id"] == TRACE_ID)
        .unwrap_or_else(|| panic!("no orchestrator log line with the trace id: {log:#?}"));
    assert_eq!(joined["tenant"], "acme");
    assert_eq!(joined["span_id"].as_str().map(str::len), Some(16));
}

// One test, one mesh: starting five binaries with exporters is the expensive
// part, so each property the trace must have is its own check over the same
// run rather than its own test.
#[tokio::test]
async fn one_run_is_one_trace_through_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, endpoint) = Collector::start().await;
    let mesh = TracedMesh::start(dir.path(), &endpoint).await;

    let usage = run_traced(&mesh).await;
    let spans = whole_trace(&collector).await;

    check_root_span(&spans);
    check_hops(&spans);
    check_model_call_spans(&spans, &usage);
    check_tool_agent_and_audit_spans(&spans);
    check_request_id_in_every_log(&mesh).await;
    check_logs_join_the_trace(&mesh.orchestrator);
}

// The embedded mesh (`agentmesh run`, and `agentmesh up` the same way) hosts
// five services in one process; each must still export under its own
// `service.name`, so a trace viewer shows five services, not one.
#[tokio::test]
async fn the_embedded_mesh_exports_each_service_under_its_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, endpoint) = Collector::start().await;
    let output = tokio::process::Command::new(agentmesh_tests::binary("agentmesh"))
        .args(["run", "What is 17 * 23 + sqrt(144)?", "--data-dir", "state"])
        .current_dir(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("AGENTMESH_CONFIG")
        .env_remove("AGENTMESH_ORCHESTRATOR")
        .stdin(std::process::Stdio::null())
        .output();
    let output = agentmesh_tests::within("agentmesh run", Duration::from_secs(60), output)
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let wanted = [
        "agentmesh-orchestrator",
        "agentmesh-llm-gateway",
        "agentmesh-tool-runner",
        "agentmesh-audit",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let services = loop {
        let services: HashSet<String> = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|span| span.service.clone())
            .collect();
        if wanted.iter().all(|name| services.contains(*name))
            || tokio::time::Instant::now() > deadline
        {
            break services;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in wanted {
        assert!(services.contains(name), "no span from {name}: {services:?}");
    }
    // Each service's server spans are its own: the gateway's GenerateStream
    // is not exported as the orchestrator's, nor under the CLI's name.
    let spans = collector.spans.lock().unwrap();
    let generate = spans
        .iter()
        .find(|span| span.text("rpc.method") == Some("GenerateStream") && span.kind == 2)
        .expect("a GenerateStream server span");
    assert_eq!(generate.service, "agentmesh-llm-gateway");
    let execute = spans
        .iter()
        .find(|span| span.text("rpc.method") == Some("ExecuteToolStream") && span.kind == 2)
        .expect("an ExecuteToolStream server span");
    assert_eq!(execute.service, "agentmesh-tool-runner");
}
