//! The metadata that crosses every hop.
//!
//! On the way in, [`PropagationLayer`] reads the headers listed in
//! [`FORWARDED_HEADERS`] and the caller's `grpc-timeout` into a
//! [`RequestContext`], creating an `x-request-id` when the caller sent none
//! (so every call can be followed in logs), and makes the context current for
//! the handler (a task-local) and visible in the request's extensions.
//!
//! On the way out, [`ForwardingLayer`] wraps a client channel: every call made
//! while a context is current carries the same headers, and a `grpc-timeout`
//! no longer than what is left of the caller's deadline, so deadlines shrink
//! hop by hop and a call that has no time left fails at once with
//! DEADLINE_EXCEEDED instead of being sent. When traces are exported, the call
//! also gets a client span ([`crate::trace`]) whose W3C context replaces the
//! forwarded `traceparent`; when they are not, trace headers pass through as
//! they came, as Istio asks of applications.
//!
//! `authorization` is deliberately not forwarded: each service presents its
//! own credential to its peers ([`crate::auth::ServiceCredential`]), and the
//! end user it acts for travels in the verified `x-agentmesh-*` headers,
//! which peers believe only from a service.

use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tracing::Instrument;

use crate::auth::ServiceCredential;
use crate::body::{EndGuard, ObservedBody};
use crate::request_context::CURRENT;

pub use crate::request_context::{
    FORWARDED_HEADERS, GRPC_TIMEOUT, REQUEST_ID, RequestContext, format_grpc_timeout,
    parse_grpc_timeout,
};

// === impl PropagationLayer ===

/// Server side: makes each incoming call's [`RequestContext`] current and
/// echoes the request id in the response headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagationLayer;

impl<S> tower::Layer<S> for PropagationLayer {
    type Service = Propagation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Propagation { inner }
    }
}

/// The service made by [`PropagationLayer`].
#[derive(Debug, Clone)]
pub struct Propagation<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Propagation<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let context = RequestContext::from_incoming(request.headers_mut(), Instant::now());
        let request_id = request.headers().get(REQUEST_ID).cloned();
        request.extensions_mut().insert(context.clone());
        let future = CURRENT.sync_scope(context.clone(), || self.inner.call(request));
        Box::pin(CURRENT.scope(context, async move {
            let mut response = future.await?;
            if let Some(id) = request_id {
                response.headers_mut().insert(REQUEST_ID, id);
            }
            Ok(response)
        }))
    }
}

// === impl ForwardingLayer ===

/// Client side: adds the current [`RequestContext`] to every outgoing call,
/// and the service's own credential when it has one.
#[derive(Debug, Clone, Default)]
pub struct ForwardingLayer {
    credential: ServiceCredential,
}

impl ForwardingLayer {
    /// Forwarding that also presents `credential` as `authorization`.
    pub fn with_credential(credential: ServiceCredential) -> Self {
        Self { credential }
    }
}

impl<S> tower::Layer<S> for ForwardingLayer {
    type Service = Forwarding<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Forwarding {
            inner,
            credential: self.credential.clone(),
        }
    }
}

/// The service made by [`ForwardingLayer`]: a channel that forwards metadata.
#[derive(Debug, Clone)]
pub struct Forwarding<S> {
    inner: S,
    credential: ServiceCredential,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Forwarding<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = tower::BoxError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, tower::BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The client span's context goes first, so the forwarded
        // `traceparent` (the caller's) does not replace it.
        let span = crate::trace::client_span(request.uri().path());
        if let Some(span) = &span {
            crate::telemetry::inject(span, request.headers_mut());
        }
        if let Some(credential) = self.credential.header() {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, (*credential).clone());
        }
        if let Some(context) = RequestContext::current()
            && let Err(status) = context.apply(request.headers_mut(), Instant::now())
        {
            crate::trace::client_end(span)(status.code());
            return Box::pin(std::future::ready(Err(status.into())));
        }
        let future = self.inner.call(request);
        let instrument = span.clone().unwrap_or_else(tracing::Span::none);
        let guard = EndGuard::new(crate::trace::client_end(span));
        Box::pin(
            async move {
                match future.await {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        let body = guard.observe(body, &parts.headers);
                        Ok(Response::from_parts(parts, body))
                    }
                    Err(err) => {
                        guard.fail(tonic::Code::Unavailable);
                        Err(err.into())
                    }
                }
            }
            .instrument(instrument),
        )
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, Service, ServiceExt};
    use tower_test::mock;

    use std::time::Duration;

    use http::HeaderMap;
    use http::header::HeaderValue;

    use super::*;

    #[test]
    fn grpc_timeout_round_trips() {
        for (text, duration) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            assert_eq!(parse_grpc_timeout(text), Some(duration), "{text}");
        }
        for bad in ["", "S", "123456789S", "1s", "-1S", "1.5S", "١S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        for duration in [
            Duration::from_nanos(1),
            Duration::from_millis(1500),
            Duration::from_secs(30),
            Duration::from_secs(86_400 * 365),
        ] {
            let text = format_grpc_timeout(duration);
            let back = parse_grpc_timeout(&text).unwrap();
            assert!(back >= duration, "{text} is shorter than {duration:?}");
            assert!(text.len() <= 9, "{text}");
        }
    }

    #[test]
    fn incoming_context_creates_a_request_id_and_keeps_forwarded_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-agentmesh-tenant", HeaderValue::from_static("acme"));
        headers.insert("authorization", HeaderValue::from_static("Bearer secret"));
        headers.insert("grpc-timeout", HeaderValue::from_static("2S"));
        let now = Instant::now();
        let context = RequestContext::from_incoming(&mut headers, now);
        assert_eq!(context.header("x-agentmesh-tenant"), Some("acme"));
        assert!(context.header("authorization").is_none());
        let id = context.request_id().unwrap().to_owned();
        assert_eq!(headers.get(REQUEST_ID).unwrap(), id.as_str());
        assert_eq!(context.deadline(), Some(now + Duration::from_secs(2)));

        let mut outgoing = HeaderMap::new();
        outgoing.insert("grpc-timeout", HeaderValue::from_static("10S"));
        context
            .apply(&mut outgoing, now + Duration::from_millis(500))
            .unwrap();
        assert_eq!(outgoing.get(REQUEST_ID).unwrap(), id.as_str());
        assert!(outgoing.get("authorization").is_none());
        let left = parse_grpc_timeout(outgoing[GRPC_TIMEOUT].to_str().unwrap()).unwrap();
        assert_eq!(left, Duration::from_millis(1500));

        let err = context
            .apply(&mut HeaderMap::new(), now + Duration::from_secs(3))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_handler_call_forwards_the_incoming_metadata() {
        // The "downstream" channel, seen through the forwarding layer.
        let (downstream, mut downstream_handle) = mock::pair::<Request<()>, Response<()>>();
        let client = ForwardingLayer::default().layer(downstream);

        // The "handler": makes one downstream call while serving.
        let (handler, mut handler_handle) = mock::pair::<Request<()>, Response<()>>();
        let mut server = PropagationLayer.layer(handler);

        let incoming = Request::builder()
            .uri("/svc.S/M")
            .header("x-request-id", "req-1")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        let serving =
            tokio::spawn(
                async move { server.ready().await.unwrap().call(incoming).await.unwrap() },
            );
        let (request, reply) = handler_handle.next_request().await.unwrap();
        let context = request
            .extensions()
            .get::<RequestContext>()
            .unwrap()
            .clone();
        // What the handler would do: call downstream inside its context.
        let downstream_call = tokio::spawn(context.scope(async move {
            let mut client = client;
            client
                .ready()
                .await
                .unwrap()
                .call(Request::builder().uri("/down.D/M").body(()).unwrap())
                .await
        }));
        let (sent, down_reply) = downstream_handle.next_request().await.unwrap();
        assert_eq!(sent.headers()[REQUEST_ID], "req-1");
        assert!(
            sent.headers()["traceparent"]
                .to_str()
                .unwrap()
                .starts_with("00-0af7")
        );
        down_reply.send_response(Response::new(()));
        drop(downstream_call.await.unwrap().unwrap());

        reply.send_response(Response::new(()));
        let response = serving.await.unwrap();
        assert_eq!(response.headers()[REQUEST_ID], "req-1");
    }
}
