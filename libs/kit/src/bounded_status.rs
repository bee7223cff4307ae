//! The last guard on error size: every status a service answers passes
//! [`crate::status::bounded`] on its way out.
//!
//! Handlers build their statuses with the bounded helpers of
//! [`crate::status`]; this layer makes the bound hold for what they miss
//! (a status from a library, a message that quotes a caller's value at
//! length). It reads the two status headers where the status travels: in
//! the response headers of a trailers-only answer, or in the trailers at
//! the end of the body. Only when one is over its size is the status decoded,
//! cut and written back, so a normal answer costs two length checks.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

use tower::layer::util::Stack;

use crate::grpc_timeout::GrpcTimeoutLayer;
use crate::request_frames::RequestFramesLayer;
use crate::status::{MAX_DETAILS_BYTES, MAX_MESSAGE_WIRE_BYTES, bounded};

/// `grpc-status-details-bin` is base64 without padding: 4 characters per 3
/// bytes.
const MAX_DETAILS_HEADER_BYTES: usize = MAX_DETAILS_BYTES.div_ceil(3) * 4;

/// The checks at a server's edge, outermost first: [`BoundedStatusLayer`],
/// [`crate::grpc_timeout::GrpcTimeoutLayer`] and
/// [`crate::request_frames::RequestFramesLayer`] for messages of at most
/// `max_message` bytes.
pub fn edge_layers(
    max_message: usize,
) -> Stack<RequestFramesLayer, Stack<GrpcTimeoutLayer, BoundedStatusLayer>> {
    Stack::new(
        RequestFramesLayer::new(max_message),
        Stack::new(GrpcTimeoutLayer, BoundedStatusLayer),
    )
}

/// Bounds the status of every response (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct BoundedStatusLayer;

impl<S> tower::Layer<S> for BoundedStatusLayer {
    type Service = BoundedStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BoundedStatus { inner }
    }
}

/// The service made by [`BoundedStatusLayer`].
#[derive(Debug, Clone)]
pub struct BoundedStatus<S> {
    inner: S,
}

impl<S, ReqBody> tower::Service<Request<ReqBody>> for BoundedStatus<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let (mut parts, body) = response.into_parts();
            bound_headers(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                Body::new(BoundedTrailers { inner: body }),
            ))
        })
    }
}

/// Rewrites the status in `headers` when its message or details are over
/// their size.
pub fn bound_headers(headers: &mut HeaderMap) {
    let over = |name: &str, max: usize| headers.get(name).is_some_and(|value| value.len() > max);
    if !over("grpc-message", MAX_MESSAGE_WIRE_BYTES)
        && !over("grpc-status-details-bin", MAX_DETAILS_HEADER_BYTES)
    {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if bounded(status).add_header(headers).is_err() {
        // Only a message that cannot be a header value fails; the code
        // alone is still an answer.
        tracing::debug!("a bounded status could not be written back");
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers pass [`bound_headers`].
    struct BoundedTrailers<B> {
        #[pin]
        inner: B,
    }
}

impl<B: HttpBody> HttpBody for BoundedTrailers<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx).map(|frame| {
            frame.map(|frame| {
                frame.map(|mut frame| {
                    if let Some(trailers) = frame.trailers_mut() {
                        bound_headers(trailers);
                    }
                    frame
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tonic::Code;
    use tower::{Layer, Service, ServiceExt};
    use tower_test::mock;

    use super::*;

    fn header_bytes(headers: &HeaderMap) -> usize {
        headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum()
    }

    #[tokio::test]
    async fn a_huge_trailers_only_status_is_cut() {
        let (inner, mut handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut service = BoundedStatusLayer.layer(inner);
        let call = service.ready().await.unwrap().call(Request::new(()));
        let (_, reply) = handle.next_request().await.unwrap();
        let id = "r".repeat(1 << 20);
        reply.send_response(Status::not_found(format!("run {id} not found")).into_http());
        let response = call.await.unwrap();
        assert!(header_bytes(response.headers()) < 8 * 1024);
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().starts_with("run rrr"));
    }

    #[tokio::test]
    async fn huge_trailers_are_cut_and_small_ones_kept() {
        let (inner, mut handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut service = BoundedStatusLayer.layer(inner);
        for (message, small) in [("x".repeat(1 << 20), false), ("fine".to_owned(), true)] {
            let call = service.ready().await.unwrap().call(Request::new(()));
            let (_, reply) = handle.next_request().await.unwrap();
            let mut trailers = HeaderMap::new();
            Status::invalid_argument(message.clone())
                .add_header(&mut trailers)
                .unwrap();
            let frames = vec![
                Ok::<_, Status>(Frame::data(bytes::Bytes::from_static(b"\0\0\0\0\0"))),
                Ok(Frame::trailers(trailers)),
            ];
            reply.send_response(Response::new(Body::new(http_body_util::StreamBody::new(
                futures::stream::iter(frames),
            ))));
            let collected = call.await.unwrap().into_body().collect().await.unwrap();
            let trailers = collected.trailers().unwrap();
            assert!(header_bytes(trailers) < 8 * 1024);
            let status = Status::from_header_map(trailers).unwrap();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert_eq!(status.message() == message, small);
        }
    }
}
