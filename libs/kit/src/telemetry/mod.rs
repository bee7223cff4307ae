//! OpenTelemetry traces: the exporter, the W3C propagation of trace context
//! across gRPC calls, and the conventions every agentmesh span follows.
//!
//! # Turning it on
//!
//! Traces are configured by the standard OpenTelemetry environment variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`
//! and `OTEL_TRACES_SAMPLER_ARG`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`)
//! and by the `[log.traces]` settings ([`TracesConfig`]), which win. With the
//! default `exporter = "auto"`, traces are exported when an OTLP endpoint is
//! set and are off otherwise.
//!
//! # Data flow
//!
//! [`crate::logging::init`] builds the tracer provider here (`export`, kept
//! until [`shutdown`]) and adds a
//! `tracing-opentelemetry` layer to the subscriber, so `tracing` spans become
//! OpenTelemetry spans. Each service a process hosts exports its spans under
//! its own `service.name` (the CLI hosts five): [`crate::ServiceHost`] asks
//! for its [`service_context`], which carries that service's tracer, and
//! every span opened within it (its calls' server spans, their children, its
//! start-up work) is started by that tracer (`scope`).
//!
//! Spans are handed to a batch processor that exports
//! them from its own thread through a bounded queue: a request never waits
//! for the exporter, and a full queue drops spans rather than block.
//!
//! [`crate::trace`] makes the RPC spans: a server span per incoming call whose
//! parent is extracted from the call's `traceparent`/`tracestate`/`baggage`
//! ([`extract`]), and a client span per outgoing call whose context is
//! injected into the call's metadata ([`inject`]). Off, none of this runs: no
//! exporter, no propagator, and incoming trace headers are forwarded as they
//! came (which is all an Istio sidecar needs).

mod export;
mod scope;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config_error::ConfigError;

pub(crate) use export::{install, provider};
pub use export::{service_context, shutdown};
pub(crate) use scope::MeshTracer;

static ENABLED: AtomicBool = AtomicBool::new(false);
static CAPTURE_CONTENT: AtomicBool = AtomicBool::new(false);

/// Trace export settings (`[log.traces]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConfig {
    /// `auto` (export when an OTLP endpoint is set in the environment),
    /// `otlp` (always export), or `none`.
    pub exporter: TracesExporter,
    /// The OTLP endpoint, e.g. `http://otel-collector:4317`; empty means the
    /// standard environment variables (or the OTLP default).
    pub endpoint: String,
    /// `grpc` or `http/protobuf`; empty means `OTEL_EXPORTER_OTLP_PROTOCOL`
    /// (or `grpc`).
    pub protocol: String,
    /// Put prompt, completion and tool-argument contents on spans. Off by
    /// default: they may hold personal data and secrets.
    pub capture_content: bool,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            exporter: TracesExporter::Auto,
            endpoint: String::new(),
            protocol: String::new(),
            capture_content: false,
        }
    }
}

/// Whether and how traces are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TracesExporter {
    /// On when the environment names an OTLP endpoint.
    Auto,
    /// Always on (the endpoint defaults to `http://localhost:4317`).
    Otlp,
    /// Off.
    None,
}

impl TracesConfig {
    /// Checks the protocol and endpoint.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.protocol.as_str(), "" | "grpc" | "http/protobuf") {
            return Err(ConfigError::new(
                "log.traces.protocol",
                format!(
                    "`{}` is not supported: use \"grpc\" or \"http/protobuf\"",
                    self.protocol
                ),
            ));
        }
        let scheme_ok = ["http://", "https://"]
            .iter()
            .any(|scheme| self.endpoint.starts_with(scheme));
        if !self.endpoint.is_empty() && !scheme_ok {
            return Err(ConfigError::new(
                "log.traces.endpoint",
                format!("`{}` is not an http:// or https:// URL", self.endpoint),
            ));
        }
        Ok(())
    }

    /// Whether traces are to be exported, given the environment.
    pub(crate) fn wanted(&self, env: impl Fn(&str) -> Option<String>) -> bool {
        let set = |name: &str| env(name).is_some_and(|value| !value.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
            return false;
        }
        match self.exporter {
            TracesExporter::None => false,
            TracesExporter::Otlp => true,
            TracesExporter::Auto => {
                let exporter = env("OTEL_TRACES_EXPORTER").unwrap_or_default();
                if exporter.trim().eq_ignore_ascii_case("none") {
                    return false;
                }
                !self.endpoint.is_empty()
                    || set("OTEL_EXPORTER_OTLP_ENDPOINT")
                    || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            }
        }
    }
}

/// Whether spans are exported (and so worth building attributes for).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether contents (prompts, completions, tool arguments) go on spans.
pub fn capture_content() -> bool {
    CAPTURE_CONTENT.load(Ordering::Relaxed)
}

fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(|| {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    })
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes the trace context in `headers` (W3C `traceparent`, `tracestate`,
/// `baggage`) the parent of `span`.
pub fn extract(span: &tracing::Span, headers: &HeaderMap) {
    extract_within(span, headers, &opentelemetry::Context::current());
}

/// As [`extract`], within a service's context ([`service_context`]): the
/// span, and every span under it, is exported as that service's, whether it
/// continues the caller's trace or starts one.
pub fn extract_within(span: &tracing::Span, headers: &HeaderMap, service: &opentelemetry::Context) {
    let parent = propagator().extract_with_context(service, &HeaderExtractor(headers));
    if parent.span().span_context().is_valid() || scope::names_a_service(service) {
        // An error only means the span is disabled: nothing to parent.
        drop(span.set_parent(parent));
    }
}

/// Writes `span`'s trace context into `headers`, replacing what was there.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        propagator().inject_context(&context, &mut HeaderInjector(headers));
    }
}

/// Records `trace_id` and `span_id` on `span` (declared with those fields
/// `Empty`), so the JSON log lines written inside it carry them.
pub fn record_ids(span: &tracing::Span) {
    if !enabled() {
        return;
    }
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

/// The trace and span ids of the current span, when traces are exported
/// and it is sampled (what an audit event names as its origin).
pub fn current_ids() -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let ids = span.span_context();
    (ids.is_valid() && ids.is_sampled())
        .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
}

/// Opens a span (made by the caller, e.g. the audit service's write of an
/// event) as the child of a span known only by its ids, from another
/// process. Ids that do not parse leave the span a root.
pub fn set_remote_parent(span: &tracing::Span, trace_id: &str, span_id: &str) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(trace_id), SpanId::from_hex(span_id))
    else {
        return;
    };
    let parent = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    );
    if parent.is_valid() {
        drop(span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent)));
    }
}

/// Renames `span` once its OpenTelemetry span exists (recording `otel.name`
/// only names a span not yet started), e.g. when what it is about becomes
/// known later.
pub fn rename(span: &tracing::Span, name: String) {
    if enabled() {
        span.context().span().update_name(name);
    }
}

/// Sets a text attribute that was not declared with the span (contents,
/// which are only put on spans when [`capture_content`] says so).
pub fn set_text(span: &tracing::Span, key: &'static str, value: String) {
    if enabled() {
        span.set_attribute(key, value);
    }
}

/// Sets a string-array attribute (e.g. `gen_ai.response.finish_reasons`),
/// which `tracing` fields cannot express.
pub fn set_texts(span: &tracing::Span, key: &'static str, values: Vec<String>) {
    if enabled() {
        let values = values.into_iter().map(Into::into).collect();
        span.set_attribute(
            key,
            opentelemetry::Value::Array(opentelemetry::Array::String(values)),
        );
    }
}

/// The trace id of a W3C `traceparent` value, when it is well formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next().filter(|v| v.len() == 2)?;
    let trace_id = parts.next()?;
    (trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id.bytes().any(|b| b != b'0'))
    .then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_standard_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        let auto = TracesConfig::default();
        assert!(!auto.wanted(env(&[])));
        assert!(auto.wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])));
        assert!(auto.wanted(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])));
        assert!(!auto.wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ])));
        assert!(!auto.wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
        let otlp = TracesConfig {
            exporter: TracesExporter::Otlp,
            ..Default::default()
        };
        assert!(otlp.wanted(env(&[])));
        let none = TracesConfig {
            exporter: TracesExporter::None,
            ..Default::default()
        };
        assert!(!none.wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])));
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = TracesConfig {
            protocol: "http/json".to_owned(),
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("log.traces.protocol")
        );
        let bad = TracesConfig {
            endpoint: "collector:4317".to_owned(),
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("log.traces.endpoint")
        );
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        assert_eq!(
            trace_id_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            None
        );
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-xyz-b7ad6b7169203331-01"), None);
    }
}
