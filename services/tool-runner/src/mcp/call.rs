//! One `tools/call` on a server: the request carries a progress token, the
//! server's `notifications/progress` for it are relayed as `ToolProgress`
//! while it runs, and the answer becomes the tool's outcome.
//!
//! The output is the MCP result as JSON — `content` (text, images,
//! resources) and `structuredContent` when the server gives it. A result
//! with `isError` is a tool error (EXECUTION_FAILED, quoting its text),
//! which says nothing about the server's health; a connection that is
//! gone is one too, but counts against the tool's circuit and has the
//! server reconnected. If the call is dropped (timeout, caller gone), the
//! server is sent `notifications/cancelled`.

use agentmesh_kit::text::truncate_bytes;
use agentmesh_proto::tools::v1::execute_tool_stream_response::Event;
use agentmesh_proto::tools::v1::{ExecuteToolStreamResponse, ToolProgress};
use futures::StreamExt as _;
use rmcp::RoleClient;
use rmcp::ServiceError;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, CancelledNotificationParam, ClientRequest, ContentBlock,
    ProgressNotificationParam, Request, RequestId, ServerResult,
};
use rmcp::service::{Peer, PeerRequestOptions};
use serde_json::Value;

use super::McpServer;
use crate::command::EventSender;
use crate::outcome::{ToolFailure, ToolOutcome};

/// How much of an error result's text the failure message quotes.
const MAX_QUOTED_ERROR: usize = 2048;
/// The longest progress message relayed.
const MAX_PROGRESS_MESSAGE: usize = 512;

/// Calls `remote` (the server's name of the tool) with `arguments`.
pub(crate) async fn call(
    server: &McpServer,
    remote: &str,
    arguments: &Value,
    events: Option<&EventSender>,
) -> ToolOutcome {
    let Some(peer) = server.peer() else {
        let reason = server
            .down()
            .map_or_else(|| "not connected".to_owned(), |(reason, _)| reason);
        return Err(ToolFailure::unreachable(format!(
            "MCP server `{}` is down: {reason}",
            server.name
        )));
    };
    let Value::Object(arguments) = arguments else {
        return Err(ToolFailure::invalid_arguments(
            "the arguments of an MCP tool must be a JSON object",
        ));
    };
    let params = CallToolRequestParams::new(remote.to_owned()).with_arguments(arguments.clone());
    let handle = peer
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .map_err(|err| lost(server, &err))?;
    let mut progress = server
        .progress
        .subscribe(handle.progress_token.clone())
        .await;
    let mut cancel = CancelOnDrop {
        peer: Some(peer.clone()),
        id: handle.id.clone(),
    };
    let response = handle.await_response();
    tokio::pin!(response);
    let answer = loop {
        tokio::select! {
            biased;
            Some(update) = progress.next() => relay(events, &update).await,
            answer = &mut response => break answer,
        }
    };
    cancel.peer = None;
    // Reports that came with the answer (they travel apart from it).
    while let Some(Some(update)) = futures::FutureExt::now_or_never(progress.next()) {
        relay(events, &update).await;
    }
    match answer {
        Ok(ServerResult::CallToolResult(result)) => outcome(result, server.max_output_bytes),
        Ok(_) => Err(ToolFailure::invalid_output(format!(
            "MCP server `{}` answered tools/call with something other than a tool result",
            server.name
        ))),
        Err(ServiceError::McpError(error)) => Err(ToolFailure::failed(format!(
            "MCP server `{}` refused the call ({}): {}",
            server.name,
            error.code.0,
            truncate_bytes(&error.message, MAX_QUOTED_ERROR)
        ))),
        Err(err) => Err(lost(server, &err)),
    }
}

/// The connection failed under a call: the supervisor reconnects.
fn lost(server: &McpServer, err: &ServiceError) -> ToolFailure {
    server.report_broken();
    ToolFailure::unreachable(format!(
        "MCP server `{}` could not be reached: {err}",
        server.name
    ))
}

/// A tool result as the call's outcome.
fn outcome(result: CallToolResult, max_output_bytes: usize) -> ToolOutcome {
    let is_error = result.is_error == Some(true);
    let text = text_of(&result.content);
    let mut output = serde_json::to_value(&result).map_err(|err| {
        ToolFailure::invalid_output(format!("the tool result is not JSON: {err}"))
    })?;
    if let Value::Object(fields) = &mut output {
        fields.remove("isError");
        fields.remove("resultType");
    }
    let size = output.to_string().len();
    if size > max_output_bytes {
        return Err(ToolFailure::invalid_output(format!(
            "the tool's output is {size} bytes, more than max_output_bytes ({max_output_bytes})"
        )));
    }
    if is_error {
        let message = if text.is_empty() {
            "the tool reported an error".to_owned()
        } else {
            truncate_bytes(&text, MAX_QUOTED_ERROR).into_owned()
        };
        return Err(ToolFailure::failed(message).with_output(output.to_string()));
    }
    Ok(output)
}

/// The text blocks of a result, joined.
fn text_of(content: &[ContentBlock]) -> String {
    content
        .iter()
        .filter_map(|block| block.as_text().map(|text| text.text.as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends a server's progress to a streaming caller.
async fn relay(events: Option<&EventSender>, update: &ProgressNotificationParam) {
    let Some(events) = events else {
        return;
    };
    let percent = update
        .total
        .filter(|total| *total > 0.0)
        .map(|total| (update.progress / total * 100.0).clamp(0.0, 100.0));
    let message = match (&update.message, update.total) {
        (Some(message), _) => truncate_bytes(message, MAX_PROGRESS_MESSAGE).into_owned(),
        (None, Some(total)) => format!("{} of {total}", update.progress),
        (None, None) => format!("{}", update.progress),
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a percentage, clamped to 0..=100"
    )]
    let percent = percent.map(|percent| percent as f32);
    // The receiver is gone only when the client left; the caller notices.
    let _ = events
        .send(Ok(ExecuteToolStreamResponse {
            event: Some(Event::Progress(ToolProgress { percent, message })),
        }))
        .await;
}

/// Tells the server a call was abandoned (timed out, or its caller left),
/// so it can stop the work.
struct CancelOnDrop {
    /// `None` once the answer came.
    peer: Option<Peer<RoleClient>>,
    id: RequestId,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(peer) = self.peer.take() else {
            return;
        };
        let param = CancelledNotificationParam::new(
            Some(self.id.clone()),
            Some("the call timed out or its caller went away".to_owned()),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = peer.notify_cancelled(param).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::ContentBlock as Content;

    use super::*;

    #[test]
    fn a_result_is_its_content_and_an_error_result_a_failure() {
        let ok = CallToolResult::success(vec![Content::text("Echo: hi")]);
        let output = outcome(ok, 1000).unwrap();
        assert_eq!(output["content"][0]["text"], "Echo: hi");
        assert!(output.get("isError").is_none());

        let failed = CallToolResult::error(vec![Content::text("no such city")]);
        let failure = outcome(failed, 1000).unwrap_err();
        assert_eq!(failure.message, "no such city");
        assert!(!failure.unreachable);
        assert!(failure.output_json.contains("no such city"));

        let big = CallToolResult::success(vec![Content::text("x".repeat(2000))]);
        let failure = outcome(big, 1000).unwrap_err();
        assert!(
            failure.message.contains("max_output_bytes"),
            "{}",
            failure.message
        );
    }
}
