//! `--log-format json`: one JSON object per line on stderr, for log shippers
//! (Fluent Bit, Vector, Loki, Elasticsearch) that index fields.
//!
//! Each line holds `timestamp` (RFC 3339, UTC), `level`, `target`,
//! `message`, the event's own fields, and the fields of every span the event
//! happened in, flattened to the top level: `worker_id` (from the worker's
//! span), `instruction_id` (from a bundle's span), `transform` where a span
//! carries one, `pid` for a Python worker's output. tracing-subscriber's own
//! JSON format nests span fields in a `spans` list, which log queries cannot
//! filter on directly; hence this formatter. What goes to the runners'
//! logging endpoints ([`crate::logging`]) does not pass through here.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter. Pair it with [`JsonFields`] (see [`layer`]) so span
/// fields are stored as JSON and can be merged.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

/// A stderr layer writing [`JsonLines`].
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // No colour codes inside JSON strings, terminal or not.
        .with_ansi(false)
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines)
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str(&fields.fields)
                {
                    // Inner spans win: a bundle's field overrides its worker's.
                    line.extend(fields);
                }
                innermost = Some(span.name());
            }
            if let Some(name) = innermost {
                line.insert("span".into(), name.into());
            }
        }
        event.record(&mut Fields(&mut line));
        // Written last so an event or span field of the same name cannot
        // hide them.
        let mut timestamp = String::new();
        if SystemTime
            .format_time(&mut Writer::new(&mut timestamp))
            .is_ok()
        {
            line.insert("timestamp".into(), timestamp.into());
        }
        let metadata = event.metadata();
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        line.entry("message").or_insert_with(|| "".into());
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields into the line's object.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::{info, info_span, warn};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_json_with_span_fields_flattened() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines),
        );
        tracing::subscriber::with_default(subscriber, || {
            let worker = info_span!("worker", worker_id = "w1", worker_serial = 7u64);
            let _w = worker.enter();
            let bundle = info_span!("bundle", instruction_id = "b-9", transform = "kv_echo");
            let _b = bundle.enter();
            warn!(elements = 3u64, "bundle \"quoted\"\nfailed");
            drop(_b);
            info!("outside the bundle");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["message"], "bundle \"quoted\"\nfailed");
        assert_eq!(first["worker_id"], "w1");
        assert_eq!(first["worker_serial"], 7);
        assert_eq!(first["instruction_id"], "b-9");
        assert_eq!(first["transform"], "kv_echo");
        assert_eq!(first["elements"], 3);
        assert_eq!(first["span"], "bundle");
        assert!(first["timestamp"].as_str().is_some_and(|t| t.contains('T')));
        let second = &lines[1];
        assert_eq!(second["worker_id"], "w1");
        assert!(second.get("instruction_id").is_none(), "{second}");
    }
}
