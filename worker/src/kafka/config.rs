//! Kafka transform configuration, read from the schema Row of the transform's
//! `ExternalConfigurationPayload` (field names follow `apache_beam.io.kafka`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::KafkaError;
use super::beam_schema::{self, Inert, READ_INERT, WRITE_INERT};
use crate::row::Config;

const READ_FIELDS: &[&str] = &[
    "consumer_config",
    "topics",
    "max_num_records",
    "max_read_time",
    "commit_offset_in_finalize",
    "stop_at_end",
    "timestamp_policy",
];
const WRITE_FIELDS: &[&str] = &["producer_config", "topic"];

/// A bounded read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadConfig {
    /// librdkafka consumer properties, passed through (`bootstrap.servers` required).
    pub consumer: BTreeMap<String, String>,
    pub topics: Vec<String>,
    /// Stop after this many records in a read.
    pub max_num_records: Option<u64>,
    /// Stop after this long.
    pub max_read_time: Option<Duration>,
    /// Commit the consumer group's offsets once the runner finalizes the bundle.
    pub commit_offsets: bool,
    /// Read to the end of each partition as the read gets there, then stop
    /// (beam-rust-worker's own setting; Beam's schema has no such field).
    pub stop_at_end: bool,
    /// Where records' timestamps come from.
    pub timestamp_policy: TimestampPolicy,
}

/// KafkaIO's `timestamp_policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampPolicy {
    /// The time the read takes the record (the default).
    #[default]
    ProcessingTime,
    /// The broker's append time: the record's timestamp, on a topic with
    /// `message.timestamp.type=LogAppendTime`.
    LogAppendTime,
    /// The producer's timestamp in the record.
    CreateTime,
}

impl TimestampPolicy {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "ProcessingTime" => Some(Self::ProcessingTime),
            "LogAppendTime" => Some(Self::LogAppendTime),
            "CreateTime" => Some(Self::CreateTime),
            _ => None,
        }
    }

    /// True when timestamps come from the records themselves.
    pub fn from_records(self) -> bool {
        self != Self::ProcessingTime
    }
}

/// A write to one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteConfig {
    pub producer: BTreeMap<String, String>,
    pub topic: String,
}

impl ReadConfig {
    pub fn from_payload(payload: &[u8]) -> Result<Self, KafkaError> {
        let err = config_error(READ);
        let c = load(payload, READ, READ_FIELDS, READ_INERT)?;
        let consumer = c
            .string_map("consumer_config")
            .map_err(|e| err(e.to_string()))?;
        require_bootstrap(&consumer).map_err(&err)?;
        let topics = c.strings("topics").map_err(|e| err(e.to_string()))?;
        if topics.is_empty() || topics.iter().any(|t| t.is_empty()) {
            return Err(err("`topics` must name at least one topic".into()));
        }
        let non_negative = |name: &str| -> Result<Option<u64>, KafkaError> {
            match c.int(name).map_err(|e| err(e.to_string()))? {
                Some(v) if v < 0 => Err(err(format!("`{name}` must not be negative, got {v}"))),
                v => Ok(v.map(|v| v as u64)),
            }
        };
        let commit_offsets = c
            .bool("commit_offset_in_finalize")
            .map_err(|e| err(e.to_string()))?
            .unwrap_or(false);
        if commit_offsets && !consumer.contains_key("group.id") {
            return Err(err(
                "`commit_offset_in_finalize` needs a `group.id` in `consumer_config`".into(),
            ));
        }
        let timestamp_policy = match c.string("timestamp_policy").map_err(|e| err(e.to_string()))? {
            None => TimestampPolicy::default(),
            Some(v) => TimestampPolicy::parse(&v).ok_or_else(|| {
                err(format!(
                    "`timestamp_policy` must be ProcessingTime, LogAppendTime or CreateTime, got '{v}'"
                ))
            })?,
        };
        let stop_at_end = c
            .bool("stop_at_end")
            .map_err(|e| err(e.to_string()))?
            .unwrap_or(false);
        Ok(Self {
            stop_at_end,
            timestamp_policy,
            max_num_records: non_negative("max_num_records")?,
            max_read_time: non_negative("max_read_time")?.map(Duration::from_secs),
            consumer,
            topics,
            commit_offsets,
        })
    }

    pub fn bootstrap(&self) -> &str {
        bootstrap(&self.consumer)
    }

    /// A bounded read ends (at the end of each partition, after
    /// `max_num_records` or after `max_read_time`); any other read is
    /// unbounded, as `apache_beam.io.kafka.ReadFromKafka` is.
    pub fn is_bounded(&self) -> bool {
        self.stop_at_end || self.max_num_records.is_some() || self.max_read_time.is_some()
    }
}

impl WriteConfig {
    pub fn from_payload(payload: &[u8]) -> Result<Self, KafkaError> {
        let err = config_error(WRITE);
        let c = load(payload, WRITE, WRITE_FIELDS, WRITE_INERT)?;
        let producer = c
            .string_map("producer_config")
            .map_err(|e| err(e.to_string()))?;
        require_bootstrap(&producer).map_err(&err)?;
        let topic = c
            .string("topic")
            .map_err(|e| err(e.to_string()))?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| err("`topic` is required".into()))?;
        Ok(Self { producer, topic })
    }

    pub fn bootstrap(&self) -> &str {
        bootstrap(&self.producer)
    }
}

const READ: &str = "Kafka read";
const WRITE: &str = "Kafka write";

/// A configuration error of `transform`.
fn config_error(transform: &'static str) -> impl Fn(String) -> KafkaError {
    move |why| KafkaError::Config { transform, why }
}

/// Decodes the payload's Row and refuses fields the transform does not know.
///
/// Beam's own schemas (`apache_beam.io.kafka`) add settings of Java's KafkaIO
/// to ours; they are accepted at the values that leave them unused (see
/// `beam_schema`), so one decoder serves our URNs and Beam's.
fn load(
    payload: &[u8],
    transform: &'static str,
    implemented: &[&'static str],
    inert: &[Inert],
) -> Result<Config, KafkaError> {
    let err = config_error(transform);
    let c = Config::from_payload(payload).map_err(|e| err(e.to_string()))?;
    let known: Vec<&str> = implemented
        .iter()
        .copied()
        .chain(beam_schema::names(inert))
        .collect();
    reject_unknown(&c, &known).map_err(&err)?;
    beam_schema::check(&c, inert).map_err(err)?;
    Ok(c)
}

fn bootstrap(config: &BTreeMap<String, String>) -> &str {
    config
        .get("bootstrap.servers")
        .map(String::as_str)
        .unwrap_or("")
}

fn require_bootstrap(config: &BTreeMap<String, String>) -> Result<(), String> {
    if bootstrap(config).is_empty() {
        return Err("`bootstrap.servers` is required in the client configuration".into());
    }
    Ok(())
}

fn reject_unknown(c: &Config, known: &[&str]) -> Result<(), String> {
    let unknown = c.unknown_fields(known);
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "unsupported field(s) {}; supported are {}",
        unknown.join(", "),
        known.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Value;
    use crate::row::testing::{payload, str_list, str_map};

    #[test]
    fn read_config_follows_apache_beam_io_kafka_names() {
        let p = payload(&[
            (
                "consumer_config",
                str_map(&[("bootstrap.servers", "127.0.0.1:9092"), ("group.id", "g")]),
            ),
            ("topics", str_list(&["a", "b"])),
            ("max_num_records", Value::Int(10)),
            ("max_read_time", Value::Null),
            ("commit_offset_in_finalize", Value::Bool(true)),
        ]);
        let c = ReadConfig::from_payload(&p).unwrap();
        assert_eq!(c.bootstrap(), "127.0.0.1:9092");
        assert_eq!(c.topics, ["a", "b"]);
        assert_eq!(c.max_num_records, Some(10));
        assert_eq!(c.max_read_time, None);
        assert!(c.commit_offsets);
    }

    #[test]
    fn bad_read_configs_say_what_is_wrong() {
        let servers = || str_map(&[("bootstrap.servers", "h:1")]);
        let cases = [
            (vec![("topics", str_list(&["t"]))], "bootstrap.servers"),
            (vec![("consumer_config", servers())], "topics"),
            (
                vec![
                    ("consumer_config", servers()),
                    ("topics", str_list(&["t"])),
                    ("with_metadata", Value::Bool(true)),
                ],
                "unsupported field(s) with_metadata",
            ),
            (
                vec![
                    ("consumer_config", servers()),
                    ("topics", str_list(&["t"])),
                    ("commit_offset_in_finalize", Value::Bool(true)),
                ],
                "group.id",
            ),
            (
                vec![
                    ("consumer_config", servers()),
                    ("topics", str_list(&["t"])),
                    ("max_num_records", Value::Int(-1)),
                ],
                "negative",
            ),
        ];
        for (fields, expect) in cases {
            let err = ReadConfig::from_payload(&payload(&fields))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{expect:?} not in {err}");
        }
        assert!(ReadConfig::from_payload(b"not a payload").is_err());
    }

    #[test]
    fn write_config_needs_servers_and_topic() {
        let ok = payload(&[
            ("producer_config", str_map(&[("bootstrap.servers", "h:1")])),
            ("topic", Value::Str("out".into())),
        ]);
        let c = WriteConfig::from_payload(&ok).unwrap();
        assert_eq!((c.bootstrap(), c.topic.as_str()), ("h:1", "out"));
        let no_topic = payload(&[("producer_config", str_map(&[("bootstrap.servers", "h:1")]))]);
        let err = WriteConfig::from_payload(&no_topic)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`topic` is required"), "{err}");
    }
}
