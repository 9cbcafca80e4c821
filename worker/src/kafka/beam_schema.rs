//! Beam's own Kafka URNs, served natively: the URNs and configuration schemas
//! of `apache_beam.io.kafka.ReadFromKafka` / `WriteToKafka`
//! (`ReadFromKafkaSchema`, `WriteToKafkaSchema`), which Beam's SDKs send to
//! Java's KafkaIO expansion service. Their Rows carry our own fields
//! (`consumer_config`, `topics`, ...) plus settings of Java's implementation;
//! this module says which of those this worker accepts, and at which values,
//! so anything it would otherwise silently ignore is refused at pipeline
//! construction, naming the field and what is supported.

use crate::row::{Config, Value};

/// `ReadFromKafka(with_metadata=False)`: `KV<bytes, bytes>` records.
pub const BEAM_KAFKA_READ_URN: &str =
    "beam:transform:org.apache.beam:kafka_read_without_metadata:v1";
/// `ReadFromKafka(with_metadata=True)`: records as Rows with topic, partition,
/// offset, headers... Not served.
pub const BEAM_KAFKA_READ_WITH_METADATA_URN: &str =
    "beam:transform:org.apache.beam:kafka_read_with_metadata:v1";
/// `WriteToKafka(with_headers=False)`.
pub const BEAM_KAFKA_WRITE_URN: &str = "beam:transform:org.apache.beam:kafka_write:v1";
/// `WriteToKafka(with_headers=True)`: Rows with headers. Not served.
pub const BEAM_KAFKA_WRITE_WITH_HEADERS_URN: &str =
    "beam:transform:org.apache.beam:kafka_write_with_headers:v1";

const BYTE_ARRAY_DESERIALIZER: &str = "org.apache.kafka.common.serialization.ByteArrayDeserializer";
const BYTE_ARRAY_SERIALIZER: &str = "org.apache.kafka.common.serialization.ByteArraySerializer";

/// Why a Beam Kafka URN this worker knows is not served, if it is one.
pub fn refusal(urn: &str) -> Option<&'static str> {
    match urn {
        BEAM_KAFKA_READ_WITH_METADATA_URN => Some(
            "ReadFromKafka(with_metadata=True) is not supported by beam-rust-worker: its read \
             yields (key, value) byte pairs without Kafka metadata. Use with_metadata=False \
             (the default)",
        ),
        BEAM_KAFKA_WRITE_WITH_HEADERS_URN => Some(
            "WriteToKafka(with_headers=True) is not supported by beam-rust-worker: its write \
             takes (key, value) byte pairs without headers. Use with_headers=False (the default)",
        ),
        _ => None,
    }
}

/// A field of Beam's schema that is accepted only at the value(s) under which
/// it changes nothing in what our implementation does.
pub(super) struct Inert {
    pub(super) name: &'static str,
    accepts: Accepts,
    /// What is supported, for the refusal.
    supported: &'static str,
}

enum Accepts {
    /// Unset (null or absent).
    Unset,
    /// Unset or exactly this string.
    Str(&'static str),
    /// Unset or false.
    False,
    /// Unset or 0.
    Zero,
    /// Any value: a tuning knob of Java's client with no counterpart here.
    Any,
}

/// Fields of `ReadFromKafkaSchema` beyond those our read implements. Fields a
/// Beam version does not send are simply absent.
pub(super) const READ_INERT: &[Inert] = &[
    Inert {
        name: "key_deserializer",
        accepts: Accepts::Str(BYTE_ARRAY_DESERIALIZER),
        supported: "org.apache.kafka.common.serialization.ByteArrayDeserializer (keys are raw bytes)",
    },
    Inert {
        name: "value_deserializer",
        accepts: Accepts::Str(BYTE_ARRAY_DESERIALIZER),
        supported: "org.apache.kafka.common.serialization.ByteArrayDeserializer (values are raw bytes)",
    },
    Inert {
        name: "start_read_time",
        accepts: Accepts::Unset,
        supported: "unset (the read starts at the consumer group's committed offsets, or where \
                    auto.offset.reset says)",
    },
    // Tunes how long Java's consumer polls; librdkafka fetches on its own.
    Inert {
        name: "consumer_polling_timeout",
        accepts: Accepts::Any,
        supported: "any value (ignored)",
    },
    Inert {
        name: "redistribute",
        accepts: Accepts::False,
        supported: "false (no redistribution after the read)",
    },
    Inert {
        name: "redistribute_num_keys",
        accepts: Accepts::Zero,
        supported: "0 (no redistribution after the read)",
    },
    Inert {
        name: "allow_duplicates",
        accepts: Accepts::False,
        supported: "false (no redistribution after the read)",
    },
    Inert {
        name: "dynamic_read_poll_interval_seconds",
        accepts: Accepts::Unset,
        supported: "unset (partitions are looked up once, when the read starts)",
    },
    Inert {
        name: "consumer_factory_fn_class",
        accepts: Accepts::Unset,
        supported: "unset (the consumer is librdkafka, configured by consumer_config)",
    },
    Inert {
        name: "consumer_factory_fn_params",
        accepts: Accepts::Unset,
        supported: "unset (the consumer is librdkafka, configured by consumer_config)",
    },
];

/// Fields of `WriteToKafkaSchema` beyond those our write implements.
pub(super) const WRITE_INERT: &[Inert] = &[
    Inert {
        name: "key_serializer",
        accepts: Accepts::Str(BYTE_ARRAY_SERIALIZER),
        supported: "org.apache.kafka.common.serialization.ByteArraySerializer (keys are raw bytes)",
    },
    Inert {
        name: "value_serializer",
        accepts: Accepts::Str(BYTE_ARRAY_SERIALIZER),
        supported: "org.apache.kafka.common.serialization.ByteArraySerializer (values are raw bytes)",
    },
];

/// Names of `inert` fields, to add to the fields a transform knows.
pub(super) fn names(inert: &[Inert]) -> impl Iterator<Item = &'static str> + '_ {
    inert.iter().map(|f| f.name)
}

/// Refuses the first `inert` field set to a value that would change behaviour.
pub(super) fn check(c: &Config, inert: &[Inert]) -> Result<(), String> {
    for field in inert {
        let Some(value) = c.get(field.name) else {
            continue;
        };
        let ok = match (&field.accepts, value) {
            (Accepts::Any, _) => true,
            (Accepts::Unset, _) => false,
            (Accepts::Str(s), Value::Str(v)) => v == s,
            (Accepts::False, Value::Bool(b)) => !b,
            (Accepts::Zero, Value::Int(i)) => *i == 0,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "`{}` is set to {}, which beam-rust-worker does not support; supported: {}",
                field.name,
                shown(value),
                field.supported
            ));
        }
    }
    Ok(())
}

fn shown(value: &Value) -> String {
    match value {
        Value::Str(s) => format!("{s:?}"),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::{ReadConfig, WriteConfig};
    use crate::row::testing::{payload, str_list, str_map};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The payload apache-beam 2.77's `ReadFromKafka(consumer_config=
    /// {"bootstrap.servers": "h:1"}, topics=["t"])` sends: every default set,
    /// including `consumer_polling_timeout=2` and an INT32 `redistribute_num_keys`.
    const PYTHON_READ: &str = "0afc020a1d0a0f636f6e73756d65725f636f6e6669671a0a2a080a021007120210070a100a06746f706963731a061a040a0210070a160a106b65795f646573657269616c697a65721a0210070a180a1276616c75655f646573657269616c697a65721a0210070a170a0f73746172745f726561645f74696d651a04080110040a170a0f6d61785f6e756d5f7265636f7264731a04080110040a150a0d6d61785f726561645f74696d651a04080110040a1f0a19636f6d6d69745f6f66667365745f696e5f66696e616c697a651a0210080a160a1074696d657374616d705f706f6c6963791a0210070a200a18636f6e73756d65725f706f6c6c696e675f74696d656f75741a04080110040a140a0c7265646973747269627574651a04080110080a1d0a157265646973747269627574655f6e756d5f6b6579731a04080110030a180a10616c6c6f775f6475706c6963617465731a0408011008122434376434653034392d383763642d343763632d383662622d34363036366236303261623012b0010d0270000000000111626f6f7473747261702e7365727665727303683a310000000101743b6f72672e6170616368652e6b61666b612e636f6d6d6f6e2e73657269616c697a6174696f6e2e427974654172726179446573657269616c697a65723b6f72672e6170616368652e6b61666b612e636f6d6d6f6e2e73657269616c697a6174696f6e2e427974654172726179446573657269616c697a6572000e50726f63657373696e6754696d6502000000";

    /// apache-beam 2.77's `WriteToKafka(producer_config={"bootstrap.servers":
    /// "h:1"}, topic="o")`.
    const PYTHON_WRITE: &str = "0a80010a1d0a0f70726f64756365725f636f6e6669671a0a2a080a021007120210070a0b0a05746f7069631a0210070a140a0e6b65795f73657269616c697a65721a0210070a160a1076616c75655f73657269616c697a65721a021007122439626630396162352d303261342d346263652d383638342d36393738353064303865653812920104000000000111626f6f7473747261702e7365727665727303683a31016f396f72672e6170616368652e6b61666b612e636f6d6d6f6e2e73657269616c697a6174696f6e2e42797465417272617953657269616c697a6572396f72672e6170616368652e6b61666b612e636f6d6d6f6e2e73657269616c697a6174696f6e2e42797465417272617953657269616c697a6572";

    #[test]
    fn beams_python_read_payload_maps_to_our_read() {
        let c = ReadConfig::from_payload(&hex(PYTHON_READ)).unwrap();
        assert_eq!(c.bootstrap(), "h:1");
        assert_eq!(c.topics, ["t"]);
        // No bound set: in Beam an unbounded read; here the bounded one.
        assert_eq!((c.max_num_records, c.max_read_time), (None, None));
        assert!(!c.commit_offsets);
    }

    #[test]
    fn beams_python_write_payload_maps_to_our_write() {
        let c = WriteConfig::from_payload(&hex(PYTHON_WRITE)).unwrap();
        assert_eq!((c.bootstrap(), c.topic.as_str()), ("h:1", "o"));
    }

    fn read_with(extra: (&str, Value)) -> Result<ReadConfig, String> {
        let p = payload(&[
            (
                "consumer_config",
                str_map(&[("bootstrap.servers", "h:1"), ("group.id", "g")]),
            ),
            ("topics", str_list(&["t"])),
            ("max_num_records", Value::Int(5)),
            ("max_read_time", Value::Int(7)),
            ("commit_offset_in_finalize", Value::Bool(true)),
            extra,
        ]);
        ReadConfig::from_payload(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn supported_fields_and_defaults_are_accepted() {
        let ok = [
            (
                "key_deserializer",
                Value::Str(BYTE_ARRAY_DESERIALIZER.into()),
            ),
            (
                "value_deserializer",
                Value::Str(BYTE_ARRAY_DESERIALIZER.into()),
            ),
            ("timestamp_policy", Value::Str("ProcessingTime".into())),
            ("consumer_polling_timeout", Value::Int(30)),
            ("redistribute", Value::Bool(false)),
            ("redistribute_num_keys", Value::Int(0)),
            ("allow_duplicates", Value::Bool(false)),
            ("start_read_time", Value::Null),
        ];
        for extra in ok {
            let name = extra.0;
            let c = read_with(extra).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.max_num_records, Some(5));
            assert_eq!(c.max_read_time, Some(std::time::Duration::from_secs(7)));
            assert!(c.commit_offsets);
        }
    }

    #[test]
    fn timestamp_policies_are_kafkaios_three() {
        use super::super::TimestampPolicy;
        for (name, policy) in [
            ("ProcessingTime", TimestampPolicy::ProcessingTime),
            ("CreateTime", TimestampPolicy::CreateTime),
            ("LogAppendTime", TimestampPolicy::LogAppendTime),
        ] {
            let c = read_with(("timestamp_policy", Value::Str(name.into()))).unwrap();
            assert_eq!(c.timestamp_policy, policy);
        }
        let e = read_with(("timestamp_policy", Value::Str("EventTime".into()))).unwrap_err();
        assert!(
            e.contains("`timestamp_policy`") && e.contains("'EventTime'"),
            "{e}"
        );
    }

    #[test]
    fn anything_else_set_is_refused_naming_the_field_and_what_is_supported() {
        let refused = [
            (
                "key_deserializer",
                Value::Str("org.apache.kafka.common.serialization.LongDeserializer".into()),
                "ByteArrayDeserializer",
            ),
            (
                "value_deserializer",
                Value::Str("x.StringDeserializer".into()),
                "ByteArrayDeserializer",
            ),
            ("start_read_time", Value::Int(1_700_000_000_000), "unset"),
            ("redistribute", Value::Bool(true), "false"),
            ("redistribute_num_keys", Value::Int(8), "0"),
            ("allow_duplicates", Value::Bool(true), "false"),
            (
                "dynamic_read_poll_interval_seconds",
                Value::Int(60),
                "unset",
            ),
            (
                "consumer_factory_fn_class",
                Value::Str("a.B".into()),
                "unset",
            ),
            (
                "consumer_factory_fn_params",
                str_map(&[("k", "v")]),
                "unset",
            ),
            ("with_metadata", Value::Bool(true), "unsupported field(s)"),
        ];
        for (name, value, supported) in refused {
            let e = read_with((name, value)).unwrap_err();
            assert!(
                e.contains(&format!("`{name}`")) || e.contains(name),
                "{name}: {e}"
            );
            assert!(e.contains(supported), "{name}: {e}");
        }
    }

    #[test]
    fn write_serializers_other_than_byte_array_are_refused() {
        let p = |serializer: &str| {
            payload(&[
                ("producer_config", str_map(&[("bootstrap.servers", "h:1")])),
                ("topic", Value::Str("o".into())),
                ("key_serializer", Value::Str(BYTE_ARRAY_SERIALIZER.into())),
                ("value_serializer", Value::Str(serializer.into())),
            ])
        };
        assert!(WriteConfig::from_payload(&p(BYTE_ARRAY_SERIALIZER)).is_ok());
        let e = WriteConfig::from_payload(&p("x.StringSerializer"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`value_serializer`"), "{e}");
        assert!(e.contains("\"x.StringSerializer\""), "{e}");
        assert!(e.contains("ByteArraySerializer"), "{e}");
    }

    #[test]
    fn metadata_and_headers_urns_are_refused_with_the_fix() {
        let e = refusal(BEAM_KAFKA_READ_WITH_METADATA_URN).unwrap();
        assert!(e.contains("with_metadata=False"), "{e}");
        let e = refusal(BEAM_KAFKA_WRITE_WITH_HEADERS_URN).unwrap();
        assert!(e.contains("with_headers=False"), "{e}");
        assert!(refusal(BEAM_KAFKA_READ_URN).is_none());
    }
}
