//! HTTP/2 without TLS (h2c, prior knowledge), for [`FaultConfig::http2`]:
//! hyper's server instead of the hand-written HTTP/1.1. Only answers as
//! without faults (whole, or streamed at the configured pace) and the
//! outage switch: the faults need bytes written by hand, which an HTTP/2
//! library does not allow. Every request is counted, and those that came
//! over HTTP/2 separately ([`FaultProvider::http2_requests`]).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Streams one connection may carry at once: no limit of the mock's own,
/// so a benchmark's thousands of open calls measure the client.
const MAX_STREAMS: u32 = 1 << 20;

pub(super) async fn serve_connection_h2(stream: TcpStream, shared: Arc<Shared>) {
    // Streamed events are small; Nagle's algorithm would hold them back.
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(answer_h2(&shared, request).await) }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_STREAMS)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer_h2(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if request.version() == hyper::Version::HTTP_2 {
        shared.http2_requests.fetch_add(1, Ordering::SeqCst);
    }
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            shared.counts.count(Outcome::Rejected);
            let message = format!("the request body could not be read: {err}");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &message,
                "invalid_request_error",
            );
        }
    };
    let chat = match admit(shared, parts.method.as_str(), parts.uri.path(), &body) {
        Ok(chat) => chat,
        Err(refused) => {
            let status =
                StatusCode::from_u16(refused.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, &refused.message, refused.kind);
        }
    };
    shared.counts.count(Outcome::Ok);
    let config = &shared.config;
    if !chat.stream {
        tokio::time::sleep(pace_total(config)).await;
        let answer = expected_answer(&config.name, config.answer_tokens);
        let bytes = chat.completion(&answer, config.answer_tokens);
        return response(
            StatusCode::OK,
            "application/json",
            Full::new(Bytes::from(bytes)).boxed_unsync(),
        );
    }
    let pace = config.pace;
    let events = stream_events(config, &chat, Ending::Whole)
        .into_iter()
        .enumerate();
    let frames = futures::stream::unfold(events, move |mut events| async move {
        let (index, event) = events.next()?;
        if index > 0 && !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        Some((Ok(Frame::data(Bytes::from(event))), events))
    });
    response(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(frames).boxed_unsync(),
    )
}

fn error(status: StatusCode, message: &str, kind: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(error_body(message, kind))).boxed_unsync();
    response(status, "application/json", body)
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
