//! The framing of request messages, checked before tonic decodes them, so
//! that a caller's malformed or oversized request answers with the code
//! gRPC's status guidance gives it.
//!
//! A gRPC request body is a run of messages, each a 5-byte prefix (a
//! compression flag and a big-endian length) and that many bytes. tonic
//! answers a message longer than its limit with OUT_OF_RANGE and a body that
//! ends inside a message with INTERNAL; gRPC says RESOURCE_EXHAUSTED for the
//! first ("a message larger than the limit") and the second is the caller's
//! malformed request, INVALID_ARGUMENT. [`RequestFramesLayer`] follows the
//! prefixes as the body's data passes: when a prefix announces more than
//! `server.max_message_bytes`, the body fails with RESOURCE_EXHAUSTED before
//! tonic sees that prefix (and before it reserves the memory); when the
//! body ends inside a message, it fails with INVALID_ARGUMENT. tonic keeps
//! the code of a status that a request body fails with.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf as _;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

/// The length of a message prefix.
const PREFIX: usize = 5;

/// Checks the message framing of every request body against `max_message`
/// bytes (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct RequestFramesLayer {
    max_message: usize,
}

impl RequestFramesLayer {
    /// Messages of at most `max_message` bytes (`server.max_message_bytes`).
    pub fn new(max_message: usize) -> Self {
        Self { max_message }
    }
}

impl<S> tower::Layer<S> for RequestFramesLayer {
    type Service = RequestFrames<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestFrames {
            inner,
            max_message: self.max_message,
        }
    }
}

/// The service made by [`RequestFramesLayer`].
#[derive(Debug, Clone)]
pub struct RequestFrames<S> {
    inner: S,
    max_message: usize,
}

impl<S> tower::Service<Request<Body>> for RequestFrames<S>
where
    S: tower::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let max_message = self.max_message;
        self.inner
            .call(request.map(|body| Body::new(CheckedFrames::new(body, max_message))))
    }
}

/// Where the body is in its run of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// `read` bytes of a prefix seen (`prefix` holds them).
    Prefix { read: usize },
    /// `left` bytes of a message still to come.
    Message { left: usize },
    /// The body failed; nothing more is passed on.
    Failed,
}

pin_project_lite::pin_project! {
    /// A request body whose message framing is checked as it passes.
    struct CheckedFrames<B> {
        #[pin]
        inner: B,
        max_message: usize,
        prefix: [u8; PREFIX],
        position: Position,
    }
}

impl<B> CheckedFrames<B> {
    fn new(inner: B, max_message: usize) -> Self {
        Self {
            inner,
            max_message,
            prefix: [0; PREFIX],
            position: Position::Prefix { read: 0 },
        }
    }
}

/// Follows `data` through the framing from `position`; the new position, or
/// the status to fail with.
fn advance(
    mut data: &[u8],
    position: &mut Position,
    prefix: &mut [u8; PREFIX],
    max_message: usize,
) -> Result<(), Status> {
    while !data.is_empty() {
        match *position {
            Position::Failed => return Ok(()),
            Position::Message { left } => {
                let step = left.min(data.len());
                data.advance(step);
                *position = match left - step {
                    0 => Position::Prefix { read: 0 },
                    left => Position::Message { left },
                };
            }
            Position::Prefix { read } => {
                let step = (PREFIX - read).min(data.len());
                if let (Some(into), Some(from)) =
                    (prefix.get_mut(read..read + step), data.get(..step))
                {
                    into.copy_from_slice(from);
                }
                data.advance(step);
                let read = read + step;
                if read < PREFIX {
                    *position = Position::Prefix { read };
                    continue;
                }
                let [_, a, b, c, d] = *prefix;
                let length =
                    usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
                if length > max_message {
                    return Err(Status::resource_exhausted(format!(
                        "the request message is {length} bytes; this server accepts at most \
                         {max_message} (server.max_message_bytes)"
                    )));
                }
                *position = match length {
                    0 => Position::Prefix { read: 0 },
                    left => Position::Message { left },
                };
            }
        }
    }
    Ok(())
}

impl<B> HttpBody for CheckedFrames<B>
where
    B: HttpBody<Data = bytes::Bytes, Error = Status>,
{
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.position == Position::Failed {
            return Poll::Ready(None);
        }
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) => {
                let ended_inside = match *this.position {
                    Position::Prefix { read } => read > 0,
                    Position::Message { .. } => true,
                    Position::Failed => false,
                };
                if !ended_inside {
                    return Poll::Ready(None);
                }
                *this.position = Position::Failed;
                return Poll::Ready(Some(Err(Status::invalid_argument(
                    "the request ended inside a message: its length prefix announced more \
                     bytes than were sent",
                ))));
            }
            other => return other,
        };
        if let Some(data) = frame.data_ref()
            && let Err(status) = advance(data, this.position, this.prefix, *this.max_message)
        {
            *this.position = Position::Failed;
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.position == Position::Failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tonic::Code;

    use super::*;

    fn body(chunks: Vec<Vec<u8>>, max: usize) -> CheckedFrames<Body> {
        let frames = chunks
            .into_iter()
            .map(|chunk| Ok::<_, Status>(Frame::data(bytes::Bytes::from(chunk))));
        let inner = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames.collect::<Vec<_>>(),
        )));
        CheckedFrames::new(inner, max)
    }

    fn message(length: u32, payload: usize) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, payload));
        bytes
    }

    #[tokio::test]
    async fn well_framed_messages_pass_in_any_split() {
        let mut all = message(3, 3);
        all.extend(message(0, 0));
        all.extend(message(10, 10));
        for split in 0..all.len() {
            let (a, b) = all.split_at(split);
            let collected = body(vec![a.to_vec(), b.to_vec()], 10).collect().await;
            assert_eq!(
                collected.unwrap().to_bytes().len(),
                all.len(),
                "split {split}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_message_is_resource_exhausted_before_it_passes() {
        let mut oversized = message(3, 3);
        oversized.extend(message(11, 0));
        let mut checked = body(vec![oversized], 10);
        let err = checked.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(err.message().contains("server.max_message_bytes"));
        assert!(checked.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_ending_inside_a_message_is_invalid_argument() {
        for cut in [message(5, 2), vec![0, 0]] {
            let err = body(vec![cut], 10).collect().await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
        }
    }
}
