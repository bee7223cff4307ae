//! Log output and trace export through `tracing`.
//!
//! Logs are JSON lines for collectors (one object per line: `timestamp`,
//! `level`, `target`, the event's fields, and the fields of every span it was
//! written in — `request_id`, `tenant`, `run_id`, `trace_id`, `span_id` where
//! known — so logs and traces join) or pretty lines for a terminal; always on
//! stderr so stdout stays free for command output.
//!
//! When [`crate::telemetry`] says traces are wanted, a `tracing-opentelemetry`
//! layer turns the spans into OpenTelemetry spans. It has its own filter, so a
//! quiet log level does not silence traces.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};
use crate::telemetry;

mod span_fields;

use span_fields::{SpanFieldsLayer, write_span_fields};

/// Installs the global subscriber for `service` (e.g. `orchestrator`) and,
/// when configured, the trace exporter; call [`telemetry::shutdown`] at the
/// end to export the last spans. Must run inside a Tokio runtime when traces
/// are on. Only the first call in a process takes effect
/// (the CLI runs five services in one process and calls it once); later calls
/// are ignored.
pub fn init(service: &str, config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .or_else(|| EnvFilter::try_new(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let output = match config.format {
        LogFormat::Json => {
            let mut layer = json_subscriber::JsonLayer::stderr();
            layer
                .with_timer("timestamp", tracing_subscriber::fmt::time::SystemTime)
                .with_level("level")
                .with_target("target")
                .with_flattened_event();
            // The spans' fields, kept by `SpanFieldsLayer` (see there why).
            layer.add_multiple_dynamic_fields(write_span_fields);
            SpanFieldsLayer::new(layer).boxed()
        }
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (provider, problem) = match telemetry::provider(service, &config.traces) {
        Ok(provider) => (provider, None),
        Err(problem) => (None, Some(problem)),
    };
    let traces = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        // Spans of the services this process hosts go to their own
        // tracers (see `telemetry::service_context`); the rest to this one.
        let tracer = telemetry::MeshTracer::new(provider.tracer(format!("agentmesh-{service}")));
        // Spans at info and above from agentmesh's crates (a target prefix),
        // whatever the log level.
        let targets = Targets::new().with_target("agentmesh", tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_filter(targets)
    });
    let result = tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(traces)
        .try_init();
    if let Some(problem) = problem {
        tracing::error!(%problem, "traces are off");
    }
    // An error means a subscriber is already installed: keep that one, and
    // drop the provider made for nothing.
    if let (Ok(()), Some(provider)) = (result, provider) {
        telemetry::install(service, &config.traces, provider);
    }
}
