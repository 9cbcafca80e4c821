//! The bounded Kafka read: every partition of the topics, from the group's
//! committed offset (or `auto.offset.reset`) to the end offset seen at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{KafkaError, LOOKUP_TIMEOUT, ReadConfig, blocking, partitions_of};
use crate::coders::{ElementParts, WireCoder, encode_timestamp};

/// What a finished read leaves behind.
pub struct ReadOutcome {
    pub records: u64,
    /// Offsets to commit once the runner finalizes the bundle, if configured.
    pub commit: Option<PendingCommit>,
}

/// The group offsets a read consumed up to, waiting for bundle finalization.
pub struct PendingCommit {
    consumer: Arc<StreamConsumer>,
    offsets: TopicPartitionList,
    bootstrap: String,
}

impl PendingCommit {
    pub async fn commit(self) -> Result<(), KafkaError> {
        let Self {
            consumer,
            offsets,
            bootstrap,
        } = self;
        blocking(move || consumer.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|e| KafkaError::Client {
                operation: "offset commit",
                bootstrap,
                why: e.to_string(),
            })
    }
}

struct Partition {
    topic: String,
    id: i32,
    /// Next offset to read.
    next: i64,
    /// End offset when the read started: the read stops there.
    end: i64,
}

/// Reads per `config`, sending chunks of whole elements (encoded with `wire`,
/// about `chunk_bytes` each) to `out`.
pub async fn read(
    config: &ReadConfig,
    wire: &WireCoder,
    out: &mpsc::Sender<Bytes>,
    chunk_bytes: usize,
) -> Result<ReadOutcome, KafkaError> {
    let bootstrap = config.bootstrap().to_owned();
    let consumer = Arc::new(consumer(config)?);
    let mut partitions = {
        let (consumer, config) = (consumer.clone(), config.clone());
        blocking(move || plan_partitions(&consumer, &config)).await?
    };
    let mut assignment = TopicPartitionList::new();
    for p in partitions.iter().filter(|p| p.next < p.end) {
        assignment
            .add_partition_offset(&p.topic, p.id, Offset::Offset(p.next))
            .map_err(|e| client("assign", &bootstrap, e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| client("assign", &bootstrap, e))?;
    let mut open = partitions.iter().filter(|p| p.next < p.end).count();
    info!(
        topics = ?config.topics,
        partitions = partitions.len(),
        with_data = open,
        records = partitions.iter().map(|p| p.end - p.next).sum::<i64>(),
        "Kafka read started"
    );
    let index: HashMap<(String, i32), usize> = partitions
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.topic.clone(), p.id), i))
        .collect();
    let deadline = config.max_read_time.map(|d| Instant::now() + d);
    let limit = config.max_num_records.unwrap_or(u64::MAX);
    let mut records = 0u64;
    let mut buf = BytesMut::with_capacity(chunk_bytes + 1024);
    while open > 0 && records < limit {
        let message = match deadline {
            Some(at) => match tokio::time::timeout_at(at, consumer.recv()).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => consumer.recv().await,
        };
        let message = message.map_err(|e| client("consume", &bootstrap, e))?;
        let Some(&i) = index.get(&(message.topic().to_owned(), message.partition())) else {
            continue;
        };
        let p = &mut partitions[i];
        if message.offset() < p.next || p.next >= p.end {
            continue;
        }
        encode_record(wire, message.key(), message.payload(), &mut buf)?;
        records += 1;
        p.next = message.offset() + 1;
        if p.next >= p.end {
            open -= 1;
        }
        if buf.len() >= chunk_bytes && out.send(buf.split().freeze()).await.is_err() {
            break; // the bundle is gone; nothing to deliver to
        }
    }
    if !buf.is_empty() {
        let _ = out.send(buf.freeze()).await;
    }
    debug!(records, "Kafka read finished");
    let commit = if config.commit_offsets {
        let mut offsets = TopicPartitionList::new();
        for p in &partitions {
            offsets
                .add_partition_offset(&p.topic, p.id, Offset::Offset(p.next))
                .map_err(|e| client("commit", &bootstrap, e))?;
        }
        Some(PendingCommit {
            consumer,
            offsets,
            bootstrap,
        })
    } else {
        None
    };
    Ok(ReadOutcome { records, commit })
}

fn consumer(config: &ReadConfig) -> Result<StreamConsumer, KafkaError> {
    let mut c = ClientConfig::new();
    for (k, v) in &config.consumer {
        c.set(k, v);
    }
    // Offsets are committed only after the runner finalizes the bundle.
    c.set("enable.auto.commit", "false");
    if !config.consumer.contains_key("group.id") {
        // librdkafka wants a group id even for assign(); it is never committed to.
        c.set("group.id", "beam-rust-worker-uncommitted");
    }
    c.create().map_err(|e| KafkaError::Config {
        transform: "Kafka read",
        why: format!("consumer_config rejected by the Kafka client: {e}"),
    })
}

/// Start and end offsets of every partition of the configured topics.
fn plan_partitions(
    consumer: &StreamConsumer,
    config: &ReadConfig,
) -> Result<Vec<Partition>, KafkaError> {
    let bootstrap = config.bootstrap();
    let earliest = matches!(
        config.consumer.get("auto.offset.reset").map(String::as_str),
        Some("earliest" | "smallest" | "beginning")
    );
    let mut partitions = Vec::new();
    for topic in &config.topics {
        for id in partitions_of(consumer, topic, bootstrap)? {
            let (low, high) = consumer
                .fetch_watermarks(topic, id, LOOKUP_TIMEOUT)
                .map_err(|e| client("watermark look-up", bootstrap, e))?;
            partitions.push(Partition {
                topic: topic.clone(),
                id,
                next: if earliest { low } else { high },
                end: high,
            });
        }
    }
    if config.consumer.contains_key("group.id") {
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&p.topic, p.id);
        }
        let committed = consumer
            .committed_offsets(tpl, LOOKUP_TIMEOUT)
            .map_err(|e| client("committed-offset look-up", bootstrap, e))?;
        for p in &mut partitions {
            if let Some(Offset::Offset(o)) =
                committed.find_partition(&p.topic, p.id).map(|e| e.offset())
            {
                p.next = o;
            }
        }
    }
    Ok(partitions)
}

/// A record as KafkaIO emits it: processing-time timestamp, global window,
/// no firing, `KV<nullable bytes, nullable bytes>`.
fn encode_record(
    wire: &WireCoder,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    out: &mut BytesMut,
) -> Result<(), KafkaError> {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64;
    let mut metadata = [0u8; 13];
    metadata[..8].copy_from_slice(&encode_timestamp(millis));
    metadata[8..12].copy_from_slice(&1u32.to_be_bytes());
    metadata[12] = 0x0f;
    let parts = ElementParts {
        metadata: &metadata,
        key,
        value,
    };
    wire.encode(&parts, out)
        .map_err(|e| KafkaError::Record(e.to_string()))
}

fn client(operation: &'static str, bootstrap: &str, e: rdkafka::error::KafkaError) -> KafkaError {
    KafkaError::Client {
        operation,
        bootstrap: bootstrap.to_owned(),
        why: e.to_string(),
    }
}
