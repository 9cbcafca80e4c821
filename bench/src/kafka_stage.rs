//! The fused Kafka stage and its reference, the bare rdkafka loop.
//!
//! [`run_stage`] drives one bundle of a stage that runs entirely in the
//! worker: one impulse element → the native bounded Kafka read (to the end of
//! every partition) → `kv_echo` → the native Kafka write, acknowledged. No
//! record crosses back to the driver, so what is measured is the worker moving
//! records from topic to topic. [`run_loop`] moves the same records with
//! nothing in between: an rdkafka consumer with the read's settings feeding an
//! rdkafka producer with the write's settings, which is the fastest any worker
//! could move them through the same client library. Both clocks start before
//! the Kafka clients are created and stop at the last acknowledgement, so
//! client start-up is in both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use beam_integration::elements::{PANE_NO_FIRING, Window, put_kv_element};
use beam_integration::{BundleSpec, PortCoder, RunnerOptions, TestRunner, echo_descriptor, urns};
use beam_proto::fn_execution::ProcessBundleDescriptor;
use beam_proto::pipeline::field_type::TypeInfo;
use beam_proto::pipeline::{
    ArrayType, AtomicType, ExternalConfigurationPayload, Field, FieldType, FunctionSpec, MapType,
    PTransform, ParDoPayload, Schema,
};
use beam_rust_worker::kafka::{KAFKA_READ_URN, KAFKA_WRITE_URN};
use bytes::Bytes;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::driver::{DriverError, TargetConfig, wait_for_port};
use crate::report::{PoolUsage, UsageStart};

/// Where the records are and where they go.
#[derive(Debug, Clone)]
pub struct Topics {
    pub brokers: String,
    pub input: String,
    pub output: String,
    /// Records the input topic holds; the run fails if another count went through.
    pub records: u64,
}

/// Command-line form of [`Topics`], shared by `fnapi-loadgen kafka-stage`
/// and `kafka-loop`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicArgs {
    /// Kafka bootstrap servers (host:port).
    #[arg(long)]
    pub brokers: String,
    /// Topic to read, from the beginning to the end of every partition.
    #[arg(long, default_value = "echo-input")]
    pub input_topic: String,
    /// Topic to write every record to.
    #[arg(long, default_value = "echo-output")]
    pub output_topic: String,
    /// Records the input topic holds.
    #[arg(long)]
    pub records: u64,
}

impl From<TopicArgs> for Topics {
    fn from(a: TopicArgs) -> Self {
        Topics {
            brokers: a.brokers,
            input: a.input_topic,
            output: a.output_topic,
            records: a.records,
        }
    }
}

/// One run of either side, as JSON for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageReport {
    /// `fused` (the worker's stage) or `bare` (the rdkafka loop).
    pub target: String,
    pub records: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    /// The worker pool's CPU (fused), or the loop's own CPU (bare).
    pub cpu_seconds: f64,
    pub pool_usage: Option<PoolUsage>,
}

impl std::fmt::Display for StageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kafka-stage [{}] {} records: {:.0} records/s ({:.3} s, {:.2} CPU s)",
            self.target, self.records, self.records_per_sec, self.seconds, self.cpu_seconds
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Runner(#[from] beam_integration::RunnerError),
    #[error("the worker failed the stage: {0}")]
    Failed(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("pool process: {0}")]
    Proc(#[from] crate::procfs::ProcError),
    #[error("{got} records went through, expected {want}")]
    Count { got: u64, want: u64 },
}

// ------------------------------------------------------------ fused stage

/// Runs the fused stage once on a fresh worker of `target`'s pool.
pub async fn run_stage(
    target: &TargetConfig,
    pool_pid: Option<u32>,
    topics: &Topics,
) -> Result<StageReport, StageError> {
    wait_for_port(target.pool, target.pool_wait).await?;
    let runner = TestRunner::start_with(RunnerOptions {
        timeout: target.timeout,
        ..Default::default()
    })
    .await?;
    let (descriptor, source_id) = stage_descriptor(runner.url(), topics);
    let descriptor_id = descriptor.id.clone();
    runner.add_descriptor(descriptor);
    let worker = runner
        .start_worker(target.pool, "bench_kafka_stage")
        .await?;
    let usage = UsageStart::begin(pool_pid)?;
    let started = Instant::now();
    let spec = BundleSpec::new(descriptor_id)
        .input(source_id, [impulse()])
        .timeout(target.timeout);
    let result = worker.process_bundle(spec).await?;
    let seconds = started.elapsed().as_secs_f64();
    let (pool_usage, _) = usage.finish(topics.records)?;
    if let Some(error) = result.error() {
        return Err(StageError::Failed(error.to_owned()));
    }
    drop(worker);
    runner.shutdown().await;
    Ok(StageReport {
        target: "fused".into(),
        records: topics.records,
        seconds,
        records_per_sec: topics.records as f64 / seconds,
        cpu_seconds: pool_usage.map_or(0.0, |p| p.cpu_seconds),
        pool_usage,
    })
}

/// The stage a runner sends for `ReadFromKafka → KvEcho → WriteToKafka` fused:
/// the runner's source feeds the read one impulse, and nothing comes back.
/// Built from the echo descriptor (its coders, windowing and environment):
/// the read goes between the source and the echo, the write replaces the sink.
fn stage_descriptor(data_url: &str, topics: &Topics) -> (ProcessBundleDescriptor, String) {
    const RECORDS: &str = "pc_records";
    let echo = echo_descriptor(
        "bench-kafka-stage",
        data_url,
        PortCoder::kv_nullable_bytes(),
    );
    let mut d = echo.descriptor;
    let client = [("bootstrap.servers", topics.brokers.as_str())];
    let read_config = config_row(&[
        (
            "consumer_config",
            Setting::Map(&[
                ("bootstrap.servers", topics.brokers.as_str()),
                ("auto.offset.reset", "earliest"),
            ]),
        ),
        ("topics", Setting::List(&[topics.input.as_str()])),
        ("stop_at_end", Setting::Bool(true)),
    ]);
    let write_config = config_row(&[
        ("producer_config", Setting::Map(&client)),
        ("topic", Setting::Str(&topics.output)),
    ]);
    let env = d.transforms["echo"].environment_id.clone();
    let read = pardo(
        KAFKA_READ_URN,
        read_config,
        &echo.input_pcollection,
        Some(RECORDS),
        &env,
    );
    let write = pardo(
        KAFKA_WRITE_URN,
        write_config,
        &echo.output_pcollection,
        None,
        &env,
    );
    let records_pc = d.pcollections[&echo.output_pcollection].clone();
    d.pcollections.insert(RECORDS.into(), records_pc);
    if let Some(t) = d.transforms.get_mut("echo") {
        t.inputs = HashMap::from([("input".to_owned(), RECORDS.to_owned())]);
    }
    d.transforms.remove(&echo.sink_id);
    d.transforms.insert("kafka_read".into(), read);
    d.transforms.insert("kafka_write".into(), write);
    (d, echo.source_id)
}

fn pardo(dofn: &str, config: Bytes, input: &str, output: Option<&str>, env: &str) -> PTransform {
    let payload = ParDoPayload {
        do_fn: Some(FunctionSpec {
            urn: dofn.into(),
            payload: config,
        }),
        ..Default::default()
    };
    PTransform {
        spec: Some(FunctionSpec {
            urn: urns::PARDO.into(),
            payload: payload.encode_to_vec().into(),
        }),
        inputs: HashMap::from([("in".to_owned(), input.to_owned())]),
        outputs: output
            .map(|o| HashMap::from([("out".to_owned(), o.to_owned())]))
            .unwrap_or_default(),
        unique_name: dofn.into(),
        environment_id: env.into(),
        ..Default::default()
    }
}

/// One element on the source port: the read counts elements, one read each.
fn impulse() -> Bytes {
    let mut out = Vec::new();
    put_kv_element(
        &mut out,
        0,
        Window::Global,
        PANE_NO_FIRING,
        None,
        None,
        true,
    );
    out.into()
}

/// A configuration field, as SDKs put it in the schema Row.
enum Setting<'a> {
    Map(&'a [(&'a str, &'a str)]),
    List(&'a [&'a str]),
    Str(&'a str),
    Bool(bool),
}

/// An `ExternalConfigurationPayload` with `fields`, none null, encoded as
/// Beam's row coder does (field count, empty null bitmap, values in order).
fn config_row(fields: &[(&str, Setting<'_>)]) -> Bytes {
    let atomic = |t: AtomicType| FieldType {
        nullable: false,
        type_info: Some(TypeInfo::AtomicType(t as i32)),
    };
    let string = || Box::new(atomic(AtomicType::String));
    let mut row = Vec::new();
    put_varint(&mut row, fields.len() as u64);
    put_varint(&mut row, 0);
    let mut schema = Schema::default();
    for (name, setting) in fields {
        let ty = match setting {
            Setting::Map(entries) => {
                put_count(&mut row, entries.len());
                for (k, v) in *entries {
                    put_str(&mut row, k);
                    put_str(&mut row, v);
                }
                TypeInfo::MapType(Box::new(MapType {
                    key_type: Some(string()),
                    value_type: Some(string()),
                }))
            }
            Setting::List(items) => {
                put_count(&mut row, items.len());
                items.iter().for_each(|s| put_str(&mut row, s));
                TypeInfo::ArrayType(Box::new(ArrayType {
                    element_type: Some(string()),
                }))
            }
            Setting::Str(s) => {
                put_str(&mut row, s);
                TypeInfo::AtomicType(AtomicType::String as i32)
            }
            Setting::Bool(b) => {
                row.push(u8::from(*b));
                TypeInfo::AtomicType(AtomicType::Boolean as i32)
            }
        };
        schema.fields.push(Field {
            name: (*name).into(),
            r#type: Some(FieldType {
                nullable: false,
                type_info: Some(ty),
            }),
            ..Default::default()
        });
    }
    ExternalConfigurationPayload {
        schema: Some(schema),
        payload: row.into(),
    }
    .encode_to_vec()
    .into()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as i32).to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

// ------------------------------------------------------------ bare loop

/// Counts the producer's acknowledgements and failures; nothing per record
/// is allocated or awaited (unlike the worker's write, which awaits a future
/// per record).
#[derive(Default)]
struct Acks {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.delivered
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Moves every record of `topics.input` to `topics.output` on one blocking
/// thread: poll the consumer, hand the record to the producer, wait for every
/// acknowledgement at the end. The clients get the settings the worker's read
/// and write give theirs (worker/src/kafka/read.rs, write.rs); no element
/// encoding, no bundles, no async wakeups per record.
pub async fn run_loop(topics: &Topics) -> Result<StageReport, StageError> {
    let topics = topics.clone();
    tokio::task::spawn_blocking(move || move_records(&topics))
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

fn move_records(topics: &Topics) -> Result<StageReport, StageError> {
    let cpu = crate::procfs::self_cpu_seconds()?;
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "10")
        .set("bootstrap.servers", &topics.brokers)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("group.id", "beam-rust-worker-uncommitted")
        .create()?;
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("message.timeout.ms", "30000")
        .set("bootstrap.servers", &topics.brokers)
        .create_with_context(Acks::default())?;
    let mut open = assign_all(&consumer, &topics.input)?;
    let mut moved = 0u64;
    while open > 0 {
        let message = match consumer.poll(Duration::from_secs(10)) {
            None => {
                return Err(StageError::Count {
                    got: moved,
                    want: topics.records,
                });
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                open -= 1;
                continue;
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => m,
        };
        let mut record = BaseRecord::<[u8], [u8]>::to(&topics.output);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        produce(&producer, record)?;
        moved += 1;
    }
    producer.flush(Duration::from_secs(60))?;
    let seconds = started.elapsed().as_secs_f64();
    let acks = producer.context();
    let delivered = acks.delivered.load(Ordering::Relaxed);
    if moved != topics.records || delivered != moved || acks.failed.load(Ordering::Relaxed) > 0 {
        return Err(StageError::Count {
            got: delivered,
            want: topics.records,
        });
    }
    Ok(StageReport {
        target: "bare".into(),
        records: moved,
        seconds,
        records_per_sec: moved as f64 / seconds,
        cpu_seconds: crate::procfs::self_cpu_seconds()? - cpu,
        pool_usage: None,
    })
}

/// Assigns every partition of `topic` from the beginning; returns how many.
fn assign_all(consumer: &BaseConsumer, topic: &str) -> Result<usize, StageError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(tpl.count())
}

/// Hands `record` to the producer, waiting briefly while its queue is full
/// (the producer's own thread drains it).
fn produce(
    producer: &ThreadedProducer<Acks>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), StageError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rows_decode_as_the_worker_reads_them() {
        let topics = Topics {
            brokers: "127.0.0.1:9".into(),
            input: "in".into(),
            output: "out".into(),
            records: 1,
        };
        let (d, source) = stage_descriptor("127.0.0.1:1", &topics);
        let payload = |id: &str| {
            let spec = d.transforms[id].spec.clone().unwrap();
            ParDoPayload::decode(spec.payload)
                .unwrap()
                .do_fn
                .unwrap()
                .payload
        };
        let read =
            beam_rust_worker::kafka::ReadConfig::from_payload(&payload("kafka_read")).unwrap();
        assert_eq!(read.topics, ["in"]);
        assert!(read.stop_at_end);
        assert_eq!(read.bootstrap(), "127.0.0.1:9");
        let write =
            beam_rust_worker::kafka::WriteConfig::from_payload(&payload("kafka_write")).unwrap();
        assert_eq!(write.topic, "out");
        assert!(d.transforms.contains_key(&source));
        assert_eq!(d.transforms.len(), 4, "source, read, echo, write");
    }
}
