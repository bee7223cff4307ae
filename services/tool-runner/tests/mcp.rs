//! MCP servers as tool sources, against a real server: the reference
//! `@modelcontextprotocol/server-everything` (pinned in
//! tests/mcp-servers/package-lock.json, installed by tools/install-test-deps),
//! over stdio and over streamable HTTP. Its tools, as its own `tools/list`
//! names them, include `echo`, `get-sum` and
//! `trigger-long-running-operation` (which reports progress).

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

#[expect(
    dead_code,
    reason = "the helpers for command tools serve the other API tests"
)]
mod common;
#[expect(dead_code, reason = "these tests keep no files in the workspace")]
#[path = "common/served.rs"]
mod served;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use agentmesh_proto::tools::v1::{
    ExecuteToolRequest, ExecuteToolResponse, ExecuteToolStreamRequest, ListToolsRequest,
    ToolErrorKind, ToolKind, execute_tool_stream_response::Event,
};
use agentmesh_testkit::within;
use agentmesh_tool_runner::{AuditConfig, Config, HeaderSource, McpServerConfig};
use serde_json::{Value, json};
use tonic::{Code, Status};

use common::{STEP, test_server};
use served::Served;

// === harness ===

/// A server started over stdio through `sh`, which writes its pid (the
/// node process it then becomes) to `pid_file` first.
fn stdio_server(pid_file: &Path) -> McpServerConfig {
    McpServerConfig {
        command: "sh".into(),
        args: vec![
            "-c".into(),
            format!(
                "echo $$ > '{}'; exec node '{}' stdio",
                pid_file.display(),
                agentmesh_testkit::mcp_everything_server().display()
            ),
        ],
        initial_backoff: Duration::from_secs(1),
        timeout: Some(Duration::from_secs(20)),
        ..McpServerConfig::default()
    }
}

async fn serve(servers: BTreeMap<String, McpServerConfig>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        server: test_server(),
        audit: AuditConfig::disabled(),
        workspaces_dir: dir.path().join("workspaces"),
        mcp_servers: servers,
        ..Config::default()
    };
    Served::start(dir, config).await
}

/// The MCP tools listed, by name, once `expected` is among them.
async fn mcp_tools(
    served: &Served,
    expected: &str,
) -> BTreeMap<String, agentmesh_proto::tools::v1::Tool> {
    within("the MCP server's tools to be listed", STEP, async {
        loop {
            let tools: Vec<agentmesh_proto::tools::v1::Tool> = served
                .client
                .clone()
                .list_tools(ListToolsRequest {
                    kinds: vec![ToolKind::Mcp.into()],
                    page_size: 1000,
                    ..ListToolsRequest::default()
                })
                .await
                .unwrap()
                .into_inner()
                .tools;
            if tools.iter().any(|tool| tool.name == expected) {
                return tools
                    .into_iter()
                    .map(|tool| (tool.name.clone(), tool))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

async fn execute(
    served: &Served,
    tool: &str,
    arguments: Value,
) -> Result<ExecuteToolResponse, Status> {
    served
        .client
        .clone()
        .execute_tool(ExecuteToolRequest {
            tool: tool.into(),
            arguments_json: arguments.to_string(),
            call_id: "call-1".into(),
            ..ExecuteToolRequest::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A streamable HTTP server-everything on a free loopback port, stopped
/// when dropped.
struct HttpServer {
    _child: tokio::process::Child,
    url: String,
}

impl HttpServer {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new("node")
            .arg(agentmesh_testkit::mcp_everything_server())
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        within("the HTTP MCP server to listen", STEP, async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        Self {
            _child: child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

// === tests ===

#[tokio::test]
async fn stdio_tools_are_listed_prefixed_with_their_schemas_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(BTreeMap::from([(
        "everything".to_owned(),
        stdio_server(&dir.path().join("pid")),
    )]))
    .await;
    let tools = mcp_tools(&served, "everything_echo").await;
    for name in [
        "everything_echo",
        "everything_get-sum",
        "everything_trigger-long-running-operation",
    ] {
        assert!(tools.contains_key(name), "{name} not in {:?}", tools.keys());
    }
    let echo = &tools["everything_echo"];
    assert_eq!(echo.description, "Echoes back the input string");
    let schema: Value = serde_json::from_str(&echo.parameters_json).unwrap();
    assert_eq!(schema["properties"]["message"]["type"], "string");
    assert_eq!(echo.labels["mcp.server"], "everything");
    assert_eq!(echo.labels["mcp.tool"], "echo");

    let echoed = execute(&served, "everything_echo", json!({"message": "hello mesh"}))
        .await
        .unwrap();
    assert!(!echoed.is_error, "{}", echoed.error_message);
    let output: Value = serde_json::from_str(&echoed.output_json).unwrap();
    assert_eq!(output["content"][0]["text"], "Echo: hello mesh");

    let sum = execute(&served, "everything_get-sum", json!({"a": 2, "b": 40}))
        .await
        .unwrap();
    assert!(sum.output_json.contains("42"), "{}", sum.output_json);

    // The schema is checked here, before the server is asked.
    let bad = execute(&served, "everything_get-sum", json!({"a": "two"}))
        .await
        .unwrap();
    assert!(bad.is_error);
    assert_eq!(bad.error_kind, i32::from(ToolErrorKind::InvalidArguments));
    assert!(bad.error_message.contains("/a"), "{}", bad.error_message);

    // Health is checked in the background: up once the next check ran.
    within("the server's health to show", STEP, async {
        while !served
            .admin_get("/readyz?verbose")
            .await
            .contains("[+]mcp:everything ok")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let metrics = served.metrics().await;
    assert!(
        metrics
            .contains(r#"agentmesh_tool_executions_total{outcome="ok",tool="everything_echo",service="tool-runner"} 1"#),
        "{metrics}"
    );
    served.stop().await;
}

#[tokio::test]
async fn streamable_http_tools_run_and_report_progress() {
    let http = HttpServer::start().await;
    let served = serve(BTreeMap::from([(
        "remote".to_owned(),
        McpServerConfig {
            url: http.url.clone(),
            prefix: Some("web_".into()),
            headers: BTreeMap::from([(
                "X-Agentmesh-Test".to_owned(),
                HeaderSource {
                    value: "yes".into(),
                    ..HeaderSource::default()
                },
            )]),
            ..McpServerConfig::default()
        },
    )]))
    .await;
    let tools = mcp_tools(&served, "web_trigger-long-running-operation").await;
    assert!(tools.contains_key("web_echo"), "{:?}", tools.keys());
    let echoed = execute(&served, "web_echo", json!({"message": "over http"}))
        .await
        .unwrap();
    assert!(
        echoed.output_json.contains("Echo: over http"),
        "{}",
        echoed.output_json
    );

    let mut stream = served
        .client
        .clone()
        .execute_tool_stream(ExecuteToolStreamRequest {
            tool: "web_trigger-long-running-operation".into(),
            arguments_json: json!({"duration": 1, "steps": 4}).to_string(),
            call_id: "long-1".into(),
            ..ExecuteToolStreamRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut percents = Vec::new();
    let result = within("the long operation", STEP, async {
        loop {
            match stream.message().await.unwrap().unwrap().event.unwrap() {
                Event::Progress(progress) => percents.push(progress.percent),
                Event::Result(result) => return result,
                Event::Output(_) => {}
            }
        }
    })
    .await;
    assert!(!result.is_error, "{}", result.error_message);
    assert!(
        result
            .output_json
            .contains("Long running operation completed"),
        "{}",
        result.output_json
    );
    // Reports of the 4 steps, in order (the last may travel behind the
    // result, which ends the stream: progress is best effort).
    assert!(percents.len() >= 2, "{percents:?}");
    assert!(percents.iter().all(Option::is_some), "{percents:?}");
    assert!(percents.is_sorted(), "{percents:?}");
    served.stop().await;
    drop(http);
}

#[tokio::test]
async fn a_killed_server_is_refused_meanwhile_then_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let served = serve(BTreeMap::from([(
        "everything".to_owned(),
        stdio_server(&pid_file),
    )]))
    .await;
    mcp_tools(&served, "everything_echo").await;
    let first_pid = std::fs::read_to_string(&pid_file).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", first_pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());

    // Down: refused with UNAVAILABLE naming the server, until it is back.
    let refusal = within("the server to be seen down", STEP, async {
        loop {
            match execute(&served, "everything_echo", json!({"message": "x"})).await {
                Err(status) => return status,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert!(
        refusal
            .message()
            .contains("MCP server `everything` is down"),
        "{}",
        refusal.message()
    );

    let back = within("the server to be started again", STEP, async {
        loop {
            match execute(&served, "everything_echo", json!({"message": "again"})).await {
                Ok(response) if !response.is_error => return response,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert!(
        back.output_json.contains("Echo: again"),
        "{}",
        back.output_json
    );
    let second_pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_ne!(first_pid, second_pid, "not a new process");
    served.stop().await;
}

#[tokio::test]
async fn a_server_that_cannot_start_leaves_the_service_serving() {
    let served = serve(BTreeMap::from([(
        "broken".to_owned(),
        McpServerConfig {
            command: "/nonexistent/mcp-server".into(),
            ..McpServerConfig::default()
        },
    )]))
    .await;
    let calculator = within("the service to serve", STEP, async {
        loop {
            if let Ok(response) = execute(&served, "calculator", json!({"expression": "1+1"})).await
            {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!calculator.is_error);
    let status = execute(&served, "broken_anything", json!({}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("MCP server `broken` is down"),
        "{}",
        status.message()
    );
    let health = within("the server's failure to show", STEP, async {
        loop {
            let health = served.admin_get("/readyz?verbose").await;
            if health.contains("cannot start") {
                return health;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(health.contains("[-]mcp:broken failed"), "{health}");
    assert!(health.contains("(optional"), "{health}");
    served.stop().await;
}

#[tokio::test]
async fn an_unset_header_secret_stops_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        server: test_server(),
        audit: AuditConfig::disabled(),
        workspaces_dir: dir.path().join("workspaces"),
        mcp_servers: BTreeMap::from([(
            "github".to_owned(),
            McpServerConfig {
                url: "https://mcp.example.com/mcp".into(),
                headers: BTreeMap::from([(
                    "Authorization".to_owned(),
                    HeaderSource {
                        env: "AGENTMESH_TEST_NO_SUCH_TOKEN".into(),
                        prefix: "Bearer ".into(),
                        ..HeaderSource::default()
                    },
                )]),
                ..McpServerConfig::default()
            },
        )]),
        ..Config::default()
    };
    let listeners = agentmesh_kit::Listeners::bind(&config.server)
        .await
        .unwrap();
    let err = agentmesh_tool_runner::serve_with_listeners(config, listeners, async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mcp_servers.github.headers.Authorization.env"),
        "{err}"
    );
    assert!(err.contains("AGENTMESH_TEST_NO_SUCH_TOKEN"), "{err}");
}
