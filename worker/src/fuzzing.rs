//! Entry points of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer), also
//! replayed on stable Rust by `worker/tests/fuzz_corpus.rs`.
//!
//! Each function takes arbitrary bytes and drives one decoder the way the
//! worker drives it with what a runner or an SDK sends. Malformed input is
//! expected and answered with an error, so these functions return normally on
//! every input. They panic only when the code under test panics, or when an
//! invariant checked here does not hold (a decode that does not round-trip,
//! two decoders that disagree, a plan that is not in topological order):
//! both are bugs, which is what the fuzzer is looking for.
//!
//! Not part of the worker's interface: the layouts of the inputs below may
//! change whenever the fuzz corpus is regenerated.

use std::collections::HashMap;
use std::sync::OnceLock;

use beam_proto::expansion::ExpansionRequest;
use beam_proto::fn_execution::ProcessBundleDescriptor;
use beam_proto::pipeline::field_type::TypeInfo;
use beam_proto::pipeline::{
    ArrayType, AtomicType, Coder, ExternalConfigurationPayload, Field, FieldType, FunctionSpec,
    IterableType, MapType, Schema,
};
use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::coders::{self, ComponentCoder, ElementCoder, Framing, WireCoder};
use crate::kafka::{ReadConfig, WriteConfig};
use crate::row::{self, Config};
use crate::value_coder::{self, WindowedCoder};
use crate::{expansion, graph, registry, transforms};

/// A harness: takes any bytes, panics only on a bug.
pub type Harness = fn(&[u8]);

/// Every target: its name (the folder under `fuzz/corpus/` and
/// `fuzz/regressions/`) and its entry point.
pub const TARGETS: &[(&str, Harness)] = &[
    ("wire_coder", wire_coder),
    ("row", row),
    ("plan", plan),
    ("expansion", expansion),
];

// ---- wire_coder ----

/// Coder URNs a [`wire_coder`] input picks from, by `kind % KINDS.len()`.
/// The last two are ones the element decoders must refuse.
pub const KINDS: [&str; 10] = [
    coders::BYTES_URN,
    value_coder::STRING_UTF8_URN,
    value_coder::VARINT_URN,
    value_coder::DOUBLE_URN,
    value_coder::BOOL_URN,
    coders::KV_URN,
    coders::NULLABLE_URN,
    coders::LENGTH_PREFIX_URN,
    "beam:coder:row:v1",
    coders::GLOBAL_WINDOW_URN,
];

/// Element coders a [`wire_coder`] input defines, `c0` to `c5`; `c0` is the
/// element of the data port's windowed value. Components name `c{n % 7}`, so
/// `c6` is a reference to a coder that does not exist.
pub const CODERS: usize = 6;

/// Flag bits of a [`wire_coder`] input's first byte.
pub const FLAG_PARAM: u8 = 1;
pub const FLAG_INTERVAL: u8 = 2;

/// Builds a [`wire_coder`] input: `flags` (bit 0: `param_windowed_value`,
/// bit 1: interval windows, high nibble: log2 of the piece size), six coders
/// as `[kind, first component, second component]` (a kind with bit 7 set
/// drops one component: a coder of the wrong arity), the param payload (only
/// written when `FLAG_PARAM` is set, at most 63 bytes) and the chunk.
pub fn wire_coder_input(
    flags: u8,
    coders: &[[u8; 3]; CODERS],
    param: &[u8],
    chunk: &[u8],
) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend(coders.iter().flatten());
    if flags & FLAG_PARAM != 0 {
        let param = &param[..param.len().min(63)];
        out.push(param.len() as u8);
        out.extend_from_slice(param);
    }
    out.extend_from_slice(chunk);
    out
}

/// Id of the data port's coder in the map a [`wire_coder`] input defines.
const PORT: &str = "port";

/// The coder map, flags and chunk of a [`wire_coder`] input.
fn coder_map(data: &[u8]) -> Option<(HashMap<String, Coder>, u8, &[u8])> {
    let (&flags, rest) = data.split_first()?;
    let (table, mut rest) = rest.split_at_checked(3 * CODERS)?;
    let coder = |urn: &str, payload: Bytes, components: Vec<String>| Coder {
        spec: Some(FunctionSpec {
            urn: urn.to_owned(),
            payload,
        }),
        component_coder_ids: components,
    };
    let id = |n: u8| format!("c{}", n % (CODERS as u8 + 1));
    let mut map = HashMap::new();
    for (i, entry) in table.chunks_exact(3).enumerate() {
        let [kind, a, b] = [entry[0], entry[1], entry[2]];
        let urn = KINDS[usize::from(kind & 0x7f) % KINDS.len()];
        let mut components = match urn {
            coders::KV_URN => vec![id(a), id(b)],
            coders::NULLABLE_URN | coders::LENGTH_PREFIX_URN => vec![id(a)],
            _ => Vec::new(),
        };
        if kind & 0x80 != 0 {
            components.pop();
        }
        map.insert(format!("c{i}"), coder(urn, Bytes::new(), components));
    }
    let (window_urn, param_urn) = (
        if flags & FLAG_INTERVAL != 0 {
            coders::INTERVAL_WINDOW_URN
        } else {
            coders::GLOBAL_WINDOW_URN
        },
        if flags & FLAG_PARAM != 0 {
            coders::PARAM_WINDOWED_VALUE_URN
        } else {
            coders::WINDOWED_VALUE_URN
        },
    );
    let mut payload = Bytes::new();
    if flags & FLAG_PARAM != 0 {
        let (&len, after) = rest.split_first()?;
        let (constant, after) = after.split_at_checked(usize::from(len % 64))?;
        payload = Bytes::copy_from_slice(constant);
        rest = after;
    }
    map.insert("window".into(), coder(window_urn, Bytes::new(), Vec::new()));
    map.insert(
        PORT.into(),
        coder(param_urn, payload, vec!["c0".into(), "window".into()]),
    );
    Some((map, flags, rest))
}

/// A data port's chunk, as the runner source scans it (element boundaries
/// with the compact coder) and as the splittable read's steps decode it
/// (the general coder), from a coder map the input defines.
///
/// Layout: see [`wire_coder_input`].
pub fn wire_coder(data: &[u8]) {
    let Some((map, flags, chunk)) = coder_map(data) else {
        return;
    };
    let max_piece = 1usize << (flags >> 4);
    let wire = WireCoder::resolve(PORT, &map).ok();
    let full = WindowedCoder::resolve(PORT, &map).ok();
    let scanned = wire.as_ref().map(|w| scan(w, chunk, max_piece));
    let decoded = full.as_ref().map(|f| decode_values(f, chunk));
    // The compact coder is a fast path of the general one: where both apply
    // they must agree on where elements end and on what is malformed.
    if let (Some(scanned), Some(decoded)) = (scanned, decoded) {
        assert_eq!(
            scanned, decoded,
            "the wire coder and the general coder disagree on the chunk's elements"
        );
    }
}

/// Scans `chunk` as the runner source does; returns its element count, or
/// `None` if it is malformed.
fn scan(wire: &WireCoder, chunk: &[u8], max_piece: usize) -> Option<u64> {
    let bytes = Bytes::copy_from_slice(chunk);
    let split = transforms::split_whole_elements(wire, &bytes, max_piece);
    // Re-encoding with the same coder decodes each element the same way, so it
    // must succeed exactly when the scan does.
    let same = transforms::recode(wire, wire, chunk, max_piece);
    assert_eq!(
        split.is_ok(),
        same.is_ok(),
        "scan and decode disagree: {split:?} vs {same:?}"
    );
    let split = match split {
        Ok(split) => split,
        Err(e) => {
            let _ = e.to_string();
            return None;
        }
    };
    assert_eq!(
        split.pieces.concat(),
        chunk,
        "the pieces must be the chunk, in order"
    );
    let mut pos = 0;
    let mut elements = 0u64;
    while pos < chunk.len() {
        let (parts, len) = wire
            .decode(&chunk[pos..])
            .expect("an element of a scanned chunk decodes");
        assert!(len > 0, "an element takes at least one byte");
        let mut again = Vec::new();
        wire.encode(&parts, &mut again)
            .expect("a decoded element encodes with its own coder");
        let (round, round_len) = wire
            .decode(&again)
            .expect("an encoded element decodes again");
        assert_eq!((round, round_len), (parts, again.len()));
        pos += len;
        elements += 1;
    }
    assert_eq!(elements, split.elements);
    // Re-encoding into another port's coder (what a sink does) either fails
    // on an element or yields a chunk of as many elements in that coder.
    for to in sink_coders(wire) {
        if let Ok(out) = transforms::recode(wire, &to, chunk, max_piece) {
            let out = Bytes::from(out.pieces.concat());
            let back = transforms::split_whole_elements(&to, &out, usize::MAX)
                .expect("a re-encoded chunk scans with its coder");
            assert_eq!(back.elements, split.elements);
        }
    }
    Some(split.elements)
}

/// The coders a sink in the same windows may re-encode into.
fn sink_coders(from: &WireCoder) -> Vec<WireCoder> {
    use ComponentCoder::{Bytes as B, NullableBytes as N};
    let mut out: Vec<WireCoder> = [(B, B), (N, N), (B, N), (N, B)]
        .into_iter()
        .map(|(key, value)| WireCoder {
            framing: Framing::Windowed,
            window: from.window,
            element: ElementCoder::Kv { key, value },
        })
        .collect();
    out.push(WireCoder {
        framing: Framing::Windowed,
        window: from.window,
        element: ElementCoder::Bytes,
    });
    if let Framing::Param(_) = from.framing {
        // Back into the same constant: only elements that carry it fit.
        out.push(WireCoder {
            element: ElementCoder::Kv { key: N, value: N },
            ..from.clone()
        });
    }
    out
}

/// Decodes `chunk` with the general coder; returns its element count, or
/// `None` if it is malformed.
fn decode_values(coder: &WindowedCoder, chunk: &[u8]) -> Option<u64> {
    let values = match coder.decode_all(&Bytes::copy_from_slice(chunk)) {
        Ok(values) => values,
        Err(e) => {
            let _ = e.to_string();
            return None;
        }
    };
    // Encoding what was decoded gives the canonical form (shortest varints,
    // booleans as 0/1); decoding and encoding that again changes nothing.
    let canonical = encode_all(coder, &values);
    let again = coder
        .decode_all(&canonical)
        .expect("an encoded chunk decodes again");
    assert_eq!(again.len(), values.len());
    assert_eq!(
        encode_all(coder, &again),
        canonical,
        "encoding is not stable"
    );
    Some(values.len() as u64)
}

fn encode_all(coder: &WindowedCoder, values: &[value_coder::WindowedValue]) -> Bytes {
    let mut out = BytesMut::new();
    for v in values {
        coder
            .encode(&v.metadata, &v.value, &mut out)
            .expect("a decoded value encodes with its own coder");
    }
    out.freeze()
}

// ---- row ----

/// A transform's configuration Row, as the expansion service and the
/// planner decode it. The first byte picks what the rest is (`% 4`):
/// 0: an `ExternalConfigurationPayload` (schema and Row), read as our Kafka
///    read's and write's configuration and as a plain Row;
/// 1: a Row of Beam's `ReadFromKafkaSchema` (apache-beam 2.77's 13 fields);
/// 2: a Row of Beam's `WriteToKafkaSchema`;
/// 3: a Row of [`all_types_schema`], every type the decoder knows and two
///    it refuses.
///
/// The fixed schemas let the fuzzer work on the Row's bytes without having to
/// keep a protobuf's length prefixes right.
pub fn row(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(config) = Config::from_payload(rest) {
                exercise(&config);
            }
            show(ReadConfig::from_payload(rest));
            show(WriteConfig::from_payload(rest));
        }
        1 => show(ReadConfig::from_payload(&wrap(beam_read_schema(), rest))),
        2 => show(WriteConfig::from_payload(&wrap(beam_write_schema(), rest))),
        _ => match row::decode_row(all_types_schema(), rest) {
            Ok(config) => exercise(&config),
            Err(e) => {
                let _ = e.to_string();
            }
        },
    }
}

/// Formats what a decoder returned, as the worker does when it reports it.
fn show<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) {
    match result {
        Ok(value) => {
            let _ = format!("{value:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Every typed accessor on every field, as the Kafka configuration uses them.
fn exercise(config: &Config) {
    let _ = config.unknown_fields(&[]);
    for name in config.0.keys() {
        let _ = config.string(name);
        let _ = config.int(name);
        let _ = config.bool(name);
        let _ = config.strings(name);
        let _ = config.string_map(name);
    }
}

fn wrap(schema: &Schema, row: &[u8]) -> Vec<u8> {
    ExternalConfigurationPayload {
        schema: Some(schema.clone()),
        payload: Bytes::copy_from_slice(row),
    }
    .encode_to_vec()
}

fn atomic(t: AtomicType, nullable: bool) -> FieldType {
    FieldType {
        nullable,
        type_info: Some(TypeInfo::AtomicType(t as i32)),
    }
}

fn array(element: FieldType) -> FieldType {
    FieldType {
        nullable: false,
        type_info: Some(TypeInfo::ArrayType(Box::new(ArrayType {
            element_type: Some(Box::new(element)),
        }))),
    }
}

fn map(key: FieldType, value: FieldType) -> FieldType {
    FieldType {
        nullable: false,
        type_info: Some(TypeInfo::MapType(Box::new(MapType {
            key_type: Some(Box::new(key)),
            value_type: Some(Box::new(value)),
        }))),
    }
}

fn schema(fields: Vec<(&str, Option<FieldType>)>) -> Schema {
    Schema {
        fields: fields
            .into_iter()
            .map(|(name, ty)| Field {
                name: name.to_owned(),
                r#type: ty,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn string() -> FieldType {
    atomic(AtomicType::String, false)
}

/// `ReadFromKafkaSchema` as apache-beam 2.77 sends it.
pub fn beam_read_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let long = || Some(atomic(AtomicType::Int64, true));
        schema(vec![
            ("consumer_config", Some(map(string(), string()))),
            ("topics", Some(array(string()))),
            ("key_deserializer", Some(string())),
            ("value_deserializer", Some(string())),
            ("start_read_time", long()),
            ("max_num_records", long()),
            ("max_read_time", long()),
            (
                "commit_offset_in_finalize",
                Some(atomic(AtomicType::Boolean, false)),
            ),
            ("timestamp_policy", Some(string())),
            ("consumer_polling_timeout", long()),
            ("redistribute", Some(atomic(AtomicType::Boolean, true))),
            (
                "redistribute_num_keys",
                Some(atomic(AtomicType::Int32, true)),
            ),
            ("allow_duplicates", Some(atomic(AtomicType::Boolean, true))),
        ])
    })
}

/// `WriteToKafkaSchema` as apache-beam 2.77 sends it.
pub fn beam_write_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        schema(vec![
            ("producer_config", Some(map(string(), string()))),
            ("topic", Some(string())),
            ("key_serializer", Some(string())),
            ("value_serializer", Some(string())),
        ])
    })
}

/// One field of every type the Row decoder reads, nested ones included,
/// then a FLOAT and an untyped field, which it refuses unless null.
pub fn all_types_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        schema(vec![
            ("int64", Some(atomic(AtomicType::Int64, false))),
            ("int32", Some(atomic(AtomicType::Int32, true))),
            ("int16", Some(atomic(AtomicType::Int16, false))),
            ("byte", Some(atomic(AtomicType::Byte, false))),
            ("boolean", Some(atomic(AtomicType::Boolean, false))),
            ("double", Some(atomic(AtomicType::Double, false))),
            ("string", Some(string())),
            ("bytes", Some(atomic(AtomicType::Bytes, false))),
            ("strings", Some(array(atomic(AtomicType::String, true)))),
            (
                "iterable",
                Some(FieldType {
                    nullable: false,
                    type_info: Some(TypeInfo::IterableType(Box::new(IterableType {
                        element_type: Some(Box::new(array(atomic(AtomicType::Int64, false)))),
                    }))),
                }),
            ),
            ("map", Some(map(string(), atomic(AtomicType::Bytes, true)))),
            ("float", Some(atomic(AtomicType::Float, false))),
            ("untyped", None),
        ])
    })
}

// ---- plan ----

/// A `ProcessBundleDescriptor` as a runner sends it (protobuf bytes), planned
/// as the harness plans it (`control.rs`, `plan_descriptor`): the graph, and
/// the URN of every leaf it logs.
pub fn plan(data: &[u8]) {
    let Ok(descriptor) = ProcessBundleDescriptor::decode(data) else {
        return;
    };
    match graph::build(&descriptor) {
        Ok(stage) => {
            for t in descriptor.transforms.values() {
                let _ = registry::runs(t);
            }
            let _ = format!("{stage:?}");
            let _ = stage.input_urls();
            // The engine runs nodes in order and finishes them upstream
            // first; a chunk must only ever flow to a later node, or a
            // bundle could loop on its own output.
            for (producer, node) in stage.nodes.iter().enumerate() {
                for port in &node.outputs {
                    for &consumer in &port.consumers {
                        assert!(
                            consumer > producer && consumer < stage.nodes.len(),
                            "node {producer} ({}) feeds node {consumer}: not in topological order",
                            node.transform_id
                        );
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

// ---- expansion ----

/// An `ExpansionRequest` as an SDK sends it (protobuf bytes), expanded as
/// the expansion service does, without the network.
pub fn expansion(data: &[u8]) {
    let Ok(request) = ExpansionRequest::decode(data) else {
        return;
    };
    let given: Vec<String> = request
        .components
        .iter()
        .flat_map(|c| {
            c.pcollections
                .keys()
                .chain(c.coders.keys())
                .chain(c.windowing_strategies.keys())
                .chain(c.environments.keys())
                .chain(c.transforms.keys())
        })
        .cloned()
        .collect();
    let namespace = request.namespace.clone();
    let response = expansion::expand(request, "localhost:50000");
    if !response.error.is_empty() {
        return;
    }
    let transform = response
        .transform
        .as_ref()
        .expect("a successful expansion returns its transform");
    let components = response.components.clone().unwrap_or_default();
    // The SDK rebuilds the outputs from the returned components alone.
    for pcoll in transform.outputs.values() {
        assert!(
            components.pcollections.contains_key(pcoll),
            "output PCollection '{pcoll}' is not in the response"
        );
    }
    // SDKs keep only new ids in the request's namespace.
    let prefix = format!("{namespace}_");
    for id in components
        .pcollections
        .keys()
        .chain(components.coders.keys())
        .chain(components.windowing_strategies.keys())
        .chain(components.environments.keys())
        .chain(components.transforms.keys())
    {
        assert!(
            given.contains(id) || id.starts_with(&prefix),
            "new id '{id}' is outside namespace '{namespace}'"
        );
    }
    let _ = response.encode_to_vec();
}
