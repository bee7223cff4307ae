//! Reads a gRPC-Web request's body over HTTP/1.1 before the call goes on.
//!
//! An HTTP/1.1 server that answers before it has read the whole request
//! closes the connection after its answer (the unread rest cannot be told
//! from the next request). A call refused at once — no credential, load
//! shed, a draining server — would then reach a client still writing its
//! body as a broken pipe, not as the status it was given. gRPC-Web calls
//! carry exactly one request message (unary and server-streaming only),
//! so reading it first costs nothing the call would not wait for anyway.
//!
//! The read is bounded in size (a message over the limit goes on as it
//! is, for the request-size guard to refuse) and in time (a client that
//! stalls goes on as it is too): nothing is refused here.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};
use tokio::time::Instant;
use tonic::body::Body;

/// How long the body may take to arrive before the call goes on without
/// waiting for the rest.
const READ_WITHIN: Duration = Duration::from_secs(10);

/// Whether `request` is gRPC-Web over HTTP/1.x, whose body is read first.
pub(super) fn wanted<B>(request: &Request<B>) -> bool {
    request.version() < http::Version::HTTP_2
        && request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc-web"))
}

/// The largest body read first for messages of up to `max_message_bytes`:
/// the 5-byte frame header, base64 (`grpc-web-text`) growing it by a third.
pub(super) fn limit_for(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_add(5).saturating_mul(4) / 3 + 4
}

/// `request` with as much of its body read as `limit` and [`READ_WITHIN`]
/// allow; the body it goes on with yields what was read, then the rest.
pub(super) async fn read_first(request: Request<Body>, limit: usize) -> Request<Body> {
    let (parts, mut body) = request.into_parts();
    let mut read = BytesMut::new();
    let deadline = Instant::now() + READ_WITHIN;
    let mut failed = None;
    while read.len() <= limit {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => read.extend_from_slice(&data),
                // A request has no trailers in gRPC-Web; pass any on.
                Err(frame) => {
                    failed = Some(Ok(frame));
                    break;
                }
            },
            Ok(Some(Err(status))) => {
                failed = Some(Err(status));
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let first: Result<Frame<Bytes>, tonic::Status> = Ok(Frame::data(read.freeze()));
    let then = futures::stream::iter(failed);
    let rest = BodyStream::new(body);
    let stream = futures::stream::once(async move { first })
        .chain(then)
        .chain(rest);
    Request::from_parts(parts, Body::new(StreamBody::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: http::Version, content_type: &str, body: Body) -> Request<Body> {
        Request::builder()
            .version(version)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body)
            .unwrap()
    }

    #[test]
    fn only_grpc_web_over_http1_is_read_first() {
        let body = || Body::empty();
        let web = "application/grpc-web+proto";
        assert!(wanted(&request(http::Version::HTTP_11, web, body())));
        assert!(wanted(&request(
            http::Version::HTTP_11,
            "application/grpc-web-text",
            body()
        )));
        assert!(!wanted(&request(http::Version::HTTP_2, web, body())));
        assert!(!wanted(&request(
            http::Version::HTTP_11,
            "application/json",
            body()
        )));
        assert_eq!(limit_for(1024), (1029 * 4) / 3 + 4);
        assert!(limit_for(usize::MAX) > 0);
    }

    #[tokio::test]
    async fn the_body_goes_on_whole_read_or_not() {
        let chunks =
            ["\0\0\0\0\x02", "hi"].map(|s| Ok::<_, tonic::Status>(Frame::data(Bytes::from(s))));
        let body = Body::new(StreamBody::new(futures::stream::iter(chunks)));
        let read = read_first(
            request(http::Version::HTTP_11, "application/grpc-web", body),
            64,
        )
        .await;
        let bytes = read.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"\0\0\0\0\x02hi");

        // Over the limit: what was read, then the rest, nothing lost.
        let big = (0..4).map(|_| Ok::<_, tonic::Status>(Frame::data(Bytes::from(vec![7u8; 40]))));
        let body = Body::new(StreamBody::new(futures::stream::iter(big)));
        let read = read_first(
            request(http::Version::HTTP_11, "application/grpc-web", body),
            50,
        )
        .await;
        let bytes = read.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 160);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_goes_on_after_the_read_deadline() {
        let first: Result<_, tonic::Status> = Ok(Frame::data(Bytes::from_static(b"ab")));
        let stalled = futures::stream::once(async { first }).chain(futures::stream::pending());
        let body = Body::new(StreamBody::new(stalled));
        let read = read_first(
            request(http::Version::HTTP_11, "application/grpc-web", body),
            64,
        )
        .await;
        let mut body = read.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"ab");
    }
}
