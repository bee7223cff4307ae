//! A run's events over a WebSocket: `GET /v1/runs/{run_id}/ws`.
//!
//! The query is the SSE route's (`after_sequence`, `include_sub_runs`,
//! `cursor`): a client resumes by reconnecting with the last sequence (or
//! cursor) it saw. The stream is opened before the upgrade, so a bad
//! request, a missing credential or an unknown run is an ordinary HTTP
//! error. Then each event is one text message,
//! `{"event": <RunEvent JSON>, "cursor": "…"}` (cursor only on merged
//! streams); idle sockets get pings; after the terminal event the server
//! closes with 1000. A failure mid-stream is one `{"error": <google.rpc.Status
//! JSON>}` message, then close 1011; a draining edge closes with 1001
//! (going away: reconnect, another replica answers).

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures::{SinkExt as _, Stream, StreamExt as _};
use serde_json::json;

use crate::caller::Caller;
use crate::error::{rest_error, status_json};
use crate::events::{Outgoing, StreamQuery, bad_query, ended_after_terminal};
use crate::protojson::EventRenderer;
use crate::state::Edge;

/// `GET /v1/runs/{run_id}/ws`.
pub(crate) async fn run_socket(
    State(edge): State<Edge>,
    Path(run_id): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    caller: Caller,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_query();
    };
    let request = match crate::events::stream_request(run_id, &query, None) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let events = match crate::events::open_stream(&edge, &caller, request).await {
        Ok(events) => events,
        Err(status) => return rest_error(&status),
    };
    let renderer = edge.renderer.clone();
    let heartbeat = edge.config.stream_heartbeat;
    let ended = edge.streams_end.clone();
    upgrade.on_upgrade(move |socket| async move {
        relay(
            socket,
            ended_after_terminal(events),
            renderer,
            heartbeat,
            ended,
        )
        .await;
    })
}

/// Sends the events until the run ends, the client leaves or the edge
/// drains.
async fn relay(
    socket: WebSocket,
    events: impl Stream<Item = Result<Outgoing, tonic::Status>> + Send + 'static,
    renderer: std::sync::Arc<EventRenderer>,
    heartbeat: std::time::Duration,
    ended: tokio_util::sync::CancellationToken,
) {
    let (mut sink, mut incoming) = socket.split();
    let mut events = std::pin::pin!(events);
    let mut ping = tokio::time::interval(heartbeat);
    ping.reset();
    let close = loop {
        tokio::select! {
            item = events.next() => match item {
                None => break (1000, "the run ended"),
                Some(Ok(outgoing)) if outgoing.is_heartbeat() => {}
                Some(Ok(outgoing)) => {
                    let (_, event) = renderer.render(&outgoing.event);
                    let mut message = json!({ "event": event });
                    if !outgoing.cursor.is_empty() {
                        crate::fields::set(&mut message, "cursor", json!(outgoing.cursor));
                    }
                    if sink.send(Message::text(message.to_string())).await.is_err() {
                        return;
                    }
                }
                Some(Err(status)) => {
                    let message = json!({ "error": status_json(&status) });
                    let _ = sink.send(Message::text(message.to_string())).await;
                    break (1011, "the event stream failed");
                }
            },
            message = incoming.next() => match message {
                // The client's messages carry nothing; its close ends the relay.
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                    return;
                }
            }
            () = ended.cancelled() => break (1001, "the edge is shutting down; reconnect"),
        }
    };
    let (code, reason) = close;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}
