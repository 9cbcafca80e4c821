//! Turns a `ProcessBundleDescriptor` into a [`StagePlan`]: which runner ports feed
//! which, with which wire coders, and whether a chunk can be forwarded untouched.
//!
//! Every transform in the descriptor is checked up front, so a stage holding
//! anything this worker cannot run is refused with one message naming all of it.

use std::collections::{HashMap, HashSet, VecDeque};

use beam_proto::fn_execution::{ProcessBundleDescriptor, RemoteGrpcPort};
use beam_proto::pipeline::{PTransform, ParDoPayload};
use prost::Message;

use crate::coders::{CoderResolveError, WireCoder};
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
    #[error(
        "sink '{sink}' uses a {sink_window:?} window coder but its input from '{source_id}' \
         arrives with {source_window:?}; the echo cannot change windows"
    )]
    WindowMismatch {
        source_id: String,
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

/// One `beam:runner:source:v1` and everything its elements reach.
#[derive(Debug, Clone)]
pub struct InputPlan {
    pub port: Port,
    /// PCollections every element of this input passes through, for element counts.
    pub pcollections: Vec<String>,
    /// Sinks this input's elements reach through echoes.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index into [`StagePlan::sinks`].
    pub sink: usize,
    /// Source and sink encode identically: forward chunks without decoding.
    pub pass_through: bool,
}

/// An executable stage.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub descriptor_id: String,
    pub inputs: Vec<InputPlan>,
    /// Every sink gets `is_last` at bundle end, whether or not anything reaches it.
    pub sinks: Vec<Port>,
}

impl StagePlan {
    /// Data URLs the stage reads from or writes to, each once.
    pub fn data_urls(&self) -> Vec<&str> {
        let mut urls: Vec<&str> = self
            .inputs
            .iter()
            .map(|i| i.port.data_url.as_str())
            .chain(self.sinks.iter().map(|s| s.data_url.as_str()))
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
}

/// Builds the plan, or says everything that stops this descriptor from running.
pub fn build(descriptor: &ProcessBundleDescriptor) -> Result<StagePlan, PlanError> {
    let kinds = classify_all(descriptor)?;
    let port = |id: &str, t: &PTransform| read_port(id, t, descriptor);

    let mut sink_ids: Vec<&String> = kinds
        .iter()
        .filter(|(_, k)| matches!(k, Kind::Sink))
        .map(|(id, _)| *id)
        .collect();
    sink_ids.sort();
    let sinks = sink_ids
        .iter()
        .map(|id| port(id, &descriptor.transforms[*id]))
        .collect::<Result<Vec<_>, _>>()?;
    let sink_index: HashMap<&str, usize> = sink_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();

    let mut consumers: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, t) in &descriptor.transforms {
        for pcoll in t.inputs.values() {
            consumers
                .entry(pcoll.as_str())
                .or_default()
                .push(id.as_str());
        }
    }

    let mut source_ids: Vec<&String> = kinds
        .iter()
        .filter(|(_, k)| matches!(k, Kind::Source))
        .map(|(id, _)| *id)
        .collect();
    source_ids.sort();
    let mut inputs = Vec::new();
    for id in source_ids {
        let t = &descriptor.transforms[id];
        let source = port(id, t)?;
        let start = single(id, "output", &t.outputs)?;
        let mut plan = InputPlan {
            port: source,
            pcollections: Vec::new(),
            routes: Vec::new(),
        };
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([start]);
        while let Some(pcoll) = queue.pop_front() {
            if !seen.insert(pcoll) {
                continue;
            }
            plan.pcollections.push(pcoll.to_owned());
            for consumer in consumers.get(pcoll).into_iter().flatten() {
                match kinds[&consumer.to_string()] {
                    Kind::Echo => queue.push_back(single(
                        consumer,
                        "output",
                        &descriptor.transforms[*consumer].outputs,
                    )?),
                    Kind::Sink => {
                        let sink = sink_index[consumer];
                        plan.routes.push(route(&plan.port, &sinks[sink], sink)?);
                    }
                    Kind::Source => {}
                }
            }
        }
        inputs.push(plan);
    }
    Ok(StagePlan {
        descriptor_id: descriptor.id.clone(),
        inputs,
        sinks,
    })
}

fn route(source: &Port, sink: &Port, index: usize) -> Result<Route, PlanError> {
    let pass_through = source.wire.same_encoding(&sink.wire);
    if !pass_through && source.wire.window != sink.wire.window {
        return Err(PlanError::WindowMismatch {
            source_id: source.transform_id.clone(),
            sink: sink.transform_id.clone(),
            source_window: source.wire.window,
            sink_window: sink.wire.window,
        });
    }
    Ok(Route {
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
        let urn = t.spec.as_ref().map(|s| s.urn.as_str()).unwrap_or("");
        let kind = match urn {
            SOURCE_URN => Kind::Source,
            SINK_URN => Kind::Sink,
            KV_ECHO_URN => {
                single(id, "input", &t.inputs)?;
                single(id, "output", &t.outputs)?;
                Kind::Echo
            }
            // A composite's parts are listed on their own; the composite itself runs nothing.
            _ if !t.subtransforms.is_empty() => continue,
            _ => {
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
        assert_eq!(input.pcollections, ["a", "b"]);
        assert_eq!(
            input.routes,
            [Route {
                sink: 0,
                pass_through: true
            }]
        );
        assert_eq!(plan.data_urls(), ["localhost:1"]);
    }

    #[test]
    fn different_wire_coders_recode() {
        let plan = build(&descriptor("wvn", None)).unwrap();
        assert!(!plan.inputs[0].routes[0].pass_through);
        let err = build(&descriptor("wvi", None)).unwrap_err();
        assert!(matches!(err, PlanError::WindowMismatch { .. }), "{err}");
    }

    #[test]
    fn pickled_python_dofn_is_named() {
        let pardo = ParDoPayload {
            do_fn: spec("beam:dofn:pickled_python_info:v1", vec![]),
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
}
