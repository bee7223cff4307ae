use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use tonic::body::Body;
use tower::{Layer as _, ServiceExt as _};

use super::{GrpcWebConfig, GrpcWebLayer};

const ORIGIN: &str = "https://console.example.com";

/// An inner service answering every call with a trailers-only OK, counting
/// calls and recording the content type it saw last.
#[derive(Clone, Default)]
struct Inner {
    calls: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Option<String>>>,
}

impl Inner {
    fn service(&self) -> Self {
        self.clone()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl tower::Service<Request<Body>> for Inner {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.seen.lock().unwrap() = request
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let mut response = Response::new(Body::empty());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("0"));
        std::future::ready(Ok(response))
    }
}

fn config(origins: &[&str]) -> GrpcWebConfig {
    GrpcWebConfig {
        enabled: true,
        allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
        ..GrpcWebConfig::default()
    }
}

fn preflight(origin: &str) -> Request<Body> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri("/agentmesh.orchestrator.v1.OrchestratorService/ListAgents")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type,x-grpc-web,authorization",
        )
        .body(Body::empty())
        .unwrap()
}

fn grpc_web_call(origin: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .version(http::Version::HTTP_11)
        .uri("/agentmesh.orchestrator.v1.OrchestratorService/ListAgents")
        .header(header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1");
    if let Some(origin) = origin {
        builder = builder.header(header::ORIGIN, origin);
    }
    builder.body(Body::empty()).unwrap()
}

fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

async fn answer(layer: &GrpcWebLayer, inner: &Inner, request: Request<Body>) -> Response<Body> {
    layer.layer(inner.service()).oneshot(request).await.unwrap()
}

#[tokio::test]
async fn off_passes_every_call_through_untouched() {
    let inner = Inner::default();
    let layer = GrpcWebLayer::new(&GrpcWebConfig::default(), 4096).unwrap();
    assert!(!layer.enabled());
    let response = answer(&layer, &inner, grpc_web_call(Some(ORIGIN))).await;
    assert_eq!(inner.calls(), 1);
    assert_eq!(
        inner.seen.lock().unwrap().as_deref(),
        Some("application/grpc-web+proto")
    );
    assert!(cors_headers(response.headers()).is_empty());
}

#[tokio::test]
async fn closed_cors_refuses_every_preflight_without_allow_headers() {
    let inner = Inner::default();
    let layer = GrpcWebLayer::new(&config(&[]), 4096).unwrap();
    for origin in [ORIGIN, "null", "http://localhost:3000"] {
        let response = answer(&layer, &inner, preflight(origin)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(cors_headers(response.headers()), Vec::<String>::new());
    }
    // A call from a browser page still runs (CORS is the browser's rule),
    // but carries no CORS header for the page to read it by.
    let response = answer(&layer, &inner, grpc_web_call(Some(ORIGIN))).await;
    assert!(cors_headers(response.headers()).is_empty());
    assert_eq!(inner.calls(), 1, "preflights never reach the service");
}

#[tokio::test]
async fn an_allowed_origin_gets_its_preflight_answered() {
    let inner = Inner::default();
    let layer = GrpcWebLayer::new(&config(&[ORIGIN]), 4096).unwrap();
    let response = answer(&layer, &inner, preflight(ORIGIN)).await;
    assert!(response.status().is_success());
    let headers = response.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], ORIGIN);
    let allowed = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap();
    for name in [
        "content-type",
        "x-grpc-web",
        "authorization",
        "grpc-timeout",
    ] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }
    assert_eq!(headers[header::ACCESS_CONTROL_MAX_AGE], "600");
    assert_eq!(inner.calls(), 0);

    let other = answer(&layer, &inner, preflight("https://evil.example")).await;
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    assert!(cors_headers(other.headers()).is_empty());
}

#[tokio::test]
async fn a_grpc_web_call_is_translated_and_its_status_exposed() {
    let inner = Inner::default();
    let layer = GrpcWebLayer::new(&config(&[ORIGIN]), 4096).unwrap();
    let response = answer(&layer, &inner, grpc_web_call(Some(ORIGIN))).await;
    assert_eq!(
        inner.seen.lock().unwrap().as_deref(),
        Some("application/grpc"),
        "the layers inside see gRPC"
    );
    let headers = response.headers();
    assert_eq!(headers[header::CONTENT_TYPE], "application/grpc-web+proto");
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], ORIGIN);
    let exposed = headers[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap();
    assert!(exposed.contains("grpc-status-details-bin"), "{exposed}");

    // Without an Origin (a non-browser client): translated, no CORS.
    let response = answer(&layer, &inner, grpc_web_call(None)).await;
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/grpc-web+proto"
    );
    assert!(cors_headers(response.headers()).is_empty());
}

#[tokio::test]
async fn any_origin_is_answered_with_a_star() {
    let inner = Inner::default();
    let layer = GrpcWebLayer::new(&config(&["*"]), 4096).unwrap();
    let response = answer(&layer, &inner, preflight("https://anywhere.example")).await;
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
}

#[tokio::test]
async fn plain_http1_requests_are_refused_by_the_translation() {
    let inner = Inner::default();
    let layer = GrpcWebLayer::new(&config(&[]), 4096).unwrap();
    let request = Request::builder()
        .method(Method::GET)
        .version(http::Version::HTTP_11)
        .uri("/")
        .body(Body::empty())
        .unwrap();
    let response = answer(&layer, &inner, request).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(inner.calls(), 0);
}
