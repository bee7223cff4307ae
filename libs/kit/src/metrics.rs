//! Prometheus metrics: one registry per service, the gRPC server metrics every
//! service shares (recorded by [`GrpcMetricsLayer`]), and the text rendering
//! served on the admin port's `/metrics`.
//!
//! Metric and label names follow go-grpc-prometheus, so existing dashboards
//! and alerts work unchanged. Label values are bounded by the proto contract,
//! not by traffic: a path that is no known method is counted as `unknown`.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use prost::Message;
use tonic::body::Body;

use crate::body::{EndGuard, code_label};

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

    /// The method at `path`, if known.
    pub fn get(&self, path: &str) -> Option<&MethodInfo> {
        self.by_path.get(path)
    }
}

/// The gRPC server metrics.
#[derive(Debug, Clone)]
pub struct GrpcServerMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    handling_seconds: HistogramVec,
    in_flight: IntGaugeVec,
}

impl GrpcServerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let started = IntCounterVec::new(
            Opts::new(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
            ),
            &labels,
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let handling_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Time from the start of an RPC to its end (the last message of a stream), as seen by the server.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0,
            ]),
            &labels,
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "grpc_server_in_flight_requests",
                "RPCs started on the server and not yet completed.",
            ),
            &labels,
        )?;
        registry.register(Box::new(started.clone()))?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(handling_seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Self {
            started,
            handled,
            handling_seconds,
            in_flight,
        })
    }
}

/// A service's metric registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
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
        Self { registry }
    }

    /// The registry, for a service to register its own metrics in.
    pub fn registry(&self) -> &Registry {
        &self.registry
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
    metrics: GrpcServerMetrics,
    methods: Arc<KnownMethods>,
}

impl GrpcMetricsLayer {
    /// A layer recording into `metrics`, labelling calls by `methods`.
    pub fn new(metrics: GrpcServerMetrics, methods: Arc<KnownMethods>) -> Self {
        Self { metrics, methods }
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
        let (kind, service, method) = match self.layer.methods.get(request.uri().path()) {
            Some(info) => (info.kind.label(), info.service.clone(), info.method.clone()),
            None => ("unknown", "unknown".to_owned(), "unknown".to_owned()),
        };
        let metrics = self.layer.metrics.clone();
        let labels = [kind, service.as_str(), method.as_str()];
        metrics.started.with_label_values(&labels).inc();
        let in_flight = metrics.in_flight.with_label_values(&labels);
        in_flight.inc();
        let handling = metrics.handling_seconds.with_label_values(&labels);
        let start = Instant::now();

        let on_end = move |code: tonic::Code| {
            in_flight.dec();
            handling.observe(start.elapsed().as_secs_f64());
            metrics
                .handled
                .with_label_values(&[kind, service.as_str(), method.as_str(), code_label(code)])
                .inc();
        };
        let guard = EndGuard::new(Box::new(on_end));
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = guard.observe(body, &parts.headers);
                    Ok(Response::from_parts(parts, Body::new(body)))
                }
                Err(err) => {
                    guard.fail(tonic::Code::Internal);
                    Err(err)
                }
            }
        })
    }
}
