//! The metric families of one side of a call (server or client), and each
//! method's label children resolved once ([`SeriesTable`]), so counting a
//! call costs no label lookup after its method's first call.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::Request;
use http_body::Frame;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use tonic::Code;
use tonic::body::Body;

use super::{CODES, HANDLING_BUCKETS, KnownMethods, MethodInfo, MethodType};
use crate::body::code_label;

// === metric families and per-method series ===

/// Which end of a call a set of gRPC metrics describes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Side {
    Server,
    Client,
}

impl Side {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Self::Server => "grpc_server",
            Self::Client => "grpc_client",
        }
    }

    pub(super) fn on_the(self) -> &'static str {
        match self {
            Self::Server => "on the server",
            Self::Client => "by the client",
        }
    }
}

/// The label names of every family but `handled`.
pub(super) const LABELS: [&str; 3] = ["grpc_type", "grpc_service", "grpc_method"];

/// The metric families of one side.
#[derive(Debug, Clone)]
pub(super) struct Families {
    pub(super) started: IntCounterVec,
    pub(super) handled: IntCounterVec,
    pub(super) handling_seconds: HistogramVec,
    pub(super) msg_received: IntCounterVec,
    pub(super) msg_sent: IntCounterVec,
    /// Server side only (go-grpc-prometheus has no client gauge).
    pub(super) in_flight: Option<IntGaugeVec>,
}

impl Families {
    /// Creates the families of `side` and registers them in `registry`.
    pub(super) fn register(registry: &Registry, side: Side) -> prometheus::Result<Self> {
        let prefix = side.prefix();
        let on_the = side.on_the();
        let started = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_started_total"),
                format!("Total number of RPCs started {on_the}."),
            ),
            &LABELS,
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_handled_total"),
                format!(
                    "Total number of RPCs completed {on_the}, regardless of success or failure."
                ),
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let handling_seconds = HistogramVec::new(
            HistogramOpts::new(
                format!("{prefix}_handling_seconds"),
                format!(
                    "Time from the start of an RPC to its end (the last message of a stream), as seen {on_the}."
                ),
            )
            .buckets(HANDLING_BUCKETS.to_vec()),
            &LABELS,
        )?;
        let (received, sent) = match side {
            Side::Server => ("received on the server", "sent by the server"),
            Side::Client => ("received by the client", "sent by the client"),
        };
        let msg_received = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_msg_received_total"),
                format!("Total number of RPC messages {received}."),
            ),
            &LABELS,
        )?;
        let msg_sent = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_msg_sent_total"),
                format!("Total number of RPC messages {sent}."),
            ),
            &LABELS,
        )?;
        let in_flight = match side {
            Side::Server => Some(IntGaugeVec::new(
                Opts::new(
                    "grpc_server_in_flight_requests",
                    "RPCs started on the server and not yet completed.",
                ),
                &LABELS,
            )?),
            Side::Client => None,
        };
        registry.register(Box::new(started.clone()))?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(handling_seconds.clone()))?;
        registry.register(Box::new(msg_received.clone()))?;
        registry.register(Box::new(msg_sent.clone()))?;
        if let Some(in_flight) = &in_flight {
            registry.register(Box::new(in_flight.clone()))?;
        }
        Ok(Self {
            started,
            handled,
            handling_seconds,
            msg_received,
            msg_sent,
            in_flight,
        })
    }
}

/// One method's label children, resolved on its first call and kept.
#[derive(Debug)]
pub(super) struct MethodSeries {
    /// `None` for a path that is no known method.
    pub(super) kind: Option<MethodType>,
    pub(super) labels: [String; 3],
    pub(super) started: IntCounter,
    pub(super) handling_seconds: Histogram,
    pub(super) msg_received: IntCounter,
    pub(super) msg_sent: IntCounter,
    pub(super) in_flight: Option<IntGauge>,
    /// Per code, resolved on the first call ending with it (creating all 17
    /// up front would export 17 zero series per method).
    pub(super) handled: [OnceLock<IntCounter>; CODES],
    pub(super) handled_family: IntCounterVec,
}

impl MethodSeries {
    pub(super) fn new(families: &Families, info: Option<&MethodInfo>) -> Self {
        let (kind, service, method) = match info {
            Some(info) => (Some(info.kind), info.service.as_str(), info.method.as_str()),
            None => (None, "unknown", "unknown"),
        };
        let kind_label = kind.map_or("unknown", MethodType::label);
        let values = [kind_label, service, method];
        Self {
            kind,
            labels: values.map(str::to_owned),
            started: families.started.with_label_values(&values),
            handling_seconds: families.handling_seconds.with_label_values(&values),
            msg_received: families.msg_received.with_label_values(&values),
            msg_sent: families.msg_sent.with_label_values(&values),
            in_flight: families
                .in_flight
                .as_ref()
                .map(|family| family.with_label_values(&values)),
            handled: std::array::from_fn(|_| OnceLock::new()),
            handled_family: families.handled.clone(),
        }
    }

    pub(super) fn streams_requests(&self) -> bool {
        self.kind.is_some_and(MethodType::streams_requests)
    }

    /// A call starts.
    pub(super) fn start(&self) {
        self.started.inc();
        if let Some(in_flight) = &self.in_flight {
            in_flight.inc();
        }
    }

    /// A call that started at `start` ended with `code`.
    pub(super) fn end(&self, code: Code, start: Instant) {
        if let Some(in_flight) = &self.in_flight {
            in_flight.dec();
        }
        self.handling_seconds.observe(start.elapsed().as_secs_f64());
        let index = usize::try_from(i32::from(code)).unwrap_or(0).min(CODES - 1);
        if let Some(slot) = self.handled.get(index) {
            slot.get_or_init(|| {
                let [kind, service, method] = &self.labels;
                self.handled_family
                    .with_label_values(&[kind, service, method, code_label(code)])
            })
            .inc();
        }
    }

    /// The request body, counting its messages: each frame of a request
    /// stream, or the one message of any other call.
    pub(super) fn count_requests<B>(&self, request: Request<B>) -> Request<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<tower::BoxError>,
    {
        if self.streams_requests() {
            let messages = self.msg_received.clone();
            request.map(|body| Body::new(CountingBody::new(body, messages)))
        } else {
            self.msg_received.inc();
            request.map(Body::new)
        }
    }
}

/// A method's slot in a [`SeriesTable`].
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) info: Option<MethodInfo>,
    pub(super) series: OnceLock<Arc<MethodSeries>>,
}

/// Every known method's series by request path, made once per layer.
#[derive(Debug)]
pub(super) struct SeriesTable {
    pub(super) families: Families,
    pub(super) by_path: HashMap<String, Slot>,
    pub(super) unknown: Slot,
}

impl SeriesTable {
    pub(super) fn new(families: Families, methods: &KnownMethods) -> Self {
        let by_path = methods
            .by_path
            .iter()
            .map(|(path, info)| {
                (
                    path.clone(),
                    Slot {
                        info: Some(info.clone()),
                        series: OnceLock::new(),
                    },
                )
            })
            .collect();
        Self {
            families,
            by_path,
            unknown: Slot::default(),
        }
    }

    /// The series of the method at `path` (`unknown` when it is none).
    pub(super) fn series(&self, path: &str) -> Arc<MethodSeries> {
        let slot = self.by_path.get(path).unwrap_or(&self.unknown);
        Arc::clone(
            slot.series
                .get_or_init(|| Arc::new(MethodSeries::new(&self.families, slot.info.as_ref()))),
        )
    }
}

pin_project_lite::pin_project! {
    /// A request body that counts its data frames as messages.
    pub(super) struct CountingBody<B> {
        #[pin]
        inner: B,
        messages: IntCounter,
    }
}

impl<B> CountingBody<B> {
    pub(super) fn new(inner: B, messages: IntCounter) -> Self {
        Self { inner, messages }
    }
}

impl<B: http_body::Body> http_body::Body for CountingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            this.messages.inc();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
