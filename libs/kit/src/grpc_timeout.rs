//! The caller's `grpc-timeout`, checked and kept with the right code.
//!
//! tonic's transport ignores a `grpc-timeout` it cannot parse (`-1S`,
//! `abc`, `5X`, nine digits) and answers CANCELLED ("Timeout expired") when
//! a valid one runs out. gRPC says a malformed header is the caller's
//! mistake and a deadline that passes is DEADLINE_EXCEEDED, so this layer,
//! inside tonic's own timer, answers:
//!
//! * INVALID_ARGUMENT naming the header for a value that is not 1 to 8
//!   digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`);
//! * DEADLINE_EXCEEDED at once for a deadline shorter than [`MARGIN`]
//!   (`1n`: no call can be served in it);
//! * DEADLINE_EXCEEDED when the deadline passes before the response
//!   begins. Its timer is set [`MARGIN`] before the deadline, so it fires no
//!   later than tonic's (whose timer started a moment earlier on the same
//!   millisecond-grained clock) and the caller hears the right code.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;

use crate::request_context::{GRPC_TIMEOUT, parse_grpc_timeout};
use crate::status::quote;

/// How much earlier than the caller's deadline the call is ended: one tick
/// of the runtime's timer.
pub const MARGIN: Duration = Duration::from_millis(1);

/// Checks `grpc-timeout` and ends calls whose deadline passes with
/// DEADLINE_EXCEEDED (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTimeoutLayer;

impl<S> tower::Layer<S> for GrpcTimeoutLayer {
    type Service = GrpcTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTimeout { inner }
    }
}

/// The service made by [`GrpcTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTimeout<S> {
    inner: S,
}

/// What a request's `grpc-timeout` says.
#[derive(Debug, PartialEq, Eq)]
pub enum Timeout {
    /// No header: no deadline.
    None,
    /// A deadline this far away.
    After(Duration),
    /// A header that is not a timeout; the status to answer.
    Invalid(String),
}

impl Timeout {
    /// Reads the header of `headers`.
    pub fn of(headers: &http::HeaderMap) -> Self {
        let Some(value) = headers.get(GRPC_TIMEOUT) else {
            return Self::None;
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        match parse_grpc_timeout(&text) {
            Some(timeout) => Self::After(timeout),
            None => Self::Invalid(format!(
                "grpc-timeout: {} is not a timeout; use 1 to 8 digits and a unit \
                 (H, M, S, m, u or n), e.g. 500m",
                quote(&text)
            )),
        }
    }
}

impl<S, ReqBody> tower::Service<Request<ReqBody>> for GrpcTimeout<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let timeout = match Timeout::of(request.headers()) {
            Timeout::None => return Box::pin(self.inner.call(request)),
            Timeout::Invalid(message) => {
                let status = Status::invalid_argument(message);
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
            Timeout::After(timeout) => timeout,
        };
        let Some(left) = timeout.checked_sub(MARGIN).filter(|left| !left.is_zero()) else {
            return Box::pin(std::future::ready(Ok(expired(timeout).into_http())));
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(left, future).await {
                Ok(response) => response,
                Err(_) => Ok(expired(timeout).into_http()),
            }
        })
    }
}

/// DEADLINE_EXCEEDED for a call given `timeout`.
fn expired(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the caller's deadline (grpc-timeout {timeout:?}) passed before the call was answered"
    ))
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tower::{Layer, Service, ServiceExt};
    use tower_test::mock;

    use super::*;

    fn request(timeout: Option<&str>) -> Request<()> {
        let mut request = Request::builder().uri("/a.B/C");
        if let Some(timeout) = timeout {
            request = request.header(GRPC_TIMEOUT, timeout);
        }
        request.body(()).unwrap()
    }

    fn code(response: &Response<Body>) -> Option<Code> {
        Status::from_header_map(response.headers()).map(|status| status.code())
    }

    #[tokio::test]
    async fn malformed_timeouts_are_invalid_argument() {
        let (inner, _handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut service = GrpcTimeoutLayer.layer(inner);
        for bad in ["-1S", "abc", "5X", "123456789S", "", "S", "1.5S"] {
            let response = service
                .ready()
                .await
                .unwrap()
                .call(request(Some(bad)))
                .await
                .unwrap();
            let status = Status::from_header_map(response.headers()).unwrap();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
            assert!(status.message().starts_with("grpc-timeout: "), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_tiny_timeout_is_deadline_exceeded_at_once() {
        let (inner, _handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut service = GrpcTimeoutLayer.layer(inner);
        for tiny in ["1n", "0S", "999u", "1m"] {
            let response = service
                .ready()
                .await
                .unwrap()
                .call(request(Some(tiny)))
                .await
                .unwrap();
            assert_eq!(code(&response), Some(Code::DeadlineExceeded), "{tiny}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_is_deadline_exceeded() {
        let (inner, mut handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut service = GrpcTimeoutLayer.layer(inner);
        let call = service.ready().await.unwrap().call(request(Some("50m")));
        // The handler never answers.
        let _pending = handle.next_request().await.unwrap();
        let response = call.await.unwrap();
        assert_eq!(code(&response), Some(Code::DeadlineExceeded));
    }

    #[tokio::test]
    async fn valid_or_absent_timeouts_pass() {
        let (inner, mut handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut service = GrpcTimeoutLayer.layer(inner);
        for timeout in [None, Some("10S"), Some("99999999H")] {
            let call = service.ready().await.unwrap().call(request(timeout));
            let (_, reply) = handle.next_request().await.unwrap();
            reply.send_response(Response::new(Body::empty()));
            assert_eq!(code(&call.await.unwrap()), None);
        }
    }
}
