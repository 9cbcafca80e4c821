//! Kafka bridge: the part Flink and KafkaIO play in a real pipeline.
//!
//! Records are consumed from the input topic (rdkafka consumer group), each is
//! encoded as KafkaIO's `windowed_value(kv(nullable(bytes), nullable(bytes)),
//! global_window)` element (record timestamp, pane NO_FIRING), bundles close at
//! `bundle_records` records or `bundle_time` after their first record (Flink's
//! streaming maxBundleSize / maxBundleTimeMills), go through the worker, and the
//! output elements are decoded and produced to the output topic. Every bundle's
//! output bytes are also compared with its input.

use std::sync::Arc;
use std::time::{Duration, Instant};

use beam_integration::elements::{PANE_NO_FIRING, Window, put_kv_element};
use beam_integration::{PortCoder, WireFormat};
use beam_rust_worker::coders::WireCoder;
use beam_rust_worker::kafka::{Deliveries, KafkaError as WriteError, Producer, Writer};
use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::driver::{BundleStat, DriverError, Harness, TargetConfig, Totals, verify};
use crate::procfs::ProcError;
use crate::report::{PoolUsage, UsageStart, verdict};
use crate::stats::LatencySummary;
use crate::workload::wire_coder;

/// KafkaIO's element encoding on the data ports.
const FORMAT: WireFormat = WireFormat::KV_NULLABLE_GLOBAL;

/// What to bridge.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub target: TargetConfig,
    pub brokers: String,
    pub input_topic: String,
    pub output_topic: String,
    pub records: u64,
    pub bundle_records: usize,
    pub bundle_time: Duration,
    pub in_flight: usize,
    /// Give up when no record arrives for this long.
    pub idle: Duration,
    pub pool_pid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaBridgeError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("pool process: {0}")]
    Proc(#[from] ProcError),
    #[error("no record arrived for {idle:?} after {got} of {want} records")]
    Idle { idle: Duration, got: u64, want: u64 },
}

/// Results of one bridged run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KafkaReport {
    pub target: String,
    pub records: u64,
    pub bundles: u64,
    /// From the first record consumed to the last output acknowledged.
    pub seconds: f64,
    pub records_per_sec: f64,
    /// Subscribe → first record (consumer-group join), not in `seconds`.
    pub join_seconds: f64,
    pub bundle_latency: LatencySummary,
    pub connect_ms: Vec<f64>,
    pub pool_usage: Option<PoolUsage>,
    pub driver_cpu_seconds: f64,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

impl KafkaReport {
    pub fn ok(&self) -> bool {
        self.errors == 0
    }
}

impl std::fmt::Display for KafkaReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "kafka [{}] {} records in {} bundles: {:.0} records/s ({:.3} s; group join {:.2} s)",
            self.target,
            self.records,
            self.bundles,
            self.records_per_sec,
            self.seconds,
            self.join_seconds
        )?;
        let l = &self.bundle_latency;
        writeln!(
            f,
            "  bundle      p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        )?;
        if let Some(p) = &self.pool_usage {
            writeln!(
                f,
                "  pool        {:.2} CPU s ({:.2} per million records), peak RSS {:.1} MB",
                p.cpu_seconds, p.cpu_seconds_per_million, p.peak_rss_mb
            )?;
        }
        verdict(
            f,
            self.errors,
            &self.error_samples,
            "every bundle's output bytes equal its input",
        )
    }
}

/// One open bundle being filled from the topic.
struct Filling {
    buf: Vec<u8>,
    records: u64,
    opened: Instant,
}

struct Shared {
    harness: Harness,
    producer: Producer,
    output_topic: String,
    /// Decodes the worker's output elements for the producer.
    wire: WireCoder,
}

impl Shared {
    /// Sends one bundle of `records` records through the worker and produces
    /// its output.
    async fn bundle(&self, lane: usize, input: Bytes, records: u64) -> BundleStat {
        let sent = Instant::now();
        let outcome = self
            .harness
            .run_bundle(lane, std::slice::from_ref(&input))
            .await;
        let latency = sent.elapsed();
        let error = match verify(&input, outcome) {
            Ok(chunks) => self.produce(&chunks).await.err().map(|e| e.to_string()),
            Err(why) => Some(why),
        };
        BundleStat {
            latency,
            elements: records,
            bytes: input.len() as u64,
            error,
        }
    }

    /// Produces every output element and waits for the acknowledgements.
    async fn produce(&self, chunks: &[Bytes]) -> Result<u64, WriteError> {
        let mut writer = Writer::new(self.producer.clone(), &self.output_topic);
        for chunk in chunks {
            writer.write_chunk(&self.wire, chunk).await?;
        }
        writer.finish().await
    }
}

/// Bridges `config.records` records through the worker.
pub async fn run(config: KafkaConfig) -> Result<KafkaReport, KafkaBridgeError> {
    let harness = Harness::start(&config.target).await?;
    let connect_ms = harness.connect_ms();
    let group = format!("fnapi-loadgen-{}", std::process::id());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // New groups on some Kafka-protocol brokers wait half of it before the
        // first assignment (see shared/docs/kafka-notes.md).
        .set("session.timeout.ms", "6000")
        // As the worker's read: no 1 s pause per 100,000 records fetched ahead.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    consumer.subscribe(&[&config.input_topic])?;
    let producer: Producer = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(Deliveries)?,
    );
    let shared = Arc::new(Shared {
        harness,
        producer,
        output_topic: config.output_topic.clone(),
        wire: wire_coder(PortCoder::kv_nullable_bytes()),
    });

    let subscribed = Instant::now();
    let mut first_record: Option<Instant> = None;
    let mut usage: Option<UsageStart> = None;
    let permits = Arc::new(Semaphore::new(config.in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let mut consumed = 0u64;
    let mut bundles = 0u64;
    let mut filling: Option<Filling> = None;
    let mut totals = Totals::default();
    while consumed < config.records {
        let deadline = filling
            .as_ref()
            .map(|f| tokio::time::Instant::from_std(f.opened + config.bundle_time));
        let close = tokio::select! {
            // A ready record first: the timers are polled only while none is.
            biased;
            message = consumer.recv() => {
                let message = message?;
                if first_record.is_none() {
                    first_record = Some(Instant::now());
                    usage = Some(UsageStart::begin(config.pool_pid)?);
                }
                let f = filling.get_or_insert_with(|| Filling {
                    buf: Vec::with_capacity(config.bundle_records * 64),
                    records: 0,
                    opened: Instant::now(),
                });
                let timestamp = message.timestamp().to_millis().unwrap_or(0);
                put_kv_element(
                    &mut f.buf,
                    timestamp,
                    Window::Global,
                    PANE_NO_FIRING,
                    message.key(),
                    message.payload(),
                    FORMAT.nullable,
                );
                f.records += 1;
                consumed += 1;
                f.records as usize >= config.bundle_records || consumed == config.records
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => true,
            _ = tokio::time::sleep(config.idle) => {
                return Err(KafkaBridgeError::Idle { idle: config.idle, got: consumed, want: config.records });
            }
        };
        if close && let Some(f) = filling.take() {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            while let Some(stat) = tasks.try_join_next() {
                totals.add(stat.expect("bundle tasks do not panic"));
            }
            let shared = shared.clone();
            let lane = bundles as usize;
            bundles += 1;
            tasks.spawn(async move {
                let stat = shared.bundle(lane, Bytes::from(f.buf), f.records).await;
                drop(permit);
                stat
            });
        }
    }
    while let Some(stat) = tasks.join_next().await {
        totals.add(stat.expect("bundle tasks do not panic"));
    }
    let started = first_record.unwrap_or(subscribed);
    let seconds = started.elapsed().as_secs_f64();
    let (pool_usage, driver_cpu_seconds) = match usage {
        Some(usage) => usage.finish(consumed)?,
        // Nothing was consumed (no records asked for): nothing was measured.
        None => (None, 0.0),
    };
    if let Ok(shared) = Arc::try_unwrap(shared) {
        shared.harness.shutdown().await;
    }
    Ok(KafkaReport {
        target: config.target.kind.name().to_owned(),
        records: consumed,
        bundles,
        seconds,
        records_per_sec: consumed as f64 / seconds,
        join_seconds: (started - subscribed).as_secs_f64(),
        bundle_latency: totals.latencies.summary(),
        connect_ms,
        pool_usage,
        driver_cpu_seconds,
        errors: totals.errors,
        error_samples: totals.samples,
    })
}
