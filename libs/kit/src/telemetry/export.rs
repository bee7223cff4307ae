//! The trace exporter: one tracer provider per service a process hosts, each
//! with the service's own resource (`service.name = agentmesh-<service>`),
//! all sharing the process's `[log.traces]` settings.
//!
//! [`crate::logging::init`] builds the process's first provider
//! ([`provider`]) and [`install`]s it; [`service_context`] adds the
//! provider of each further service when its host starts (inside the Tokio
//! runtime the gRPC exporter's connection needs), and [`shutdown`] flushes
//! them all.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;

use super::scope::ServiceTracer;
use super::{CAPTURE_CONTENT, ENABLED, TracesConfig};

/// The providers of a process, by service.
#[derive(Debug)]
struct Installed {
    /// The settings every provider is built with.
    config: TracesConfig,
    providers: BTreeMap<String, SdkTracerProvider>,
}

/// The installed providers, kept for [`shutdown`]; `None` while traces are off.
static INSTALLED: Mutex<Option<Installed>> = Mutex::new(None);

/// Keeps `provider`, built for `service` with `config`, for
/// [`service_context`] and [`shutdown`].
pub(crate) fn install(service: &str, config: &TracesConfig, provider: SdkTracerProvider) {
    if let Ok(mut installed) = INSTALLED.lock() {
        let mut providers = BTreeMap::new();
        providers.insert(service.to_owned(), provider);
        *installed = Some(Installed {
            config: config.clone(),
            providers,
        });
    }
}

/// The OpenTelemetry context of `service`: spans opened within it are
/// exported with `service`'s resource. Builds the service's provider on first
/// use; must run inside a Tokio runtime. An empty context when traces are
/// off (or the provider cannot be built: its spans then go to the process's
/// first provider).
pub fn service_context(service: &str) -> opentelemetry::Context {
    let Ok(mut installed) = INSTALLED.lock() else {
        return opentelemetry::Context::new();
    };
    let Some(installed) = installed.as_mut() else {
        return opentelemetry::Context::new();
    };
    let provider = match installed.providers.get(service) {
        Some(provider) => provider.clone(),
        None => match provider(service, &installed.config) {
            Ok(Some(provider)) => {
                installed
                    .providers
                    .insert(service.to_owned(), provider.clone());
                provider
            }
            Ok(None) => return opentelemetry::Context::new(),
            Err(problem) => {
                tracing::warn!(%service, %problem, "no tracer of its own; spans go to the process's");
                return opentelemetry::Context::new();
            }
        },
    };
    ServiceTracer::context(provider.tracer(format!("agentmesh-{service}")))
}

/// Exports the spans still queued and stops the exporters; call at the very
/// end, inside the Tokio runtime (the exporters' connections live on it).
/// Does nothing when traces are off.
pub fn shutdown() {
    let installed = INSTALLED
        .lock()
        .ok()
        .and_then(|mut installed| installed.take());
    for (service, provider) in installed.map(|i| i.providers).unwrap_or_default() {
        if let Err(err) = provider.shutdown_with_timeout(std::time::Duration::from_secs(5)) {
            tracing::warn!(%service, %err, "could not export the last spans");
        }
    }
}

/// Builds the tracer provider for `service` when `config` and the
/// environment ask for traces. Must run inside a Tokio runtime (the gRPC
/// exporter's connection lives on it).
pub(crate) fn provider(
    service: &str,
    config: &TracesConfig,
) -> Result<Option<SdkTracerProvider>, String> {
    CAPTURE_CONTENT.store(config.capture_content, Ordering::Relaxed);
    if !config.wanted(|name| std::env::var(name).ok()) {
        return Ok(None);
    }
    let protocol = if config.protocol.is_empty() {
        std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|_| "grpc".to_owned())
    } else {
        config.protocol.clone()
    };
    let exporter = match protocol.trim() {
        "http/protobuf" => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
            if !config.endpoint.is_empty() {
                let base = config.endpoint.trim_end_matches('/');
                builder = builder.with_endpoint(format!("{base}/v1/traces"));
            }
            builder.build()
        }
        "grpc" | "" => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if !config.endpoint.is_empty() {
                builder = builder.with_endpoint(config.endpoint.clone());
            }
            builder.build()
        }
        other => {
            return Err(format!(
                "OTLP protocol `{other}` is not supported: use grpc or http/protobuf"
            ));
        }
    }
    .map_err(|err| format!("cannot build the OTLP span exporter: {err}"))?;

    let detected = opentelemetry_sdk::Resource::builder().build();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty())
        || detected
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    if !named {
        resource = resource.with_service_name(format!("agentmesh-{service}"));
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}
