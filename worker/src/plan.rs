//! Turns a `ProcessBundleDescriptor` into a [`StagePlan`]: which runner ports feed
//! which, with which wire coders, and whether a chunk can be forwarded untouched.
//!
//! Every transform in the descriptor is checked up front, so a stage holding
//! anything this worker cannot run is refused with one message naming all of it.

use std::collections::{HashMap, HashSet, VecDeque};

use beam_proto::fn_execution::{ProcessBundleDescriptor, RemoteGrpcPort};
use beam_proto::pipeline::{FunctionSpec, PTransform, ParDoPayload};
use prost::Message;

use crate::coders::{CoderResolveError, ElementCoder, Framing, WindowCoder, WireCoder};
use crate::kafka::{KAFKA_READ_URN, KAFKA_WRITE_URN, KafkaError, ReadConfig, WriteConfig};
use crate::transforms::{KV_ECHO_URN, SUPPORTED_TRANSFORMS};

pub const SOURCE_URN: &str = "beam:runner:source:v1";
pub const SINK_URN: &str = "beam:runner:sink:v1";
pub const PARDO_URN: &str = "beam:transform:pardo:v1";

/// Why a descriptor cannot be run here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlanError {
    #[error(
        "this worker cannot run {}; it runs only {} between the runner's data ports \
         ({SOURCE_URN}, {SINK_URN})",
        .0.join(", "),
        SUPPORTED_TRANSFORMS.join(", ")
    )]
    UnsupportedTransforms(Vec<String>),
    #[error("transform '{id}' is malformed: {why}")]
    Malformed { id: String, why: String },
    #[error("transform '{id}': {source}")]
    Coder {
        id: String,
        #[source]
        source: CoderResolveError,
    },
    #[error("transform '{id}': {source}")]
    Config {
        id: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "sink '{sink}' uses a {sink_window:?} window coder but its input arrives with \
         {source_window:?}; the echo cannot change windows"
    )]
    WindowMismatch {
        sink: String,
        source_window: crate::coders::WindowCoder,
        sink_window: crate::coders::WindowCoder,
    },
}

/// A runner data port: where its bytes travel and how they are encoded.
#[derive(Debug, Clone)]
pub struct Port {
    pub transform_id: String,
    pub data_url: String,
    pub wire: WireCoder,
}

/// Elements entering the stage at one point (a runner source or a Kafka read),
/// all encoded with `wire`, and everywhere they go from there.
#[derive(Debug, Clone)]
pub struct Stream {
    pub wire: WireCoder,
    /// PCollections every element passes through (the echo is the identity), for element counts.
    pub pcollections: Vec<String>,
    pub routes: Vec<Route>,
}

/// Where a stream's elements end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A runner sink (index into [`StagePlan::sinks`]); `pass_through` when both
    /// ends encode identically, so chunks are forwarded without decoding.
    Sink { sink: usize, pass_through: bool },
    /// A Kafka write (index into [`StagePlan::writes`]).
    Write(usize),
    /// Each element starts a Kafka read (index into [`StagePlan::reads`]).
    Read(usize),
}

/// One `beam:runner:source:v1`.
#[derive(Debug, Clone)]
pub struct InputPlan {
    pub port: Port,
    pub stream: Stream,
}

/// One Kafka read; its records form a stream of their own.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    pub transform_id: String,
    pub config: ReadConfig,
    pub stream: Stream,
}

/// One Kafka write.
#[derive(Debug, Clone)]
pub struct WritePlan {
    pub transform_id: String,
    pub config: WriteConfig,
}

/// An executable stage.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub descriptor_id: String,
    pub inputs: Vec<InputPlan>,
    pub reads: Vec<ReadPlan>,
    pub writes: Vec<WritePlan>,
    /// Every sink gets `is_last` at bundle end, whether or not anything reaches it.
    pub sinks: Vec<Port>,
}

impl StagePlan {
    /// Data URLs the stage reads its input from, each once.
    pub fn input_urls(&self) -> Vec<&str> {
        let mut urls: Vec<&str> = self
            .inputs
            .iter()
            .map(|i| i.port.data_url.as_str())
            .collect();
        urls.sort_unstable();
        urls.dedup();
        urls
    }
}

enum Kind {
    Source,
    Sink,
    Echo,
    Read(ReadConfig),
    Write(WriteConfig),
}

/// Builds the plan, or says everything that stops this descriptor from running.
pub fn build(descriptor: &ProcessBundleDescriptor) -> Result<StagePlan, PlanError> {
    let kinds = classify_all(descriptor)?;
    let ids_of = |want: fn(&Kind) -> bool| {
        let mut ids: Vec<&str> = kinds
            .iter()
            .filter(|(_, k)| want(k))
            .map(|(id, _)| id.as_str())
            .collect();
        ids.sort_unstable();
        ids
    };
    let sink_ids = ids_of(|k| matches!(k, Kind::Sink));
    let read_ids = ids_of(|k| matches!(k, Kind::Read(_)));
    let write_ids = ids_of(|k| matches!(k, Kind::Write(_)));
    let sinks = sink_ids
        .iter()
        .map(|id| read_port(id, &descriptor.transforms[*id], descriptor))
        .collect::<Result<Vec<_>, _>>()?;
    let graph = Graph {
        descriptor,
        kinds: &kinds,
        consumers: consumers(descriptor),
        sinks: &sinks,
        sink_index: index(&sink_ids),
        read_index: index(&read_ids),
        write_index: index(&write_ids),
    };

    let mut inputs = Vec::new();
    for id in ids_of(|k| matches!(k, Kind::Source)) {
        let t = &descriptor.transforms[id];
        let port = read_port(id, t, descriptor)?;
        let stream = graph.stream(single(id, "output", &t.outputs)?, &port.wire)?;
        inputs.push(InputPlan { port, stream });
    }
    let mut reads = Vec::new();
    for id in read_ids {
        let t = &descriptor.transforms[id];
        let Kind::Read(config) = &kinds[&id.to_owned()] else {
            continue;
        };
        let output = single(id, "output", &t.outputs)?;
        let wire = record_wire(id, output, descriptor)?;
        reads.push(ReadPlan {
            transform_id: id.to_owned(),
            config: config.clone(),
            stream: graph.stream(output, &wire)?,
        });
    }
    let writes = write_ids
        .iter()
        .filter_map(|id| match &kinds[&id.to_string()] {
            Kind::Write(config) => Some(WritePlan {
                transform_id: id.to_string(),
                config: config.clone(),
            }),
            _ => None,
        })
        .collect();
    Ok(StagePlan {
        descriptor_id: descriptor.id.clone(),
        inputs,
        reads,
        writes,
        sinks,
    })
}

fn index<'a>(ids: &[&'a str]) -> HashMap<&'a str, usize> {
    ids.iter().enumerate().map(|(i, id)| (*id, i)).collect()
}

fn consumers(descriptor: &ProcessBundleDescriptor) -> HashMap<&str, Vec<&str>> {
    let mut consumers: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, t) in &descriptor.transforms {
        for pcoll in t.inputs.values() {
            consumers
                .entry(pcoll.as_str())
                .or_default()
                .push(id.as_str());
        }
    }
    consumers
}

/// Kafka records travel inside the stage in KafkaIO's shape: a windowed value in
/// the global window whose element is the read's output `kv` coder.
fn record_wire(
    id: &str,
    output: &str,
    d: &ProcessBundleDescriptor,
) -> Result<WireCoder, PlanError> {
    let coder_id = d
        .pcollections
        .get(output)
        .map(|p| p.coder_id.as_str())
        .ok_or_else(|| PlanError::Malformed {
            id: id.to_owned(),
            why: format!("its output PCollection '{output}' is not in the descriptor"),
        })?;
    let (key, value) =
        crate::coders::resolve_kv(coder_id, &d.coders).map_err(|source| PlanError::Coder {
            id: id.to_owned(),
            source,
        })?;
    Ok(WireCoder {
        framing: Framing::Windowed,
        window: WindowCoder::Global,
        element: ElementCoder::Kv { key, value },
    })
}

/// The stage's transforms and how they connect, for walking streams.
struct Graph<'a> {
    descriptor: &'a ProcessBundleDescriptor,
    kinds: &'a HashMap<&'a String, Kind>,
    consumers: HashMap<&'a str, Vec<&'a str>>,
    sinks: &'a [Port],
    sink_index: HashMap<&'a str, usize>,
    read_index: HashMap<&'a str, usize>,
    write_index: HashMap<&'a str, usize>,
}

impl Graph<'_> {
    /// Follows elements from `start` through echoes to where they leave the stage.
    fn stream(&self, start: &str, wire: &WireCoder) -> Result<Stream, PlanError> {
        let mut stream = Stream {
            wire: wire.clone(),
            pcollections: Vec::new(),
            routes: Vec::new(),
        };
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([start.to_owned()]);
        while let Some(pcoll) = queue.pop_front() {
            if !seen.insert(pcoll.clone()) {
                continue;
            }
            for consumer in self.consumers.get(pcoll.as_str()).into_iter().flatten() {
                let needs_kv = || {
                    if wire.kv().is_none() {
                        return Err(PlanError::Malformed {
                            id: consumer.to_string(),
                            why: format!("it needs KV elements but receives {wire}"),
                        });
                    }
                    Ok(())
                };
                match &self.kinds[&consumer.to_string()] {
                    Kind::Echo => {
                        needs_kv()?;
                        let t = &self.descriptor.transforms[*consumer];
                        queue.push_back(single(consumer, "output", &t.outputs)?.to_owned());
                    }
                    Kind::Sink => {
                        let sink = self.sink_index[consumer];
                        stream
                            .routes
                            .push(route(consumer, wire, &self.sinks[sink], sink)?);
                    }
                    Kind::Write(_) => {
                        needs_kv()?;
                        stream.routes.push(Route::Write(self.write_index[consumer]));
                    }
                    Kind::Read(_) => stream.routes.push(Route::Read(self.read_index[consumer])),
                    Kind::Source => {}
                }
            }
            stream.pcollections.push(pcoll);
        }
        Ok(stream)
    }
}

fn route(sink_id: &str, wire: &WireCoder, sink: &Port, index: usize) -> Result<Route, PlanError> {
    let pass_through = wire.same_encoding(&sink.wire);
    if !pass_through && wire.window != sink.wire.window {
        return Err(PlanError::WindowMismatch {
            sink: sink_id.to_owned(),
            source_window: wire.window,
            sink_window: sink.wire.window,
        });
    }
    if !pass_through && wire.kv().is_some() != sink.wire.kv().is_some() {
        return Err(PlanError::Malformed {
            id: sink_id.to_owned(),
            why: format!("it expects {} but receives {wire}", sink.wire),
        });
    }
    Ok(Route::Sink {
        sink: index,
        pass_through,
    })
}

/// Classifies every transform, collecting all that cannot run into one error.
fn classify_all(descriptor: &ProcessBundleDescriptor) -> Result<HashMap<&String, Kind>, PlanError> {
    let mut kinds = HashMap::new();
    let mut unsupported = Vec::new();
    let mut ids: Vec<&String> = descriptor.transforms.keys().collect();
    ids.sort();
    for id in ids {
        let t = &descriptor.transforms[id];
        let spec = native_spec(t);
        let config_error = |source: KafkaError| PlanError::Config {
            id: id.clone(),
            source,
        };
        let kind = match spec.urn.as_str() {
            SOURCE_URN => Kind::Source,
            SINK_URN => Kind::Sink,
            KV_ECHO_URN => {
                single(id, "input", &t.inputs)?;
                single(id, "output", &t.outputs)?;
                Kind::Echo
            }
            KAFKA_READ_URN => {
                Kind::Read(ReadConfig::from_payload(&spec.payload).map_err(config_error)?)
            }
            KAFKA_WRITE_URN => {
                single(id, "input", &t.inputs)?;
                Kind::Write(WriteConfig::from_payload(&spec.payload).map_err(config_error)?)
            }
            // A composite's parts are listed on their own; the composite itself runs nothing.
            _ if !t.subtransforms.is_empty() => continue,
            urn => {
                unsupported.push(describe(id, t, urn));
                continue;
            }
        };
        kinds.insert(id, kind);
    }
    if unsupported.is_empty() {
        Ok(kinds)
    } else {
        Err(PlanError::UnsupportedTransforms(unsupported))
    }
}

/// The spec that says what a transform runs. Our expansion service sends our
/// transforms as ParDos whose DoFn spec carries our URN and configuration
/// (Flink's fuser drops leaves with URNs it does not know as primitives);
/// pipelines expanded before that carry our URN on the transform itself.
fn native_spec(t: &PTransform) -> FunctionSpec {
    let spec = t.spec.clone().unwrap_or_default();
    if spec.urn != PARDO_URN {
        return spec;
    }
    match ParDoPayload::decode(spec.payload.clone()).map(|p| p.do_fn) {
        Ok(Some(do_fn)) if NATIVE_DOFN_URNS.contains(&do_fn.urn.as_str()) => do_fn,
        _ => spec,
    }
}

/// The URN of what a transform runs: ours for our ParDos, else its own.
pub fn runs(t: &PTransform) -> String {
    native_spec(t).urn
}

/// DoFn URNs this worker runs when they arrive inside a ParDo.
const NATIVE_DOFN_URNS: [&str; 3] = [KV_ECHO_URN, KAFKA_READ_URN, KAFKA_WRITE_URN];

/// `'Map(f)' (id t1, beam:transform:pardo:v1 running beam:dofn:pickled_python_info:v1)`.
fn describe(id: &str, t: &PTransform, urn: &str) -> String {
    let urn = if urn.is_empty() { "no URN" } else { urn };
    let name = if t.unique_name.is_empty() {
        format!("'{id}'")
    } else {
        format!("'{}' (id {id})", t.unique_name)
    };
    let dofn = (urn == PARDO_URN)
        .then_some(t.spec.as_ref())
        .flatten()
        .and_then(|s| ParDoPayload::decode(s.payload.clone()).ok())
        .and_then(|p| p.do_fn)
        .map(|f| format!(" running {}", f.urn))
        .unwrap_or_default();
    format!("{name} [{urn}{dofn}]")
}

fn read_port(id: &str, t: &PTransform, d: &ProcessBundleDescriptor) -> Result<Port, PlanError> {
    let malformed = |why: String| PlanError::Malformed {
        id: id.to_owned(),
        why,
    };
    let payload = t
        .spec
        .as_ref()
        .map(|s| s.payload.clone())
        .unwrap_or_default();
    let port = RemoteGrpcPort::decode(payload)
        .map_err(|e| malformed(format!("its RemoteGrpcPort payload does not decode: {e}")))?;
    let data_url = port
        .api_service_descriptor
        .map(|a| a.url)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| malformed("its RemoteGrpcPort has no data endpoint url".into()))?;
    let wire =
        WireCoder::resolve(&port.coder_id, &d.coders).map_err(|source| PlanError::Coder {
            id: id.to_owned(),
            source,
        })?;
    Ok(Port {
        transform_id: id.to_owned(),
        data_url,
        wire,
    })
}

fn single<'a>(
    id: &str,
    what: &str,
    map: &'a HashMap<String, String>,
) -> Result<&'a str, PlanError> {
    let mut values = map.values();
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v.as_str()),
        _ => Err(PlanError::Malformed {
            id: id.to_owned(),
            why: format!("expected exactly one {what}, found {}", map.len()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beam_proto::pipeline::{ApiServiceDescriptor, Coder, FunctionSpec};

    fn spec(urn: &str, payload: Vec<u8>) -> Option<FunctionSpec> {
        Some(FunctionSpec {
            urn: urn.into(),
            payload: payload.into(),
        })
    }

    fn port_payload(coder: &str) -> Vec<u8> {
        RemoteGrpcPort {
            api_service_descriptor: Some(ApiServiceDescriptor {
                url: "localhost:1".into(),
                authentication: None,
            }),
            coder_id: coder.into(),
        }
        .encode_to_vec()
    }

    fn transform(urn: &str, payload: Vec<u8>, inputs: &[&str], outputs: &[&str]) -> PTransform {
        let map = |v: &[&str]| {
            v.iter()
                .enumerate()
                .map(|(i, p)| (format!("i{i}"), p.to_string()))
                .collect()
        };
        PTransform {
            spec: spec(urn, payload),
            inputs: map(inputs),
            outputs: map(outputs),
            ..Default::default()
        }
    }

    fn coder(urn: &str, components: &[&str]) -> Coder {
        Coder {
            spec: spec(urn, vec![]),
            component_coder_ids: components.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn descriptor(sink_coder: &str, extra: Option<PTransform>) -> ProcessBundleDescriptor {
        let mut d = ProcessBundleDescriptor {
            id: "d1".into(),
            ..Default::default()
        };
        d.transforms.insert(
            "fn/read/a".into(),
            transform(SOURCE_URN, port_payload("wv"), &[], &["a"]),
        );
        d.transforms.insert(
            "echo".into(),
            transform(KV_ECHO_URN, vec![], &["a"], &["b"]),
        );
        d.transforms.insert(
            "fn/write/b".into(),
            transform(SINK_URN, port_payload(sink_coder), &["b"], &[]),
        );
        if let Some(t) = extra {
            d.transforms.insert("extra".into(), t);
        }
        for (id, c) in [
            ("bytes", coder("beam:coder:bytes:v1", &[])),
            ("nbytes", coder("beam:coder:nullable:v1", &["bytes"])),
            ("kv", coder("beam:coder:kv:v1", &["bytes", "bytes"])),
            ("kvn", coder("beam:coder:kv:v1", &["nbytes", "bytes"])),
            ("gw", coder("beam:coder:global_window:v1", &[])),
            ("iw", coder("beam:coder:interval_window:v1", &[])),
            ("wv", coder("beam:coder:windowed_value:v1", &["kv", "gw"])),
            ("wvn", coder("beam:coder:windowed_value:v1", &["kvn", "gw"])),
            ("wvi", coder("beam:coder:windowed_value:v1", &["kv", "iw"])),
        ] {
            d.coders.insert(id.into(), c);
        }
        d
    }

    #[test]
    fn echo_stage_routes_source_to_sink_untouched() {
        let plan = build(&descriptor("wv", None)).unwrap();
        assert_eq!(plan.inputs.len(), 1);
        assert_eq!(plan.sinks.len(), 1);
        let input = &plan.inputs[0];
        assert_eq!(input.port.transform_id, "fn/read/a");
        assert_eq!(input.stream.pcollections, ["a", "b"]);
        assert_eq!(
            input.stream.routes,
            [Route::Sink {
                sink: 0,
                pass_through: true
            }]
        );
        assert_eq!(plan.input_urls(), ["localhost:1"]);
    }

    /// What our expansion service sends since Flink: the echo as a ParDo whose
    /// DoFn spec is ours.
    #[test]
    fn echo_inside_a_pardo_is_ours() {
        let pardo = ParDoPayload {
            do_fn: spec(KV_ECHO_URN, vec![]),
            requests_finalization: false,
        };
        let mut d = descriptor("wv", None);
        d.transforms.get_mut("echo").unwrap().spec = spec(PARDO_URN, pardo.encode_to_vec());
        let plan = build(&d).unwrap();
        assert_eq!(
            plan.inputs[0].stream.routes,
            [Route::Sink {
                sink: 0,
                pass_through: true
            }]
        );
    }

    #[test]
    fn different_wire_coders_recode() {
        let plan = build(&descriptor("wvn", None)).unwrap();
        assert_eq!(
            plan.inputs[0].stream.routes,
            [Route::Sink {
                sink: 0,
                pass_through: false
            }]
        );
        let err = build(&descriptor("wvi", None)).unwrap_err();
        assert!(matches!(err, PlanError::WindowMismatch { .. }), "{err}");
    }

    #[test]
    fn pickled_python_dofn_is_named() {
        let pardo = ParDoPayload {
            do_fn: spec("beam:dofn:pickled_python_info:v1", vec![]),
            requests_finalization: false,
        };
        let mut t = transform(PARDO_URN, pardo.encode_to_vec(), &["b"], &["c"]);
        t.unique_name = "Map(<lambda>)".into();
        let err = build(&descriptor("wv", Some(t))).unwrap_err().to_string();
        assert!(err.contains("'Map(<lambda>)' (id extra)"), "{err}");
        assert!(err.contains("beam:dofn:pickled_python_info:v1"), "{err}");
        assert!(err.contains(KV_ECHO_URN), "{err}");
    }

    #[test]
    fn bad_ports_are_malformed_not_panics() {
        let mut d = descriptor("wv", None);
        d.transforms.get_mut("fn/read/a").unwrap().spec = spec(SOURCE_URN, vec![0xff, 0xff]);
        assert!(matches!(build(&d), Err(PlanError::Malformed { .. })));
        let mut d = descriptor("missing-coder", None);
        d.id = "x".into();
        assert!(matches!(build(&d), Err(PlanError::Coder { .. })));
    }

    /// The stage Beam's runner sends for ReadFromKafka -> KvEcho -> WriteToKafka.
    #[test]
    fn fused_kafka_stage_routes_impulse_to_read_to_write() {
        use crate::row::Value;
        use crate::row::testing::{payload, str_list, str_map};
        let servers = || str_map(&[("bootstrap.servers", "h:1")]);
        let read = payload(&[
            ("consumer_config", servers()),
            ("topics", str_list(&["in"])),
        ]);
        let write = payload(&[
            ("producer_config", servers()),
            ("topic", Value::Str("out".into())),
        ]);
        let mut d = descriptor("wv", None);
        d.transforms.clear();
        d.coders.insert(
            "wvb".into(),
            coder("beam:coder:windowed_value:v1", &["bytes", "gw"]),
        );
        d.transforms.insert(
            "impulse".into(),
            transform(SOURCE_URN, port_payload("wvb"), &[], &["imp"]),
        );
        d.transforms.insert(
            "read".into(),
            transform(KAFKA_READ_URN, read, &["imp"], &["recs"]),
        );
        d.transforms.insert(
            "echo".into(),
            transform(KV_ECHO_URN, vec![], &["recs"], &["echoed"]),
        );
        d.transforms.insert(
            "write".into(),
            transform(KAFKA_WRITE_URN, write, &["echoed"], &["done"]),
        );
        d.pcollections.insert(
            "recs".into(),
            beam_proto::pipeline::PCollection {
                coder_id: "kvn".into(),
                ..Default::default()
            },
        );
        let plan = build(&d).unwrap();
        assert!(plan.sinks.is_empty());
        assert_eq!(plan.inputs[0].stream.routes, [Route::Read(0)]);
        assert_eq!(plan.reads[0].stream.routes, [Route::Write(0)]);
        assert_eq!(plan.reads[0].stream.pcollections, ["recs", "echoed"]);
        assert_eq!(plan.writes[0].config.topic, "out");
        // Echoing the impulse's plain bytes is refused: the echo needs KV elements.
        d.transforms.insert(
            "bad".into(),
            transform(KV_ECHO_URN, vec![], &["imp"], &["x"]),
        );
        let err = build(&d).unwrap_err().to_string();
        assert!(err.contains("needs KV elements"), "{err}");
    }
}
