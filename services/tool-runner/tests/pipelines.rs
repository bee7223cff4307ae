//! Pipelines through the gRPC API: the service runs in-process on an
//! ephemeral loopback port with pipelines from TOML, and is called with the
//! generated tonic client, like any tool.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

#[expect(
    dead_code,
    reason = "the helpers for command tools serve the other API tests"
)]
mod common;
#[path = "common/served.rs"]
mod served;

use std::path::Path;

use agentmesh_auth::config::Method;
use agentmesh_auth::keys::ApiKey;
use agentmesh_auth::keys::file::{KeyEntry, KeysFile};
use agentmesh_kit::config::AuthConfig;
use agentmesh_proto::tools::v1::{
    ExecuteToolRequest, ExecuteToolResponse, ExecuteToolStreamRequest, ListToolsRequest,
    ToolErrorKind, ToolKind, execute_tool_stream_response::Event,
};
use agentmesh_tool_runner::{AuditConfig, Config};
use serde_json::{Value, json};
use tonic::{Code, Status};

use agentmesh_testkit::within;
use common::{STEP, kind, test_server};
use served::Served;

/// The pipelines of these tests, as an operator writes them.
const PIPELINES: &str = r#"
[pipelines.hypotenuse]
description = "Length of the hypotenuse of a right triangle with legs a and b"
parameters_json = '''{"type":"object","required":["a","b"],"additionalProperties":false,
  "properties":{"a":{"type":"number","minimum":0},"b":{"type":"number","minimum":0}}}'''
output = { length = "${/steps/root/output/result}", sum_of_squares = "${/steps/sum/output/result}" }

[[pipelines.hypotenuse.steps]]
id = "squares"
[[pipelines.hypotenuse.steps.parallel]]
id = "a2"
tool = "calculator"
arguments = { expression = "${/input/a} ^ 2" }
[[pipelines.hypotenuse.steps.parallel]]
id = "b2"
tool = "calculator"
arguments = { expression = "${/input/b} ^ 2" }

[[pipelines.hypotenuse.steps]]
id = "sum"
tool = "calculator"
arguments = { expression = "${/steps/a2/output/result} + ${/steps/b2/output/result}" }

[[pipelines.hypotenuse.steps]]
id = "root"
tool = "calculator"
arguments = { expression = "sqrt(${/steps/sum/output/result})" }

[pipelines.ratio]
description = "Divides x by y"
parameters_json = '{"type":"object","required":["x","y"],"properties":{"x":{"type":"number"},"y":{"type":"number"}}}'
[[pipelines.ratio.steps]]
id = "divide"
tool = "calculator"
arguments = { expression = "${/input/x} / ${/input/y}" }

[pipelines.note]
description = "Writes a note in the run's workspace and reads it back"
parameters_json = '{"type":"object","required":["text"],"properties":{"text":{"type":"string"}}}'
[[pipelines.note.steps]]
id = "write"
tool = "write_file"
arguments = { path = "notes/note.txt", content = "${/input/text}" }
[[pipelines.note.steps]]
id = "read"
tool = "read_file"
arguments = { path = "notes/note.txt" }
"#;

// === harness ===

/// A tool runner serving on loopback with [`PIPELINES`], its workspaces in
/// a temporary directory.
struct Running {
    served: Served,
}

impl Running {
    /// Starts the service with [`PIPELINES`] plus `more` (TOML of the
    /// `[tool_runner]` section), then `configure` given the temporary
    /// directory.
    async fn start(more: &str, configure: impl FnOnce(&Path, &mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config: Config = toml::from_str(&format!("{PIPELINES}\n{more}")).unwrap();
        config.server = test_server();
        config.workspaces_dir = dir.path().join("workspaces");
        config.audit = AuditConfig::disabled();
        configure(dir.path(), &mut config);
        Self {
            served: Served::start(dir, config).await,
        }
    }

    async fn call(
        &self,
        tool: &str,
        arguments: &str,
        run_id: &str,
    ) -> Result<ExecuteToolResponse, Status> {
        let request = ExecuteToolRequest {
            tool: tool.into(),
            arguments_json: arguments.into(),
            call_id: "call-1".into(),
            run_id: run_id.into(),
            ..ExecuteToolRequest::default()
        };
        within(
            "ExecuteTool",
            STEP,
            self.served.client.clone().execute_tool(request),
        )
        .await
        .map(tonic::Response::into_inner)
    }

    /// The service's Prometheus text.
    async fn metrics(&self) -> String {
        self.served.metrics().await
    }

    async fn stop(self) {
        self.served.stop().await;
    }
}

fn output(response: &ExecuteToolResponse) -> Value {
    assert!(
        !response.is_error,
        "unexpected tool error: {}",
        response.error_message
    );
    serde_json::from_str(&response.output_json).unwrap()
}

/// The value of the `agentmesh_tool_executions_total` series of `tool`
/// with outcome `ok` (0 when there is none).
fn executions(metrics: &str, tool: &str) -> f64 {
    let labels = [format!("tool=\"{tool}\""), "outcome=\"ok\"".to_owned()];
    metrics
        .lines()
        .filter(|line| line.starts_with("agentmesh_tool_executions_total{"))
        .filter(|line| labels.iter().all(|label| line.contains(label.as_str())))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or(0.0)
}

// === running ===

#[tokio::test]
async fn a_three_step_pipeline_with_a_fan_out_runs_through_execute_tool() {
    let service = Running::start("", |_, _| {}).await;
    let response = service
        .call("hypotenuse", r#"{"a": 3, "b": 4}"#, "")
        .await
        .unwrap();
    let result = output(&response);
    assert_eq!(result["length"].as_f64(), Some(5.0), "{result}");
    assert_eq!(result["sum_of_squares"].as_f64(), Some(25.0), "{result}");
    assert_eq!(response.call_id, "call-1");
    assert_eq!(response.attempts, 1);

    // Each step was a calculator execution of its own, counted like any
    // call, and the pipeline one more.
    let metrics = service.metrics().await;
    assert_eq!(executions(&metrics, "calculator"), 4.0, "{metrics}");
    assert_eq!(executions(&metrics, "hypotenuse"), 1.0);
    service.stop().await;
}

#[tokio::test]
async fn list_tools_shows_a_pipeline_with_its_own_schema() {
    let service = Running::start("", |_, _| {}).await;
    let listed = within(
        "ListTools",
        STEP,
        service.served.client.clone().list_tools(ListToolsRequest {
            names: vec!["hypotenuse".into()],
            ..ListToolsRequest::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let [tool] = listed.tools.as_slice() else {
        panic!("one tool: {:?}", listed.tools)
    };
    assert_eq!(tool.name, "hypotenuse");
    assert!(tool.description.starts_with("Length of the hypotenuse"));
    let schema: Value = serde_json::from_str(&tool.parameters_json).unwrap();
    assert_eq!(schema["required"], json!(["a", "b"]));
    assert_eq!(tool.kind(), ToolKind::Unspecified);
    assert_eq!(tool.labels["agentmesh.kind"], "pipeline");
    assert!(!tool.idempotent);
    assert_eq!(tool.timeout.unwrap().seconds, 30);
    service.stop().await;
}

#[tokio::test]
async fn a_streamed_pipeline_reports_each_step() {
    let service = Running::start("", |_, _| {}).await;
    let mut stream = within(
        "ExecuteToolStream",
        STEP,
        service
            .served
            .client
            .clone()
            .execute_tool_stream(ExecuteToolStreamRequest {
                tool: "hypotenuse".into(),
                arguments_json: r#"{"a": 6, "b": 8}"#.into(),
                ..ExecuteToolStreamRequest::default()
            }),
    )
    .await
    .unwrap()
    .into_inner();
    let mut progress = Vec::new();
    let result = loop {
        let message = within("the next message", STEP, stream.message()).await;
        match message.unwrap().unwrap().event.unwrap() {
            Event::Progress(step) => progress.push(step.message),
            Event::Result(result) => break result,
            Event::Output(_) => {}
        }
    };
    assert_eq!(
        progress,
        [
            "step `squares` done (1 of 3)",
            "step `sum` done (2 of 3)",
            "step `root` done (3 of 3)"
        ]
    );
    assert!(!result.is_error, "{}", result.error_message);
    let result: Value = serde_json::from_str(&result.output_json).unwrap();
    assert_eq!(result["length"].as_f64(), Some(10.0));
    service.stop().await;
}

#[tokio::test]
async fn steps_work_in_the_run_s_workspace() {
    let service = Running::start("", |_, _| {}).await;
    let response = service
        .call("note", r#"{"text": "remember the milk"}"#, "run-42")
        .await
        .unwrap();
    assert_eq!(output(&response)["content"], "remember the milk");
    let written = service
        .served
        .dir
        .path()
        .join("workspaces/_none/run-42/notes/note.txt");
    assert_eq!(
        std::fs::read_to_string(written).unwrap(),
        "remember the milk"
    );
    service.stop().await;
}

// === failures ===

#[tokio::test]
async fn bad_input_is_refused_with_a_useful_message() {
    let service = Running::start("", |_, _| {}).await;
    // Arguments that break the pipeline's schema: a tool error, like any
    // tool's, listing each violation; no step runs.
    let response = service
        .call("hypotenuse", r#"{"a": "three", "c": 1}"#, "")
        .await
        .unwrap();
    assert!(response.is_error);
    assert_eq!(kind(&response), ToolErrorKind::InvalidArguments);
    let message = &response.error_message;
    assert!(
        message.starts_with("arguments do not match the parameter schema of `hypotenuse`"),
        "{message}"
    );
    assert!(
        message.contains(r#"/a: "three" is not of type "number""#),
        "{message}"
    );
    assert!(
        message.contains(r#""b" is a required property"#),
        "{message}"
    );
    assert_eq!(executions(&service.metrics().await, "calculator"), 0.0);

    // Arguments that are not JSON: the request itself is refused.
    let status = service
        .call("hypotenuse", r#"{"a": "#, "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("arguments_json: is not valid JSON"),
        "{}",
        status.message()
    );
    service.stop().await;
}

#[tokio::test]
async fn a_failing_step_fails_the_pipeline_naming_the_step() {
    let service = Running::start("", |_, _| {}).await;
    let response = service
        .call("ratio", r#"{"x": 1, "y": 0}"#, "")
        .await
        .unwrap();
    assert!(response.is_error);
    assert_eq!(kind(&response), ToolErrorKind::ExecutionFailed);
    assert!(
        response
            .error_message
            .starts_with("step `divide` (tool `calculator`) of pipeline `ratio` failed: "),
        "{}",
        response.error_message
    );
    assert!(
        response.error_message.contains("division by zero"),
        "{}",
        response.error_message
    );
    service.stop().await;
}

#[tokio::test]
async fn steps_wait_in_their_tools_bulkheads_and_share_the_pipeline_deadline() {
    let tools = r#"
        [commands.slow]
        description = "Takes its time"
        command = ["sh", "-c", "sleep 1; echo '{}'"]
        max_concurrency = 1
        [commands.stuck]
        description = "Never answers in time"
        command = ["sh", "-c", "sleep 30; echo '{}'"]

        [pipelines.twice]
        description = "Runs slow twice at once"
        [[pipelines.twice.steps]]
        id = "both"
        [[pipelines.twice.steps.parallel]]
        id = "first"
        tool = "slow"
        [[pipelines.twice.steps.parallel]]
        id = "second"
        tool = "slow"

        [pipelines.hurried]
        description = "Gives stuck two seconds"
        timeout = "2s"
        [[pipelines.hurried.steps]]
        id = "wait"
        tool = "stuck"
    "#;
    let service = Running::start(tools, |_, config| config.max_queued_per_tool = 0).await;
    // `slow` runs one call at a time and queues none: one branch holds its
    // place, the other is refused by its bulkhead.
    let response = service.call("twice", "{}", "").await.unwrap();
    assert!(response.is_error);
    let message = &response.error_message;
    assert!(
        message.contains("(tool `slow`) of pipeline `twice` failed: refused (RESOURCE_EXHAUSTED)"),
        "{message}"
    );
    assert!(message.contains("concurrency limit"), "{message}");

    // The pipeline's timeout bounds its step, which is stopped and named.
    let response = service.call("hurried", "{}", "").await.unwrap();
    assert!(response.is_error);
    assert_eq!(kind(&response), ToolErrorKind::Timeout);
    assert!(
        response
            .error_message
            .starts_with("step `wait` (tool `stuck`)"),
        "{}",
        response.error_message
    );
    service.stop().await;
}

// === who may call ===

/// An API key for tenant `acme` that may use only `tools`.
fn key_for(tools: &[&str]) -> (ApiKey, KeyEntry) {
    let key = ApiKey::generate("test").unwrap();
    let entry = KeyEntry {
        id: key.id().to_owned(),
        sha256: key.hash().to_hex(),
        tenant: "acme".into(),
        subject: format!("only-{}", tools.join("-")),
        scopes: vec!["tools:read".into(), "tools:execute".into()],
        label: String::new(),
        expires: None,
        agents: None,
        routes: None,
        tools: Some(tools.iter().map(|tool| (*tool).to_owned()).collect()),
        revoked: false,
    };
    (key, entry)
}

fn as_key<T>(key: &ApiKey, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", key.expose()).parse().unwrap(),
    );
    request
}

#[tokio::test]
async fn a_caller_needs_the_pipeline_and_every_tool_its_steps_call() {
    let (pipeline_only, pipeline_only_entry) = key_for(&["hypotenuse"]);
    let (both, both_entry) = key_for(&["hypotenuse", "calculator"]);
    let service = Running::start("", |dir, config| {
        let keys = KeysFile {
            keys: vec![pipeline_only_entry, both_entry],
            ..KeysFile::default()
        };
        let file = dir.join("keys.toml");
        std::fs::write(&file, toml::to_string(&keys).unwrap()).unwrap();
        config.auth = AuthConfig {
            methods: vec![Method::ApiKey],
            keys_file: Some(file),
            ..AuthConfig::default()
        };
    })
    .await;
    let request = || ExecuteToolRequest {
        tool: "hypotenuse".into(),
        arguments_json: r#"{"a": 3, "b": 4}"#.into(),
        ..ExecuteToolRequest::default()
    };
    let mut client = service.served.client.clone();

    let status = within(
        "ExecuteTool",
        STEP,
        client.execute_tool(as_key(&pipeline_only, request())),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("pipeline `hypotenuse` has a step calling a tool this caller may not use: tool \"calculator\""),
        "{}",
        status.message()
    );
    let listed = within(
        "ListTools",
        STEP,
        client.list_tools(as_key(&pipeline_only, ListToolsRequest::default())),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(listed.tools.is_empty(), "{:?}", listed.tools);

    let response = within(
        "ExecuteTool",
        STEP,
        client.execute_tool(as_key(&both, request())),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(output(&response)["length"].as_f64(), Some(5.0));
    let listed = within(
        "ListTools",
        STEP,
        client.list_tools(as_key(&both, ListToolsRequest::default())),
    )
    .await
    .unwrap()
    .into_inner();
    let names: Vec<&str> = listed.tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(names, ["calculator", "hypotenuse"]);
    service.stop().await;
}

// === configuration ===

#[tokio::test]
async fn a_bad_pipeline_stops_the_start_naming_the_setting() {
    let mut config: Config = toml::from_str(
        r#"
        [pipelines.sum_and_sqrt]
        description = "d"
        [[pipelines.sum_and_sqrt.steps]]
        id = "sum"
        tool = "calculator"
        [[pipelines.sum_and_sqrt.steps]]
        id = "root"
        tool = "square_root"
        "#,
    )
    .unwrap();
    config.server = test_server();
    config.audit = AuditConfig::disabled();
    let listeners = agentmesh_kit::Listeners::bind(&config.server)
        .await
        .unwrap();
    let err = within(
        "the start-up refusing a broken pipeline",
        STEP,
        agentmesh_tool_runner::serve_with_listeners(config, listeners, std::future::pending()),
    )
    .await
    .unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("tool_runner.pipelines.sum_and_sqrt.steps[1].tool"),
        "{err}"
    );
    assert!(err.contains("no tool named `square_root`"), "{err}");
}
