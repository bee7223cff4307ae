//! The REST mapping of `OrchestratorService` served: a request to one of the
//! contract's bindings (`crate::bindings`) becomes the RPC's call.
//!
//! ```text
//! request ─▶ Transcoder::find (verb + path template) ─▶ protojson::build
//!   (body "*" + path variables + query) ─▶ the RPC, called from its
//!   descriptor (transcode_codec) ─▶ protojson::render, or error::rest_error
//! ```
//!
//! Server-streaming RPCs answer as Server-Sent Events (`crate::events`).

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use tonic::Code;

use crate::bindings::{Binding, BodyRule, Found};
use crate::caller::Caller;
use crate::error::{rest_error, rest_problem};
use crate::state::Edge;

/// A route's template, put on its response for the metrics' `route` label.
#[derive(Debug, Clone)]
pub(crate) struct RouteLabel(pub(crate) String);

/// The fallback route: a request to a binding of the mapped service, or
/// 404 / 405 in the REST mapping's error shape.
pub(crate) async fn handle(State(edge): State<Edge>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let found = edge.transcoder.find(&parts.method, parts.uri.path());
    let (binding, variables) = match found {
        Found::Route(binding, variables) => (binding.clone(), variables),
        Found::OtherVerbs(verbs) => {
            let allowed = verbs
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut response = rest_problem(
                Code::Unimplemented,
                format!(
                    "{} is not served at {}; use {allowed}",
                    parts.method,
                    parts.uri.path()
                ),
                None,
            );
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            if let Ok(value) = http::HeaderValue::from_str(&allowed) {
                response.headers_mut().insert(http::header::ALLOW, value);
            }
            return response;
        }
        Found::Nothing => {
            return rest_problem(
                Code::NotFound,
                format!(
                    "no route {} {}: see /openapi.json for the routes served",
                    parts.method,
                    parts.uri.path()
                ),
                None,
            );
        }
    };
    let label = RouteLabel(binding.template.text().to_owned());
    let mut response = answer(&edge, &binding, &parts, variables, body).await;
    response.extensions_mut().insert(label);
    response
}

/// Builds the request, calls the RPC and renders its answer.
async fn answer(
    edge: &Edge,
    binding: &Binding,
    parts: &http::request::Parts,
    variables: Vec<(String, String)>,
    body: axum::body::Body,
) -> Response {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let body = match binding.body {
        BodyRule::Empty => None,
        BodyRule::Whole => match read_json(body, edge.config.server.max_message_bytes).await {
            Ok(body) => body,
            Err(response) => return response,
        },
    };
    let input = binding.method.input();
    let message = match crate::protojson::build(&input, body, &variables, &query) {
        Ok(message) => message,
        Err(bad) => return rest_problem(Code::InvalidArgument, bad.message, bad.field.as_deref()),
    };
    let caller = Caller::of(&parts.headers);
    if binding.method.is_server_streaming() {
        return crate::events::transcoded_stream(edge, &binding.method, &caller, message).await;
    }
    let request = caller.request(message, Some(edge.config.call_timeout));
    match crate::transcode_codec::unary(edge, &binding.method, request).await {
        Ok(response) => {
            axum::Json(crate::protojson::render(&response.into_inner())).into_response()
        }
        Err(status) => rest_error(&status),
    }
}

/// The body as JSON: nothing for an empty body; 400 for one that is not
/// JSON; 413 past the message size limit.
pub(crate) async fn read_json(
    body: axum::body::Body,
    limit: usize,
) -> Result<Option<serde_json::Value>, Response> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        let mut response = rest_problem(
            Code::ResourceExhausted,
            format!(
                "the request body is over the limit of {limit} bytes (server.max_message_bytes)"
            ),
            None,
        );
        *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        response
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|err| {
        rest_problem(
            Code::InvalidArgument,
            format!("the request body is not JSON: {err}"),
            None,
        )
    })
}
