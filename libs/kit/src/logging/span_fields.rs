//! The fields of the spans a log line was written in, kept cheaply until a
//! line needs them.
//!
//! Every JSON log line carries the fields of each span it was written in
//! (request id, tenant, run id, trace and span ids, and the rest). The JSON
//! layer's own span handling serialises a span's whole field map again on
//! every `Span::record`, which the services do many times per call (a
//! call's status, tokens, model …), while a line is written inside a call's
//! spans only now and then (errors, retries; the access log is at debug).
//! Under load that work was a tenth of the gateway's CPU with no line
//! printed.
//!
//! [`SpanFieldsLayer`] wraps the JSON layer: it keeps each span's fields as
//! a map of JSON values in the span's extensions (updated in place on
//! `record`, nothing serialised) and passes only events to the JSON layer,
//! which writes the fields of the event's spans, root first, a field of an
//! inner span replacing the same field of an outer one, through
//! [`write_span_fields`]. The output is what the JSON layer's flattened
//! span list wrote: the same members, `name` being the innermost span's.

use std::collections::BTreeMap;
use std::fmt;

use json_subscriber::FieldWriter;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// One span's fields, as JSON values by name.
#[derive(Debug, Default)]
struct SpanFields(BTreeMap<&'static str, Value>);

impl SpanFields {
    fn set(&mut self, field: &Field, value: Value) {
        let name = field.name();
        // A raw identifier (`r#type`) is logged under its plain name.
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.0.insert(name, value);
    }
}

impl Visit for SpanFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, Value::from(format!("{value:?}")));
    }
}

/// Keeps span fields for log lines and hands events to `inner` (the JSON
/// layer, which must write [`write_span_fields`]). See the module docs.
pub(crate) struct SpanFieldsLayer<L> {
    inner: L,
}

impl<L> SpanFieldsLayer<L> {
    pub(crate) fn new(inner: L) -> Self {
        Self { inner }
    }
}

impl<S, L> Layer<S> for SpanFieldsLayer<L>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        fields
            .0
            .insert("name", Value::from(attrs.metadata().name()));
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(fields);
        }
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.inner.on_event(event, ctx);
    }
}

/// Writes the fields of the spans `event` was written in, root first, an
/// inner span's field replacing an outer one's of the same name: for the
/// JSON layer's `add_multiple_dynamic_fields`.
pub(crate) fn write_span_fields<S>(
    event: &Event<'_>,
    ctx: &Context<'_, S>,
    out: &mut FieldWriter<'_>,
) where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    let Some(scope) = ctx.event_scope(event) else {
        return;
    };
    let mut merged: BTreeMap<&'static str, Value> = BTreeMap::new();
    for span in scope.from_root() {
        if let Some(fields) = span.extensions().get::<SpanFields>() {
            merged.extend(fields.0.iter().map(|(name, value)| (*name, value.clone())));
        }
    }
    for (name, value) in &merged {
        // Writing a JSON value into the line cannot fail short of memory.
        let _ = out.write_field(name, value);
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn logged(emit: impl FnOnce()) -> Vec<Value> {
        let lines = Lines::default();
        let mut json = json_subscriber::JsonLayer::new(lines.clone());
        json.with_level("level").with_flattened_event();
        json.add_multiple_dynamic_fields(write_span_fields);
        let subscriber = tracing_subscriber::registry().with(SpanFieldsLayer::new(json));
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn a_line_carries_the_fields_of_every_span_it_was_written_in() {
        let lines = logged(|| {
            let outer = tracing::info_span!(
                "rpc",
                request_id = "r-1",
                tenant = %"acme",
                trace_id = tracing::field::Empty,
                shadowed = 1
            );
            let _outer = outer.enter();
            outer.record("trace_id", "abc");
            let inner = tracing::info_span!("chat", shadowed = 2, r#type = "unary", ok = true);
            let _inner = inner.enter();
            inner.record("shadowed", 3);
            tracing::warn!(attempt = 2, "retrying");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["tenant"], "acme");
        assert_eq!(line["trace_id"], "abc", "a recorded field is logged");
        assert_eq!(line["shadowed"], 3, "the inner span's latest value wins");
        assert_eq!(line["type"], "unary");
        assert_eq!(line["ok"], true);
        assert_eq!(line["name"], "chat");
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["message"], "retrying");
        assert_eq!(line["level"], "WARN");
    }

    #[test]
    fn a_line_outside_spans_and_a_later_line_carry_only_their_own_spans() {
        let lines = logged(|| {
            tracing::info!("before");
            {
                let _span = tracing::info_span!("rpc", request_id = "r-2").entered();
                tracing::info!("inside");
            }
            tracing::info!("after");
        });
        assert_eq!(lines.len(), 3);
        assert!(lines[0].get("request_id").is_none());
        assert_eq!(lines[1]["request_id"], "r-2");
        assert!(lines[2].get("request_id").is_none());
    }
}
