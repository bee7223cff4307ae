//! Ending open response streams when the server shuts down.
//!
//! Graceful HTTP/2 shutdown waits for every open stream to end, and some
//! streams never end by themselves (health `Watch`, subscriptions). So a
//! shutdown moves a [`Drain`] through two phases that [`DrainLayer`] applies to
//! every response body still open:
//!
//! * [`DrainPhase::Draining`]: streams of methods marked "end on drain" (those
//!   that would run forever) end now;
//! * [`DrainPhase::Forced`]: the grace period is nearly over; every stream
//!   still open ends now.
//!
//! A stream is ended cleanly, between messages, with the trailers of an
//! UNAVAILABLE status saying the server is shutting down, which tells a gRPC
//! client to reconnect (to another replica) and resume. Messages the stream has
//! already produced go out first (a health watch's NOT_SERVING, say).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tonic::body::Body;

/// Where a shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainPhase {
    /// Not shutting down.
    Running,
    /// Shutting down: endless streams end.
    Draining,
    /// The grace period is nearly over: every stream ends.
    Forced,
}

/// The shutdown phase, shared by the server and its handlers.
#[derive(Debug, Clone)]
pub struct Drain {
    phase: Arc<watch::Sender<DrainPhase>>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// Starts in [`DrainPhase::Running`].
    pub fn new() -> Self {
        Self {
            phase: Arc::new(watch::Sender::new(DrainPhase::Running)),
        }
    }

    /// Moves to `phase` (never backwards).
    pub fn advance(&self, phase: DrainPhase) {
        self.phase.send_if_modified(|current| {
            let moved = phase > *current;
            if moved {
                *current = phase;
            }
            moved
        });
    }

    /// The current phase.
    pub fn phase(&self) -> DrainPhase {
        *self.phase.borrow()
    }

    /// Resolves once a shutdown has begun: handlers of long streams select on
    /// this to finish their stream in their own words.
    pub async fn draining(&self) {
        let mut receiver = self.phase.subscribe();
        // An error means the sender is gone, which only happens at exit.
        let _ = receiver
            .wait_for(|phase| *phase >= DrainPhase::Draining)
            .await;
    }

    /// Resolves once the grace period is nearly over (every stream still
    /// open ends now): work a shutdown lets finish must stop waiting.
    pub async fn forced(&self) {
        let mut receiver = self.phase.subscribe();
        let _ = receiver
            .wait_for(|phase| *phase >= DrainPhase::Forced)
            .await;
    }

    fn subscribe(&self) -> watch::Receiver<DrainPhase> {
        self.phase.subscribe()
    }
}

/// Applies a [`Drain`] to response bodies.
#[derive(Debug, Clone)]
pub struct DrainLayer {
    drain: Drain,
    end_on_drain: Arc<HashSet<String>>,
}

impl DrainLayer {
    /// `end_on_drain` lists the request paths (`/pkg.Service/Method`) whose
    /// streams end as soon as draining begins.
    pub fn new(drain: Drain, end_on_drain: HashSet<String>) -> Self {
        Self {
            drain,
            end_on_drain: Arc::new(end_on_drain),
        }
    }
}

impl<S> tower::Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`DrainLayer`].
#[derive(Debug, Clone)]
pub struct DrainService<S> {
    inner: S,
    layer: DrainLayer,
}

impl<S, ReqBody> tower::Service<Request<ReqBody>> for DrainService<S>
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
        let ends_at = if self.layer.end_on_drain.contains(request.uri().path()) {
            DrainPhase::Draining
        } else {
            DrainPhase::Forced
        };
        let phase = self.layer.drain.subscribe();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| Body::new(DrainBody::new(body, phase, ends_at))))
        })
    }
}

/// A response body that ends early, with UNAVAILABLE trailers, once the drain
/// reaches `ends_at`.
struct DrainBody {
    inner: Body,
    phase: WatchStream<DrainPhase>,
    ends_at: DrainPhase,
    state: BodyState,
}

/// How many ready messages a stream may still send once it is told to end.
const FLUSH_LIMIT: u32 = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Open,
    /// Told to end: sending what is ready (at most this many more), then the
    /// shutdown trailers.
    Flushing(u32),
    /// The inner body ended (its trailers went out) or we ended it.
    Done,
}

impl DrainBody {
    fn new(inner: Body, phase: watch::Receiver<DrainPhase>, ends_at: DrainPhase) -> Self {
        Self {
            inner,
            phase: WatchStream::new(phase),
            ends_at,
            state: BodyState::Open,
        }
    }

    fn shutdown_trailers() -> HeaderMap {
        tonic::Status::unavailable(
            "server is shutting down; reconnect (to another replica) and resume",
        )
        .into_http::<()>()
        .into_parts()
        .0
        .headers
    }
}

impl HttpBody for DrainBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.state == BodyState::Done {
            return Poll::Ready(None);
        }
        // Take every phase change there is; a pending poll registers the waker.
        let mut phase = DrainPhase::Running;
        while let Poll::Ready(Some(next)) = Pin::new(&mut self.phase).poll_next(cx) {
            phase = next;
        }
        if phase >= self.ends_at && self.state == BodyState::Open {
            self.state = BodyState::Flushing(FLUSH_LIMIT);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match (&polled, self.state) {
            (Poll::Ready(None), _) => self.state = BodyState::Done,
            (Poll::Ready(Some(Ok(frame))), _) if frame.is_trailers() => {
                self.state = BodyState::Done
            }
            // Ending: messages already produced (such as the NOT_SERVING a
            // health watch has just been given) still go out, a bounded
            // number of them, and the stream ends as soon as nothing is ready.
            (Poll::Ready(Some(Ok(_))), BodyState::Flushing(left)) if left > 0 => {
                self.state = BodyState::Flushing(left - 1)
            }
            (_, BodyState::Flushing(_)) => {
                self.state = BodyState::Done;
                return Poll::Ready(Some(Ok(Frame::trailers(Self::shutdown_trailers()))));
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tower::{Layer, Service, ServiceExt};
    use tower_test::mock;

    use super::*;

    fn endless() -> Body {
        let stream = futures::stream::pending::<Result<Frame<bytes::Bytes>, tonic::Status>>();
        Body::new(http_body_util::StreamBody::new(stream))
    }

    async fn open(
        service: &mut DrainService<mock::Mock<Request<()>, Response<Body>>>,
        handle: &mut mock::Handle<Request<()>, Response<Body>>,
        path: &str,
    ) -> Body {
        let call = service
            .ready()
            .await
            .unwrap()
            .call(Request::builder().uri(path).body(()).unwrap());
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Response::new(endless()));
        call.await.unwrap().into_body()
    }

    async fn trailers_of(mut body: Body) -> HeaderMap {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the body should end")
            .unwrap()
            .unwrap();
        let trailers = frame.into_trailers().unwrap();
        assert!(body.frame().await.is_none());
        trailers
    }

    #[tokio::test]
    async fn watch_streams_end_on_drain_and_others_when_forced() {
        let drain = Drain::new();
        let layer = DrainLayer::new(drain.clone(), HashSet::from(["/svc.S/Watch".to_owned()]));
        let (inner, mut handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut service = layer.layer(inner);

        let mut watch = open(&mut service, &mut handle, "/svc.S/Watch").await;
        let mut other = open(&mut service, &mut handle, "/svc.S/Run").await;
        // Nothing ends while running.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), watch.frame())
                .await
                .is_err()
        );

        drain.advance(DrainPhase::Draining);
        let trailers = trailers_of(watch).await;
        let status = tonic::Status::from_header_map(&trailers).unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("shutting down"));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.frame())
                .await
                .is_err()
        );

        drain.advance(DrainPhase::Forced);
        let trailers = trailers_of(other).await;
        assert_eq!(
            tonic::Status::from_header_map(&trailers).unwrap().code(),
            tonic::Code::Unavailable
        );
    }

    #[tokio::test]
    async fn the_phase_never_goes_back() {
        let drain = Drain::new();
        drain.advance(DrainPhase::Forced);
        drain.advance(DrainPhase::Draining);
        assert_eq!(drain.phase(), DrainPhase::Forced);
        drain.draining().await;
    }

    #[tokio::test]
    async fn messages_ready_when_the_drain_begins_go_out_before_the_end() {
        let drain = Drain::new();
        let layer = DrainLayer::new(drain.clone(), HashSet::from(["/svc.S/Watch".to_owned()]));
        let (inner, mut handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut service = layer.layer(inner);
        let call = service
            .ready()
            .await
            .unwrap()
            .call(Request::builder().uri("/svc.S/Watch").body(()).unwrap());
        let (_, reply) = handle.next_request().await.unwrap();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver);
        reply.send_response(Response::new(Body::new(http_body_util::StreamBody::new(
            stream,
        ))));
        let mut body = call.await.unwrap().into_body();

        // The message and the drain arrive together: the message wins.
        sender
            .send(Ok::<_, tonic::Status>(Frame::data(
                bytes::Bytes::from_static(b"last"),
            )))
            .unwrap();
        drain.advance(DrainPhase::Draining);
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(
            frame.into_data().unwrap(),
            bytes::Bytes::from_static(b"last")
        );
        let trailers = trailers_of(body).await;
        let status = tonic::Status::from_header_map(&trailers).unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        drop(sender);
    }
}
