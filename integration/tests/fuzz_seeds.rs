//! Writes the seed corpus of the fuzz targets (`fuzz/corpus/<target>/`):
//! real encodings of what runners and SDKs send, built with this crate's
//! runner stand-in (written independently of the worker's coders) and the
//! payloads apache-beam 2.77 produced. Ignored: it writes into the
//! repository. Run it after changing an input layout in
//! `worker/src/fuzzing.rs`:
//!
//! ```text
//! cargo test --release -p beam-integration --test fuzz_seeds -- --ignored
//! ```
//!
//! It only adds or overwrites its own named files; inputs the fuzzer added
//! (kept after `cargo fuzz cmin`) stay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use beam_integration::elements::{Window, put_component, put_metadata, put_varint};
use beam_integration::{
    ElementCoder, PortCoder, WindowKind, echo_descriptor, pickled_python_pardo, urns,
};
use beam_proto::expansion::ExpansionRequest;
use beam_proto::fn_execution::{ProcessBundleDescriptor, RemoteGrpcPort};
use beam_proto::pipeline::{
    ApiServiceDescriptor, Coder, Components, ExternalConfigurationPayload, FunctionSpec,
    PCollection, PTransform, ParDoPayload, WindowingStrategy,
};
use beam_rust_worker::fuzzing::{self, FLAG_INTERVAL, FLAG_PARAM};
use beam_rust_worker::kafka;
use bytes::Bytes;
use prost::Message;

/// apache-beam 2.77's `ReadFromKafka(consumer_config={"bootstrap.servers":
/// "h:1"}, topics=["t"])` configuration (also in `kafka/beam_schema.rs`'s tests).
const PYTHON_READ: &str = "0afc020a1d0a0f636f6e73756d65725f636f6e6669671a0a2a080a021007120210070a100a06746f706963731a061a040a0210070a160a106b65795f646573657269616c697a65721a0210070a180a1276616c75655f646573657269616c697a65721a0210070a170a0f73746172745f726561645f74696d651a04080110040a170a0f6d61785f6e756d5f7265636f7264731a04080110040a150a0d6d61785f726561645f74696d651a04080110040a1f0a19636f6d6d69745f6f66667365745f696e5f66696e616c697a651a0210080a160a1074696d657374616d705f706f6c6963791a0210070a200a18636f6e73756d65725f706f6c6c696e675f74696d656f75741a04080110040a140a0c7265646973747269627574651a04080110080a1d0a157265646973747269627574655f6e756d5f6b6579731a04080110030a180a10616c6c6f775f6475706c6963617465731a0408011008122434376434653034392d383763642d343763632d383662622d34363036366236303261623012b0010d0270000000000111626f6f7473747261702e7365727665727303683a310000000101743b6f72672e6170616368652e6b61666b612e636f6d6d6f6e2e73657269616c697a6174696f6e2e427974654172726179446573657269616c697a65723b6f72672e6170616368652e6b61666b612e636f6d6d6f6e2e73657269616c697a6174696f6e2e427974654172726179446573657269616c697a6572000e50726f63657373696e6754696d6502000000";

/// apache-beam 2.77's `WriteToKafka(producer_config={"bootstrap.servers":
/// "h:1"}, topic="o")`.
const PYTHON_WRITE: &str = "0a80010a1d0a0f70726f64756365725f636f6e6669671a0a2a080a021007120210070a0b0a05746f7069631a0210070a140a0e6b65795f73657269616c697a65721a0210070a160a1076616c75655f73657269616c697a65721a021007122439626630396162352d303261342d346263652d383638342d36393738353064303865653812920104000000000111626f6f7473747261702e7365727665727303683a31016f396f72672e6170616368652e6b61666b612e636f6d6d6f6e2e73657269616c697a6174696f6e2e42797465417272617953657269616c697a6572396f72672e6170616368652e6b61666b612e636f6d6d6f6e2e73657269616c697a6174696f6e2e42797465417272617953657269616c697a6572";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus folder");
    dir
}

fn write(target: &str, name: &str, data: &[u8]) {
    // Every seed must pass its own harness, or the corpus replay test fails.
    let harness = fuzzing::TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .expect("a known target")
        .1;
    harness(data);
    std::fs::write(corpus(target).join(name), data).expect("write a seed");
}

// ---- wire_coder ----

/// Indices into `fuzzing::KINDS`.
const BYTES: u8 = 0;
const STRING: u8 = 1;
const VARINT: u8 = 2;
const DOUBLE: u8 = 3;
const BOOL: u8 = 4;
const KV: u8 = 5;
const NULLABLE: u8 = 6;
const LENGTH_PREFIX: u8 = 7;

const T: i64 = 1_454_293_425_000;

fn kv_chunk(meta: &dyn Fn(&mut Vec<u8>), n: usize, nullable: bool, with_meta: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        if with_meta {
            meta(&mut out);
        }
        let key = format!("k{i}");
        let null_key = nullable && i % 2 == 1;
        put_component(&mut out, (!null_key).then_some(key.as_bytes()), nullable);
        put_component(&mut out, Some(&[i as u8; 5]), nullable);
    }
    out
}

fn wire_coder_seeds() {
    let none = [[BYTES, 0, 0]; 6];
    let kv_bytes = [
        [KV, 1, 1],
        [BYTES, 0, 0],
        none[0],
        none[0],
        none[0],
        none[0],
    ];
    let kv_nullable = [
        [KV, 1, 1],
        [NULLABLE, 2, 0],
        [BYTES, 0, 0],
        none[0],
        none[0],
        none[0],
    ];
    let kv_lp = [
        [KV, 1, 1],
        [LENGTH_PREFIX, 2, 0],
        [BYTES, 0, 0],
        none[0],
        none[0],
        none[0],
    ];
    let global = |out: &mut Vec<u8>| put_metadata(out, T, Window::Global, 0x0f);
    let interval = |out: &mut Vec<u8>| {
        put_metadata(
            out,
            T,
            Window::Interval {
                start_millis: T - 60_000,
                end_millis: T,
            },
            0x07,
        )
    };
    // Pane encodings 1 (one varint) and 2 (two varints) after the pane byte.
    let pane_1 = |out: &mut Vec<u8>| {
        put_metadata(out, -5, Window::Global, 0x13);
        put_varint(out, 300);
    };
    let pane_2 = |out: &mut Vec<u8>| {
        put_metadata(out, T, Window::Global, 0x25);
        put_varint(out, 300);
        put_varint(out, 3);
    };
    // Piece size 2^4 = 16 bytes: several pieces per chunk.
    let small = 4 << 4;
    for (name, flags, coders, nullable, meta) in [
        (
            "kv_bytes_global",
            small,
            kv_bytes,
            false,
            &global as &dyn Fn(&mut Vec<u8>),
        ),
        ("kv_nullable_global", small, kv_nullable, true, &global),
        ("kv_length_prefix_global", 0xf0, kv_lp, false, &global),
        (
            "kv_bytes_interval",
            small | FLAG_INTERVAL,
            kv_bytes,
            false,
            &interval,
        ),
        (
            "kv_nullable_interval",
            FLAG_INTERVAL,
            kv_nullable,
            true,
            &interval,
        ),
        ("kv_bytes_pane_index", small, kv_bytes, false, &pane_1),
        (
            "kv_nullable_pane_indices",
            small,
            kv_nullable,
            true,
            &pane_2,
        ),
    ] {
        let data =
            fuzzing::wire_coder_input(flags, &coders, &[], &kv_chunk(meta, 3, nullable, true));
        write("wire_coder", name, &data);
    }
    // param_windowed_value: the metadata is the coder's payload.
    for (name, window, meta, nullable, coders) in [
        (
            "param_kv_bytes_global",
            0,
            &global as &dyn Fn(&mut Vec<u8>),
            false,
            kv_bytes,
        ),
        (
            "param_kv_nullable_interval",
            FLAG_INTERVAL,
            &interval,
            true,
            kv_nullable,
        ),
    ] {
        let mut constant = Vec::new();
        meta(&mut constant);
        let chunk = kv_chunk(meta, 4, nullable, false);
        let data =
            fuzzing::wire_coder_input(small | FLAG_PARAM | window, &coders, &constant, &chunk);
        write("wire_coder", name, &data);
    }
    // An impulse: plain bytes element, the empty byte string.
    let mut impulse = Vec::new();
    global(&mut impulse);
    impulse.push(0);
    write(
        "wire_coder",
        "impulse_bytes",
        &fuzzing::wire_coder_input(0, &none, &[], &impulse),
    );
    // The splittable read's process input, general coder only:
    // KV<KV<varint, KV<KV<varint, varint>, varint>>, double>.
    let sized = [
        [KV, 1, 2],
        [KV, 3, 4],
        [DOUBLE, 0, 0],
        [VARINT, 0, 0],
        [KV, 5, 3],
        [KV, 3, 3],
    ];
    let mut chunk = Vec::new();
    for start in [0i64, 42, -1] {
        global(&mut chunk);
        for v in [7, start, i64::MAX, T] {
            put_varint(&mut chunk, v as u64);
        }
        chunk.extend_from_slice(&1.0f64.to_be_bytes());
    }
    write(
        "wire_coder",
        "sdf_sized_restriction",
        &fuzzing::wire_coder_input(0, &sized, &[], &chunk),
    );
    // KV<nullable(string), length_prefix(KV<bool, bool>)>.
    let mixed = [
        [KV, 1, 2],
        [NULLABLE, 3, 0],
        [LENGTH_PREFIX, 4, 0],
        [STRING, 0, 0],
        [KV, 5, 5],
        [BOOL, 0, 0],
    ];
    let mut chunk = Vec::new();
    for key in [Some(&b"topic/0"[..]), None] {
        global(&mut chunk);
        put_component(&mut chunk, key, true);
        chunk.extend_from_slice(&[2, 1, 0]);
    }
    write(
        "wire_coder",
        "nullable_string_length_prefixed_bools",
        &fuzzing::wire_coder_input(0, &mixed, &[], &chunk),
    );
}

// ---- row ----

fn row_of(payload: &str) -> Vec<u8> {
    ExternalConfigurationPayload::decode(&hex(payload)[..])
        .expect("a payload")
        .payload
        .to_vec()
}

fn prefixed(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(rest);
    out
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn row_seeds() {
    write("row", "payload_beam_read", &prefixed(0, &hex(PYTHON_READ)));
    write(
        "row",
        "payload_beam_write",
        &prefixed(0, &hex(PYTHON_WRITE)),
    );
    write("row", "beam_read_row", &prefixed(1, &row_of(PYTHON_READ)));
    write("row", "beam_write_row", &prefixed(2, &row_of(PYTHON_WRITE)));
    // A Row of fuzzing::all_types_schema: every field set but the FLOAT and
    // the untyped one (null bits 11 and 12).
    let mut row = Vec::new();
    put_varint(&mut row, 13);
    row.extend_from_slice(&[2, 0x00, 0x18]);
    put_varint(&mut row, (-7i64) as u64); // int64
    put_varint(&mut row, 5); // int32
    put_varint(&mut row, 300); // int16
    row.push(0xfe); // byte
    row.push(1); // boolean
    row.extend_from_slice(&2.5f64.to_be_bytes());
    put_string(&mut row, "ProcessingTime");
    put_varint(&mut row, 3);
    row.extend_from_slice(b"\x00\x01\x02");
    // strings: [ "t1", null ]
    row.extend_from_slice(&2u32.to_be_bytes());
    row.push(1);
    put_string(&mut row, "t1");
    row.push(0);
    // iterable of arrays of int64: [[1, 2], []]
    row.extend_from_slice(&2u32.to_be_bytes());
    row.extend_from_slice(&2u32.to_be_bytes());
    row.extend_from_slice(&[1, 2]);
    row.extend_from_slice(&0u32.to_be_bytes());
    // map: {"a": b"x", "b": null}
    row.extend_from_slice(&2u32.to_be_bytes());
    put_string(&mut row, "a");
    row.push(1);
    put_string(&mut row, "x");
    put_string(&mut row, "b");
    row.push(0);
    write("row", "all_types_row", &prefixed(3, &row));
}

// ---- plan ----

const DATA_URL: &str = "localhost:12345";

fn coder(urn: &str, components: &[&str]) -> Coder {
    Coder {
        spec: Some(FunctionSpec {
            urn: urn.into(),
            payload: Bytes::new(),
        }),
        component_coder_ids: components.iter().map(|s| s.to_string()).collect(),
    }
}

fn port(coder_id: &str) -> Bytes {
    RemoteGrpcPort {
        api_service_descriptor: Some(ApiServiceDescriptor {
            url: DATA_URL.into(),
            authentication: None,
        }),
        coder_id: coder_id.into(),
    }
    .encode_to_vec()
    .into()
}

fn transform(urn: &str, payload: Bytes, input: Option<&str>, output: Option<&str>) -> PTransform {
    PTransform {
        spec: Some(FunctionSpec {
            urn: urn.into(),
            payload,
        }),
        inputs: input
            .map(|pc| HashMap::from([("in".to_string(), pc.to_string())]))
            .unwrap_or_default(),
        outputs: output
            .map(|pc| HashMap::from([("out".to_string(), pc.to_string())]))
            .unwrap_or_default(),
        unique_name: format!("{urn}:{}", output.or(input).unwrap_or("")),
        ..Default::default()
    }
}

/// A ParDo of ours (or a step of the splittable one): `step_urn` running `dofn`.
fn pardo(
    step_urn: &str,
    dofn: &str,
    config: &[u8],
    restriction: &str,
    input: &str,
    output: Option<&str>,
) -> PTransform {
    let payload = ParDoPayload {
        do_fn: Some(FunctionSpec {
            urn: dofn.into(),
            payload: Bytes::copy_from_slice(config),
        }),
        restriction_coder_id: restriction.into(),
        ..Default::default()
    };
    transform(
        step_urn,
        payload.encode_to_vec().into(),
        Some(input),
        output,
    )
}

/// A stage the way runners cut the Kafka pipelines: coders as our expansion
/// declares them, the runner's ports around our transforms.
fn kafka_descriptor(
    id: &str,
    transforms: Vec<(&str, PTransform)>,
    pcollections: &[(&str, &str)],
) -> ProcessBundleDescriptor {
    let coders = HashMap::from([
        ("bytes".to_string(), coder(urns::BYTES_CODER, &[])),
        (
            "nbytes".to_string(),
            coder(urns::NULLABLE_CODER, &["bytes"]),
        ),
        (
            "kv".to_string(),
            coder(urns::KV_CODER, &["nbytes", "nbytes"]),
        ),
        ("gw".to_string(), coder(urns::GLOBAL_WINDOW_CODER, &[])),
        ("varint".to_string(), coder("beam:coder:varint:v1", &[])),
        ("double".to_string(), coder("beam:coder:double:v1", &[])),
        (
            "range".to_string(),
            coder(urns::KV_CODER, &["varint", "varint"]),
        ),
        (
            "restriction".to_string(),
            coder(urns::KV_CODER, &["range", "varint"]),
        ),
        (
            "paired".to_string(),
            coder(urns::KV_CODER, &["bytes", "restriction"]),
        ),
        (
            "sized".to_string(),
            coder(urns::KV_CODER, &["paired", "double"]),
        ),
        (
            "wv_bytes".to_string(),
            coder(urns::WINDOWED_VALUE_CODER, &["bytes", "gw"]),
        ),
        (
            "wv_kv".to_string(),
            coder(urns::WINDOWED_VALUE_CODER, &["kv", "gw"]),
        ),
        (
            "wv_sized".to_string(),
            coder(urns::WINDOWED_VALUE_CODER, &["sized", "gw"]),
        ),
    ]);
    ProcessBundleDescriptor {
        id: id.into(),
        transforms: transforms
            .into_iter()
            .map(|(id, t)| (id.to_string(), t))
            .collect(),
        pcollections: pcollections
            .iter()
            .map(|(id, coder_id)| {
                (
                    id.to_string(),
                    PCollection {
                        unique_name: id.to_string(),
                        coder_id: coder_id.to_string(),
                        is_bounded: 1,
                        windowing_strategy_id: "global".into(),
                    },
                )
            })
            .collect(),
        windowing_strategies: HashMap::from([(
            "global".to_string(),
            WindowingStrategy {
                window_coder_id: "gw".into(),
                ..Default::default()
            },
        )]),
        coders,
        environments: HashMap::new(),
        state_api_service_descriptor: None,
        timer_api_service_descriptor: None,
    }
}

/// The descriptor's bytes, once the worker has planned it: these seeds are
/// stages it runs.
fn plans(descriptor: ProcessBundleDescriptor) -> Vec<u8> {
    if let Err(e) = beam_rust_worker::graph::build(&descriptor) {
        panic!("seed descriptor {} does not plan: {e}", descriptor.id);
    }
    descriptor.encode_to_vec()
}

fn plan_seeds() {
    let read = hex(PYTHON_READ);
    let write_config = hex(PYTHON_WRITE);
    let echo = |id: &str, coder: PortCoder| echo_descriptor(id, DATA_URL, coder).descriptor;
    for (name, coder) in [
        ("echo_kv_bytes", PortCoder::kv_bytes()),
        ("echo_kv_nullable", PortCoder::kv_nullable_bytes()),
        (
            "echo_length_prefix_interval",
            PortCoder::windowed(ElementCoder::KvLengthPrefixBytes, WindowKind::Interval),
        ),
        (
            "echo_param",
            PortCoder::param(ElementCoder::KvBytes, T, Window::Global, 0x0f),
        ),
    ] {
        write("plan", name, &plans(echo(name, coder)));
    }
    let recode = beam_integration::EchoDescriptor::builder("recode", DATA_URL)
        .input_coder(PortCoder::kv_nullable_bytes())
        .output_coder(PortCoder::kv_bytes())
        .build();
    write("plan", "echo_recode", &plans(recode.descriptor));
    let python = beam_integration::EchoDescriptor::builder("python", DATA_URL)
        .extra_transform("map", pickled_python_pardo("pc2", "pc3"))
        .build();
    write(
        "plan",
        "echo_and_python_map",
        &python.descriptor.encode_to_vec(),
    );

    let bounded = kafka_descriptor(
        "kafka_bounded",
        vec![
            (
                "source",
                transform(urns::SOURCE, port("wv_bytes"), None, Some("impulse")),
            ),
            (
                "read",
                pardo(
                    urns::PARDO,
                    kafka::KAFKA_READ_URN,
                    &read,
                    "",
                    "impulse",
                    Some("records"),
                ),
            ),
            (
                "echo",
                transform(urns::KV_ECHO, Bytes::new(), Some("records"), Some("echoed")),
            ),
            (
                "write",
                pardo(
                    urns::PARDO,
                    kafka::KAFKA_WRITE_URN,
                    &write_config,
                    "",
                    "echoed",
                    Some("written"),
                ),
            ),
            (
                "sink",
                transform(urns::SINK, port("wv_kv"), Some("echoed"), None),
            ),
        ],
        &[
            ("impulse", "bytes"),
            ("records", "kv"),
            ("echoed", "kv"),
            ("written", "bytes"),
        ],
    );
    write("plan", "kafka_read_echo_write", &plans(bounded));
    let partitions = kafka_descriptor(
        "kafka_partitions",
        vec![
            (
                "source",
                transform(urns::SOURCE, port("wv_bytes"), None, Some("impulse")),
            ),
            (
                "partitions",
                pardo(
                    urns::PARDO,
                    kafka::KAFKA_PARTITIONS_URN,
                    &read,
                    "",
                    "impulse",
                    Some("partitions"),
                ),
            ),
            (
                "pair",
                pardo(
                    "beam:transform:sdf_pair_with_restriction:v1",
                    kafka::KAFKA_READ_PARTITION_URN,
                    &read,
                    "restriction",
                    "partitions",
                    Some("paired"),
                ),
            ),
            (
                "split",
                pardo(
                    "beam:transform:sdf_split_and_size_restrictions:v1",
                    kafka::KAFKA_READ_PARTITION_URN,
                    &read,
                    "restriction",
                    "paired",
                    Some("sized"),
                ),
            ),
            (
                "sink",
                transform(urns::SINK, port("wv_sized"), Some("sized"), None),
            ),
        ],
        &[
            ("impulse", "bytes"),
            ("partitions", "bytes"),
            ("paired", "paired"),
            ("sized", "sized"),
        ],
    );
    write("plan", "kafka_sdf_partitions", &plans(partitions));
    let process = kafka_descriptor(
        "kafka_process",
        vec![
            (
                "source",
                transform(urns::SOURCE, port("wv_sized"), None, Some("sized")),
            ),
            (
                "process",
                pardo(
                    "beam:transform:sdf_process_sized_element_and_restrictions:v1",
                    kafka::KAFKA_READ_PARTITION_URN,
                    &read,
                    "restriction",
                    "sized",
                    Some("records"),
                ),
            ),
            (
                "write",
                pardo(
                    urns::PARDO,
                    kafka::KAFKA_WRITE_URN,
                    &write_config,
                    "",
                    "records",
                    Some("written"),
                ),
            ),
        ],
        &[("sized", "sized"), ("records", "kv"), ("written", "bytes")],
    );
    write("plan", "kafka_sdf_process_write", &plans(process));
}

// ---- expansion ----

fn expansion_components() -> Components {
    let coders = HashMap::from([
        ("c_bytes".to_string(), coder(urns::BYTES_CODER, &[])),
        (
            "c_nbytes".to_string(),
            coder(urns::NULLABLE_CODER, &["c_bytes"]),
        ),
        (
            "c_kv".to_string(),
            coder(urns::KV_CODER, &["c_bytes", "c_bytes"]),
        ),
        (
            "c_kvn".to_string(),
            coder(urns::KV_CODER, &["c_nbytes", "c_nbytes"]),
        ),
        ("c_gw".to_string(), coder(urns::GLOBAL_WINDOW_CODER, &[])),
    ]);
    let pcollection = |coder_id: &str| PCollection {
        unique_name: format!("Create/{coder_id}"),
        coder_id: coder_id.into(),
        is_bounded: 1,
        windowing_strategy_id: "ws_global".into(),
    };
    Components {
        transforms: HashMap::new(),
        pcollections: HashMap::from([
            ("pc_kv".to_string(), pcollection("c_kv")),
            ("pc_kvn".to_string(), pcollection("c_kvn")),
        ]),
        windowing_strategies: HashMap::from([(
            "ws_global".to_string(),
            WindowingStrategy {
                window_coder_id: "c_gw".into(),
                ..Default::default()
            },
        )]),
        coders,
        environments: HashMap::new(),
    }
}

fn expansion_seeds() {
    let request = |urn: &str, payload: Vec<u8>, input: Option<&str>| {
        ExpansionRequest {
            components: Some(expansion_components()),
            transform: Some(PTransform {
                spec: Some(FunctionSpec {
                    urn: urn.into(),
                    payload: payload.into(),
                }),
                inputs: input
                    .map(|pc| HashMap::from([("input".to_string(), pc.to_string())]))
                    .unwrap_or_default(),
                outputs: HashMap::from([("output".to_string(), "placeholder".to_string())]),
                unique_name: "Step".into(),
                ..Default::default()
            }),
            namespace: "external_1".into(),
            output_coder_requests: HashMap::new(),
        }
        .encode_to_vec()
    };
    let read = hex(PYTHON_READ);
    let write_config = hex(PYTHON_WRITE);
    for (name, data) in [
        ("kv_echo", request(urns::KV_ECHO, Vec::new(), Some("pc_kv"))),
        (
            "kv_echo_nullable",
            request(urns::KV_ECHO, Vec::new(), Some("pc_kvn")),
        ),
        (
            "kafka_read",
            request(kafka::KAFKA_READ_URN, read.clone(), None),
        ),
        (
            "kafka_write",
            request(kafka::KAFKA_WRITE_URN, write_config.clone(), Some("pc_kvn")),
        ),
        (
            "beam_kafka_read",
            request(kafka::BEAM_KAFKA_READ_URN, read, None),
        ),
        (
            "beam_kafka_write",
            request(kafka::BEAM_KAFKA_WRITE_URN, write_config, Some("pc_kv")),
        ),
        (
            "unknown_urn",
            request("beam:transform:unknown:v1", Vec::new(), Some("pc_kv")),
        ),
    ] {
        let expanded = beam_rust_worker::expansion::expand(
            ExpansionRequest::decode(&data[..]).expect("a request"),
            "localhost:50000",
        );
        assert_eq!(
            expanded.error.is_empty(),
            name != "unknown_urn",
            "{name}: {}",
            expanded.error
        );
        write("expansion", name, &data);
    }
}

#[test]
#[ignore = "writes the seed corpus into fuzz/corpus; run it on purpose"]
fn write_fuzz_seed_corpus() {
    wire_coder_seeds();
    row_seeds();
    plan_seeds();
    expansion_seeds();
}
