//! Which service a span belongs to, when one process hosts several.
//!
//! `tracing-opentelemetry` starts every OpenTelemetry span with one tracer,
//! passing it the span's parent context. [`MeshTracer`] is that tracer: it
//! starts the span with the tracer of the service named in the parent
//! context ([`ServiceTracer`], put there by [`super::service_context`]), so
//! the span is exported with that service's resource. A child span's parent
//! context is its parent's, so the whole tree under a service's server span
//! stays that service's; a span with no service in its context goes to the
//! process's own tracer (the only one of a service binary).

use std::borrow::Cow;

use opentelemetry::Context;
use opentelemetry::trace::{SpanBuilder, Tracer};
use opentelemetry_sdk::trace::{SdkTracer, Span};

/// A service's tracer, carried as a value of the OpenTelemetry context.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTracer(SdkTracer);

impl ServiceTracer {
    /// A context that makes the spans opened in it `tracer`'s.
    pub(crate) fn context(tracer: SdkTracer) -> Context {
        Context::new().with_value(Self(tracer))
    }
}

/// Whether `context` names the service its spans belong to.
pub(crate) fn names_a_service(context: &Context) -> bool {
    context.get::<ServiceTracer>().is_some()
}

/// The tracer of the `tracing-opentelemetry` layer: starts each span with the
/// tracer of the service its parent context names, or the process's own.
#[derive(Debug, Clone)]
pub(crate) struct MeshTracer {
    process: SdkTracer,
}

impl MeshTracer {
    /// Spans without a service go to `process`.
    pub(crate) fn new(process: SdkTracer) -> Self {
        Self { process }
    }
}

impl Tracer for MeshTracer {
    type Span = Span;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> Self::Span {
        match parent_cx.get::<ServiceTracer>() {
            Some(ServiceTracer(tracer)) => tracer.build_with_context(builder, parent_cx),
            None => self.process.build_with_context(builder, parent_cx),
        }
    }

    fn span_builder<T>(&self, name: T) -> SpanBuilder
    where
        T: Into<Cow<'static, str>>,
    {
        SpanBuilder::from_name(name)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// (service.name, span name) of every exported span.
    type Exported = Arc<Mutex<Vec<(String, String)>>>;

    /// Records what it exports, with the resource's `service.name`.
    #[derive(Debug)]
    struct Recorder {
        service: String,
        exported: Exported,
    }

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let mut exported = self.exported.lock().unwrap();
            for span in batch {
                exported.push((self.service.clone(), span.name.into_owned()));
            }
            Ok(())
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.service = resource
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .map(|name| name.as_str().into_owned())
                .unwrap_or_default();
        }
    }

    fn provider(service: &str, exported: &Exported) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_resource(
                Resource::builder()
                    .with_service_name(format!("agentmesh-{service}"))
                    .build(),
            )
            .with_simple_exporter(Recorder {
                service: String::new(),
                exported: exported.clone(),
            })
            .build()
    }

    #[test]
    fn each_service_exports_its_own_spans_under_its_own_name() {
        let exported = Exported::default();
        let process = provider("agentmesh", &exported);
        let orchestrator = provider("orchestrator", &exported);
        let gateway = provider("llm-gateway", &exported);
        let tracer = MeshTracer::new(process.tracer("agentmesh"));
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::with_default(subscriber, || {
            let in_orchestrator = ServiceTracer::context(orchestrator.tracer("o"));
            let in_gateway = ServiceTracer::context(gateway.tracer("g"));

            // A server span parented on the service's context, and its child.
            let server = tracing::info_span!("orchestrator.server");
            drop(server.set_parent(in_orchestrator.clone()));
            server.in_scope(|| drop(tracing::info_span!("orchestrator.child").entered()));
            drop(server);

            // A root span opened while the service's context is current.
            {
                let _attached = in_gateway.attach();
                drop(tracing::info_span!("gateway.background").entered());
            }

            // No service: the process's own.
            drop(tracing::info_span!("cli.command").entered());
        });
        let mut spans = exported.lock().unwrap().clone();
        spans.sort();
        assert_eq!(
            spans,
            [
                ("agentmesh-agentmesh".to_owned(), "cli.command".to_owned()),
                (
                    "agentmesh-llm-gateway".to_owned(),
                    "gateway.background".to_owned()
                ),
                (
                    "agentmesh-orchestrator".to_owned(),
                    "orchestrator.child".to_owned()
                ),
                (
                    "agentmesh-orchestrator".to_owned(),
                    "orchestrator.server".to_owned()
                ),
            ]
        );
    }
}
