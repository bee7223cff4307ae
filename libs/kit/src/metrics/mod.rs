//! Prometheus metrics: one registry per service, the gRPC metrics every
//! service shares — server side recorded by [`GrpcMetricsLayer`], client side
//! by [`GrpcClientMetricsLayer`] on the channels to peers — and the text
//! rendering served on the admin port's `/metrics`.
//!
//! Metric and label names follow go-grpc-prometheus, so existing dashboards
//! and alerts work unchanged:
//!
//! | server                              | client                          | labels                                |
//! |-------------------------------------|---------------------------------|---------------------------------------|
//! | `grpc_server_started_total`         | `grpc_client_started_total`     | `grpc_type, grpc_service, grpc_method` |
//! | `grpc_server_handled_total`         | `grpc_client_handled_total`     | the same and `grpc_code`              |
//! | `grpc_server_handling_seconds`      | `grpc_client_handling_seconds`  | `grpc_type, grpc_service, grpc_method` |
//! | `grpc_server_msg_received_total`    | `grpc_client_msg_received_total`| `grpc_type, grpc_service, grpc_method` |
//! | `grpc_server_msg_sent_total`        | `grpc_client_msg_sent_total`    | `grpc_type, grpc_service, grpc_method` |
//! | `grpc_server_in_flight_requests`    |                                 | `grpc_type, grpc_service, grpc_method` |
//!
//! Label values are bounded by the proto contract, not by traffic: a path
//! that is no known method is counted as `unknown`.
//!
//! # Data flow of one call
//!
//! The layer looks the request path up in a table built once from
//! [`KnownMethods`]; the first call of a method resolves its label children
//! (`with_label_values`, a hash and a lock) and keeps them, so later calls
//! only touch atomics. `started` counts at once; a unary or server-streaming
//! call counts its one request message at once, a client or bidi stream
//! counts each request body frame as it is read. The response body is
//! wrapped in an [`ObservedBody`], which counts each data frame as a message
//! and, when the call ends (trailers, end of body, or drop), observes the
//! handling time and counts `handled` with the final code.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use prometheus::{Encoder, Registry, TextEncoder};
use prost::Message;
use tonic::Code;
use tonic::body::Body;

mod series;

use crate::body::{EndGuard, ObservedBody};
use series::{CountingBody, Families, SeriesTable, Side};

/// The Prometheus client the kit's registry belongs to, re-exported so every
/// service registers its own metrics with the very same version.
pub use prometheus;

/// Buckets of the handling-time histograms, in seconds: sub-millisecond
/// loopback calls up to five-minute streams.
const HANDLING_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The number of gRPC status codes (0 through 16).
const CODES: usize = 17;

/// The kind of a gRPC method, as the `grpc_type` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodType {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStream,
    /// A stream of requests, one response.
    ClientStream,
    /// Streams both ways.
    BidiStream,
}

impl MethodType {
    fn label(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ServerStream => "server_stream",
            Self::ClientStream => "client_stream",
            Self::BidiStream => "bidi_stream",
        }
    }

    /// Whether requests come as a stream (counted frame by frame).
    fn streams_requests(self) -> bool {
        matches!(self, Self::ClientStream | Self::BidiStream)
    }
}

/// A method the server knows: its service, name and type, for labels.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// Fully-qualified service name, e.g. `agentmesh.audit.v1.AuditService`.
    pub service: String,
    /// Method name, e.g. `Record`.
    pub method: String,
    /// Unary or streaming.
    pub kind: MethodType,
}

/// Every method of every service in some encoded file descriptor sets, by
/// request path (`/package.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct KnownMethods {
    by_path: HashMap<String, MethodInfo>,
}

impl KnownMethods {
    /// Reads the methods out of encoded `FileDescriptorSet`s; a set that does
    /// not decode is skipped (its calls are then labelled `unknown`).
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Self {
        let mut by_path = HashMap::new();
        for encoded in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*encoded) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = match (package.as_str(), service.name.as_deref()) {
                        ("", Some(name)) => name.to_owned(),
                        (package, Some(name)) => format!("{package}.{name}"),
                        (_, None) => continue,
                    };
                    for method in service.method {
                        let Some(name) = method.name else { continue };
                        let kind = match (
                            method.client_streaming.unwrap_or(false),
                            method.server_streaming.unwrap_or(false),
                        ) {
                            (false, false) => MethodType::Unary,
                            (false, true) => MethodType::ServerStream,
                            (true, false) => MethodType::ClientStream,
                            (true, true) => MethodType::BidiStream,
                        };
                        by_path.insert(
                            format!("/{service_name}/{name}"),
                            MethodInfo {
                                service: service_name.clone(),
                                method: name,
                                kind,
                            },
                        );
                    }
                }
            }
        }
        Self { by_path }
    }

    /// The methods a mesh process serves or calls: agentmesh's services,
    /// gRPC health and reflection (v1 and v1alpha).
    pub fn mesh() -> Self {
        Self::from_descriptor_sets(&[
            agentmesh_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
    }

    /// The method at `path`, if known.
    pub fn get(&self, path: &str) -> Option<&MethodInfo> {
        self.by_path.get(path)
    }
}

// === server side ===

/// The gRPC server metrics.
#[derive(Debug, Clone)]
pub struct GrpcServerMetrics {
    families: Families,
}

impl GrpcServerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            families: Families::register(registry, Side::Server)?,
        })
    }
}

/// A service's metric registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    client: Arc<OnceLock<GrpcClientMetrics>>,
}

impl Metrics {
    /// A fresh registry for one service, with process metrics (CPU, memory,
    /// open files) where the platform has them.
    pub fn new(service: &str) -> Self {
        let labels = HashMap::from([("service".to_owned(), service.to_owned())]);
        let registry = Registry::new_custom(None, Some(labels)).unwrap_or_default();
        #[cfg(target_os = "linux")]
        {
            let collector = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(err) = registry.register(Box::new(collector)) {
                tracing::warn!(%err, "process metrics unavailable");
            }
        }
        Self {
            registry,
            client: Arc::default(),
        }
    }

    /// The registry, for a service to register its own metrics in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The gRPC client metrics of this service, registered on first use (so
    /// every channel of the service, and the audit producer's, share one
    /// set). Should registration fail, channels work without metrics.
    pub fn grpc_client(&self) -> &GrpcClientMetrics {
        self.client.get_or_init(|| {
            GrpcClientMetrics::register(&self.registry, &KnownMethods::mesh()).unwrap_or_else(
                |err| {
                    tracing::warn!(%err, "gRPC client metrics unavailable");
                    GrpcClientMetrics::disabled()
                },
            )
        })
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%err, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

// === impl GrpcMetricsLayer ===

/// Records [`GrpcServerMetrics`] for every call through the server.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    table: Arc<SeriesTable>,
}

impl GrpcMetricsLayer {
    /// A layer recording into `metrics`, labelling calls by `methods`.
    pub fn new(metrics: GrpcServerMetrics, methods: Arc<KnownMethods>) -> Self {
        Self {
            table: Arc::new(SeriesTable::new(metrics.families, &methods)),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

impl<S, ReqBody> tower::Service<Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    ReqBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ReqBody::Error: Into<tower::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let series = self.layer.table.series(request.uri().path());
        series.start();
        let request = series.count_requests(request);
        let sent = series.msg_sent.clone();
        let start = Instant::now();
        let guard = EndGuard::new(Box::new(move |code| series.end(code, start)));
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = guard.observe(body, &parts.headers).counting_messages(sent);
                    Ok(Response::from_parts(parts, Body::new(body)))
                }
                Err(err) => {
                    guard.fail(Code::Internal);
                    Err(err)
                }
            }
        })
    }
}

// === client side ===

/// The gRPC client metrics of a service: register them once per registry
/// (see [`Metrics::grpc_client`]) and hand them to every channel
/// ([`crate::client::channel_with_metrics`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcClientMetrics {
    /// `None`: recording nothing.
    table: Option<Arc<SeriesTable>>,
}

impl GrpcClientMetrics {
    /// Creates the metrics, labelling calls by `methods`, and registers them
    /// in `registry`.
    pub fn register(registry: &Registry, methods: &KnownMethods) -> prometheus::Result<Self> {
        let families = Families::register(registry, Side::Client)?;
        Ok(Self {
            table: Some(Arc::new(SeriesTable::new(families, methods))),
        })
    }

    /// Metrics that record nothing, for channels of callers without a
    /// registry (the CLI, tests).
    pub fn disabled() -> Self {
        Self { table: None }
    }
}

/// Records [`GrpcClientMetrics`] for every call through a channel. Generic
/// over the channel it wraps.
#[derive(Debug, Clone)]
pub struct GrpcClientMetricsLayer {
    metrics: GrpcClientMetrics,
}

impl GrpcClientMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: GrpcClientMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcClientMetricsLayer {
    type Service = GrpcClientMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcClientMetricsService {
            inner,
            table: self.metrics.table.clone(),
        }
    }
}

/// The service made by [`GrpcClientMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcClientMetricsService<S> {
    inner: S,
    table: Option<Arc<SeriesTable>>,
}

impl<S, ResBody> tower::Service<Request<Body>> for GrpcClientMetricsService<S>
where
    S: tower::Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(table) = &self.table else {
            let future = self.inner.call(request);
            return Box::pin(async move {
                let (parts, body) = future.await?.into_parts();
                // A closure that captures nothing: boxing it allocates nothing.
                let body = ObservedBody::new(body, &parts.headers, Box::new(|_| {}));
                Ok(Response::from_parts(parts, body))
            });
        };
        let series = table.series(request.uri().path());
        series.start();
        // The client sends the requests: count them like the server counts
        // what it receives.
        let request = if series.streams_requests() {
            let messages = series.msg_sent.clone();
            request.map(|body| Body::new(CountingBody::new(body, messages)))
        } else {
            series.msg_sent.inc();
            request
        };
        let received = series.msg_received.clone();
        let start = Instant::now();
        let guard = EndGuard::new(Box::new(move |code| series.end(code, start)));
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = guard
                        .observe(body, &parts.headers)
                        .counting_messages(received);
                    Ok(Response::from_parts(parts, body))
                }
                Err(err) => {
                    guard.fail(error_code(&err));
                    Err(err)
                }
            }
        })
    }
}

/// The code a channel's error stands for: the status it carries, else
/// UNAVAILABLE (the call did not reach the server), as tonic reports it.
fn error_code<E: 'static>(err: &E) -> Code {
    let any: &dyn Any = err;
    if let Some(status) = any.downcast_ref::<tonic::Status>() {
        return status.code();
    }
    if let Some(boxed) = any.downcast_ref::<tower::BoxError>()
        && let Some(status) = boxed.downcast_ref::<tonic::Status>()
    {
        return status.code();
    }
    Code::Unavailable
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};
    use tower::{Layer, Service, ServiceExt};
    use tower_test::mock;

    use http_body::Frame;

    use super::*;

    const CHECK: &str = "/grpc.health.v1.Health/Check";
    const WATCH: &str = "/grpc.health.v1.Health/Watch";

    /// The value of the series `name{labels}` in `registry` (a histogram's
    /// sample count), or `None` when it does not exist.
    fn value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = registry.gather().into_iter().find(|f| f.name() == name)?;
        let metric = family.get_metric().iter().find(|metric| {
            labels.iter().all(|(key, want)| {
                metric
                    .get_label()
                    .iter()
                    .any(|pair| pair.name() == *key && pair.value() == *want)
            })
        })?;
        Some(match family.get_field_type() {
            prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
            prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
            _ => metric.get_histogram().get_sample_count() as f64,
        })
    }

    /// `service`, once ready for a request with a tonic body.
    async fn ready<S>(service: &mut S) -> &mut S
    where
        S: Service<Request<Body>>,
        S::Error: std::fmt::Debug,
    {
        ServiceExt::<Request<Body>>::ready(service).await.unwrap()
    }

    fn method(path: &str) -> [(&'static str, String); 3] {
        let info = KnownMethods::mesh().get(path).cloned().unwrap();
        [
            ("grpc_type", info.kind.label().to_owned()),
            ("grpc_service", info.service),
            ("grpc_method", info.method),
        ]
    }

    fn labels<'a>(method: &'a [(&'static str, String); 3]) -> Vec<(&'static str, &'a str)> {
        method.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn with_code<'a>(
        method: &'a [(&'static str, String); 3],
        code: &'a str,
    ) -> Vec<(&'static str, &'a str)> {
        let mut labels = labels(method);
        labels.push(("grpc_code", code));
        labels
    }

    fn frames(messages: usize, code: Option<i32>) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..messages)
            .map(|_| Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))))
            .collect();
        if let Some(code) = code {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", code.to_string().parse().unwrap());
            frames.push(Ok(Frame::trailers(trailers)));
        }
        Body::new(StreamBody::new(futures::stream::iter(frames)))
    }

    fn request(path: &str, body: Body) -> Request<Body> {
        Request::builder().uri(path).body(body).unwrap()
    }

    #[tokio::test]
    async fn server_calls_are_counted_timed_and_their_messages_counted() {
        let registry = Registry::new();
        let metrics = GrpcServerMetrics::register(&registry).unwrap();
        let layer = GrpcMetricsLayer::new(metrics, Arc::new(KnownMethods::mesh()));
        let (inner, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut service = layer.layer(inner);

        let call = ready(&mut service)
            .await
            .call(request(WATCH, frames(1, None)));
        let (_, reply) = handle.next_request().await.unwrap();
        let watch = method(WATCH);
        assert_eq!(
            value(&registry, "grpc_server_in_flight_requests", &labels(&watch)),
            Some(1.0)
        );
        reply.send_response(Response::new(frames(3, Some(0))));
        call.await.unwrap().into_body().collect().await.unwrap();

        assert_eq!(
            value(&registry, "grpc_server_started_total", &labels(&watch)),
            Some(1.0)
        );
        assert_eq!(
            value(&registry, "grpc_server_msg_received_total", &labels(&watch)),
            Some(1.0)
        );
        assert_eq!(
            value(&registry, "grpc_server_msg_sent_total", &labels(&watch)),
            Some(3.0)
        );
        assert_eq!(
            value(
                &registry,
                "grpc_server_handled_total",
                &with_code(&watch, "OK")
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&registry, "grpc_server_handling_seconds", &labels(&watch)),
            Some(1.0)
        );
        assert_eq!(
            value(&registry, "grpc_server_in_flight_requests", &labels(&watch)),
            Some(0.0)
        );
        assert!(
            value(
                &registry,
                "grpc_server_handled_total",
                &[("grpc_code", "NotFound")]
            )
            .is_none()
        );

        // An error in the headers (trailers-only), then an unknown path.
        let call = ready(&mut service)
            .await
            .call(request(CHECK, frames(1, None)));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(tonic::Status::not_found("no such service").into_http());
        call.await.unwrap().into_body().collect().await.unwrap();
        let check = method(CHECK);
        assert_eq!(
            value(
                &registry,
                "grpc_server_handled_total",
                &with_code(&check, "NotFound")
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&registry, "grpc_server_msg_sent_total", &labels(&check)),
            Some(0.0)
        );

        let call = ready(&mut service)
            .await
            .call(request("/evil.Service/Whatever", frames(1, None)));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Response::new(frames(0, Some(12))));
        call.await.unwrap().into_body().collect().await.unwrap();
        let unknown = [
            ("grpc_type", "unknown"),
            ("grpc_service", "unknown"),
            ("grpc_method", "unknown"),
            ("grpc_code", "Unimplemented"),
        ];
        assert_eq!(
            value(&registry, "grpc_server_handled_total", &unknown),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn a_response_dropped_unfinished_is_counted_as_canceled() {
        let registry = Registry::new();
        let metrics = GrpcServerMetrics::register(&registry).unwrap();
        let layer = GrpcMetricsLayer::new(metrics, Arc::new(KnownMethods::mesh()));
        let (inner, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut service = layer.layer(inner);
        let call = ready(&mut service)
            .await
            .call(request(WATCH, frames(1, None)));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Response::new(frames(2, None)));
        let mut body = call.await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        let watch = method(WATCH);
        assert_eq!(
            value(
                &registry,
                "grpc_server_handled_total",
                &with_code(&watch, "Canceled")
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&registry, "grpc_server_msg_sent_total", &labels(&watch)),
            Some(1.0)
        );
    }

    /// Methods of a made-up service with every streaming kind.
    fn streaming_methods() -> KnownMethods {
        use prost_types::{
            FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
        };
        let method = |name: &str, client: bool, server: bool| MethodDescriptorProto {
            name: Some(name.to_owned()),
            client_streaming: Some(client),
            server_streaming: Some(server),
            ..MethodDescriptorProto::default()
        };
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                package: Some("test.v1".to_owned()),
                service: vec![ServiceDescriptorProto {
                    name: Some("Echo".to_owned()),
                    method: vec![method("Upload", true, false), method("Chat", true, true)],
                    ..ServiceDescriptorProto::default()
                }],
                ..FileDescriptorProto::default()
            }],
        };
        KnownMethods::from_descriptor_sets(&[&set.encode_to_vec()])
    }

    #[tokio::test]
    async fn request_streams_count_each_request_frame() {
        let registry = Registry::new();
        let metrics = GrpcServerMetrics::register(&registry).unwrap();
        let layer = GrpcMetricsLayer::new(metrics, Arc::new(streaming_methods()));
        let (inner, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut service = layer.layer(inner);
        let call = ready(&mut service)
            .await
            .call(request("/test.v1.Echo/Chat", frames(4, None)));
        let (received, reply) = handle.next_request().await.unwrap();
        received.into_body().collect().await.unwrap();
        reply.send_response(Response::new(frames(2, Some(0))));
        call.await.unwrap().into_body().collect().await.unwrap();
        let chat = [
            ("grpc_type", "bidi_stream"),
            ("grpc_service", "test.v1.Echo"),
            ("grpc_method", "Chat"),
        ];
        assert_eq!(
            value(&registry, "grpc_server_msg_received_total", &chat),
            Some(4.0)
        );
        assert_eq!(
            value(&registry, "grpc_server_msg_sent_total", &chat),
            Some(2.0)
        );
    }

    #[tokio::test]
    async fn client_calls_are_counted_once_per_registry() {
        let metrics = Metrics::new("test");
        let client = metrics.grpc_client().clone();
        // The same set again: no second registration, no error.
        let again = metrics.grpc_client().clone();
        let (inner, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut channel = GrpcClientMetricsLayer::new(client).layer(inner);
        let mut other = GrpcClientMetricsLayer::new(again).layer(channel.clone());

        let call = ready(&mut channel)
            .await
            .call(request(WATCH, frames(1, None)));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Response::new(frames(2, Some(14))));
        call.await.unwrap().into_body().collect().await.unwrap();

        let registry = metrics.registry();
        let watch = method(WATCH);
        assert_eq!(
            value(registry, "grpc_client_started_total", &labels(&watch)),
            Some(1.0)
        );
        assert_eq!(
            value(registry, "grpc_client_msg_sent_total", &labels(&watch)),
            Some(1.0)
        );
        assert_eq!(
            value(registry, "grpc_client_msg_received_total", &labels(&watch)),
            Some(2.0)
        );
        assert_eq!(
            value(
                registry,
                "grpc_client_handled_total",
                &with_code(&watch, "Unavailable")
            ),
            Some(1.0)
        );
        assert_eq!(
            value(registry, "grpc_client_handling_seconds", &labels(&watch)),
            Some(1.0)
        );
        assert!(metrics.render().contains("grpc_client_handled_total{"));

        // Through two layers sharing the set, a call counts twice: each
        // layer is one client.
        let call = ready(&mut other)
            .await
            .call(request(CHECK, frames(1, None)));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Response::new(frames(1, Some(0))));
        call.await.unwrap().into_body().collect().await.unwrap();
        let check = method(CHECK);
        assert_eq!(
            value(
                registry,
                "grpc_client_handled_total",
                &with_code(&check, "OK")
            ),
            Some(2.0)
        );
    }

    #[tokio::test]
    async fn a_failed_client_call_counts_its_status_and_disabled_metrics_count_nothing() {
        let registry = Registry::new();
        let metrics = GrpcClientMetrics::register(&registry, &KnownMethods::mesh()).unwrap();
        let (inner, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut channel = GrpcClientMetricsLayer::new(metrics).layer(inner);
        let call = ready(&mut channel)
            .await
            .call(request(CHECK, frames(1, None)));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error(tonic::Status::deadline_exceeded("too late"));
        assert!(call.await.is_err());
        let check = method(CHECK);
        assert_eq!(
            value(
                &registry,
                "grpc_client_handled_total",
                &with_code(&check, "DeadlineExceeded")
            ),
            Some(1.0)
        );
        assert_eq!(
            error_code(&std::io::Error::other("refused")),
            Code::Unavailable
        );

        let (inner, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut channel = GrpcClientMetricsLayer::new(GrpcClientMetrics::disabled()).layer(inner);
        let call = ready(&mut channel)
            .await
            .call(request(CHECK, frames(1, None)));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Response::new(frames(1, Some(0))));
        let body = call.await.unwrap().into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes().len(), 5);
    }
}
