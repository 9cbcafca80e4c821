//! Native Kafka transforms: a bounded read and an acknowledged write, executed
//! inside the worker so a Kafka → echo → Kafka pipeline is one fused stage with
//! no Java, no Docker and no records crossing back to the runner.

mod beam_schema;
mod config;
pub mod ops;
mod read;
pub mod sdf;
mod write;

pub use beam_schema::{
    BEAM_KAFKA_READ_URN, BEAM_KAFKA_READ_WITH_METADATA_URN, BEAM_KAFKA_WRITE_URN,
    BEAM_KAFKA_WRITE_WITH_HEADERS_URN, refusal,
};
pub use config::{ReadConfig, TimestampPolicy, WriteConfig};
pub use read::{PendingCommit, ReadOutcome, read};
pub use write::{Deliveries, Producer, Producers, Writer};

/// Bounded read of Kafka topics into `KV<nullable bytes, nullable bytes>`.
pub const KAFKA_READ_URN: &str = "beam:transform:rust_worker:kafka_read:v1";
/// The unbounded read's first step: lists the topics' partitions (a DoFn
/// URN inside a ParDo that the expansion service creates).
pub const KAFKA_PARTITIONS_URN: &str = "beam:transform:rust_worker:kafka_partitions:v1";
/// The unbounded read's splittable DoFn: reads one partition per element.
pub const KAFKA_READ_PARTITION_URN: &str = "beam:transform:rust_worker:kafka_read_partition:v1";
/// Writes `KV<bytes, bytes>` (keys and values may be null) to a Kafka topic.
pub const KAFKA_WRITE_URN: &str = "beam:transform:rust_worker:kafka_write:v1";

/// A Kafka problem, worded for the person running the pipeline.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid {transform} configuration: {why}")]
    Config {
        transform: &'static str,
        why: String,
    },
    #[error("cannot reach Kafka at bootstrap.servers={bootstrap}: {why}")]
    Unreachable { bootstrap: String, why: String },
    #[error("topic '{topic}' does not exist on the Kafka cluster at bootstrap.servers={bootstrap}")]
    MissingTopic { topic: String, bootstrap: String },
    #[error("Kafka {operation} failed (bootstrap.servers={bootstrap}): {why}")]
    Client {
        operation: &'static str,
        bootstrap: String,
        why: String,
    },
    #[error("writing to topic '{topic}' failed: the broker did not acknowledge a record: {why}")]
    Delivery { topic: String, why: String },
    #[error(
        "writing to topic '{topic}' failed: the Kafka client refused a record before sending it: {why}"
    )]
    Produce { topic: String, why: String },
    #[error("a record cannot be written: {0}")]
    Record(String),
}

/// Blocking librdkafka calls (metadata, watermarks, commits) run off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// How long metadata and offset look-ups may take before the broker counts as unreachable.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Looks up `topic`'s partitions, telling a missing topic from an unreachable broker.
fn partitions_of(
    client: &impl rdkafka::consumer::Consumer,
    topic: &str,
    bootstrap: &str,
) -> Result<Vec<i32>, KafkaError> {
    use rdkafka::types::RDKafkaRespErr;
    let metadata = client
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .map_err(|e| KafkaError::Unreachable {
            bootstrap: bootstrap.to_owned(),
            why: e.to_string(),
        })?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(KafkaError::MissingTopic {
            topic: topic.to_owned(),
            bootstrap: bootstrap.to_owned(),
        });
    };
    match t.error() {
        None if !t.partitions().is_empty() => Ok(t.partitions().iter().map(|p| p.id()).collect()),
        None | Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
            Err(KafkaError::MissingTopic {
                topic: topic.to_owned(),
                bootstrap: bootstrap.to_owned(),
            })
        }
        Some(e) => Err(KafkaError::Client {
            operation: "metadata look-up",
            bootstrap: bootstrap.to_owned(),
            why: format!("topic '{topic}': {e:?}"),
        }),
    }
}
