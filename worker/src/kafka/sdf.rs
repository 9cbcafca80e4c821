//! The unbounded Kafka read as a splittable DoFn.
//!
//! Expansion makes it `Impulse → partitions → read-partition`, the last a
//! ParDo with a restriction coder that runners expand into the four steps
//! below (see `shared/docs/sdf-notes.md`):
//! - **partitions** lists every partition of the topics: one element
//!   (`topic/partition`, bytes) each, so Flink keys the read by partition;
//! - **pair** gives each a restriction `KV(KV(start, end), watermark)`, with
//!   start `-1` meaning "where the group's committed offset (or
//!   `auto.offset.reset`) says", end `i64::MAX` (never), and the watermark
//!   estimator's state in milliseconds;
//! - **split-and-size** keeps the restriction whole (one reader per
//!   partition) with size 1;
//! - **process** reads the partition from the restriction's start for about
//!   a second with a consumer cached across bundles, then hands the rest back
//!   to the runner as a residual from the next offset, with the output
//!   watermark and, when the partition was idle, a delay. Offsets are
//!   committed to the group when the runner finalizes the bundle, never
//!   backwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use beam_proto::fn_execution::{BundleApplication, DelayedBundleApplication};
use beam_proto::pipeline::is_bounded;
use bytes::{Bytes, BytesMut};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::ops::record_coder;
use super::read::{client, committed_offsets, consumer, encode_message, now_ms, take_chunk};
use super::{KafkaError, LOOKUP_TIMEOUT, ReadConfig, blocking, partitions_of};
use crate::coders::WireCoder;
use crate::ops::{
    Chunk, Context, EdgeCoder, Emitter, Finalizer, OpError, Operator, OperatorFactory, Setup,
    Shared, TaskOutcome,
};
use crate::registry::{PlanContext, PlanError, Planned};
use crate::value_coder::{Value, WindowedCoder};

/// Delay asked for after a window with no records. Flink rounds delays down
/// to whole seconds, so anything shorter would mean "at once".
const IDLE_DELAY: Duration = Duration::from_secs(1);
/// Records read but not yet sent wait at most this long for more, so a
/// trickle of records still reaches the sink promptly.
const LINGER: Duration = Duration::from_millis(5);
/// ... and records arriving steadily are sent at least this often: latency
/// stays in milliseconds without making chunks of a few records each.
const MAX_BUFFER_AGE: Duration = Duration::from_millis(20);
/// With record timestamps, how far behind the clock an idle partition's
/// watermark stays.
const IDLE_WATERMARK_LAG: Duration = Duration::from_secs(2);
/// How long the consumer-lag metric's end-offset look-up may take.
const LAG_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Restriction start meaning "not resolved yet".
const UNRESOLVED: i64 = -1;
/// Beam's minimum timestamp, in milliseconds: the initial watermark.
const MIN_WATERMARK_MS: i64 = -9_223_372_036_854_775;

fn malformed_element(why: impl std::fmt::Display) -> OpError {
    OpError::failed(format!("malformed Kafka partition descriptor: {why}"))
}

fn decode_input(
    coder: &WindowedCoder,
    input: &Chunk,
) -> Result<Vec<crate::value_coder::WindowedValue>, OpError> {
    coder
        .decode_all(&input.bytes)
        .map_err(|source| OpError::Element { index: 0, source })
}

fn encode(
    coder: &WindowedCoder,
    metadata: &[u8],
    value: &Value,
    out: &mut BytesMut,
) -> Result<(), OpError> {
    coder
        .encode(metadata, value, out)
        .map_err(|source| OpError::Element { index: 0, source })
}

// ---- partitions ----

pub fn plan_partitions(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    let config = ReadConfig::from_payload(&cx.payload).map_err(|e| cx.config_error(e))?;
    let input = cx.single_input()?.full();
    let output = cx.single_output()?;
    let coder = cx.output_coder(&output)?;
    Ok(Planned {
        factory: Arc::new(PartitionsFactory {
            config: Arc::new(config),
            input,
            output: coder.full(),
        }),
        outputs: vec![(output, coder)],
    })
}

#[derive(Debug)]
struct PartitionsFactory {
    config: Arc<ReadConfig>,
    input: WindowedCoder,
    output: WindowedCoder,
}

impl OperatorFactory for PartitionsFactory {
    fn kind(&self) -> &'static str {
        "kafka_partitions"
    }

    fn create(&self, _: &Setup<'_>) -> Result<Box<dyn Operator>, OpError> {
        Ok(Box::new(Partitions {
            config: self.config.clone(),
            input: self.input.clone(),
            output: self.output.clone(),
        }))
    }
}

/// For each impulse, one `topic/partition` element per partition of the topics.
struct Partitions {
    config: Arc<ReadConfig>,
    input: WindowedCoder,
    output: WindowedCoder,
}

#[async_trait]
impl Operator for Partitions {
    async fn process(&mut self, input: Chunk, cx: &mut Context<'_>) -> Result<(), OpError> {
        for impulse in decode_input(&self.input, &input)? {
            let config = self.config.clone();
            let listed = blocking(move || list_partitions(&config)).await?;
            let mut out = BytesMut::new();
            for (topic, partition) in &listed {
                let element = Value::Bytes(Bytes::from(format!("{topic}/{partition}")));
                encode(&self.output, &impulse.metadata, &element, &mut out)?;
            }
            info!(
                partitions = listed.len(),
                "Kafka partitions listed for the streaming read"
            );
            cx.emit(
                0,
                Chunk {
                    bytes: out.freeze(),
                    elements: listed.len() as u64,
                },
            );
        }
        Ok(())
    }
}

fn list_partitions(config: &ReadConfig) -> Result<Vec<(String, i32)>, KafkaError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", config.bootstrap());
    let probe: rdkafka::consumer::BaseConsumer = c.create().map_err(|e| KafkaError::Config {
        transform: "Kafka read",
        why: e.to_string(),
    })?;
    let mut listed = Vec::new();
    for topic in &config.topics {
        for p in partitions_of(&probe, topic, config.bootstrap())? {
            listed.push((topic.clone(), p));
        }
    }
    Ok(listed)
}

fn parse_descriptor(element: &Value) -> Result<(String, i32), OpError> {
    let bytes = element
        .as_bytes()
        .ok_or_else(|| malformed_element("not bytes"))?;
    let text = std::str::from_utf8(bytes).map_err(malformed_element)?;
    let (topic, partition) = text
        .rsplit_once('/')
        .ok_or_else(|| malformed_element(format!("'{text}' is not topic/partition")))?;
    let partition = partition
        .parse()
        .map_err(|_| malformed_element(format!("'{text}' has no partition number")))?;
    Ok((topic.to_owned(), partition))
}

// ---- pair, split-and-size, truncate ----

/// A step that maps each element to one output element.
struct MapStep {
    input: WindowedCoder,
    output: WindowedCoder,
    map: fn(Value) -> Result<Value, OpError>,
}

#[derive(Debug)]
struct MapFactory {
    input: WindowedCoder,
    output: WindowedCoder,
    map: fn(Value) -> Result<Value, OpError>,
}

impl OperatorFactory for MapFactory {
    fn kind(&self) -> &'static str {
        "kafka_restriction"
    }

    fn create(&self, _: &Setup<'_>) -> Result<Box<dyn Operator>, OpError> {
        Ok(Box::new(MapStep {
            input: self.input.clone(),
            output: self.output.clone(),
            map: self.map,
        }))
    }
}

#[async_trait]
impl Operator for MapStep {
    async fn process(&mut self, input: Chunk, cx: &mut Context<'_>) -> Result<(), OpError> {
        let mut out = BytesMut::new();
        let values = decode_input(&self.input, &input)?;
        for v in &values {
            let mapped = (self.map)(v.value.clone())?;
            encode(&self.output, &v.metadata, &mapped, &mut out)?;
        }
        cx.emit(
            0,
            Chunk {
                bytes: out.freeze(),
                elements: values.len() as u64,
            },
        );
        Ok(())
    }
}

fn plan_map(
    cx: &PlanContext<'_>,
    map: fn(Value) -> Result<Value, OpError>,
) -> Result<Planned, PlanError> {
    let input = cx.single_input()?.full();
    let output = cx.single_output()?;
    let coder = cx.output_coder(&output)?;
    Ok(Planned {
        factory: Arc::new(MapFactory {
            input,
            output: coder.full(),
            map,
        }),
        outputs: vec![(output, coder)],
    })
}

pub fn plan_pair(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    plan_map(cx, |element| {
        parse_descriptor(&element)?;
        Ok(Value::kv(
            element,
            restriction(UNRESOLVED, i64::MAX, MIN_WATERMARK_MS),
        ))
    })
}

pub fn plan_split(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    // One reader per partition: the restriction is never split, and every
    // partition weighs the same.
    plan_map(cx, |paired| Ok(Value::kv(paired, Value::Double(1.0))))
}

/// Draining keeps the restriction as it is: what was not read stays in Kafka
/// under the group's committed offsets.
pub fn plan_truncate(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    plan_map(cx, Ok)
}

fn restriction(start: i64, end: i64, watermark_ms: i64) -> Value {
    Value::kv(
        Value::kv(Value::Int(start), Value::Int(end)),
        Value::Int(watermark_ms),
    )
}

/// `KV(KV(element, KV(KV(start, end), watermark)), size)` taken apart.
struct Sized {
    element: Value,
    start: i64,
    end: i64,
    watermark_ms: i64,
}

fn unpack(value: &Value) -> Result<Sized, OpError> {
    let bad = || malformed_element(format!("unexpected restriction shape {value:?}"));
    let (paired, _size) = value.as_kv().ok_or_else(bad)?;
    let (element, restr) = paired.as_kv().ok_or_else(bad)?;
    let (range, watermark) = restr.as_kv().ok_or_else(bad)?;
    let (start, end) = range.as_kv().ok_or_else(bad)?;
    Ok(Sized {
        element: element.clone(),
        start: start.as_int().ok_or_else(bad)?,
        end: end.as_int().ok_or_else(bad)?,
        watermark_ms: watermark.as_int().ok_or_else(bad)?,
    })
}

// ---- process ----

pub fn plan_process(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    let config = ReadConfig::from_payload(&cx.payload).map_err(|e| cx.config_error(e))?;
    let input = cx.single_input()?.full();
    let (output, wire) = record_coder(cx)?;
    let mut outputs: Vec<String> = cx.transform.outputs.keys().cloned().collect();
    outputs.sort();
    Ok(Planned {
        factory: Arc::new(ProcessFactory {
            config: Arc::new(config),
            input,
            wire: wire.clone(),
            target: Arc::new(ResidualTarget {
                transform_id: cx.id.to_owned(),
                input_id: cx.input_name()?,
                outputs,
            }),
        }),
        outputs: vec![(output, EdgeCoder::Wire(wire))],
    })
}

/// Where residuals go back in: the process step and its main input.
#[derive(Debug)]
struct ResidualTarget {
    transform_id: String,
    input_id: String,
    /// Local output names, each reported with the watermark.
    outputs: Vec<String>,
}

#[derive(Debug)]
struct ProcessFactory {
    config: Arc<ReadConfig>,
    input: WindowedCoder,
    wire: WireCoder,
    target: Arc<ResidualTarget>,
}

impl OperatorFactory for ProcessFactory {
    fn kind(&self) -> &'static str {
        "kafka_read"
    }

    fn create(&self, setup: &Setup<'_>) -> Result<Box<dyn Operator>, OpError> {
        Ok(Box::new(Process {
            config: self.config.clone(),
            input: self.input.clone(),
            wire: self.wire.clone(),
            target: self.target.clone(),
            shared: setup.shared.clone(),
        }))
    }
}

/// Reads each input restriction in a task of its own, so the partitions of
/// one bundle are read concurrently.
struct Process {
    config: Arc<ReadConfig>,
    input: WindowedCoder,
    wire: WireCoder,
    target: Arc<ResidualTarget>,
    shared: Arc<Shared>,
}

#[async_trait]
impl Operator for Process {
    async fn process(&mut self, input: Chunk, cx: &mut Context<'_>) -> Result<(), OpError> {
        for v in decode_input(&self.input, &input)? {
            let sized = unpack(&v.value)?;
            let (topic, partition) = parse_descriptor(&sized.element)?;
            let read = PartitionRead {
                config: self.config.clone(),
                wire: self.wire.clone(),
                input: self.input.clone(),
                target: self.target.clone(),
                shared: self.shared.clone(),
                out: cx.emitter(0),
                chunk_bytes: cx.limits.flush_bytes,
                max_records: cx.limits.max_bundle_elements.unwrap_or(u64::MAX),
                // Flink cannot take a checkpoint while a bundle runs, so this
                // also bounds how long a checkpoint waits for the read.
                window: cx.limits.process_window,
                metadata: v.metadata,
                topic,
                partition,
                sized,
            };
            cx.spawn(read.run());
        }
        Ok(())
    }
}

struct PartitionRead {
    config: Arc<ReadConfig>,
    wire: WireCoder,
    input: WindowedCoder,
    target: Arc<ResidualTarget>,
    shared: Arc<Shared>,
    out: Emitter,
    chunk_bytes: usize,
    /// Records one window may read: the runner's bundle size, if it gave one.
    max_records: u64,
    /// How long one window reads before the rest goes back as a residual.
    window: Duration,
    metadata: Bytes,
    topic: String,
    partition: i32,
    sized: Sized,
}

impl PartitionRead {
    async fn run(self) -> Result<TaskOutcome, OpError> {
        let key = format!(
            "{:?}|{}|{}",
            self.config.consumer, self.topic, self.partition
        );
        let consumers = self.shared.get::<PartitionConsumers>();
        let mut reader = match consumers.take(&key) {
            Some(r) => r,
            None => PartitionReader::new(&self.config)?,
        };
        let start = match self.sized.start {
            UNRESOLVED => {
                reader
                    .resolve_start(&self.config, &self.topic, self.partition)
                    .await?
            }
            start => start,
        };
        let window = self.read_window(&mut reader, start).await?;
        let next = window.next;
        let consumer = reader.consumer.clone();
        consumers.put(key, reader);
        let mut outcome = TaskOutcome::default();
        if self.config.commit_offsets && next > start {
            outcome
                .finalizers
                .push(self.commit_on_finalize(consumer, next));
        }
        if next < self.sized.end {
            // Idle, or interrupted: ask to be called again in a while.
            let pause = window.records == 0 || window.interrupted;
            let watermark_ms = self.watermark(&window);
            outcome
                .residuals
                .push(self.residual(next, pause, watermark_ms)?);
        }
        Ok(outcome)
    }

    /// Reads from `start` until the window closes; returns the next offset to
    /// read and how many records were sent.
    async fn read_window(
        &self,
        reader: &mut PartitionReader,
        start: i64,
    ) -> Result<Window, OpError> {
        reader.seek(&self.topic, self.partition, start, self.config.bootstrap())?;
        let deadline = Instant::now() + self.window;
        let mut next = start;
        let mut records = 0u64;
        let mut buf = BytesMut::with_capacity(self.chunk_bytes.min(1 << 20) + 1024);
        let mut in_buf = 0u64;
        let mut buffered_since = Instant::now();
        let mut interrupted = false;
        let mut newest_ms = i64::MIN;
        while next < self.sized.end && records < self.max_records {
            let wait_until = if buf.is_empty() {
                deadline
            } else {
                (Instant::now() + LINGER).min(deadline)
            };
            match tokio::time::timeout_at(wait_until, reader.consumer.recv()).await {
                Ok(Ok(message)) => {
                    use rdkafka::message::Message;
                    if message.offset() < next {
                        continue; // already read (a seek can replay)
                    }
                    if buf.is_empty() {
                        buffered_since = Instant::now();
                    }
                    let millis = encode_message(
                        &self.wire,
                        self.config.timestamp_policy,
                        &message,
                        &mut buf,
                    )?;
                    newest_ms = newest_ms.max(millis);
                    next = message.offset() + 1;
                    records += 1;
                    in_buf += 1;
                    let due =
                        buf.len() >= self.chunk_bytes || buffered_since.elapsed() >= MAX_BUFFER_AGE;
                    if due && !self.out.send(take_chunk(&mut buf, &mut in_buf)).await {
                        break;
                    }
                }
                // librdkafka reconnects by itself: a broker that is away
                // (restarting, unreachable) ends this window early, and the
                // residual resumes from the next offset a second later.
                Ok(Err(e)) => {
                    warn!(topic = %self.topic, partition = self.partition, error = %e,
                        "Kafka consume failed; retrying from offset {next} in {IDLE_DELAY:?}");
                    interrupted = true;
                    break;
                }
                Err(_) if Instant::now() >= deadline => break,
                Err(_) => {
                    if !self.out.send(take_chunk(&mut buf, &mut in_buf)).await {
                        break;
                    }
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if !buf.is_empty() {
            self.out.send(take_chunk(&mut buf, &mut in_buf)).await;
        }
        reader.next = next;
        let telemetry = crate::telemetry::global();
        telemetry.kafka_records_read(&self.topic, self.partition, records);
        self.report_lag(reader.consumer.clone(), next);
        if records > 0 && self.config.commit_offsets {
            telemetry.kafka_pending_offset(&self.topic, self.partition, next);
        }
        debug!(topic = %self.topic, partition = self.partition, start, next, records, "partition read window closed");
        Ok(Window {
            next,
            records,
            interrupted,
            newest_ms,
        })
    }

    /// Sets the consumer-lag gauge from the partition's end, looked up off the
    /// bundle's path (a broker round trip that nothing waits for).
    fn report_lag(&self, consumer: Arc<StreamConsumer>, next: i64) {
        let (topic, partition) = (self.topic.clone(), self.partition);
        tokio::task::spawn_blocking(move || {
            if let Ok((_, high)) = consumer.fetch_watermarks(&topic, partition, LAG_LOOKUP_TIMEOUT)
            {
                crate::telemetry::global().kafka_consumer_lag(
                    &topic,
                    partition,
                    (high - next).max(0),
                );
            }
        });
    }

    /// The rest of the partition, from `next`, for the runner to hand back.
    /// The partition's watermark after `window`, never less than before.
    /// Processing time: "now" bounds every record still to come. Record
    /// timestamps: the newest one read; an idle partition follows the clock
    /// minus [`IDLE_WATERMARK_LAG`], as records appended now carry about now
    /// (a producer setting older create times makes its records late).
    fn watermark(&self, window: &Window) -> i64 {
        let estimate = if !self.config.timestamp_policy.from_records() {
            now_ms()
        } else if window.records > 0 {
            window.newest_ms
        } else {
            now_ms() - IDLE_WATERMARK_LAG.as_millis() as i64
        };
        estimate.max(self.sized.watermark_ms)
    }

    fn residual(
        &self,
        next: i64,
        pause: bool,
        watermark_ms: i64,
    ) -> Result<DelayedBundleApplication, OpError> {
        let value = Value::kv(
            Value::kv(
                self.sized.element.clone(),
                restriction(next, self.sized.end, watermark_ms),
            ),
            Value::Double(1.0),
        );
        let mut element = BytesMut::new();
        encode(&self.input, &self.metadata, &value, &mut element)?;
        let watermark = prost_types::Timestamp {
            seconds: watermark_ms.div_euclid(1000),
            nanos: (watermark_ms.rem_euclid(1000) * 1_000_000) as i32,
        };
        let delay = if pause { IDLE_DELAY } else { Duration::ZERO };
        Ok(DelayedBundleApplication {
            application: Some(BundleApplication {
                transform_id: self.target.transform_id.clone(),
                input_id: self.target.input_id.clone(),
                element: element.freeze(),
                output_watermarks: self
                    .target
                    .outputs
                    .iter()
                    .map(|o| (o.clone(), watermark))
                    .collect(),
                is_bounded: is_bounded::Enum::Unbounded as i32,
            }),
            requested_time_delay: (!delay.is_zero()).then(|| prost_types::Duration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        })
    }

    fn commit_on_finalize(&self, consumer: Arc<StreamConsumer>, next: i64) -> Finalizer {
        let commits = self.shared.get::<CommittedOffsets>();
        let group = self
            .config
            .consumer
            .get("group.id")
            .cloned()
            .unwrap_or_default();
        let (topic, partition, bootstrap) = (
            self.topic.clone(),
            self.partition,
            self.config.bootstrap().to_owned(),
        );
        Box::new(move || {
            Box::pin(async move {
                let key = format!("{bootstrap}|{group}|{topic}|{partition}");
                // Finalizations can come late, in batches or out of order:
                // the group's offset only moves forward.
                if !commits.advance(&key, next) {
                    return Ok(());
                }
                let mut offsets = TopicPartitionList::new();
                offsets
                    .add_partition_offset(&topic, partition, Offset::Offset(next))
                    .map_err(|e| e.to_string())?;
                blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                    .await
                    .map_err(|e| client("offset commit", &bootstrap, e).to_string())?;
                crate::telemetry::global().kafka_committed(&topic, partition, next);
                Ok(())
            })
        })
    }
}

/// How one read window ended.
struct Window {
    /// The next offset to read.
    next: i64,
    records: u64,
    /// The broker could not be read; the window ended early.
    interrupted: bool,
    /// The newest record timestamp read (i64::MIN for none).
    newest_ms: i64,
}

/// A consumer assigned to one partition, and where it stands.
struct PartitionReader {
    consumer: Arc<StreamConsumer>,
    /// The offset its fetches continue from; -1 when not assigned.
    next: i64,
}

impl PartitionReader {
    fn new(config: &ReadConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            consumer: Arc::new(consumer(config, false)?),
            next: -1,
        })
    }

    /// The group's committed offset, else the start or end of the partition
    /// per `auto.offset.reset` (Kafka's default: the end).
    async fn resolve_start(
        &self,
        config: &Arc<ReadConfig>,
        topic: &str,
        partition: i32,
    ) -> Result<i64, KafkaError> {
        let (consumer, config, topic) = (self.consumer.clone(), config.clone(), topic.to_owned());
        blocking(move || {
            let bootstrap = config.bootstrap();
            if config.consumer.contains_key("group.id") {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topic, partition);
                let committed = committed_offsets(&consumer, &tpl, bootstrap)?;
                if let Some(Offset::Offset(o)) = committed
                    .find_partition(&topic, partition)
                    .map(|e| e.offset())
                {
                    return Ok(o);
                }
            }
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, LOOKUP_TIMEOUT)
                .map_err(|e| client("offset look-up", bootstrap, e))?;
            Ok(
                match config.consumer.get("auto.offset.reset").map(String::as_str) {
                    Some("earliest" | "smallest" | "beginning") => low,
                    _ => high,
                },
            )
        })
        .await
    }

    /// Points the consumer at `offset` unless its fetches already continue there.
    fn seek(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        bootstrap: &str,
    ) -> Result<(), KafkaError> {
        if self.next == offset {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(|e| client("assign", bootstrap, e))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| client("assign", bootstrap, e))?;
        self.next = offset;
        Ok(())
    }
}

/// Partition consumers between bundles, so a partition's next window
/// continues the fetches of the last instead of reconnecting.
#[derive(Default)]
struct PartitionConsumers {
    idle: Mutex<HashMap<String, PartitionReader>>,
}

impl PartitionConsumers {
    fn take(&self, key: &str) -> Option<PartitionReader> {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
    }

    fn put(&self, key: String, reader: PartitionReader) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, reader);
    }
}

/// The highest offset committed per group and partition by this worker.
#[derive(Default)]
struct CommittedOffsets {
    max: Mutex<HashMap<String, i64>>,
}

impl CommittedOffsets {
    /// Records `offset` if it is beyond what was committed; false otherwise.
    fn advance(&self, key: &str, offset: i64) -> bool {
        let mut max = self.max.lock().unwrap_or_else(|p| p.into_inner());
        match max.get(key) {
            Some(&done) if done >= offset => false,
            _ => {
                max.insert(key.to_owned(), offset);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_name_topic_and_partition() {
        let v = Value::Bytes(Bytes::from_static(b"my.topic-1/12"));
        assert_eq!(parse_descriptor(&v).unwrap(), ("my.topic-1".to_owned(), 12));
        assert!(parse_descriptor(&Value::Bytes(Bytes::from_static(b"nopartition"))).is_err());
        assert!(parse_descriptor(&Value::Int(3)).is_err());
    }

    #[test]
    fn restrictions_unpack_after_a_round_trip_through_pair_and_split() {
        let element = Value::Bytes(Bytes::from_static(b"t/0"));
        let sized = Value::kv(
            Value::kv(element.clone(), restriction(5, i64::MAX, 7)),
            Value::Double(1.0),
        );
        let s = unpack(&sized).unwrap();
        assert_eq!((s.start, s.end, s.watermark_ms), (5, i64::MAX, 7));
        assert_eq!(s.element, element);
        assert!(unpack(&element).is_err());
    }

    #[test]
    fn commits_only_move_forward() {
        let c = CommittedOffsets::default();
        assert!(c.advance("g|t|0", 10));
        assert!(
            !c.advance("g|t|0", 9),
            "a late finalization must not move the offset back"
        );
        assert!(!c.advance("g|t|0", 10));
        assert!(c.advance("g|t|0", 11));
        assert!(c.advance("g|t|1", 1), "partitions are independent");
    }
}
