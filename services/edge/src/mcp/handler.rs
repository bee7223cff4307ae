//! [`MeshTools`]: the MCP server's handler. `tools/list` is the tool
//! runner's `ListTools` for the caller (all pages) plus `run_agent`;
//! `tools/call` is `ExecuteToolStream` (its progress relayed as MCP
//! progress notifications when the client sent a progress token) or
//! [`super::run_agent`].

use std::time::Instant;

use agentmesh_kit::RequestContext as CallContext;
use agentmesh_proto::tools::v1::{
    ExecuteToolStreamRequest, ListToolsRequest, Tool as MeshTool, ToolResult,
    execute_tool_stream_response,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use tonic::Code;

use crate::caller::Caller;
use crate::state::Edge;

/// The handler of every MCP session.
#[derive(Debug, Clone)]
pub(crate) struct MeshTools {
    edge: Edge,
}

/// The caller of an MCP request: its HTTP request's credential, and the
/// context (request id, trace, tenant label) its calls forward.
pub(super) fn caller_of(context: &RequestContext<RoleServer>) -> (Caller, CallContext) {
    let mut headers = context
        .extensions
        .get::<http::request::Parts>()
        .map(|parts| parts.headers.clone())
        .unwrap_or_default();
    let caller = Caller::of(&headers);
    (
        caller,
        CallContext::from_incoming(&mut headers, Instant::now()),
    )
}

/// Sends a progress notification when the client asked for them.
pub(super) async fn notify(
    context: &RequestContext<RoleServer>,
    progress: f64,
    total: Option<f64>,
    message: String,
) {
    let Some(token) = context.meta.get_progress_token() else {
        return;
    };
    let mut param = ProgressNotificationParam::new(token, progress).with_message(message);
    if let Some(total) = total {
        param = param.with_total(total);
    }
    if let Err(err) = context.peer.notify_progress(param).await {
        tracing::debug!(error = %err, "MCP progress notification not sent");
    }
}

/// A tool's input schema as an MCP JSON object (`{"type": "object"}` when
/// the tool runner's is not an object).
fn schema_of(parameters_json: &str) -> JsonObject {
    match serde_json::from_str::<serde_json::Value>(parameters_json) {
        Ok(serde_json::Value::Object(schema)) => schema,
        _ => {
            let mut schema = JsonObject::new();
            schema.insert("type".to_owned(), "object".into());
            schema
        }
    }
}

impl MeshTools {
    pub(crate) fn new(edge: Edge) -> Self {
        Self { edge }
    }

    /// Every tool the caller may list, all pages.
    async fn mesh_tools(&self, caller: &Caller) -> Result<Vec<MeshTool>, tonic::Status> {
        let mut client = self.edge.peers.tools.clone();
        let mut tools = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListToolsRequest {
                page_size: 1000,
                page_token,
                ..ListToolsRequest::default()
            };
            let page = client
                .list_tools(caller.request(request, Some(self.edge.config.call_timeout)))
                .await?
                .into_inner();
            tools.extend(page.tools);
            if page.next_page_token.is_empty() {
                return Ok(tools);
            }
            page_token = page.next_page_token;
        }
    }

    /// Runs one of the tool runner's tools.
    async fn execute(
        &self,
        caller: &Caller,
        request: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let arguments = serde_json::Value::Object(request.arguments.unwrap_or_default());
        let execute = ExecuteToolStreamRequest {
            tool: request.name.to_string(),
            arguments_json: arguments.to_string(),
            call_id: format!("mcp-{}", uuid::Uuid::new_v4().simple()),
            ..ExecuteToolStreamRequest::default()
        };
        let mut client = self.edge.peers.tools.clone();
        let mut stream = match client
            .execute_tool_stream(caller.request(execute, None))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => return refused(&request.name, &status),
        };
        let mut progress = 0.0;
        loop {
            let event = tokio::select! {
                event = stream.message() => event,
                () = context.ct.cancelled() => {
                    return Ok(CallToolResult::error(vec![ContentBlock::text("the call was cancelled")]));
                }
            };
            match event {
                Ok(Some(event)) => match event.event {
                    Some(execute_tool_stream_response::Event::Progress(step)) => {
                        progress += 1.0;
                        let value = step.percent.map_or(progress, f64::from);
                        let total = step.percent.map(|_| 100.0);
                        notify(context, value, total, step.message).await;
                    }
                    Some(execute_tool_stream_response::Event::Result(result)) => {
                        return Ok(tool_result(result));
                    }
                    Some(execute_tool_stream_response::Event::Output(_)) | None => {}
                },
                Ok(None) => {
                    return Ok(CallToolResult::error(vec![ContentBlock::text(
                        "the tool's stream ended without a result",
                    )]));
                }
                Err(status) => return refused(&request.name, &status),
            }
        }
    }
}

/// A tool runner result as an MCP one: a JSON object output is also the
/// structured content.
fn tool_result(result: ToolResult) -> CallToolResult {
    if result.is_error {
        let text = if result.error_message.is_empty() {
            result.output_json
        } else {
            result.error_message
        };
        return CallToolResult::error(vec![ContentBlock::text(text)]);
    }
    match serde_json::from_str::<serde_json::Value>(&result.output_json) {
        Ok(value @ serde_json::Value::Object(_)) => CallToolResult::structured(value),
        _ => CallToolResult::success(vec![ContentBlock::text(result.output_json)]),
    }
}

/// A call the mesh refused: an unknown tool is a protocol error (as MCP
/// says); anything else an error result the client's model can read.
fn refused(tool: &str, status: &tonic::Status) -> Result<CallToolResult, McpError> {
    match status.code() {
        Code::NotFound => Err(McpError::invalid_params(
            format!("unknown tool `{tool}`: tools/list names the tools you may call"),
            None,
        )),
        code => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
            "{}: {}",
            agentmesh_kit::trace::code_name(code),
            status.message()
        ))])),
    }
}

impl ServerHandler for MeshTools {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agentmesh", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "The agentmesh tools, and run_agent: give it an objective and an agent runs it \
                 on the mesh (its steps arrive as progress notifications), answering with the \
                 run's output.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let (caller, call_context) = caller_of(&context);
        let tools = call_context
            .scope(self.mesh_tools(&caller))
            .await
            .map_err(|status| McpError::internal_error(status.message().to_owned(), None))?;
        let mut listed: Vec<Tool> = tools
            .into_iter()
            .filter(|tool| tool.name != super::run_agent::NAME)
            .map(|tool| {
                Tool::new_with_raw(
                    tool.name,
                    Some(tool.description.into()),
                    schema_of(&tool.parameters_json),
                )
            })
            .collect();
        listed.push(super::run_agent::tool());
        Ok(ListToolsResult::with_all_items(listed))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let (caller, call_context) = caller_of(&context);
        let result = if request.name == super::run_agent::NAME {
            call_context
                .scope(super::run_agent::call(
                    &self.edge, &caller, request, &context,
                ))
                .await?
        } else {
            call_context
                .scope(self.execute(&caller, request, &context))
                .await?
        };
        Ok(CallToolResponse::Complete(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_objects() {
        assert_eq!(schema_of(r#"{"type":"object","properties":{}}"#).len(), 2);
        assert_eq!(schema_of("not json").get("type"), Some(&"object".into()));
        assert_eq!(schema_of("[1]").get("type"), Some(&"object".into()));
    }

    #[test]
    fn results_keep_their_structure_and_errors_their_message() {
        let ok = tool_result(ToolResult {
            output_json: r#"{"result":403}"#.to_owned(),
            ..ToolResult::default()
        });
        assert_eq!(
            ok.structured_content,
            Some(serde_json::json!({"result": 403}))
        );
        assert_eq!(ok.is_error, Some(false));
        let failed = tool_result(ToolResult {
            is_error: true,
            error_message: "division by zero".to_owned(),
            ..ToolResult::default()
        });
        assert_eq!(failed.is_error, Some(true));
    }
}
