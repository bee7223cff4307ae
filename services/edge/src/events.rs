//! A run's events as Server-Sent Events: `GET /v1/runs/{run_id}/events`
//! (StreamRun) and `POST /v1/runs:stream` (Run).
//!
//! Each stored event is one SSE event: `id:` its sequence (or, with
//! `include_sub_runs`, the merged stream's opaque cursor), `event:` its
//! kind (`token_delta`, `tool_call_started`, … as the RunEvent oneof names
//! it), `data:` the RunEvent in the proto3 JSON mapping. A reconnecting
//! client's `Last-Event-ID` (an `EventSource` sends it by itself) resumes
//! after that event, with nothing lost or repeated; `?after_sequence=` does
//! the same by hand. Idle streams get `:heartbeat` comments (the
//! orchestrator's own heartbeat events are not stored, so they are not
//! events here either). The stream closes after the run's terminal event;
//! a failure mid-stream is one `event: error` (google.rpc.Status JSON)
//! before it closes. Errors before the first event are plain HTTP errors.

use std::convert::Infallible;

use agentmesh_proto::orchestrator::v1::{RunEvent, RunRequest, StreamRunRequest, run_event};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use prost_reflect::DynamicMessage;
use serde::Deserialize;
use tonic::Code;

use crate::caller::Caller;
use crate::error::{rest_error, rest_problem, status_json};
use crate::state::Edge;

/// The query string of the event routes (SSE and WebSocket).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    /// Events after this sequence (0: from the start).
    after_sequence: Option<String>,
    /// Follow the run's sub-runs too, merged.
    include_sub_runs: Option<String>,
    /// Resume a merged stream after this cursor.
    cursor: Option<String>,
}

/// One event as it goes out: the event, and the merged stream's cursor.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) event: RunEvent,
    pub(crate) cursor: String,
}

impl Outgoing {
    /// Whether this is an orchestrator heartbeat (not stored, no number).
    pub(crate) fn is_heartbeat(&self) -> bool {
        matches!(self.event.event, Some(run_event::Event::Heartbeat(_)))
    }

    /// Whether the run ended with this event.
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(
            self.event.event,
            Some(
                run_event::Event::RunFinished(_)
                    | run_event::Event::RunFailed(_)
                    | run_event::Event::RunCancelled(_)
            )
        )
    }

    /// The id a client resumes from: the cursor of a merged stream, the
    /// sequence otherwise.
    pub(crate) fn id(&self) -> String {
        if self.cursor.is_empty() {
            self.event.sequence.to_string()
        } else {
            self.cursor.clone()
        }
    }
}

/// The StreamRun request of an event route: the query, then the
/// `Last-Event-ID` of a reconnecting client on top (an `EventSource`
/// reconnects to the same URL, so its original `after_sequence` must not
/// win over the id it last saw).
pub(crate) fn stream_request(
    run_id: String,
    query: &StreamQuery,
    last_event_id: Option<&str>,
) -> Result<StreamRunRequest, Box<Response>> {
    let mut request = StreamRunRequest {
        run_id,
        ..StreamRunRequest::default()
    };
    if let Some(value) = &query.after_sequence {
        request.after_sequence = value.parse().map_err(|_| {
            Box::new(rest_problem(
                Code::InvalidArgument,
                format!("`after_sequence` must be a whole number, not `{value}`"),
                Some("after_sequence"),
            ))
        })?;
    }
    if let Some(value) = &query.include_sub_runs {
        request.include_sub_runs = match value.as_str() {
            "" | "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(Box::new(rest_problem(
                    Code::InvalidArgument,
                    format!("`include_sub_runs` must be true or false, not `{value}`"),
                    Some("include_sub_runs"),
                )));
            }
        };
    }
    if let Some(cursor) = &query.cursor {
        request.cursor.clone_from(cursor);
        request.include_sub_runs = true;
    }
    match last_event_id.map(str::trim) {
        None | Some("") => {}
        Some(id) => match id.parse::<i32>() {
            Ok(sequence) if !request.include_sub_runs => request.after_sequence = sequence,
            _ => {
                request.cursor = id.to_owned();
                request.include_sub_runs = true;
            }
        },
    }
    Ok(request)
}

/// `GET /v1/runs/{run_id}/events`.
pub(crate) async fn run_events(
    State(edge): State<Edge>,
    Path(run_id): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    caller: Caller,
    headers: http::HeaderMap,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_query();
    };
    let last = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    let request = match stream_request(run_id, &query, last) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match open_stream(&edge, &caller, request).await {
        Ok(events) => sse(&edge, events),
        Err(status) => rest_error(&status),
    }
}

/// The answer to a query string the event routes do not take.
pub(crate) fn bad_query() -> Response {
    rest_problem(
        Code::InvalidArgument,
        "the query takes after_sequence, include_sub_runs and cursor only",
        None,
    )
}

/// StreamRun, its answers as [`Outgoing`] events.
pub(crate) async fn open_stream(
    edge: &Edge,
    caller: &Caller,
    request: StreamRunRequest,
) -> Result<impl Stream<Item = Result<Outgoing, tonic::Status>> + Send + 'static, tonic::Status> {
    let mut client = edge.peers.orchestrator.clone();
    let stream = client
        .stream_run(caller.request(request, None))
        .await?
        .into_inner();
    Ok(stream.filter_map(|item| async move {
        match item {
            Ok(response) => response.event.map(|event| {
                Ok(Outgoing {
                    event,
                    cursor: response.cursor,
                })
            }),
            Err(status) => Some(Err(status)),
        }
    }))
}

/// A server-streaming RPC reached through its `google.api.http` binding
/// (`POST /v1/runs:stream`): Run, answered as SSE.
pub(crate) async fn transcoded_stream(
    edge: &Edge,
    method: &prost_reflect::MethodDescriptor,
    caller: &Caller,
    message: DynamicMessage,
) -> Response {
    if method.name() != "Run" {
        return rest_problem(
            Code::Unimplemented,
            format!("{} is not served over HTTP yet", method.full_name()),
            None,
        );
    }
    let request = match RunRequest::decode(message.encode_to_vec().as_slice()) {
        Ok(request) => request,
        Err(err) => {
            return rest_problem(
                Code::InvalidArgument,
                format!("bad RunRequest: {err}"),
                None,
            );
        }
    };
    let mut client = edge.peers.orchestrator.clone();
    match client.run(caller.request(request, None)).await {
        Ok(response) => {
            let events = response.into_inner().filter_map(|item| async move {
                match item {
                    Ok(response) => response.event.map(|event| {
                        Ok(Outgoing {
                            event,
                            cursor: String::new(),
                        })
                    }),
                    Err(status) => Some(Err(status)),
                }
            });
            sse(edge, events)
        }
        Err(status) => rest_error(&status),
    }
}

/// The SSE answer of an event stream.
fn sse(
    edge: &Edge,
    events: impl Stream<Item = Result<Outgoing, tonic::Status>> + Send + 'static,
) -> Response {
    let renderer = std::sync::Arc::clone(&edge.renderer);
    let ended = edge.streams_end.clone().cancelled_owned();
    let frames = ended_after_terminal(events)
        .take_until(ended)
        .filter_map(move |item| {
            let frame = match item {
                Ok(outgoing) if outgoing.is_heartbeat() => None,
                Ok(outgoing) => {
                    let (kind, data) = renderer.render(&outgoing.event);
                    Some(
                        Event::default()
                            .id(outgoing.id())
                            .event(kind)
                            .data(data.to_string()),
                    )
                }
                Err(status) => Some(
                    Event::default()
                        .event("error")
                        .data(status_json(&status).to_string()),
                ),
            };
            std::future::ready(frame.map(Ok::<_, Infallible>))
        });
    Sse::new(frames)
        .keep_alive(
            KeepAlive::new()
                .interval(edge.config.stream_heartbeat)
                .text("heartbeat"),
        )
        .into_response()
}

/// The stream up to and including the run's terminal event (or its
/// first error). A merged stream (a run with its sub-runs: events carry a
/// cursor) holds several runs' terminal events; the orchestrator ends it
/// when every run of it has ended, so it is not cut here.
pub(crate) fn ended_after_terminal(
    events: impl Stream<Item = Result<Outgoing, tonic::Status>> + Send + 'static,
) -> impl Stream<Item = Result<Outgoing, tonic::Status>> + Send + 'static {
    events.scan(false, |done, item| {
        if *done {
            return std::future::ready(None);
        }
        *done = match &item {
            Ok(outgoing) => outgoing.cursor.is_empty() && outgoing.is_terminal(),
            Err(_) => true,
        };
        std::future::ready(Some(item))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(after: Option<&str>, subs: Option<&str>, cursor: Option<&str>) -> StreamQuery {
        StreamQuery {
            after_sequence: after.map(str::to_owned),
            include_sub_runs: subs.map(str::to_owned),
            cursor: cursor.map(str::to_owned),
        }
    }

    #[test]
    fn last_event_id_wins_over_the_query() {
        let request = stream_request("r".to_owned(), &query(Some("2"), None, None), Some("5"));
        assert!(matches!(
            request,
            Ok(StreamRunRequest {
                after_sequence: 5,
                ..
            })
        ));
        let request = stream_request("r".to_owned(), &query(Some("2"), None, None), None);
        assert!(matches!(
            request,
            Ok(StreamRunRequest {
                after_sequence: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_merged_stream_resumes_from_its_cursor() {
        let request = stream_request(
            "r".to_owned(),
            &query(None, Some("true"), None),
            Some("eyJ9"),
        );
        let Ok(request) = request else {
            panic!("request refused");
        };
        assert!(request.include_sub_runs);
        assert_eq!(request.cursor, "eyJ9");
        assert_eq!(request.after_sequence, 0);
    }

    fn finished(run_id: &str, cursor: &str) -> Result<Outgoing, tonic::Status> {
        Ok(Outgoing {
            event: RunEvent {
                run_id: run_id.to_owned(),
                event: Some(run_event::Event::RunFinished(
                    agentmesh_proto::orchestrator::v1::RunFinished::default(),
                )),
                ..RunEvent::default()
            },
            cursor: cursor.to_owned(),
        })
    }

    #[tokio::test]
    async fn a_run_ends_its_stream_but_a_sub_run_does_not_end_a_merged_one() {
        let single = futures::stream::iter([finished("r", ""), finished("r", "")]);
        assert_eq!(ended_after_terminal(single).count().await, 1);
        let merged = futures::stream::iter([finished("sub", "c1"), finished("r", "c2")]);
        assert_eq!(ended_after_terminal(merged).count().await, 2);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(stream_request("r".to_owned(), &query(Some("x"), None, None), None).is_err());
        assert!(stream_request("r".to_owned(), &query(None, Some("maybe"), None), None).is_err());
    }
}
