//! Logs go to stderr (the subscriber's fmt layer) and, for events emitted inside a
//! worker's span, also to that worker's runner over `BeamFnLogging`, tagged with
//! the bundle's instruction id, so they appear in the runner's logs where users look.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, RwLock};
use std::time::{Duration, SystemTime};

use beam_proto::fn_execution::beam_fn_logging_client::BeamFnLoggingClient;
use beam_proto::fn_execution::{LogEntry, log_entry};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::grpc::{EndpointError, worker_channel};

/// Entries queued per worker; past this, entries are dropped rather than
/// slowing the code that logs.
const QUEUE: usize = 4096;
const BATCH: usize = 256;
const BATCH_WAIT: Duration = Duration::from_millis(100);
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Span field naming the worker whose runner receives the span's events.
pub const WORKER_SERIAL_FIELD: &str = "worker_serial";
/// Span field copied into `LogEntry.instruction_id`.
pub const INSTRUCTION_FIELD: &str = "instruction_id";

/// Where each live worker's entries go, by the pool's worker serial number.
static SINKS: LazyLock<RwLock<HashMap<u64, mpsc::Sender<LogEntry>>>> =
    LazyLock::new(Default::default);

/// Keeps a worker's log forwarding alive; dropping it ends the stream cleanly.
pub struct RunnerLogs {
    serial: u64,
}

impl Drop for RunnerLogs {
    fn drop(&mut self) {
        sinks_mut().remove(&self.serial);
    }
}

fn sinks_mut() -> std::sync::RwLockWriteGuard<'static, HashMap<u64, mpsc::Sender<LogEntry>>> {
    SINKS.write().unwrap_or_else(|p| p.into_inner())
}

/// Starts streaming the events of worker `serial` to the runner at `url`.
pub fn forward_to_runner(
    serial: u64,
    url: &str,
    worker_id: &str,
    cancel: CancellationToken,
) -> Result<RunnerLogs, EndpointError> {
    let client = BeamFnLoggingClient::new(worker_channel(url, worker_id)?)
        .max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(QUEUE);
    sinks_mut().insert(serial, tx);
    let url = url.to_owned();
    tokio::spawn(async move {
        let stream = stream_entries(client, rx);
        tokio::pin!(stream);
        let result = tokio::select! {
            result = &mut stream => result,
            // Dropping RunnerLogs ends the stream cleanly; only a stuck one is cut.
            _ = cancel.cancelled() => tokio::time::timeout(CLOSE_GRACE, &mut stream)
                .await
                .unwrap_or(Ok(())),
        };
        if let Err(status) = result {
            // Not inside the worker's span, so this goes to stderr only.
            tracing::warn!(%url, %status, "runner logging stream failed; logs go to stderr only");
        }
    });
    Ok(RunnerLogs { serial })
}

async fn stream_entries(
    mut client: BeamFnLoggingClient<crate::grpc::WorkerChannel>,
    rx: mpsc::Receiver<LogEntry>,
) -> Result<(), tonic::Status> {
    // Our side of the call must end when the runner ends its side: Flink
    // closes an environment's logging server first and waits up to 60 s for
    // open calls, before it closes the worker's control stream.
    let runner_done = CancellationToken::new();
    let (tx, requests) = mpsc::channel(BATCH);
    tokio::spawn(forward_until(rx, tx, runner_done.clone()));
    let batches = ReceiverStream::new(requests)
        .chunks_timeout(BATCH, BATCH_WAIT)
        .map(|log_entries| log_entry::List { log_entries });
    let result = async {
        let mut control = client.logging(batches).await?.into_inner();
        // The runner may send LogControl messages; nothing in them needs acting on.
        while control.message().await?.is_some() {}
        Ok(())
    }
    .await;
    runner_done.cancel();
    result
}

/// Moves entries into the request stream until `done`, then drops `tx`, which
/// ends the request stream.
async fn forward_until(
    mut rx: mpsc::Receiver<LogEntry>,
    tx: mpsc::Sender<LogEntry>,
    done: CancellationToken,
) {
    loop {
        let entry = tokio::select! {
            _ = done.cancelled() => return,
            entry = rx.recv() => entry,
        };
        let Some(entry) = entry else { return };
        tokio::select! {
            _ = done.cancelled() => return,
            sent = tx.send(entry) => if sent.is_err() { return },
        }
    }
}

/// A tracing layer that copies worker events to their runner.
pub struct RunnerLogLayer;

#[derive(Default, Clone)]
struct SpanTags {
    worker_serial: Option<u64>,
    instruction_id: Option<String>,
}

impl Visit for SpanTags {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == WORKER_SERIAL_FIELD {
            self.worker_serial = Some(value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == INSTRUCTION_FIELD {
            self.instruction_id = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == INSTRUCTION_FIELD {
            self.instruction_id = Some(format!("{value:?}"));
        }
    }
}

/// Renders an event as `message key=value ...`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}

impl<S> Layer<S> for RunnerLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut tags = SpanTags::default();
        attrs.record(&mut tags);
        if (tags.worker_serial.is_some() || tags.instruction_id.is_some())
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(tags);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Only our own events: transport internals (h2, tonic) are noise to a
        // pipeline author, and the logging stream must not log about itself.
        let meta = event.metadata();
        if !meta.target().starts_with("beam_rust_worker") {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let mut tags = SpanTags::default();
        for span in scope {
            if let Some(t) = span.extensions().get::<SpanTags>() {
                tags.worker_serial = tags.worker_serial.or(t.worker_serial);
                tags.instruction_id = tags.instruction_id.take().or(t.instruction_id.clone());
            }
        }
        let Some(serial) = tags.worker_serial else {
            return;
        };
        let Some(tx) = SINKS
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&serial)
            .cloned()
        else {
            return;
        };
        let mut message = Message::default();
        event.record(&mut message);
        let entry = LogEntry {
            severity: severity(*meta.level()) as i32,
            timestamp: Some(prost_types::Timestamp::from(SystemTime::now())),
            message: message.0,
            trace: String::new(),
            instruction_id: tags.instruction_id.unwrap_or_default(),
            transform_id: String::new(),
            log_location: match (meta.file(), meta.line()) {
                (Some(f), Some(l)) => format!("{f}:{l}"),
                _ => meta.target().to_owned(),
            },
            thread: std::thread::current().name().unwrap_or("").to_owned(),
        };
        // Never block the code that logs: a runner that cannot keep up loses entries.
        let _ = tx.try_send(entry);
    }
}

fn severity(level: Level) -> log_entry::severity::Enum {
    use log_entry::severity::Enum;
    match level {
        Level::TRACE => Enum::Trace,
        Level::DEBUG => Enum::Debug,
        Level::INFO => Enum::Info,
        Level::WARN => Enum::Warn,
        Level::ERROR => Enum::Error,
    }
}
