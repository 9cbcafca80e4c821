//! Turns a `ProcessBundleDescriptor` into a [`StageGraph`]: one node per
//! transform (its operator factory, from the [`registry`]), the consumers of
//! each of its outputs, and the coder of every edge.
//!
//! Every transform is checked up front, so a stage holding anything this
//! worker cannot run is refused with one message naming all of it. Whether a
//! chunk can be forwarded untouched is decided here, once per descriptor: each
//! planner sees the coders of its inputs.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use beam_proto::fn_execution::ProcessBundleDescriptor;

use crate::ops::{EdgeCoder, OperatorFactory};
use crate::registry::{self, PlanContext, PlanError};
use crate::telemetry::{self, ElementCounter};

/// One output port of a node.
#[derive(Debug, Clone)]
pub struct OutputPort {
    pub pcollection: String,
    pub coder: EdgeCoder,
    /// Nodes that take this port's chunks.
    pub consumers: Vec<usize>,
}

#[derive(Debug)]
pub struct Node {
    pub transform_id: String,
    pub factory: Arc<dyn OperatorFactory>,
    pub outputs: Vec<OutputPort>,
}

/// An executable stage. Nodes are in topological order: every node comes
/// after the producers of its inputs.
#[derive(Debug)]
pub struct StageGraph {
    pub descriptor_id: String,
    pub nodes: Vec<Node>,
    /// Each node's pool-wide element counters, (in, out): found once per
    /// descriptor, not once per bundle (a lookup hashes and allocates its
    /// labels, a noticeable share of a one-element bundle's work).
    pub element_counters: OnceLock<Vec<(ElementCounter, ElementCounter)>>,
}

impl StageGraph {
    /// Each node's element counters (in, out), by node index.
    pub fn element_counters(&self) -> &[(ElementCounter, ElementCounter)] {
        self.element_counters.get_or_init(|| {
            let t = telemetry::global();
            self.nodes
                .iter()
                .map(|n| {
                    let kind = n.factory.kind();
                    (
                        t.element_counter(kind, telemetry::IN),
                        t.element_counter(kind, telemetry::OUT),
                    )
                })
                .collect()
        })
    }

    /// Runner data sources: (data URL, transform id, node).
    pub fn sources(&self) -> Vec<(&str, &str, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.factory.data_source().map(|(url, id)| (url, id, i)))
            .collect()
    }

    /// Data URLs the stage reads its input from, each once.
    pub fn input_urls(&self) -> Vec<&str> {
        let mut urls: Vec<&str> = self.sources().into_iter().map(|(u, _, _)| u).collect();
        urls.sort_unstable();
        urls.dedup();
        urls
    }
}

/// A transform waiting for the coders of its inputs.
struct Pending<'a> {
    id: &'a str,
    entry: &'static registry::Entry,
    payload: bytes::Bytes,
    pardo: Option<beam_proto::pipeline::ParDoPayload>,
}

/// Builds the graph, or says everything that stops this descriptor from running.
pub fn build(descriptor: &ProcessBundleDescriptor) -> Result<StageGraph, PlanError> {
    let mut pending = classify(descriptor)?;
    let mut coders: HashMap<&str, EdgeCoder> = HashMap::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut node_of_pcoll: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut consumers_of: Vec<(usize, &str)> = Vec::new();
    while !pending.is_empty() {
        let ready = pending.iter().position(|p| {
            let t = &descriptor.transforms[p.id];
            t.inputs.values().all(|pc| coders.contains_key(pc.as_str()))
        });
        let Some(index) = ready else {
            let p = &pending[0];
            return Err(PlanError::Malformed {
                id: p.id.to_owned(),
                why: "its input is produced by nothing in this stage (or by a cycle)".into(),
            });
        };
        let p = pending.remove(index);
        let t = &descriptor.transforms[p.id];
        let inputs = registry::inputs_of(t)
            .into_iter()
            .map(|(name, pc)| (name.clone(), coders[pc.as_str()].clone()))
            .collect();
        let cx = PlanContext {
            id: p.id,
            transform: t,
            descriptor,
            payload: p.payload,
            pardo: p.pardo,
            inputs,
        };
        let planned = (p.entry.plan)(&cx)?;
        let node = nodes.len();
        let mut outputs = Vec::new();
        for (port, (name, coder)) in planned.outputs.into_iter().enumerate() {
            let Some(pcoll) = t.outputs.get(&name) else {
                return Err(cx.malformed(format!(
                    "planning named an output '{name}' it does not have"
                )));
            };
            // A second producer would make the consumers planned so far read
            // from a later node, or a node read its own output: a cycle the
            // engine would run forever.
            if let Some(&(other, _)) = node_of_pcoll.get(pcoll.as_str()) {
                return Err(cx.malformed(format!(
                    "its output PCollection '{pcoll}' is also produced by '{}'; \
                     a PCollection has one producer",
                    nodes.get(other).map_or(p.id, |n| n.transform_id.as_str())
                )));
            }
            coders.insert(pcoll, coder.clone());
            node_of_pcoll.insert(pcoll, (node, port));
            outputs.push(OutputPort {
                pcollection: pcoll.clone(),
                coder,
                consumers: Vec::new(),
            });
        }
        for (_, pcoll) in registry::inputs_of(t) {
            consumers_of.push((node, pcoll));
        }
        nodes.push(Node {
            transform_id: p.id.to_owned(),
            factory: planned.factory,
            outputs,
        });
    }
    for (consumer, pcoll) in consumers_of {
        if let Some(&(producer, port)) = node_of_pcoll.get(pcoll) {
            nodes[producer].outputs[port].consumers.push(consumer);
        }
    }
    Ok(StageGraph {
        descriptor_id: descriptor.id.clone(),
        nodes,
        element_counters: OnceLock::new(),
    })
}

/// Finds the registry entry of every leaf transform, naming all that have none.
fn classify(descriptor: &ProcessBundleDescriptor) -> Result<Vec<Pending<'_>>, PlanError> {
    let mut ids: Vec<&String> = descriptor.transforms.keys().collect();
    ids.sort();
    let mut pending = Vec::new();
    let mut unsupported = Vec::new();
    for id in ids {
        let t = &descriptor.transforms[id];
        let (step, urn, payload, pardo) = registry::identify(t);
        match registry::lookup(step, &urn) {
            Some(entry) => pending.push(Pending {
                id,
                entry,
                payload,
                pardo,
            }),
            // Composites are listed beside their parts; only leaves run.
            None if !t.subtransforms.is_empty() => {}
            None => unsupported.push(registry::describe(id, t)),
        }
    }
    if unsupported.is_empty() {
        Ok(pending)
    } else {
        Err(PlanError::UnsupportedTransforms(unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beam_proto::fn_execution::RemoteGrpcPort;
    use beam_proto::pipeline::{
        ApiServiceDescriptor, Coder, FunctionSpec, PCollection, PTransform,
    };
    use prost::Message;

    use crate::coders::{BYTES_URN, GLOBAL_WINDOW_URN, KV_URN, WINDOWED_VALUE_URN};
    use crate::ops::{echo, runner};

    fn coder(urn: &str, components: &[&str]) -> Coder {
        Coder {
            spec: Some(FunctionSpec {
                urn: urn.into(),
                payload: Default::default(),
            }),
            component_coder_ids: components.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn transform(
        urn: &str,
        payload: Vec<u8>,
        input: Option<&str>,
        output: Option<&str>,
    ) -> PTransform {
        let one = |pc: Option<&str>, name: &str| {
            pc.map(|pc| HashMap::from([(name.to_string(), pc.to_string())]))
                .unwrap_or_default()
        };
        PTransform {
            spec: Some(FunctionSpec {
                urn: urn.into(),
                payload: payload.into(),
            }),
            inputs: one(input, "in"),
            outputs: one(output, "out"),
            ..Default::default()
        }
    }

    /// source → echo → sink over `windowed_value(kv(bytes, bytes))`, with the
    /// echo's output PCollection named `echo_output`.
    fn echo_stage(echo_output: &str) -> ProcessBundleDescriptor {
        let port = RemoteGrpcPort {
            api_service_descriptor: Some(ApiServiceDescriptor {
                url: "localhost:1".into(),
                authentication: None,
            }),
            coder_id: "wire".into(),
        }
        .encode_to_vec();
        let pcollection = PCollection {
            coder_id: "kv".into(),
            ..Default::default()
        };
        ProcessBundleDescriptor {
            id: "stage".into(),
            transforms: HashMap::from([
                (
                    "source".into(),
                    transform(runner::SOURCE_URN, port.clone(), None, Some("in")),
                ),
                (
                    "echo".into(),
                    transform(echo::KV_ECHO_URN, Vec::new(), Some("in"), Some(echo_output)),
                ),
                (
                    "sink".into(),
                    transform(runner::SINK_URN, port, Some(echo_output), None),
                ),
            ]),
            pcollections: HashMap::from([
                ("in".into(), pcollection.clone()),
                (echo_output.into(), pcollection),
            ]),
            coders: HashMap::from([
                ("bytes".into(), coder(BYTES_URN, &[])),
                ("kv".into(), coder(KV_URN, &["bytes", "bytes"])),
                ("gw".into(), coder(GLOBAL_WINDOW_URN, &[])),
                ("wire".into(), coder(WINDOWED_VALUE_URN, &["kv", "gw"])),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn an_echo_stage_is_planned_in_topological_order() {
        let stage = build(&echo_stage("out")).unwrap();
        let order: Vec<&str> = stage
            .nodes
            .iter()
            .map(|n| n.transform_id.as_str())
            .collect();
        assert_eq!(order, ["source", "echo", "sink"]);
        assert_eq!(stage.nodes[0].outputs[0].consumers, [1]);
        assert_eq!(stage.nodes[1].outputs[0].consumers, [2]);
    }

    /// Found by the `plan` fuzz target (fuzz/regressions/plan/): an echo whose
    /// output is its own input PCollection was planned as a node consuming its
    /// own output, and the engine would deliver its chunks back to it forever.
    /// A PCollection has one producer; a second one is refused.
    #[test]
    fn a_pcollection_with_two_producers_is_refused_not_planned_as_a_cycle() {
        let err = build(&echo_stage("in")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PlanError::Malformed { .. }), "{text}");
        assert!(
            text.contains("'in'") && text.contains("also produced by"),
            "{text}"
        );
    }
}
