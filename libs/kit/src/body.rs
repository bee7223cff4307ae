//! A response body wrapper that reports how a call ended.
//!
//! A gRPC call's status travels in the trailers at the end of the response body
//! (or in the headers for an error with no messages), so code that wants to
//! know how a call ended, or hold a resource until it has, wraps the body in an
//! [`ObservedBody`] and is called back exactly once with the final code.
//! The metrics layers also have it count the data frames that pass (one per
//! gRPC message, near enough: tonic writes each encoded message as a frame),
//! which costs one atomic add per frame.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;

/// Called once with the call's final status code.
pub type OnEnd = Box<dyn FnOnce(Code) + Send + Sync>;

pin_project_lite::pin_project! {
    /// Wraps a gRPC response body and calls `on_end` with the status code when
    /// the trailers pass, when the body ends without them (UNKNOWN), or when the
    /// body is dropped unfinished (CANCELLED: the client went away).
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        code_from_headers: Option<Code>,
        on_end: Option<OnEnd>,
        messages: Option<prometheus::IntCounter>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(on_end) = this.on_end.take() {
                on_end(this.code_from_headers.unwrap_or(Code::Cancelled));
            }
        }
    }
}

impl<B> std::fmt::Debug for ObservedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody").finish_non_exhaustive()
    }
}

impl<B> ObservedBody<B> {
    /// Wraps `inner`; `headers` are the response headers, which carry the
    /// status of a trailers-only (error) response.
    pub fn new(inner: B, headers: &HeaderMap, on_end: OnEnd) -> Self {
        Self {
            inner,
            code_from_headers: grpc_code(headers),
            on_end: Some(on_end),
            messages: None,
        }
    }

    /// Also counts each data frame that passes in `messages`.
    pub fn counting_messages(mut self, messages: prometheus::IntCounter) -> Self {
        self.messages = Some(messages);
        self
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_data() {
                    if let Some(messages) = this.messages.as_ref() {
                        messages.inc();
                    }
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(on_end) = this.on_end.take()
                {
                    on_end(grpc_code(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(on_end) = this.on_end.take() {
                    on_end(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(on_end) = this.on_end.take() {
                    on_end(this.code_from_headers.unwrap_or(Code::Unknown));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Holds an [`OnEnd`] while the response future runs, so a call dropped
/// before its response (the client went away) or failed in a layer is still
/// reported, as CANCELLED or INTERNAL.
pub struct EndGuard(Option<OnEnd>);

impl std::fmt::Debug for EndGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndGuard").finish_non_exhaustive()
    }
}

impl EndGuard {
    /// Guards `on_end`.
    pub fn new(on_end: OnEnd) -> Self {
        Self(Some(on_end))
    }

    /// Wraps the response body so that it reports instead.
    pub fn observe<B>(mut self, body: B, headers: &HeaderMap) -> ObservedBody<B> {
        let on_end = self.0.take().unwrap_or_else(|| Box::new(|_| {}));
        ObservedBody::new(body, headers, on_end)
    }

    /// Reports `code` now (the call failed before it had a response).
    pub fn fail(mut self, code: Code) {
        if let Some(on_end) = self.0.take() {
            on_end(code);
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Some(on_end) = self.0.take() {
            on_end(Code::Cancelled);
        }
    }
}

/// The `grpc-status` in a header map, if there is one.
pub fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// The name Prometheus users know for a code (grpc-go's spelling, as in
/// go-grpc-prometheus dashboards).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes as Chunk;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<Code>>>, OnEnd) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (seen, Box::new(move |code| sink.lock().unwrap().push(code)))
    }

    fn body(
        frames: Vec<Frame<Chunk>>,
    ) -> impl Body<Data = Chunk, Error = std::convert::Infallible> {
        StreamBody::new(futures::stream::iter(frames.into_iter().map(Ok)))
    }

    fn trailers(code: i32) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", code.to_string().parse().unwrap());
        map
    }

    #[tokio::test]
    async fn reports_the_code_in_the_trailers_once() {
        let (seen, on_end) = recorder();
        let frames = vec![
            Frame::data(Chunk::from_static(&[0; 5])),
            Frame::trailers(trailers(5)),
        ];
        let observed = ObservedBody::new(body(frames), &HeaderMap::new(), on_end);
        observed.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Code::NotFound]);
    }

    #[tokio::test]
    async fn data_frames_are_counted_as_messages() {
        let (seen, on_end) = recorder();
        let frames = vec![
            Frame::data(Chunk::from_static(&[0; 5])),
            Frame::data(Chunk::from_static(&[0; 5])),
            Frame::trailers(trailers(0)),
        ];
        let messages = prometheus::IntCounter::new("m", "m").unwrap();
        let observed = ObservedBody::new(body(frames), &HeaderMap::new(), on_end)
            .counting_messages(messages.clone());
        observed.collect().await.unwrap();
        assert_eq!(messages.get(), 2);
        assert_eq!(*seen.lock().unwrap(), vec![Code::Ok]);
    }

    #[tokio::test]
    async fn a_trailers_only_response_reports_the_header_code() {
        let (seen, on_end) = recorder();
        let observed = ObservedBody::new(body(vec![]), &trailers(12), on_end);
        observed.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Code::Unimplemented]);
    }

    #[tokio::test]
    async fn dropping_an_unfinished_body_reports_cancelled() {
        let (seen, on_end) = recorder();
        let frames = vec![Frame::data(Chunk::from_static(&[0; 5]))];
        let mut observed = Box::pin(ObservedBody::new(body(frames), &HeaderMap::new(), on_end));
        observed.frame().await.unwrap().unwrap();
        drop(observed);
        assert_eq!(*seen.lock().unwrap(), vec![Code::Cancelled]);
    }
}
