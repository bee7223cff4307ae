//! RPC spans, as tower layers: a server span around every incoming call and a
//! client span around every outgoing one, named and attributed by the
//! OpenTelemetry RPC semantic conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`), so no handler has to remember.
//!
//! A server span's parent is the caller's W3C trace context (extracted from
//! the call's metadata); it stays open until the response's last message, so
//! a stream's span covers the whole stream, and ends with the call's status
//! code (an error code also sets the span's status and `error.type`). A
//! client span is made only inside a span (a call made on behalf of a traced
//! request), and its context replaces the forwarded `traceparent`, so the
//! callee's server span is its child. Health checks and reflection are not
//! traced: probes every few seconds would bury the traces people look for.
//!
//! The spans also carry `request_id` and `tenant` (and `trace_id`/`span_id`),
//! which the JSON log lines written inside them repeat.

use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Code;
use tonic::body::Body;
use tracing::Instrument;
use tracing::field::Empty;

use crate::body::EndGuard;
use crate::request_context::RequestContext;
use crate::telemetry;

/// Whether calls to `path` get spans.
fn traced(path: &str) -> bool {
    !(path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection."))
}

/// `(service, method)` of a request path `/package.Service/Method`.
fn service_and_method(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.rsplit_once('/').unwrap_or((trimmed, ""))
}

/// Whether a server span with this code is an error (the RPC semantic
/// conventions: codes that mean the server failed, not the caller).
fn server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Records how a call ended on its span.
fn finish(span: &tracing::Span, code: Code, error: bool) {
    span.record("rpc.grpc.status_code", code as i64);
    if error {
        span.record("otel.status_code", "error");
        span.record("error.type", code_name(code));
    }
}

/// The canonical name of a status code, as `error.type` spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// === impl ServerTraceLayer ===

/// Opens a server span for every traced incoming call. Goes inside
/// [`crate::propagation::PropagationLayer`], whose context it reads.
#[derive(Debug, Clone, Default)]
pub struct ServerTraceLayer {
    service: opentelemetry::Context,
}

impl ServerTraceLayer {
    /// Server spans exported as the service of `service`
    /// ([`telemetry::service_context`]).
    pub fn new(service: opentelemetry::Context) -> Self {
        Self { service }
    }
}

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service made by [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
    service: opentelemetry::Context,
}

impl<S, ReqBody> tower::Service<Request<ReqBody>> for ServerTrace<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if !traced(path) {
            return Box::pin(self.inner.call(request));
        }
        let (service, method) = service_and_method(path);
        let context = request.extensions().get::<RequestContext>();
        let request_id = context.and_then(RequestContext::request_id).unwrap_or("");
        let tenant = context
            .and_then(|context| context.header("x-agentmesh-tenant"))
            .unwrap_or("");
        let span = tracing::info_span!(
            target: "agentmesh::rpc",
            "grpc.server",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
            error.type = Empty,
            request_id = %request_id,
            tenant = %tenant,
            trace_id = Empty,
            span_id = Empty,
        );
        if telemetry::enabled() {
            telemetry::extract_within(&span, request.headers(), &self.service);
            telemetry::record_ids(&span);
        } else if let Some(trace_id) = request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(telemetry::trace_id_of)
        {
            span.record("trace_id", trace_id);
        }
        let future = span.in_scope(|| self.inner.call(request));
        let ending = span.clone();
        let started = std::time::Instant::now();
        let guard = EndGuard::new(Box::new(move |code| {
            finish(&ending, code, server_error(code));
            // The access log line (debug: one per call), in the call's span
            // so it carries the request id, tenant and trace.
            tracing::debug!(
                target: "agentmesh::rpc",
                parent: &ending,
                grpc_code = code_name(code),
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "rpc finished"
            );
        }));
        Box::pin(
            async move {
                match future.await {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        let body = guard.observe(body, &parts.headers);
                        Ok(Response::from_parts(parts, Body::new(body)))
                    }
                    Err(err) => {
                        guard.fail(Code::Internal);
                        Err(err)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// A client span for a call to `path` made inside the current span, or
/// `None` when traces are off or there is no current span (a background
/// task's call is not part of any request's trace).
pub(crate) fn client_span(path: &str) -> Option<tracing::Span> {
    if !telemetry::enabled() || !traced(path) || tracing::Span::current().is_none() {
        return None;
    }
    let (service, method) = service_and_method(path);
    let span = tracing::info_span!(
        target: "agentmesh::rpc",
        "grpc.client",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    telemetry::record_ids(&span);
    Some(span)
}

/// What ends a client span: any code but OK is an error for the caller.
pub(crate) fn client_end(span: Option<tracing::Span>) -> crate::body::OnEnd {
    match span {
        Some(span) => Box::new(move |code| finish(&span, code, code != Code::Ok)),
        None => Box::new(|_| {}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            service_and_method("/agentmesh.llm.v1.LlmGatewayService/GenerateStream"),
            ("agentmesh.llm.v1.LlmGatewayService", "GenerateStream")
        );
        assert_eq!(service_and_method("/odd"), ("odd", ""));
        assert!(!traced("/grpc.health.v1.Health/Check"));
        assert!(!traced(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(traced("/agentmesh.audit.v1.AuditService/Record"));
    }

    #[test]
    fn only_server_failures_are_server_span_errors() {
        assert!(server_error(Code::Internal));
        assert!(server_error(Code::Unavailable));
        assert!(!server_error(Code::InvalidArgument));
        assert!(!server_error(Code::NotFound));
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }
}
