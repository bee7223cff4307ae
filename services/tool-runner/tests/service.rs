//! The tool runner through its gRPC API: the service runs in-process on an
//! ephemeral loopback port and is called with the generated tonic client.
//! Command tools are small shell and Python scripts written into a temporary
//! directory by each test.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;
#[expect(dead_code, reason = "these tests read no metrics")]
#[path = "common/served.rs"]
mod served;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmesh_kit::Listeners;
use agentmesh_proto::tools::v1::{
    ExecuteToolRequest, ExecuteToolResponse, ExecuteToolStreamRequest, ListToolsRequest,
    OutputStream, ToolErrorKind, ToolKind, execute_tool_stream_response::Event,
};
use agentmesh_tool_runner::{AuditConfig, CommandToolConfig, Config};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use agentmesh_testkit::within;
use common::{STEP, command, kind, pid_in, process_ends, script, test_server};
use served::Served;

// === harness ===

/// A tool runner serving on loopback, with its workspaces and scripts in a
/// temporary directory.
struct Running {
    served: Served,
}

impl Running {
    /// Starts the service with `commands`, built by `configure` from the
    /// temporary directory (where scripts go).
    async fn start(configure: impl FnOnce(&Path) -> BTreeMap<String, CommandToolConfig>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            server: test_server(),
            workspaces_dir: dir.path().join("workspaces"),
            commands: configure(dir.path()),
            audit: AuditConfig::disabled(),
            ..Config::default()
        };
        Self {
            served: Served::start(dir, config).await,
        }
    }

    /// Starts the service with the built-in tools only.
    async fn builtins() -> Self {
        Self::start(|_| BTreeMap::new()).await
    }

    fn workspace(&self, run_id: &str) -> PathBuf {
        // Calls without a tenant: its workspaces are under `_none`.
        self.served.dir.path().join("workspaces/_none").join(run_id)
    }

    async fn call(&mut self, tool: &str, arguments: Value) -> ExecuteToolResponse {
        self.call_in_run(tool, arguments, "").await
    }

    async fn call_in_run(
        &mut self,
        tool: &str,
        arguments: Value,
        run_id: &str,
    ) -> ExecuteToolResponse {
        within(
            "ExecuteTool",
            STEP,
            self.served.client.execute_tool(ExecuteToolRequest {
                tool: tool.into(),
                arguments_json: arguments.to_string(),
                call_id: "call-1".into(),
                run_id: run_id.into(),
                ..ExecuteToolRequest::default()
            }),
        )
        .await
        .unwrap()
        .into_inner()
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

/// The fields named by a status's BadRequest details.
fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .iter()
                .map(|violation| violation.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

// === ListTools ===

#[tokio::test]
async fn list_tools_orders_filters_and_pages() {
    let mut service = Running::start(|_| {
        BTreeMap::from([(
            "word_count".to_owned(),
            CommandToolConfig {
                streaming: true,
                labels: BTreeMap::from([("category".to_owned(), "text".to_owned())]),
                ..command(&["true"])
            },
        )])
    })
    .await;

    let all = within(
        "ListTools",
        STEP,
        service
            .served
            .client
            .list_tools(ListToolsRequest::default()),
    )
    .await
    .unwrap()
    .into_inner();
    let names: Vec<&str> = all.tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "calculator",
            "current_time",
            "list_files",
            "read_file",
            "word_count",
            "write_file"
        ]
    );
    assert!(all.next_page_token.is_empty());
    let calculator = &all.tools[0];
    assert_eq!(calculator.kind(), ToolKind::Builtin);
    let schema: Value = serde_json::from_str(&calculator.parameters_json).unwrap();
    assert_eq!(schema["required"], json!(["expression"]));
    let word_count = &all.tools[4];
    assert_eq!(word_count.kind(), ToolKind::Command);
    assert!(word_count.streaming);
    assert_eq!(word_count.labels["category"], "text");
    assert_eq!(word_count.timeout.unwrap().seconds, 30);

    // Two at a time, then the rest.
    let first = within(
        "ListTools",
        STEP,
        service.served.client.list_tools(ListToolsRequest {
            page_size: 2,
            ..ListToolsRequest::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(first.tools.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let rest = within(
        "ListTools",
        STEP,
        service.served.client.list_tools(ListToolsRequest {
            page_size: 10,
            page_token: first.next_page_token.clone(),
            ..ListToolsRequest::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(rest.tools.len(), 4);
    assert_eq!(rest.tools[0].name, "list_files");

    let commands = within(
        "ListTools",
        STEP,
        service.served.client.list_tools(ListToolsRequest {
            kinds: vec![ToolKind::Command.into()],
            ..ListToolsRequest::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(commands.tools.len(), 1);

    let status = within(
        "ListTools",
        STEP,
        service.served.client.list_tools(ListToolsRequest {
            page_size: -1,
            ..ListToolsRequest::default()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["page_size"]);

    let status = within(
        "ListTools",
        STEP,
        service.served.client.list_tools(ListToolsRequest {
            page_token: "not-a-token".into(),
            ..ListToolsRequest::default()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);
    service.stop().await;
}

#[tokio::test]
async fn a_next_page_token_survives_a_restart() {
    let commands = |_: &Path| {
        BTreeMap::from([
            ("alpha".to_owned(), command(&["true"])),
            ("beta".to_owned(), command(&["true"])),
        ])
    };
    let page = |page_token: String| ListToolsRequest {
        page_size: 3,
        page_token,
        kinds: vec![ToolKind::Command.into(), ToolKind::Builtin.into()],
        ..ListToolsRequest::default()
    };
    let mut before = Running::start(commands).await;
    let first = within(
        "ListTools",
        STEP,
        before.served.client.list_tools(page(String::new())),
    )
    .await
    .unwrap()
    .into_inner();
    let names: Vec<&str> = first.tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "calculator"]);
    let token = first.next_page_token;
    assert!(!token.is_empty());
    before.stop().await;

    // Another process of the same service (here: started again) takes it.
    let mut after = Running::start(commands).await;
    let rest = within(
        "ListTools",
        STEP,
        after.served.client.list_tools(page(token)),
    )
    .await
    .unwrap()
    .into_inner();
    let rest: Vec<&str> = rest.tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(rest, ["current_time", "list_files", "read_file"]);
    after.stop().await;
}

// === ExecuteTool: statuses ===

#[tokio::test]
async fn calls_that_cannot_be_attempted_are_statuses() {
    let service = Running::builtins().await;
    let execute = |request: ExecuteToolRequest| {
        let mut client = service.served.client.clone();
        async move {
            within("ExecuteTool", STEP, client.execute_tool(request))
                .await
                .unwrap_err()
        }
    };

    let status = execute(ExecuteToolRequest {
        arguments_json: "{}".into(),
        ..ExecuteToolRequest::default()
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["tool"]);

    let status = execute(ExecuteToolRequest {
        tool: "calculator".into(),
        arguments_json: "{\"expression\": ".into(),
        ..ExecuteToolRequest::default()
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["arguments_json"]);
    assert!(
        status.message().contains("line 1 column 15"),
        "{}",
        status.message()
    );

    let status = execute(ExecuteToolRequest {
        tool: "no_such_tool".into(),
        ..ExecuteToolRequest::default()
    })
    .await;
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("no_such_tool"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("calculator"),
        "{}",
        status.message()
    );

    let status = execute(ExecuteToolRequest {
        tool: "calculator".into(),
        arguments_json: r#"{"expression":"1"}"#.into(),
        timeout: Some(prost_types::Duration {
            seconds: -5,
            nanos: 0,
        }),
        ..ExecuteToolRequest::default()
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["timeout"]);

    let status = execute(ExecuteToolRequest {
        tool: "read_file".into(),
        arguments_json: r#"{"path":"a"}"#.into(),
        run_id: "../../etc".into(),
        ..ExecuteToolRequest::default()
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["run_id"]);

    service.stop().await;
}

// === built-in tools ===

#[tokio::test]
async fn the_calculator_answers_exactly_and_explains_errors() {
    let mut service = Running::builtins().await;
    let response = service
        .call("calculator", json!({"expression": "17*23+12"}))
        .await;
    assert_eq!(response.output_json, r#"{"result":403}"#);
    assert_eq!(response.call_id, "call-1");
    assert_eq!(response.attempts, 1);
    assert!(response.duration.is_some());

    let response = service
        .call("calculator", json!({"expression": "sqrt(2)"}))
        .await;
    assert!((output(&response)["result"].as_f64().unwrap() - 2_f64.sqrt()).abs() < 1e-12);

    let response = service
        .call("calculator", json!({"expression": "1/0"}))
        .await;
    assert!(response.is_error);
    assert_eq!(kind(&response), ToolErrorKind::ExecutionFailed);
    assert_eq!(response.error_message, "division by zero at position 2");
    assert_eq!(response.call_id, "call-1");
    assert!(response.duration.is_some());

    // Valid JSON that breaks the schema: a normal response the model can act on.
    let response = service.call("calculator", json!({"expression": 12})).await;
    assert!(response.is_error);
    assert_eq!(kind(&response), ToolErrorKind::InvalidArguments);
    assert!(
        response
            .error_message
            .contains(r#"/expression: 12 is not of type "string""#),
        "{}",
        response.error_message
    );
    let response = service.call("calculator", json!({})).await;
    assert_eq!(kind(&response), ToolErrorKind::InvalidArguments);
    assert!(
        response
            .error_message
            .contains("\"expression\" is a required property"),
        "{}",
        response.error_message
    );

    // Empty arguments mean `{}`.
    let mut client = service.served.client.clone();
    let response = within(
        "ExecuteTool",
        STEP,
        client.execute_tool(ExecuteToolRequest {
            tool: "current_time".into(),
            ..ExecuteToolRequest::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(output(&response)["timezone"], "UTC");
    service.stop().await;
}

#[tokio::test]
async fn current_time_in_a_named_zone() {
    let mut service = Running::builtins().await;
    let response = service
        .call("current_time", json!({"timezone": "Europe/Paris"}))
        .await;
    let now = output(&response);
    assert_eq!(now["timezone"], "Europe/Paris");
    let local = now["local"].as_str().unwrap();
    assert!(
        local.ends_with("+01:00") || local.ends_with("+02:00"),
        "{local}"
    );
    assert!(now["utc"].as_str().unwrap().ends_with('Z'));
    assert!(now["unix_seconds"].as_i64().unwrap() > 1_700_000_000);

    let response = service
        .call("current_time", json!({"timezone": "Mars/Olympus_Mons"}))
        .await;
    assert_eq!(kind(&response), ToolErrorKind::ExecutionFailed);
    assert!(response.error_message.contains("Mars/Olympus_Mons"));
    service.stop().await;
}

#[tokio::test]
async fn file_tools_stay_inside_the_run_workspace() {
    let mut service = Running::builtins().await;
    let written = service
        .call_in_run(
            "write_file",
            json!({"path": "notes/todo.txt", "content": "buy milk"}),
            "run-1",
        )
        .await;
    assert_eq!(
        output(&written),
        json!({"path": "notes/todo.txt", "bytes_written": 8})
    );
    assert_eq!(
        std::fs::read_to_string(service.workspace("run-1").join("notes/todo.txt")).unwrap(),
        "buy milk"
    );

    let read = service
        .call_in_run("read_file", json!({"path": "notes/todo.txt"}), "run-1")
        .await;
    assert_eq!(
        output(&read),
        json!({"path": "notes/todo.txt", "content": "buy milk", "bytes": 8, "truncated": false})
    );
    let listed = service
        .call_in_run("list_files", json!({"recursive": true}), "run-1")
        .await;
    let names: Vec<String> = output(&listed)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["notes", "notes/todo.txt"]);

    // Another run does not see it; the shared workspace neither.
    let other = service
        .call_in_run("read_file", json!({"path": "notes/todo.txt"}), "run-2")
        .await;
    assert_eq!(kind(&other), ToolErrorKind::ExecutionFailed);
    let shared = service
        .call("read_file", json!({"path": "notes/todo.txt"}))
        .await;
    assert_eq!(kind(&shared), ToolErrorKind::ExecutionFailed);

    for path in ["../run-1/notes/todo.txt", "/etc/passwd"] {
        let response = service
            .call_in_run("read_file", json!({ "path": path }), "run-2")
            .await;
        assert_eq!(kind(&response), ToolErrorKind::Denied, "{path}");
    }

    // A link planted in the workspace that leads outside is refused, for
    // reading and for writing through it.
    let outside = service.served.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, service.workspace("run-1").join("escape")).unwrap();
    let response = service
        .call_in_run("read_file", json!({"path": "escape/secret"}), "run-1")
        .await;
    assert_eq!(kind(&response), ToolErrorKind::Denied);
    let response = service
        .call_in_run(
            "write_file",
            json!({"path": "escape/planted.txt", "content": "x"}),
            "run-1",
        )
        .await;
    assert_eq!(kind(&response), ToolErrorKind::Denied);
    assert!(!outside.join("planted.txt").exists());
    service.stop().await;
}

// === command tools ===

#[tokio::test]
async fn a_command_tool_gets_json_on_stdin_and_answers_on_stdout() {
    let mut service = Running::start(|dir| {
        let word_count = script(
            dir,
            "wc.py",
            "import json, sys\n\
             args = json.load(sys.stdin)\n\
             print(json.dumps({\"words\": len(args[\"text\"].split())}))\n",
        );
        BTreeMap::from([(
            "word_count".to_owned(),
            CommandToolConfig {
                parameters_json: r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#.into(),
                ..command(&["python3", &word_count])
            },
        )])
    })
    .await;
    let response = service
        .call("word_count", json!({"text": "the quick brown fox"}))
        .await;
    assert_eq!(output(&response), json!({"words": 4}));
    assert_eq!(response.call_id, "call-1");

    let response = service.call("word_count", json!({"text": 4})).await;
    assert_eq!(kind(&response), ToolErrorKind::InvalidArguments);
    assert!(
        response
            .error_message
            .contains("/text: 4 is not of type \"string\"")
    );
    service.stop().await;
}

#[tokio::test]
async fn command_failures_are_classified_with_their_evidence() {
    let mut service = Running::start(|dir| {
        let fails = script(
            dir,
            "fails.sh",
            "cat > /dev/null\necho 'reading input' >&2\necho 'boom: the text is empty' >&2\necho '{\"error\":\"empty\"}'\nexit 3\n",
        );
        let not_json = script(dir, "not_json.sh", "cat > /dev/null\necho 'hello, not json'\n");
        let silent = script(dir, "silent.sh", "exit 0\n");
        BTreeMap::from([
            ("fails".to_owned(), command(&["sh", &fails])),
            ("not_json".to_owned(), command(&["sh", &not_json])),
            ("silent".to_owned(), command(&["sh", &silent])),
            ("missing".to_owned(), command(&["/nonexistent/program"])),
        ])
    })
    .await;

    let response = service.call("fails", json!({})).await;
    assert_eq!(kind(&response), ToolErrorKind::ExecutionFailed);
    assert_eq!(
        response.error_message,
        "`fails` exited with code 3: reading input\nboom: the text is empty"
    );
    assert_eq!(response.output_json, r#"{"error":"empty"}"#);

    let response = service.call("not_json", json!({})).await;
    assert_eq!(kind(&response), ToolErrorKind::InvalidOutput);
    assert!(
        response.error_message.contains("\"hello, not json\""),
        "{}",
        response.error_message
    );

    let response = service.call("silent", json!({})).await;
    assert_eq!(kind(&response), ToolErrorKind::InvalidOutput);
    assert!(response.error_message.contains("printed nothing"));

    let response = service.call("missing", json!({})).await;
    assert_eq!(kind(&response), ToolErrorKind::ExecutionFailed);
    assert!(
        response.error_message.contains("could not start"),
        "{}",
        response.error_message
    );
    service.stop().await;
}

#[tokio::test]
async fn a_command_past_its_timeout_is_stopped_with_what_it_started() {
    let service = Running::start(|dir| {
        // Starts a background process (same process group) and records its
        // pid, then outlives any reasonable timeout.
        let sleeper = script(
            dir,
            "sleeper.sh",
            "sleep 60 &\necho $! > background.pid\necho $$ > main.pid\nsleep 60\n",
        );
        BTreeMap::from([("sleeper".to_owned(), command(&["sh", &sleeper]))])
    })
    .await;
    let mut client = service.served.client.clone();
    let response = within(
        "ExecuteTool",
        STEP,
        client.execute_tool(ExecuteToolRequest {
            tool: "sleeper".into(),
            arguments_json: "{}".into(),
            timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 300_000_000,
            }),
            run_id: "slow".into(),
            ..ExecuteToolRequest::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(response.is_error);
    assert_eq!(kind(&response), ToolErrorKind::Timeout);
    assert_eq!(response.error_message, "timed out after 300ms");

    let workspace = service.workspace("slow");
    process_ends(pid_in(workspace.join("main.pid")).await).await;
    process_ends(pid_in(workspace.join("background.pid")).await).await;
    service.stop().await;
}

#[tokio::test]
async fn a_command_runs_in_a_scrubbed_environment_in_its_workspace() {
    let mut service = Running::start(|dir| {
        let dump = script(
            dir,
            "env.py",
            "import json, os, sys\njson.load(sys.stdin)\nprint(json.dumps({\"env\": dict(os.environ), \"cwd\": os.getcwd()}))\n",
        );
        // The interpreter itself, not a version-manager shim on PATH that
        // would add variables of its own before starting it.
        let python = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        let python = String::from_utf8(python.stdout).unwrap().trim().to_owned();
        BTreeMap::from([(
            "env_dump".to_owned(),
            CommandToolConfig {
                env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
                ..command(&[&python, &dump])
            },
        )])
    })
    .await;
    let response = service.call_in_run("env_dump", json!({}), "run-env").await;
    let dumped = output(&response);
    let env: BTreeMap<String, String> = serde_json::from_value(dumped["env"].clone()).unwrap();

    // Python may add LC_CTYPE when it coerces a C locale; nothing else may appear.
    let allowed: BTreeSet<&str> = ["PATH", "HOME", "TMPDIR", "LANG", "GREETING", "LC_CTYPE"].into();
    let leaked: Vec<&String> = env
        .keys()
        .filter(|key| !allowed.contains(key.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "variables leaked into the tool: {leaked:?}"
    );
    // The test process does have other variables (cargo sets several), so
    // the check above could fail.
    assert!(std::env::vars().any(|(key, _)| !allowed.contains(key.as_str())));

    let workspace = std::fs::canonicalize(service.workspace("run-env")).unwrap();
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["LANG"], "C.UTF-8");
    assert_eq!(Path::new(&env["TMPDIR"]).canonicalize().unwrap(), workspace);
    assert_eq!(Path::new(&env["HOME"]).canonicalize().unwrap(), workspace);
    assert_eq!(
        Path::new(dumped["cwd"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        workspace
    );
    service.stop().await;
}

// === ExecuteToolStream ===

#[tokio::test]
async fn the_stream_relays_progress_and_output_then_the_result() {
    let mut service = Running::start(|dir| {
        let steps = script(
            dir,
            "steps.sh",
            "cat > /dev/null\n\
             echo 'progress: {\"percent\": 50, \"message\": \"halfway\"}' >&2\n\
             echo 'working on it' >&2\n\
             echo 'progress: {\"message\": \"almost\"}' >&2\n\
             echo '{\"done\": true}'\n",
        );
        BTreeMap::from([(
            "steps".to_owned(),
            CommandToolConfig {
                streaming: true,
                ..command(&["sh", &steps])
            },
        )])
    })
    .await;
    let mut stream = within(
        "ExecuteToolStream",
        STEP,
        service
            .served
            .client
            .execute_tool_stream(ExecuteToolStreamRequest {
                tool: "steps".into(),
                arguments_json: "{}".into(),
                call_id: "streamed".into(),
                ..ExecuteToolStreamRequest::default()
            }),
    )
    .await
    .unwrap()
    .into_inner();
    let mut events = Vec::new();
    while let Some(message) = within("the next stream message", STEP, stream.message())
        .await
        .unwrap()
    {
        events.push(message.event.unwrap());
    }
    assert_eq!(events.len(), 4, "{events:?}");
    let Event::Progress(halfway) = &events[0] else {
        panic!("expected progress first: {events:?}");
    };
    assert_eq!(halfway.percent, Some(50.0));
    assert_eq!(halfway.message, "halfway");
    let Event::Output(chunk) = &events[1] else {
        panic!("expected an output chunk: {events:?}");
    };
    assert_eq!(chunk.text, "working on it\n");
    assert_eq!(chunk.stream(), OutputStream::Stderr);
    let Event::Progress(almost) = &events[2] else {
        panic!("expected progress: {events:?}");
    };
    assert_eq!(almost.percent, None);
    let Event::Result(result) = &events[3] else {
        panic!("expected the result last: {events:?}");
    };
    assert!(!result.is_error, "{}", result.error_message);
    assert_eq!(result.output_json, r#"{"done":true}"#);
    assert_eq!(result.call_id, "streamed");
    service.stop().await;
}

#[tokio::test]
async fn the_stream_of_a_builtin_is_its_result_and_errors_come_first() {
    let mut service = Running::builtins().await;
    let mut stream = within(
        "ExecuteToolStream",
        STEP,
        service
            .served
            .client
            .execute_tool_stream(ExecuteToolStreamRequest {
                tool: "calculator".into(),
                arguments_json: r#"{"expression": "2^10"}"#.into(),
                ..ExecuteToolStreamRequest::default()
            }),
    )
    .await
    .unwrap()
    .into_inner();
    let first = within("the next stream message", STEP, stream.message())
        .await
        .unwrap()
        .unwrap();
    let Some(Event::Result(result)) = first.event else {
        panic!("expected the result: {first:?}");
    };
    assert_eq!(result.output_json, r#"{"result":1024}"#);
    assert!(
        within("the next stream message", STEP, stream.message())
            .await
            .unwrap()
            .is_none()
    );

    let status = within(
        "ExecuteToolStream",
        STEP,
        service
            .served
            .client
            .execute_tool_stream(ExecuteToolStreamRequest {
                tool: "nope".into(),
                ..ExecuteToolStreamRequest::default()
            }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = within(
        "ExecuteToolStream",
        STEP,
        service
            .served
            .client
            .execute_tool_stream(ExecuteToolStreamRequest {
                tool: "calculator".into(),
                arguments_json: "not json".into(),
                ..ExecuteToolStreamRequest::default()
            }),
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&status), ["arguments_json"]);
    service.stop().await;
}

#[tokio::test]
async fn cancelling_the_stream_kills_the_command() {
    let mut service = Running::start(|dir| {
        let waits = script(
            dir,
            "waits.sh",
            "echo $$ > main.pid\necho started >&2\nsleep 60\n",
        );
        BTreeMap::from([("waits".to_owned(), command(&["sh", &waits]))])
    })
    .await;
    let mut stream = within(
        "ExecuteToolStream",
        STEP,
        service
            .served
            .client
            .execute_tool_stream(ExecuteToolStreamRequest {
                tool: "waits".into(),
                arguments_json: "{}".into(),
                run_id: "cancelled".into(),
                ..ExecuteToolStreamRequest::default()
            }),
    )
    .await
    .unwrap()
    .into_inner();
    let first = within("the next stream message", STEP, stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first.event, Some(Event::Output(_))), "{first:?}");
    let pid = pid_in(service.workspace("cancelled").join("main.pid")).await;
    drop(stream);
    process_ends(pid).await;
    service.stop().await;
}

#[tokio::test]
async fn abandoning_a_call_or_its_deadline_passing_kills_the_command() {
    let service = Running::start(|dir| {
        let waits = script(dir, "waits.sh", "echo $$ > main.pid\nsleep 60\n");
        BTreeMap::from([("waits".to_owned(), command(&["sh", &waits]))])
    })
    .await;

    // The client gives up on a unary call (the HTTP/2 stream is reset).
    let mut client = service.served.client.clone();
    let call = client.execute_tool(ExecuteToolRequest {
        tool: "waits".into(),
        arguments_json: "{}".into(),
        run_id: "abandoned".into(),
        ..ExecuteToolRequest::default()
    });
    let pid = tokio::select! {
        response = call => panic!("the call ended by itself: {response:?}"),
        pid = pid_in(service.workspace("abandoned").join("main.pid")) => pid,
    };
    process_ends(pid).await;

    // The caller's gRPC deadline bounds the tool even without a request timeout.
    let mut client = service.served.client.clone();
    let mut request = tonic::Request::new(ExecuteToolRequest {
        tool: "waits".into(),
        arguments_json: "{}".into(),
        run_id: "deadline".into(),
        ..ExecuteToolRequest::default()
    });
    request.set_timeout(Duration::from_millis(300));
    match within("ExecuteTool", STEP, client.execute_tool(request)).await {
        // Whichever side notices first: the client's deadline (tonic reports
        // its own timer as CANCELLED) or the tool's timeout.
        Err(status) => assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        ),
        Ok(response) => assert_eq!(kind(&response.into_inner()), ToolErrorKind::Timeout),
    }
    process_ends(pid_in(service.workspace("deadline").join("main.pid")).await).await;
    service.stop().await;
}

// === configuration ===

#[tokio::test]
async fn a_bad_command_tool_stops_the_start_naming_the_setting() {
    let config = Config {
        server: test_server(),
        commands: BTreeMap::from([(
            "broken".to_owned(),
            CommandToolConfig {
                parameters_json: r#"{"type": 5}"#.into(),
                ..command(&["true"])
            },
        )]),
        audit: AuditConfig::disabled(),
        ..Config::default()
    };
    let listeners = Listeners::bind(&config.server).await.unwrap();
    let err = within(
        "the start-up refusing a broken schema",
        STEP,
        agentmesh_tool_runner::serve_with_listeners(config, listeners, std::future::pending()),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("tool_runner.commands.broken.parameters_json"),
        "{err}"
    );
}
