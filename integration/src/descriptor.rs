//! Builders for the `ProcessBundleDescriptor`s a runner would send for a
//! KV-echo stage: `beam:runner:source:v1` → echo → `beam:runner:sink:v1`.
//!
//! Ids follow the Java runner's shape (`fn/read/<pcollection>`,
//! `fn/write/<pcollection>`) so that a worker which hardcodes Python's ids, or
//! any id, fails here first.

use std::collections::HashMap;

use beam_proto::fn_execution::{ProcessBundleDescriptor, RemoteGrpcPort};
use beam_proto::pipeline::{
    ApiServiceDescriptor, Coder, Environment, ExternalPayload, FunctionSpec, PCollection,
    PTransform, ParDoPayload, WindowingStrategy, accumulation_mode, closing_behavior, is_bounded,
    merge_status, on_time_behavior, output_time,
};
use bytes::Bytes;
use prost::Message;

use crate::bundle::BundleSpec;
use crate::elements::{Window, WindowKind, WireFormat, param_windowed_value_payload};

/// URNs the stand-in writes into descriptors and reads back from responses.
pub mod urns {
    pub const SOURCE: &str = "beam:runner:source:v1";
    pub const SINK: &str = "beam:runner:sink:v1";
    /// The worker's native echo transform (no payload).
    pub const KV_ECHO: &str = "beam:transform:rust_worker:kv_echo:v1";
    pub const PARDO: &str = "beam:transform:pardo:v1";
    /// What every Python `Map`/`ParDo` carries; a non-Python worker cannot run it.
    pub const PICKLED_PYTHON_DOFN: &str = "beam:dofn:pickled_python_info:v1";

    pub const BYTES_CODER: &str = "beam:coder:bytes:v1";
    pub const NULLABLE_CODER: &str = "beam:coder:nullable:v1";
    pub const LENGTH_PREFIX_CODER: &str = "beam:coder:length_prefix:v1";
    pub const KV_CODER: &str = "beam:coder:kv:v1";
    pub const GLOBAL_WINDOW_CODER: &str = "beam:coder:global_window:v1";
    pub const INTERVAL_WINDOW_CODER: &str = "beam:coder:interval_window:v1";
    pub const WINDOWED_VALUE_CODER: &str = "beam:coder:windowed_value:v1";
    pub const PARAM_WINDOWED_VALUE_CODER: &str = "beam:coder:param_windowed_value:v1";

    pub const GLOBAL_WINDOWS_FN: &str = "beam:window_fn:global_windows:v1";
    pub const FIXED_WINDOWS_FN: &str = "beam:window_fn:fixed_windows:v1";
    pub const EXTERNAL_ENV: &str = "beam:env:external:v1";

    pub const ELEMENT_COUNT: &str = "beam:metric:element_count:v1";
    pub const DATA_CHANNEL_READ_INDEX: &str = "beam:metric:data_channel:read_index:v1";
    pub const SUM_INT64_TYPE: &str = "beam:metrics:sum_int64:v1";
    /// Pipeline option holding the experiments list (Java's key; Python uses `experiments`).
    pub const EXPERIMENTS_OPTION: &str = "beam:option:experiments:v1";
}

/// Coder of the KV element inside the windowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementCoder {
    /// `kv(bytes, bytes)`: the Python SDK's coder for `Tuple[bytes, bytes]`.
    KvBytes,
    /// `kv(nullable(bytes), nullable(bytes))`: KafkaIO's coder in current Beam.
    KvNullableBytes,
    /// `kv(length_prefix(bytes), length_prefix(bytes))`: what Java makes of a
    /// coder it does not know. Same bytes on the wire as [`ElementCoder::KvBytes`].
    KvLengthPrefixBytes,
}

impl ElementCoder {
    fn component(self) -> (&'static str, &'static str) {
        match self {
            ElementCoder::KvBytes => ("c_bytes", "c_kv_bytes"),
            ElementCoder::KvNullableBytes => ("c_nullable_bytes", "c_kv_nullable_bytes"),
            ElementCoder::KvLengthPrefixBytes => {
                ("c_length_prefix_bytes", "c_kv_length_prefix_bytes")
            }
        }
    }

    fn nullable(self) -> bool {
        self == ElementCoder::KvNullableBytes
    }
}

/// Wire coder of one data port (the `coder_id` of its `RemoteGrpcPort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortCoder {
    element: ElementCoder,
    window: WindowKind,
    /// `Some` for `param_windowed_value`: the constant (timestamp, window, pane).
    param: Option<(i64, Window, u8)>,
}

impl PortCoder {
    /// `windowed_value(element, window)`: timestamp, windows and pane on every element.
    pub fn windowed(element: ElementCoder, window: WindowKind) -> Self {
        PortCoder {
            element,
            window,
            param: None,
        }
    }

    /// `param_windowed_value(element, window)`: every element gets this timestamp,
    /// window and pane; only the KV travels.
    pub fn param(element: ElementCoder, timestamp_millis: i64, window: Window, pane: u8) -> Self {
        PortCoder {
            element,
            window: window.kind(),
            param: Some((timestamp_millis, window, pane)),
        }
    }

    /// `windowed_value(kv(bytes, bytes), global_window)`: what the Python runner sends.
    pub fn kv_bytes() -> Self {
        Self::windowed(ElementCoder::KvBytes, WindowKind::Global)
    }

    /// `windowed_value(kv(nullable(bytes), nullable(bytes)), global_window)`: Kafka reads.
    pub fn kv_nullable_bytes() -> Self {
        Self::windowed(ElementCoder::KvNullableBytes, WindowKind::Global)
    }

    pub fn element(&self) -> ElementCoder {
        self.element
    }

    pub fn window(&self) -> WindowKind {
        self.window
    }

    /// What the element helpers need to parse chunks written with this coder.
    pub fn wire_format(&self) -> WireFormat {
        WireFormat {
            param: self.param.is_some(),
            window: self.window,
            nullable: self.element.nullable(),
        }
    }

    fn window_coder_id(&self) -> &'static str {
        match self.window {
            WindowKind::Global => "c_global_window",
            WindowKind::Interval => "c_interval_window",
        }
    }

    fn windowing_strategy_id(&self) -> &'static str {
        match self.window {
            WindowKind::Global => "ws_global",
            WindowKind::Interval => "ws_fixed",
        }
    }

    /// Adds this port's coders to `coders` and returns the wire coder's id.
    fn add_coders(&self, wire_id: &str, coders: &mut HashMap<String, Coder>) -> String {
        let (component_id, kv_id) = self.element.component();
        coders.insert(
            "c_bytes".into(),
            coder(urns::BYTES_CODER, &[], Bytes::new()),
        );
        match self.element {
            ElementCoder::KvBytes => {}
            ElementCoder::KvNullableBytes => {
                coders.insert(
                    component_id.into(),
                    coder(urns::NULLABLE_CODER, &["c_bytes"], Bytes::new()),
                );
            }
            ElementCoder::KvLengthPrefixBytes => {
                coders.insert(
                    component_id.into(),
                    coder(urns::LENGTH_PREFIX_CODER, &["c_bytes"], Bytes::new()),
                );
            }
        }
        coders.insert(
            kv_id.into(),
            coder(urns::KV_CODER, &[component_id, component_id], Bytes::new()),
        );
        let window_urn = match self.window {
            WindowKind::Global => urns::GLOBAL_WINDOW_CODER,
            WindowKind::Interval => urns::INTERVAL_WINDOW_CODER,
        };
        coders.insert(
            self.window_coder_id().into(),
            coder(window_urn, &[], Bytes::new()),
        );
        let wire = match self.param {
            None => coder(
                urns::WINDOWED_VALUE_CODER,
                &[kv_id, self.window_coder_id()],
                Bytes::new(),
            ),
            Some((ts, window, pane)) => coder(
                urns::PARAM_WINDOWED_VALUE_CODER,
                &[kv_id, self.window_coder_id()],
                Bytes::from(param_windowed_value_payload(ts, window, pane)),
            ),
        };
        coders.insert(wire_id.into(), wire);
        wire_id.into()
    }
}

fn coder(urn: &str, components: &[&str], payload: Bytes) -> Coder {
    Coder {
        spec: Some(FunctionSpec {
            urn: urn.into(),
            payload,
        }),
        component_coder_ids: components.iter().map(|c| (*c).into()).collect(),
    }
}

fn windowing_strategy(kind: WindowKind, window_coder_id: &str, env: &str) -> WindowingStrategy {
    // The worker only needs the window coder; the window fn is there for realism.
    let urn = match kind {
        WindowKind::Global => urns::GLOBAL_WINDOWS_FN,
        WindowKind::Interval => urns::FIXED_WINDOWS_FN,
    };
    WindowingStrategy {
        window_fn: Some(FunctionSpec {
            urn: urn.into(),
            payload: Bytes::new(),
        }),
        merge_status: merge_status::Enum::NonMerging as i32,
        window_coder_id: window_coder_id.into(),
        trigger: None,
        accumulation_mode: accumulation_mode::Enum::Discarding as i32,
        output_time: output_time::Enum::EndOfWindow as i32,
        closing_behavior: closing_behavior::Enum::EmitIfNonempty as i32,
        allowed_lateness: 0,
        on_time_behavior: on_time_behavior::Enum::FireIfNonempty as i32,
        assigns_to_one_window: true,
        environment_id: env.into(),
    }
}

/// Serialized `RemoteGrpcPort` payload of a source or sink transform.
pub(crate) fn remote_grpc_port(data_url: &str, coder_id: &str) -> Bytes {
    RemoteGrpcPort {
        api_service_descriptor: Some(ApiServiceDescriptor {
            url: data_url.into(),
            authentication: None,
        }),
        coder_id: coder_id.into(),
    }
    .encode_to_vec()
    .into()
}

/// A Python `ParDo` with a pickled DoFn, as the Python SDK puts every `Map`
/// into the EXTERNAL environment. A non-Python worker must refuse it by name.
pub fn pickled_python_pardo(input_pcollection: &str, output_pcollection: &str) -> PTransform {
    let payload = ParDoPayload {
        do_fn: Some(FunctionSpec {
            urn: urns::PICKLED_PYTHON_DOFN.into(),
            // Not a real pickle: the worker must refuse by URN without looking inside.
            payload: Bytes::from_static(b"\x80\x05\x95not-a-real-pickle"),
        }),
        ..Default::default()
    };
    PTransform {
        spec: Some(FunctionSpec {
            urn: urns::PARDO.into(),
            payload: payload.encode_to_vec().into(),
        }),
        inputs: HashMap::from([("None".to_string(), input_pcollection.to_string())]),
        outputs: HashMap::from([("None".to_string(), output_pcollection.to_string())]),
        unique_name: "Map(<lambda at pipeline.py:12>)".into(),
        environment_id: ENV_ID.into(),
        ..Default::default()
    }
}

/// Id of the EXTERNAL environment the echo transform is bound to.
pub(crate) const ENV_ID: &str = "rust_external_env";

/// A built echo descriptor plus the ids a test needs to drive and check it.
#[derive(Debug, Clone)]
pub struct EchoDescriptor {
    pub descriptor: ProcessBundleDescriptor,
    /// The `beam:runner:source:v1` transform: input data is addressed to it.
    pub source_id: String,
    /// The `beam:runner:sink:v1` transform: output data arrives under it.
    pub sink_id: String,
    /// PCollection between source and echo (element counts are reported for it).
    pub input_pcollection: String,
    /// PCollection between echo and sink.
    pub output_pcollection: String,
    pub input: PortCoder,
    pub output: PortCoder,
}

impl EchoDescriptor {
    /// Starts a builder for a descriptor `id` whose data ports point at `data_url`.
    pub fn builder(id: impl Into<String>, data_url: impl Into<String>) -> EchoDescriptorBuilder {
        EchoDescriptorBuilder {
            id: id.into(),
            data_url: data_url.into(),
            input: PortCoder::kv_bytes(),
            output: None,
            echo_urn: urns::KV_ECHO.into(),
            extra: Vec::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.descriptor.id
    }

    /// A bundle for this descriptor: `chunks` go to the source, the sink is awaited.
    pub fn bundle(&self, chunks: impl IntoIterator<Item = Bytes>) -> BundleSpec {
        BundleSpec::new(self.id())
            .input(self.source_id.clone(), chunks)
            .sink(self.sink_id.clone())
    }
}

/// `echo_descriptor(id, data_url, coder)`: source → echo → sink with the same
/// wire coder on both ports (the zero-copy case).
pub fn echo_descriptor(
    id: impl Into<String>,
    data_url: impl Into<String>,
    coder: PortCoder,
) -> EchoDescriptor {
    EchoDescriptor::builder(id, data_url).coder(coder).build()
}

/// Builder for [`EchoDescriptor`]; see [`EchoDescriptor::builder`].
#[derive(Debug, Clone)]
pub struct EchoDescriptorBuilder {
    id: String,
    data_url: String,
    input: PortCoder,
    /// `None` = same as the input.
    output: Option<PortCoder>,
    echo_urn: String,
    extra: Vec<(String, PTransform)>,
}

impl EchoDescriptorBuilder {
    /// Same wire coder on input and output.
    pub fn coder(mut self, coder: PortCoder) -> Self {
        self.input = coder;
        self.output = None;
        self
    }

    /// Wire coder of the source port (and the input PCollection's element coder).
    pub fn input_coder(mut self, coder: PortCoder) -> Self {
        self.input = coder;
        self
    }

    /// Wire coder of the sink port; differing from the input forces a re-encode.
    pub fn output_coder(mut self, coder: PortCoder) -> Self {
        self.output = Some(coder);
        self
    }

    /// Replaces the echo transform's URN, e.g. to check that unknown URNs are refused.
    pub fn echo_urn(mut self, urn: impl Into<String>) -> Self {
        self.echo_urn = urn.into();
        self
    }

    /// Adds a transform to the stage. PCollections it produces that the
    /// descriptor lacks are added with the output's coder and windowing.
    pub fn extra_transform(mut self, id: impl Into<String>, transform: PTransform) -> Self {
        self.extra.push((id.into(), transform));
        self
    }

    pub fn build(self) -> EchoDescriptor {
        let input = self.input;
        let output = self.output.unwrap_or(input);
        let in_pc = "pc1".to_string();
        let out_pc = "pc2".to_string();
        let source_id = format!("fn/read/{in_pc}");
        let sink_id = format!("fn/write/{out_pc}");

        let mut coders = HashMap::new();
        let (in_wire, out_wire) = if input == output {
            let id = input.add_coders("c_wire", &mut coders);
            (id.clone(), id)
        } else {
            (
                input.add_coders("c_wire_in", &mut coders),
                output.add_coders("c_wire_out", &mut coders),
            )
        };

        let mut windowing_strategies = HashMap::new();
        for port in [input, output] {
            windowing_strategies.insert(
                port.windowing_strategy_id().to_string(),
                windowing_strategy(port.window(), port.window_coder_id(), ENV_ID),
            );
        }

        let pcollection = |name: &str, port: &PortCoder| PCollection {
            unique_name: name.into(),
            coder_id: port.element().component().1.into(),
            is_bounded: is_bounded::Enum::Bounded as i32,
            windowing_strategy_id: port.windowing_strategy_id().into(),
        };
        let mut pcollections = HashMap::from([
            (in_pc.clone(), pcollection("Read/Impulse.out", &input)),
            (out_pc.clone(), pcollection("KvEcho.out", &output)),
        ]);

        let mut transforms = HashMap::new();
        transforms.insert(
            source_id.clone(),
            PTransform {
                spec: Some(FunctionSpec {
                    urn: urns::SOURCE.into(),
                    payload: remote_grpc_port(&self.data_url, &in_wire),
                }),
                outputs: HashMap::from([("local_output".to_string(), in_pc.clone())]),
                unique_name: source_id.clone(),
                ..Default::default()
            },
        );
        transforms.insert(
            "echo".to_string(),
            PTransform {
                spec: Some(FunctionSpec {
                    urn: self.echo_urn.clone(),
                    payload: Bytes::new(),
                }),
                inputs: HashMap::from([("input".to_string(), in_pc.clone())]),
                outputs: HashMap::from([("output".to_string(), out_pc.clone())]),
                unique_name: "KvEcho".into(),
                environment_id: ENV_ID.into(),
                ..Default::default()
            },
        );
        transforms.insert(
            sink_id.clone(),
            PTransform {
                spec: Some(FunctionSpec {
                    urn: urns::SINK.into(),
                    payload: remote_grpc_port(&self.data_url, &out_wire),
                }),
                inputs: HashMap::from([("local_input".to_string(), out_pc.clone())]),
                unique_name: sink_id.clone(),
                ..Default::default()
            },
        );
        for (id, transform) in self.extra {
            for pc in transform.outputs.values() {
                pcollections
                    .entry(pc.clone())
                    .or_insert_with(|| pcollection(pc, &output));
            }
            transforms.insert(id, transform);
        }

        let environments = HashMap::from([(
            ENV_ID.to_string(),
            Environment {
                urn: urns::EXTERNAL_ENV.into(),
                payload: ExternalPayload {
                    endpoint: Some(ApiServiceDescriptor {
                        url: "localhost:50000".into(),
                        authentication: None,
                    }),
                    params: HashMap::new(),
                }
                .encode_to_vec()
                .into(),
                capabilities: vec![],
                resource_hints: HashMap::new(),
            },
        )]);

        EchoDescriptor {
            descriptor: ProcessBundleDescriptor {
                id: self.id,
                transforms,
                pcollections,
                windowing_strategies,
                coders,
                environments,
                state_api_service_descriptor: None,
                timer_api_service_descriptor: None,
            },
            source_id,
            sink_id,
            input_pcollection: in_pc,
            output_pcollection: out_pc,
            input,
            output,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_descriptor_wires_source_echo_sink() {
        let d = echo_descriptor("d1", "127.0.0.1:1", PortCoder::kv_nullable_bytes());
        let t = &d.descriptor.transforms;
        assert_eq!(t.len(), 3);
        let source = &t[&d.source_id];
        assert_eq!(source.spec.as_ref().unwrap().urn, urns::SOURCE);
        let port = RemoteGrpcPort::decode(source.spec.as_ref().unwrap().payload.clone()).unwrap();
        assert_eq!(port.api_service_descriptor.unwrap().url, "127.0.0.1:1");
        let wire = &d.descriptor.coders[&port.coder_id];
        assert_eq!(wire.spec.as_ref().unwrap().urn, urns::WINDOWED_VALUE_CODER);
        let kv = &d.descriptor.coders[&wire.component_coder_ids[0]];
        assert_eq!(kv.spec.as_ref().unwrap().urn, urns::KV_CODER);
        let key = &d.descriptor.coders[&kv.component_coder_ids[0]];
        assert_eq!(key.spec.as_ref().unwrap().urn, urns::NULLABLE_CODER);
        assert_eq!(t["echo"].inputs["input"], d.input_pcollection);
        assert_eq!(t[&d.sink_id].inputs["local_input"], d.output_pcollection);
        assert!(d.input.wire_format().nullable);
    }

    #[test]
    fn recode_and_extra_transforms() {
        let d = EchoDescriptor::builder("d2", "x:1")
            .input_coder(PortCoder::kv_nullable_bytes())
            .output_coder(PortCoder::param(
                ElementCoder::KvBytes,
                0,
                Window::Global,
                crate::elements::PANE_NO_FIRING,
            ))
            .extra_transform("py", pickled_python_pardo("pc2", "pc3"))
            .build();
        assert!(d.descriptor.coders.contains_key("c_wire_in"));
        let out = &d.descriptor.coders["c_wire_out"];
        assert_eq!(
            out.spec.as_ref().unwrap().urn,
            urns::PARAM_WINDOWED_VALUE_CODER
        );
        assert_eq!(out.spec.as_ref().unwrap().payload.len(), 14);
        assert!(d.descriptor.pcollections.contains_key("pc3"));
        let pardo = ParDoPayload::decode(
            d.descriptor.transforms["py"]
                .spec
                .as_ref()
                .unwrap()
                .payload
                .clone(),
        )
        .unwrap();
        assert_eq!(pardo.do_fn.unwrap().urn, urns::PICKLED_PYTHON_DOFN);
    }
}
