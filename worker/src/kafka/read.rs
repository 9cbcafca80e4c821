//! The bounded Kafka read: every partition of the topics, from the group's
//! committed offset (or `auto.offset.reset`) to the end of the partition.
//!
//! The end is where the broker reports end-of-partition as the read gets
//! there, not a high watermark looked up at start: some Kafka-protocol brokers
//! (tansu, used in this project's tests) report the base offset of the last
//! *batch* as the high watermark, which would silently cut a read short.
//! Each topic has its own consumer, so end-of-partition events (which carry
//! only a partition number) are never ambiguous, and topics are read in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info};

use super::{KafkaError, LOOKUP_TIMEOUT, ReadConfig, blocking, partitions_of};
use crate::coders::{ElementParts, WireCoder, encode_timestamp};
use crate::ops::{Chunk, Emitter};

/// What a finished read leaves behind.
pub struct ReadOutcome {
    pub records: u64,
    /// Offsets to commit once the runner finalizes the bundle, if configured.
    pub commits: Vec<PendingCommit>,
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
            .map_err(|e| client("offset commit", &bootstrap, e))
    }
}

/// Where one topic's read stands.
struct TopicRead {
    config: Arc<ReadConfig>,
    topic: String,
    wire: WireCoder,
    out: Emitter,
    chunk_bytes: usize,
    /// Records the whole read may still emit (`max_num_records`), shared by topics.
    budget: Arc<AtomicU64>,
    deadline: Option<Instant>,
}

/// Reads per `config`, sending chunks of whole elements (encoded with `wire`,
/// about `chunk_bytes` each) to `out`.
pub async fn read(
    config: &ReadConfig,
    wire: &WireCoder,
    out: &Emitter,
    chunk_bytes: usize,
) -> Result<ReadOutcome, KafkaError> {
    let config = Arc::new(config.clone());
    let budget = Arc::new(AtomicU64::new(config.max_num_records.unwrap_or(u64::MAX)));
    let deadline = config.max_read_time.map(|d| Instant::now() + d);
    let mut topics = JoinSet::new();
    for topic in &config.topics {
        let read = TopicRead {
            config: config.clone(),
            topic: topic.clone(),
            wire: wire.clone(),
            out: out.clone(),
            chunk_bytes,
            budget: budget.clone(),
            deadline,
        };
        topics.spawn(read.run().in_current_span());
    }
    let mut outcome = ReadOutcome {
        records: 0,
        commits: Vec::new(),
    };
    // The first failure wins; dropping the set stops the other topics.
    while let Some(done) = topics.join_next().await {
        let (records, commit) =
            done.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
        outcome.records += records;
        outcome.commits.extend(commit);
    }
    Ok(outcome)
}

impl TopicRead {
    async fn run(self) -> Result<(u64, Option<PendingCommit>), KafkaError> {
        let bootstrap = self.config.bootstrap().to_owned();
        let consumer = Arc::new(consumer(&self.config, true)?);
        let starts = {
            let (consumer, config, topic) =
                (consumer.clone(), self.config.clone(), self.topic.clone());
            blocking(move || start_offsets(&consumer, &config, &topic)).await?
        };
        let mut assignment = TopicPartitionList::new();
        for (partition, start) in &starts {
            assignment
                .add_partition_offset(&self.topic, *partition, *start)
                .map_err(|e| client("assign", &bootstrap, e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| client("assign", &bootstrap, e))?;
        info!(topic = %self.topic, partitions = starts.len(), "Kafka read started");

        let mut open = starts.len();
        let mut at_end: HashMap<i32, bool> = starts.iter().map(|(p, _)| (*p, false)).collect();
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut records = 0u64;
        let mut buf = BytesMut::with_capacity(self.chunk_bytes + 1024);
        let mut in_buf = 0u64;
        while open > 0 && self.budget.load(Ordering::Acquire) > 0 {
            let received = match self.deadline {
                Some(at) => match tokio::time::timeout_at(at, consumer.recv()).await {
                    Ok(m) => m,
                    Err(_) => break,
                },
                None => consumer.recv().await,
            };
            let message = match received {
                Ok(m) => m,
                Err(RdKafkaError::PartitionEOF(p)) => {
                    if at_end.insert(p, true) == Some(false) {
                        open -= 1;
                    }
                    continue;
                }
                Err(e) => return Err(client("consume", &bootstrap, e)),
            };
            // A partition already at its end waits for the next read: what it
            // gets now is left uncommitted and read again then.
            if at_end.get(&message.partition()) != Some(&false) || !self.take_one() {
                continue;
            }
            encode_message(&self.wire, self.config.timestamp_policy, &message, &mut buf)?;
            records += 1;
            in_buf += 1;
            next.insert(message.partition(), message.offset() + 1);
            if buf.len() >= self.chunk_bytes
                && !self.out.send(take_chunk(&mut buf, &mut in_buf)).await
            {
                break; // the bundle is gone; nothing to deliver to
            }
        }
        if !buf.is_empty() {
            let _ = self.out.send(take_chunk(&mut buf, &mut in_buf)).await;
        }
        debug!(topic = %self.topic, records, "Kafka read finished");
        let commit = if self.config.commit_offsets && !next.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for (partition, offset) in &next {
                offsets
                    .add_partition_offset(&self.topic, *partition, Offset::Offset(*offset))
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
        Ok((records, commit))
    }

    /// Takes one record from the shared `max_num_records` budget.
    fn take_one(&self) -> bool {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

/// A consumer for `config` that never commits on its own (offsets are
/// committed only once the runner finalizes a bundle). `end_of_partition`:
/// report reaching each partition's end, which is how the bounded read ends.
pub(super) fn consumer(
    config: &ReadConfig,
    end_of_partition: bool,
) -> Result<StreamConsumer, KafkaError> {
    let mut c = ClientConfig::new();
    if end_of_partition {
        // librdkafka reports a partition's end only after a fetch waited
        // `fetch.wait.max.ms` (500 ms by default) for data that is not
        // coming; measured: a 10k-record stage took 0.65 s with the default
        // and 0.10 s with 10 ms. An explicit setting wins.
        c.set("fetch.wait.max.ms", "10");
    }
    // Once a partition has `queued.min.messages` (100,000) records fetched
    // ahead, librdkafka waits `fetch.queue.backoff.ms` (1 s by default)
    // before fetching it again, even when the reader has long caught up: a
    // read of a backlog then stalls about a second per 100,000 records of a
    // partition. Measured on the fused stage (1M records, 4 partitions): the
    // read capped at about 175k records/s with mostly idle CPU.
    c.set("fetch.queue.backoff.ms", "10");
    for (k, v) in &config.consumer {
        c.set(k, v);
    }
    c.set("enable.auto.commit", "false");
    c.set(
        "enable.partition.eof",
        if end_of_partition { "true" } else { "false" },
    );
    if !config.consumer.contains_key("group.id") {
        // librdkafka wants a group id even for assign(); it is never committed to.
        c.set("group.id", "beam-rust-worker-uncommitted");
    }
    c.create().map_err(|e| KafkaError::Config {
        transform: "Kafka read",
        why: format!("consumer_config rejected by the Kafka client: {e}"),
    })
}

/// Where each partition of `topic` starts: the group's committed offset, else
/// the beginning or the end per `auto.offset.reset` (Kafka's default: the end).
fn start_offsets(
    consumer: &StreamConsumer,
    config: &ReadConfig,
    topic: &str,
) -> Result<Vec<(i32, Offset)>, KafkaError> {
    let bootstrap = config.bootstrap();
    let reset = match config.consumer.get("auto.offset.reset").map(String::as_str) {
        Some("earliest" | "smallest" | "beginning") => Offset::Beginning,
        _ => Offset::End,
    };
    let partitions = partitions_of(consumer, topic, bootstrap)?;
    let mut starts: Vec<(i32, Offset)> = partitions.iter().map(|p| (*p, reset)).collect();
    if config.consumer.contains_key("group.id") {
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(topic, *p);
        }
        let committed = committed_offsets(consumer, &tpl, bootstrap)?;
        for (p, start) in &mut starts {
            if let Some(Offset::Offset(o)) = committed.find_partition(topic, *p).map(|e| e.offset())
            {
                *start = Offset::Offset(o);
            }
        }
    }
    Ok(starts)
}

/// The group's committed offsets of `tpl`. Apache Kafka creates its offsets
/// topic on a fresh cluster's first group look-up and answers "not
/// coordinator" (or "loading") until that is done, a few seconds; those
/// answers are retried until [`LOOKUP_TIMEOUT`] has passed. Runs on the
/// blocking pool, like every synchronous librdkafka call here.
pub(super) fn committed_offsets(
    consumer: &StreamConsumer,
    tpl: &TopicPartitionList,
    bootstrap: &str,
) -> Result<TopicPartitionList, KafkaError> {
    let deadline = std::time::Instant::now() + LOOKUP_TIMEOUT;
    loop {
        match consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT) {
            Ok(committed) => return Ok(committed),
            Err(e) if coordinator_not_ready(&e) && std::time::Instant::now() < deadline => {
                debug!(error = %e, "group coordinator not ready yet; retrying");
                std::thread::sleep(COORDINATOR_RETRY);
            }
            Err(e) => return Err(client("committed-offset look-up", bootstrap, e)),
        }
    }
}

const COORDINATOR_RETRY: Duration = Duration::from_millis(200);

fn coordinator_not_ready(e: &RdKafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::NotCoordinator | Code::CoordinatorLoadInProgress | Code::CoordinatorNotAvailable
        )
    )
}

/// The encoded records gathered so far, as a chunk.
pub(super) fn take_chunk(buf: &mut BytesMut, elements: &mut u64) -> Chunk {
    Chunk {
        bytes: buf.split().freeze(),
        elements: std::mem::take(elements),
    }
}

/// Milliseconds since the epoch, now.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// A record's timestamp under `policy`: its own (create or log-append time)
/// when it carries one, else now.
fn record_time(policy: super::TimestampPolicy, message: &impl Message) -> i64 {
    if policy.from_records()
        && let Some(millis) = message.timestamp().to_millis()
    {
        return millis;
    }
    now_ms()
}

/// Appends `message` as a record stamped per `policy`; returns its timestamp.
pub(super) fn encode_message(
    wire: &WireCoder,
    policy: super::TimestampPolicy,
    message: &impl Message,
    out: &mut BytesMut,
) -> Result<i64, KafkaError> {
    let millis = record_time(policy, message);
    encode_record(wire, millis, message.key(), message.payload(), out)?;
    Ok(millis)
}

/// A record as KafkaIO emits it: timestamp `millis`, global window, no firing,
/// `KV<nullable bytes, nullable bytes>`.
fn encode_record(
    wire: &WireCoder,
    millis: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    out: &mut BytesMut,
) -> Result<(), KafkaError> {
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

pub(super) fn client(
    operation: &'static str,
    bootstrap: &str,
    e: rdkafka::error::KafkaError,
) -> KafkaError {
    KafkaError::Client {
        operation,
        bootstrap: bootstrap.to_owned(),
        why: e.to_string(),
    }
}
