//! Load shedding: a bound on the calls a server handles at once.
//!
//! A call over the bound is refused at once with UNAVAILABLE (retryable, so a
//! client backs off or tries another replica) instead of waiting in a queue
//! that only grows under overload. A call holds its place until its response
//! body ends, so a long stream counts for as long as it runs. Health checks
//! are never refused: an overloaded server must still answer its probes.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::body::Body;

use crate::body::EndGuard;

/// Path prefix of the health service, which is never shed.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Refuses calls beyond `limit` in flight with UNAVAILABLE.
#[derive(Debug, Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    shed: Option<prometheus::IntCounter>,
}

impl InFlightLimitLayer {
    /// A limit of `limit` calls in flight across every connection.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            shed: None,
        }
    }

    /// Also counts refused calls in `agentmesh_shed_requests_total`,
    /// registered in `registry`.
    pub fn counted(mut self, registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let shed = prometheus::IntCounter::new(
            "agentmesh_shed_requests_total",
            "Calls refused with UNAVAILABLE because the server was at its limit of calls in flight (server.max_concurrent_requests).",
        )?;
        registry.register(Box::new(shed.clone()))?;
        self.shed = Some(shed);
        Ok(self)
    }
}

impl<S> tower::Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`InFlightLimitLayer`].
#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    layer: InFlightLimitLayer,
}

impl<S, ReqBody> tower::Service<Request<ReqBody>> for InFlightLimit<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            if let Some(shed) = &self.layer.shed {
                shed.inc();
            }
            let status = tonic::Status::unavailable(format!(
                "server is at its limit of {} calls in flight (server.max_concurrent_requests); retry with backoff",
                self.layer.limit
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let guard = EndGuard::new(Box::new(move |_| drop(permit)));
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let (parts, body) = response.into_parts();
            let body = guard.observe(body, &parts.headers);
            Ok(Response::from_parts(parts, Body::new(body)))
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, Service, ServiceExt};
    use tower_test::mock;

    use super::*;

    fn request(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn refuses_beyond_the_limit_and_frees_the_place_when_the_call_ends() {
        let (inner, mut handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut service = InFlightLimitLayer::new(1).layer(inner);

        let first = service.ready().await.unwrap().call(request("/a.B/C"));
        let (_, reply) = handle.next_request().await.unwrap();
        // A stream that is still open (an empty body would end the call at once).
        let open =
            futures::stream::pending::<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>();
        reply.send_response(Response::new(Body::new(http_body_util::StreamBody::new(
            open,
        ))));
        let first = first.await.unwrap();

        // The first call's body is still open: it holds the only place.
        let refused = service
            .ready()
            .await
            .unwrap()
            .call(request("/a.B/C"))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("max_concurrent_requests"));

        // Health checks pass even now.
        let health = service
            .ready()
            .await
            .unwrap()
            .call(request("/grpc.health.v1.Health/Check"));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Response::new(Body::empty()));
        health.await.unwrap();

        drop(first);
        let again = service.ready().await.unwrap().call(request("/a.B/C"));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Response::new(Body::empty()));
        assert!(tonic::Status::from_header_map(again.await.unwrap().headers()).is_none());
    }
}
