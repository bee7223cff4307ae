//! An MCP server's tools inside agent runs, end to end over real gRPC
//! (gateway with the scripted model, tool runner, orchestrator): the tool
//! runner serves `@modelcontextprotocol/server-everything` (pinned in
//! tests/mcp-servers, installed by tools/install-test-deps) over stdio as
//! `everything_*`; a run calls its `echo`, and another its long-running
//! operation, whose progress notifications become the run's `progress`
//! events naming the tool call.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use agentmesh_orchestrator::AgentProfile;
use agentmesh_proto::orchestrator::v1::{self as pb, run_event::Event};
use agentmesh_tests::{RunMesh, within};
use agentmesh_tool_runner::McpServerConfig;

/// The scripted model: calls the server's tools and answers with their
/// results.
const RULES: &str = include_str!("rules/mcp.toml");

fn everything() -> McpServerConfig {
    let entry = agentmesh_testkit::mcp_everything_server();
    McpServerConfig {
        command: "node".into(),
        args: vec![entry.display().to_string(), "stdio".into()],
        ..McpServerConfig::default()
    }
}

async fn mesh() -> RunMesh {
    RunMesh::start_with_tools(
        Some(RULES),
        |_| {},
        |tools| {
            tools
                .mcp_servers
                .insert("everything".to_owned(), everything());
        },
        |orchestrator| {
            orchestrator.agents.insert(
                "mcp".to_owned(),
                AgentProfile {
                    tools: vec![
                        "everything_echo".to_owned(),
                        "everything_trigger-long-running-operation".to_owned(),
                    ],
                    ..AgentProfile::default()
                },
            );
        },
    )
    .await
}

async fn run_to_end(mesh: &RunMesh, objective: &str) -> Vec<Event> {
    let mut client = mesh.client();
    let request = pb::RunRequest {
        objective: objective.to_owned(),
        agent: "mcp".to_owned(),
        ..Default::default()
    };
    let mut stream = client.run(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        if let Some(event) = response.event.and_then(|event| event.event) {
            events.push(event);
        }
    }
    events
}

/// Runs `objective` until its tool call succeeds (the tool runner connects
/// to the server in the background, refusing its tools until then): the
/// events of the first run that called it.
async fn run_with_tools(mesh: &RunMesh, objective: &str) -> Vec<Event> {
    within(
        "a run that calls the MCP tool",
        Duration::from_secs(60),
        async {
            loop {
                let events = run_to_end(mesh, objective).await;
                let called = events.iter().any(|event| {
                matches!(event, Event::ToolCallFinished(finished) if !finished.is_error)
            });
                if called {
                    return events;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_run_calls_an_mcp_tool_and_relays_its_progress() {
    let mesh = mesh().await;

    let events = run_with_tools(&mesh, "Please echo meshed").await;
    let finished = events
        .iter()
        .find_map(|event| match event {
            Event::ToolCallFinished(finished) => Some(finished),
            _ => None,
        })
        .unwrap();
    assert!(!finished.is_error, "{}", finished.error_message);
    assert_eq!(finished.tool, "everything_echo");
    assert!(
        finished.output_json.contains("Echo: meshed"),
        "{}",
        finished.output_json
    );
    let Some(Event::RunFinished(done)) = events.last() else {
        panic!("{events:?}");
    };
    assert_eq!(done.output, "The server echoed meshed.");

    let events = run_with_tools(&mesh, "Run the long operation").await;
    let started = events
        .iter()
        .find_map(|event| match event {
            Event::ToolCallStarted(started) => Some(started.call_id.clone()),
            _ => None,
        })
        .unwrap();
    let tool_progress: Vec<&pb::Progress> = events
        .iter()
        .filter_map(|event| match event {
            Event::Progress(progress) if !progress.tool_call_id.is_empty() => Some(progress),
            _ => None,
        })
        .collect();
    assert!(tool_progress.len() >= 2, "{events:?}");
    for progress in &tool_progress {
        assert_eq!(progress.tool_call_id, started);
        assert!(
            progress
                .message
                .contains("everything_trigger-long-running-operation"),
            "{}",
            progress.message
        );
        assert!(progress.tool_percent.is_some());
        assert!(progress.step >= 1);
    }
    let percents: Vec<Option<f32>> = tool_progress
        .iter()
        .map(|progress| progress.tool_percent)
        .collect();
    assert!(percents.is_sorted(), "{percents:?}");
    let Some(Event::RunFinished(done)) = events.last() else {
        panic!("{events:?}");
    };
    assert_eq!(done.output, "The long operation is done.");
    mesh.stop().await;
}
