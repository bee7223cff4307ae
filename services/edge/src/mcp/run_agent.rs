//! `run_agent`: an agent run as one MCP tool call. The call starts the run
//! with `Run` (its events streamed back), sends each step, tool call and
//! sub-run as a progress notification (when the client sent a progress
//! token), and answers with the run's output (and `{run_id, output}` as
//! structured content) — or an error result naming the run's failure. A
//! client that cancels the call cancels the run.

use agentmesh_proto::orchestrator::v1::{CancelRunRequest, RunRequest, run_event};
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, JsonObject, Tool};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};

use super::handler::notify;
use crate::caller::Caller;
use crate::state::Edge;

/// The tool's name.
pub(super) const NAME: &str = "run_agent";

/// The tool as `tools/list` shows it.
pub(super) fn tool() -> Tool {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "objective": {"type": "string", "description": "What the agent should achieve."},
            "agent": {"type": "string", "description": "The agent profile (empty: the default)."},
        },
        "required": ["objective"],
        "additionalProperties": false,
    });
    let schema: JsonObject = match schema {
        serde_json::Value::Object(schema) => schema,
        _ => JsonObject::new(),
    };
    Tool::new(
        NAME,
        "Runs an agent of the mesh on an objective and answers with its output; the run's steps arrive as progress notifications.",
        schema,
    )
}

/// What one event says as progress, if anything.
fn progress_of(event: &run_event::Event) -> Option<String> {
    Some(match event {
        run_event::Event::RunStarted(_) => "run started".to_owned(),
        run_event::Event::Progress(progress) => progress.message.clone(),
        run_event::Event::ToolCallStarted(call) => format!("calling {}", call.tool),
        run_event::Event::ToolCallFinished(call) => format!(
            "{} {}",
            call.tool,
            if call.is_error { "failed" } else { "answered" }
        ),
        run_event::Event::SubRunStarted(sub) => format!("sub-run {} started", sub.run_id),
        _ => return None,
    })
}

/// The run an MCP call asks for: `objective` (required) and `agent`.
fn run_request(arguments: JsonObject) -> Result<RunRequest, McpError> {
    let objective = match arguments.get("objective") {
        Some(serde_json::Value::String(objective)) if !objective.trim().is_empty() => {
            objective.clone()
        }
        _ => {
            return Err(McpError::invalid_params(
                "`objective` is required: a non-empty string",
                None,
            ));
        }
    };
    let agent = match arguments.get("agent") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(agent)) => agent.clone(),
        Some(_) => return Err(McpError::invalid_params("`agent` must be a string", None)),
    };
    Ok(RunRequest {
        objective,
        agent,
        labels: [("via".to_owned(), "mcp".to_owned())].into(),
        ..RunRequest::default()
    })
}

/// The call's answer once the run ended with `kind`; `None` while it runs.
fn outcome(run_id: &str, kind: &run_event::Event) -> Option<CallToolResult> {
    Some(match kind {
        run_event::Event::RunFinished(finished) => {
            let mut result =
                CallToolResult::success(vec![ContentBlock::text(finished.output.clone())]);
            result.structured_content =
                Some(serde_json::json!({"run_id": run_id, "output": finished.output}));
            result
        }
        run_event::Event::RunFailed(failed) => {
            let message = failed
                .error
                .as_ref()
                .map(|error| error.message.clone())
                .unwrap_or_default();
            failure(format!("run {run_id} failed: {message}"))
        }
        run_event::Event::RunCancelled(cancelled) => {
            failure(format!("run {run_id} was cancelled: {}", cancelled.reason))
        }
        _ => return None,
    })
}

/// Runs the agent.
pub(super) async fn call(
    edge: &Edge,
    caller: &Caller,
    request: CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Result<CallToolResult, McpError> {
    let run = run_request(request.arguments.unwrap_or_default())?;
    let mut client = edge.peers.orchestrator.clone();
    let mut stream = match client
        .run(caller.request(run, Some(edge.config.mcp.run_timeout)))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return Ok(failure(format!(
                "the run could not start: {}",
                status.message()
            )));
        }
    };
    let mut run_id = String::new();
    let mut count = 0.0;
    loop {
        let item = tokio::select! {
            item = stream.message() => item,
            () = context.ct.cancelled() => {
                if !run_id.is_empty() {
                    let cancel = CancelRunRequest { run_id: run_id.clone(), reason: "the MCP client cancelled the call".to_owned() };
                    let _ = client.cancel_run(caller.request(cancel, Some(edge.config.call_timeout))).await;
                }
                return Ok(failure(format!("run {run_id} cancelled by the client")));
            }
        };
        let event = match item {
            Ok(Some(response)) => match response.event {
                Some(event) => event,
                None => continue,
            },
            Ok(None) => {
                return Ok(failure(format!(
                    "run {run_id}: its stream ended without an outcome"
                )));
            }
            Err(status) => return Ok(failure(format!("run {run_id}: {}", status.message()))),
        };
        if run_id.is_empty() {
            run_id.clone_from(&event.run_id);
        }
        let Some(kind) = event.event else { continue };
        if let Some(result) = outcome(&run_id, &kind) {
            return Ok(result);
        }
        if let Some(message) = progress_of(&kind) {
            count += 1.0;
            notify(context, count, None, message).await;
        }
    }
}

fn failure(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tool_asks_for_an_objective() {
        let tool = tool();
        assert_eq!(tool.name, NAME);
        assert_eq!(
            tool.input_schema.get("required"),
            Some(&serde_json::json!(["objective"]))
        );
    }

    #[test]
    fn steps_and_tool_calls_are_progress() {
        let call =
            run_event::Event::ToolCallStarted(agentmesh_proto::orchestrator::v1::ToolCallStarted {
                tool: "calculator".to_owned(),
                ..Default::default()
            });
        assert_eq!(progress_of(&call).as_deref(), Some("calling calculator"));
        let token = run_event::Event::TokenDelta(Default::default());
        assert_eq!(progress_of(&token), None);
    }
}
