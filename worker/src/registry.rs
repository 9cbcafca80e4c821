//! The one list of what this worker runs: URN (and, for ParDos and the steps
//! runners expand a splittable ParDo into, the DoFn's URN) → how to plan it
//! into an operator. Planning ([`crate::graph`]), the expansion service, the
//! environment's capabilities and the "cannot run" error all read it; adding
//! a native transform is a module of its own plus one line in [`ENTRIES`].

use std::collections::HashMap;
use std::sync::Arc;

use beam_proto::expansion::ExpansionResponse;
use beam_proto::fn_execution::ProcessBundleDescriptor;
use beam_proto::pipeline::{PTransform, ParDoPayload};
use bytes::Bytes;
use prost::Message;

use crate::coders::{CoderResolveError, WindowCoder, WireCoder};
use crate::expansion;
use crate::kafka;
use crate::ops::{EdgeCoder, OperatorFactory, echo, runner};
use crate::value_coder::WindowedCoder;

pub const PARDO_URN: &str = "beam:transform:pardo:v1";
pub const SDF_PAIR_URN: &str = "beam:transform:sdf_pair_with_restriction:v1";
pub const SDF_SPLIT_URN: &str = "beam:transform:sdf_split_and_size_restrictions:v1";
pub const SDF_PROCESS_URN: &str = "beam:transform:sdf_process_sized_element_and_restrictions:v1";
pub const SDF_TRUNCATE_URN: &str = "beam:transform:sdf_truncate_sized_restrictions:v1";

/// Which part of a transform a descriptor holds: the whole transform, or one
/// of the steps a runner expands a splittable ParDo into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Whole,
    SdfPair,
    SdfSplit,
    SdfProcess,
    SdfTruncate,
}

/// How the expansion service turns a user's transform of this URN into what
/// runners send the worker.
pub type Expander = for<'a> fn(expansion::Request<'a>) -> Result<ExpansionResponse, String>;

/// How one (URN, step) becomes an operator.
pub struct Entry {
    /// The transform URN, or the DoFn URN inside a ParDo.
    pub urn: &'static str,
    pub step: Step,
    /// For transforms users put in pipelines: how the expansion service
    /// expands them. These are the URNs shown in "cannot run" errors.
    pub expand: Option<Expander>,
    pub plan: fn(&PlanContext<'_>) -> Result<Planned, PlanError>,
}

/// URNs of other SDKs' transforms that the expansion service serves with one
/// of ours (alias, ours): Beam's cross-language Kafka transforms, whose
/// configuration Rows our read and write decode.
pub const EXPANSION_ALIASES: &[(&str, &str)] = &[
    (kafka::BEAM_KAFKA_READ_URN, kafka::KAFKA_READ_URN),
    (kafka::BEAM_KAFKA_WRITE_URN, kafka::KAFKA_WRITE_URN),
];

/// Everything this worker runs.
pub const ENTRIES: &[Entry] = &[
    entry(runner::SOURCE_URN, Step::Whole, None, runner::plan_source),
    entry(runner::SINK_URN, Step::Whole, None, runner::plan_sink),
    entry(
        echo::KV_ECHO_URN,
        Step::Whole,
        Some(|r| r.kv_echo()),
        echo::plan,
    ),
    entry(
        kafka::KAFKA_READ_URN,
        Step::Whole,
        Some(|r| r.kafka_read()),
        kafka::ops::plan_bounded_read,
    ),
    entry(
        kafka::KAFKA_WRITE_URN,
        Step::Whole,
        Some(|r| r.kafka_write()),
        kafka::ops::plan_write,
    ),
    entry(
        kafka::KAFKA_PARTITIONS_URN,
        Step::Whole,
        None,
        kafka::sdf::plan_partitions,
    ),
    entry(
        kafka::KAFKA_READ_PARTITION_URN,
        Step::SdfPair,
        None,
        kafka::sdf::plan_pair,
    ),
    entry(
        kafka::KAFKA_READ_PARTITION_URN,
        Step::SdfSplit,
        None,
        kafka::sdf::plan_split,
    ),
    entry(
        kafka::KAFKA_READ_PARTITION_URN,
        Step::SdfProcess,
        None,
        kafka::sdf::plan_process,
    ),
    entry(
        kafka::KAFKA_READ_PARTITION_URN,
        Step::SdfTruncate,
        None,
        kafka::sdf::plan_truncate,
    ),
];

const fn entry(
    urn: &'static str,
    step: Step,
    expand: Option<Expander>,
    plan: fn(&PlanContext<'_>) -> Result<Planned, PlanError>,
) -> Entry {
    Entry {
        urn,
        step,
        expand,
        plan,
    }
}

/// The URNs users can put in a pipeline for this worker to run.
pub fn user_facing_urns() -> Vec<&'static str> {
    ENTRIES
        .iter()
        .filter(|e| e.expand.is_some())
        .map(|e| e.urn)
        .collect()
}

/// Every URN the expansion service expands: ours, then the aliases.
pub fn expandable_urns() -> Vec<&'static str> {
    let mut urns = user_facing_urns();
    urns.extend(EXPANSION_ALIASES.iter().map(|(alias, _)| *alias));
    urns
}

/// How the expansion service expands `urn`: the URN of ours that serves it
/// (itself, or what an alias stands for) and its expander.
pub fn expander(urn: &str) -> Option<(&'static str, Expander)> {
    let ours = EXPANSION_ALIASES
        .iter()
        .find(|(alias, _)| *alias == urn)
        .map_or(urn, |(_, ours)| *ours);
    ENTRIES
        .iter()
        .filter(|e| e.step == Step::Whole && e.urn == ours)
        .find_map(|e| Some((e.urn, e.expand?)))
}

/// True when `urn` names a DoFn this worker runs inside a ParDo.
pub fn is_native_dofn(urn: &str) -> bool {
    ENTRIES
        .iter()
        .any(|e| e.urn == urn && e.urn != runner::SOURCE_URN && e.urn != runner::SINK_URN)
}

/// What a transform runs: its step, and the URN the registry knows it by
/// (the DoFn's for a ParDo of ours), with the payload that configures it.
pub fn identify(t: &PTransform) -> (Step, String, Bytes, Option<ParDoPayload>) {
    let spec = t.spec.clone().unwrap_or_default();
    let step = match spec.urn.as_str() {
        PARDO_URN => Step::Whole,
        SDF_PAIR_URN => Step::SdfPair,
        SDF_SPLIT_URN => Step::SdfSplit,
        SDF_PROCESS_URN => Step::SdfProcess,
        SDF_TRUNCATE_URN => Step::SdfTruncate,
        _ => return (Step::Whole, spec.urn, spec.payload, None),
    };
    match ParDoPayload::decode(spec.payload.clone()) {
        Ok(pardo) => match pardo.do_fn.clone() {
            Some(do_fn) if is_native_dofn(&do_fn.urn) => {
                (step, do_fn.urn, do_fn.payload, Some(pardo))
            }
            _ => (step, spec.urn, spec.payload, Some(pardo)),
        },
        Err(_) => (step, spec.urn, spec.payload, None),
    }
}

/// The URN a transform runs, for logs: the DoFn URN of our ParDos.
pub fn runs(t: &PTransform) -> String {
    identify(t).1
}

pub fn lookup(step: Step, urn: &str) -> Option<&'static Entry> {
    ENTRIES.iter().find(|e| e.step == step && e.urn == urn)
}

/// Why a descriptor cannot be run here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlanError {
    #[error(
        "this worker cannot run {}; it runs only {} between the runner's data ports \
         ({}, {})",
        .0.join(", "),
        user_facing_urns().join(", "),
        runner::SOURCE_URN,
        runner::SINK_URN
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
    #[error("transform '{id}': {why}")]
    Config { id: String, why: String },
}

/// What planning one transform produced: the factory of its operator and the
/// coder of each output (by local name), in the order of its output ports.
pub struct Planned {
    pub factory: Arc<dyn OperatorFactory>,
    pub outputs: Vec<(String, EdgeCoder)>,
}

/// What a transform's planner sees.
pub struct PlanContext<'a> {
    pub id: &'a str,
    pub transform: &'a PTransform,
    pub descriptor: &'a ProcessBundleDescriptor,
    /// The DoFn's payload for our ParDos; the spec's payload otherwise.
    pub payload: Bytes,
    pub pardo: Option<ParDoPayload>,
    /// Coders of the inputs, by local name.
    pub inputs: Vec<(String, EdgeCoder)>,
}

impl PlanContext<'_> {
    pub fn malformed(&self, why: impl Into<String>) -> PlanError {
        PlanError::Malformed {
            id: self.id.to_owned(),
            why: why.into(),
        }
    }

    pub fn config_error(&self, why: impl std::fmt::Display) -> PlanError {
        PlanError::Config {
            id: self.id.to_owned(),
            why: why.to_string(),
        }
    }

    fn coder_error(&self, source: CoderResolveError) -> PlanError {
        PlanError::Coder {
            id: self.id.to_owned(),
            source,
        }
    }

    /// The coder of the one input.
    pub fn single_input(&self) -> Result<&EdgeCoder, PlanError> {
        match self.inputs.as_slice() {
            [(_, coder)] => Ok(coder),
            other => {
                Err(self.malformed(format!("expected exactly one input, found {}", other.len())))
            }
        }
    }

    /// The local name of the one input.
    pub fn input_name(&self) -> Result<String, PlanError> {
        match self.inputs.as_slice() {
            [(name, _)] => Ok(name.clone()),
            other => {
                Err(self.malformed(format!("expected exactly one input, found {}", other.len())))
            }
        }
    }

    /// The local name of the one output.
    pub fn single_output(&self) -> Result<String, PlanError> {
        let mut names = self.transform.outputs.keys();
        match (names.next(), names.next()) {
            (Some(name), None) => Ok(name.clone()),
            _ => Err(self.malformed(format!(
                "expected exactly one output, found {}",
                self.transform.outputs.len()
            ))),
        }
    }

    /// A data port's coder: the compact form when it has one.
    pub fn port_coder(&self, coder_id: &str) -> Result<EdgeCoder, PlanError> {
        let coders = &self.descriptor.coders;
        match WireCoder::resolve(coder_id, coders) {
            Ok(wire) => Ok(EdgeCoder::Wire(wire)),
            Err(wire_error) => WindowedCoder::resolve(coder_id, coders)
                .map(EdgeCoder::Full)
                // The compact coder's message names what the hot path supports.
                .map_err(|_| self.coder_error(wire_error)),
        }
    }

    /// The coder of the PCollection behind output `name`, as elements in the
    /// windows of its windowing strategy.
    pub fn output_coder(&self, name: &str) -> Result<EdgeCoder, PlanError> {
        let pcoll_id = self
            .transform
            .outputs
            .get(name)
            .ok_or_else(|| self.malformed(format!("it has no output '{name}'")))?;
        let pcoll = self.descriptor.pcollections.get(pcoll_id).ok_or_else(|| {
            self.malformed(format!(
                "its output PCollection '{pcoll_id}' is not in the descriptor"
            ))
        })?;
        let window = self.window_of(&pcoll.windowing_strategy_id)?;
        let coders = &self.descriptor.coders;
        if let Ok((key, value)) = crate::coders::resolve_kv(&pcoll.coder_id, coders) {
            return Ok(EdgeCoder::Wire(WireCoder {
                framing: crate::coders::Framing::Windowed,
                window,
                element: crate::coders::ElementCoder::Kv { key, value },
            }));
        }
        WindowedCoder::element(&pcoll.coder_id, window, coders)
            .map(EdgeCoder::Full)
            .map_err(|e| self.coder_error(e))
    }

    fn window_of(&self, strategy_id: &str) -> Result<WindowCoder, PlanError> {
        let Some(strategy) = self.descriptor.windowing_strategies.get(strategy_id) else {
            // Descriptors from some runners omit strategies of in-stage
            // PCollections; the global window is what our transforms produce.
            return Ok(WindowCoder::Global);
        };
        crate::coders::resolve_window(&strategy.window_coder_id, &self.descriptor.coders)
            .map_err(|e| self.coder_error(e))
    }
}

/// Names a transform for a "cannot run" message: its name, id and URN (and DoFn).
pub fn describe(id: &str, t: &PTransform) -> String {
    let spec = t.spec.clone().unwrap_or_default();
    let urn = if spec.urn.is_empty() {
        "no URN".to_owned()
    } else {
        spec.urn.clone()
    };
    let name = if t.unique_name.is_empty() {
        format!("'{id}'")
    } else {
        format!("'{}' (id {id})", t.unique_name)
    };
    let dofn = ParDoPayload::decode(spec.payload.clone())
        .ok()
        .filter(|_| spec.urn == PARDO_URN || spec.urn.starts_with("beam:transform:sdf_"))
        .and_then(|p| p.do_fn)
        .map(|f| format!(" running {}", f.urn))
        .unwrap_or_default();
    format!("{name} [{urn}{dofn}]")
}

/// Local input names of `t` with the PCollections behind them, sorted by name.
pub fn inputs_of(t: &PTransform) -> Vec<(&String, &String)> {
    let mut inputs: Vec<_> = t.inputs.iter().collect();
    inputs.sort();
    inputs
}

/// PCollection → coder, as planning resolves it.
pub type EdgeCoders = HashMap<String, EdgeCoder>;
