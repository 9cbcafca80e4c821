//! What a bundle sends ([`BundleSpec`]) and what came back ([`BundleResult`]).

use std::collections::HashMap;
use std::time::Duration;

use beam_proto::fn_execution::elements::Data;
use beam_proto::fn_execution::{Elements, InstructionResponse, instruction_response};
use beam_proto::pipeline::MonitoringInfo;
use bytes::{Bytes, BytesMut};

use crate::descriptor::urns;
use crate::elements::read_varint;

/// Whether input data or the `ProcessBundle` request goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataOrder {
    /// The Python FnApiRunner: all input, `is_last` included, is handed to the
    /// Data stream before the request is sent. If the stream is not connected
    /// yet (the worker dials it after fetching the descriptor) the data waits
    /// in the runner's queue, as in Python.
    DataFirst,
    /// Flink: the request first, then the data.
    #[default]
    RequestFirst,
}

/// Input for one source transform.
#[derive(Debug, Clone)]
pub struct BundleInput {
    pub transform_id: String,
    /// Each chunk is sent as one `Data` entry (whole elements, as every runner does).
    pub chunks: Vec<Bytes>,
}

/// Everything about one `ProcessBundle` run; build with the chained setters.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub descriptor_id: String,
    pub inputs: Vec<BundleInput>,
    /// Sink transforms whose `is_last` completes the bundle.
    pub sinks: Vec<String>,
    pub order: DataOrder,
    /// `None` = the runner's default.
    pub timeout: Option<Duration>,
    /// `false` leaves the input open forever (for abandonment tests).
    pub send_is_last: bool,
    /// Java-style framing: the last chunk and the `is_last` entries travel in
    /// one `Elements` message instead of a separate empty one.
    pub is_last_with_data: bool,
    /// With [`DataOrder::DataFirst`]: pause this long between handing the data
    /// to the stream and sending the request, so the worker surely holds the
    /// data as pending first (for tests of its pending-data buffer).
    pub request_delay: Option<Duration>,
    /// A fixed instruction id, so a test can address the bundle's data itself
    /// (e.g. send its `is_last` later); `None` = a fresh id.
    pub instruction_id: Option<String>,
}

impl BundleSpec {
    pub fn new(descriptor_id: impl Into<String>) -> Self {
        BundleSpec {
            descriptor_id: descriptor_id.into(),
            inputs: Vec::new(),
            sinks: Vec::new(),
            order: DataOrder::default(),
            timeout: None,
            send_is_last: true,
            is_last_with_data: false,
            request_delay: None,
            instruction_id: None,
        }
    }

    /// Uses `id` as the bundle's instruction id.
    pub fn instruction_id(mut self, id: impl Into<String>) -> Self {
        self.instruction_id = Some(id.into());
        self
    }

    /// Adds input for `transform_id` (a `beam:runner:source:v1` transform).
    pub fn input(
        mut self,
        transform_id: impl Into<String>,
        chunks: impl IntoIterator<Item = Bytes>,
    ) -> Self {
        self.inputs.push(BundleInput {
            transform_id: transform_id.into(),
            chunks: chunks.into_iter().collect(),
        });
        self
    }

    /// Waits for `is_last` on `transform_id` (a `beam:runner:sink:v1` transform).
    pub fn sink(mut self, transform_id: impl Into<String>) -> Self {
        self.sinks.push(transform_id.into());
        self
    }

    pub fn order(mut self, order: DataOrder) -> Self {
        self.order = order;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Never sends `is_last`: the bundle cannot finish its input.
    pub fn without_is_last(mut self) -> Self {
        self.send_is_last = false;
        self
    }

    pub fn is_last_with_data(mut self) -> Self {
        self.is_last_with_data = true;
        self
    }

    /// Sends the data first and the request `delay` later.
    pub fn data_first_with_delay(mut self, delay: Duration) -> Self {
        self.order = DataOrder::DataFirst;
        self.request_delay = Some(delay);
        self
    }

    /// The data messages for `instruction_id`, in send order.
    pub(crate) fn data_messages(&self, instruction_id: &str) -> Vec<Elements> {
        let data = |transform_id: &str, data: Bytes, is_last: bool| Data {
            instruction_id: instruction_id.to_string(),
            transform_id: transform_id.to_string(),
            data,
            is_last,
        };
        let mut messages: Vec<Elements> = self
            .inputs
            .iter()
            .flat_map(|input| {
                input.chunks.iter().map(|chunk| Elements {
                    data: vec![data(&input.transform_id, chunk.clone(), false)],
                    timers: vec![],
                })
            })
            .collect();
        if self.send_is_last {
            let last: Vec<Data> = self
                .inputs
                .iter()
                .map(|input| data(&input.transform_id, Bytes::new(), true))
                .collect();
            match messages.last_mut() {
                Some(tail) if self.is_last_with_data => tail.data.extend(last),
                _ => messages.push(Elements {
                    data: last,
                    timers: vec![],
                }),
            }
        }
        messages
    }
}

/// Output received for one transform.
#[derive(Debug, Clone, Default)]
pub struct OutputStream {
    /// Non-empty data chunks in arrival order.
    pub chunks: Vec<Bytes>,
    /// Total payload bytes.
    pub bytes: u64,
    /// Number of non-empty data entries.
    pub chunk_count: u64,
    /// Whether the `is_last` entry arrived.
    pub is_last: bool,
}

/// The outcome of [`crate::WorkerHandle::process_bundle`].
#[derive(Debug, Clone)]
pub struct BundleResult {
    pub instruction_id: String,
    pub response: InstructionResponse,
    /// Per transform id (normally the sink transforms).
    pub outputs: HashMap<String, OutputStream>,
    /// Protocol problems seen in this bundle's output (also kept on the worker).
    pub violations: Vec<String>,
}

impl BundleResult {
    /// `InstructionResponse.error`, if set.
    pub fn error(&self) -> Option<&str> {
        Some(self.response.error.as_str()).filter(|e| !e.is_empty())
    }

    /// Whether the worker reported success.
    pub fn is_ok(&self) -> bool {
        self.error().is_none()
    }

    /// All output received for `transform_id`, concatenated.
    pub fn output(&self, transform_id: &str) -> Bytes {
        let chunks = self.chunks(transform_id);
        match chunks {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut all = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
                for chunk in many {
                    all.extend_from_slice(chunk);
                }
                all.freeze()
            }
        }
    }

    pub fn chunks(&self, transform_id: &str) -> &[Bytes] {
        self.outputs
            .get(transform_id)
            .map_or(&[][..], |o| o.chunks.as_slice())
    }

    pub fn saw_is_last(&self, transform_id: &str) -> bool {
        self.outputs.get(transform_id).is_some_and(|o| o.is_last)
    }

    /// `ProcessBundleResponse.monitoring_infos` (empty for a failed bundle).
    pub fn monitoring_infos(&self) -> &[MonitoringInfo] {
        match &self.response.response {
            Some(instruction_response::Response::ProcessBundle(pb)) => &pb.monitoring_infos,
            _ => &[],
        }
    }

    /// The `beam:metric:element_count:v1` reported for `pcollection`.
    pub fn element_count(&self, pcollection: &str) -> Option<i64> {
        sum_int64(
            self.monitoring_infos(),
            urns::ELEMENT_COUNT,
            "PCOLLECTION",
            pcollection,
        )
    }

    /// The `beam:metric:data_channel:read_index:v1` reported for source `transform`.
    pub fn read_index(&self, transform: &str) -> Option<i64> {
        sum_int64(
            self.monitoring_infos(),
            urns::DATA_CHANNEL_READ_INDEX,
            "PTRANSFORM",
            transform,
        )
    }
}

/// Finds the monitoring info with `urn` whose label `key` equals `value`.
pub(crate) fn find_monitoring_info<'a>(
    infos: &'a [MonitoringInfo],
    urn: &str,
    key: &str,
    value: &str,
) -> Option<&'a MonitoringInfo> {
    infos
        .iter()
        .find(|mi| mi.urn == urn && mi.labels.get(key).is_some_and(|v| v == value))
}

/// The varint payload of a `beam:metrics:sum_int64:v1` info, if it is one.
pub(crate) fn sum_int64(
    infos: &[MonitoringInfo],
    urn: &str,
    key: &str,
    value: &str,
) -> Option<i64> {
    let mi = find_monitoring_info(infos, urn, key, value)?;
    if mi.r#type != urns::SUM_INT64_TYPE {
        return None;
    }
    match read_varint(&mi.payload) {
        Some((v, len)) if len == mi.payload.len() => Some(v as i64),
        _ => None,
    }
}

/// Accumulates one bundle's output as it arrives.
pub(crate) struct Collector {
    sinks: Vec<String>,
    pub(crate) outputs: HashMap<String, OutputStream>,
    pub(crate) violations: Vec<String>,
}

impl Collector {
    /// Collects for a bundle that completes on `sinks`.
    pub(crate) fn new(sinks: Vec<String>) -> Self {
        Collector {
            sinks,
            outputs: HashMap::new(),
            violations: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, data: Data) {
        // No key clone per entry: the transform id is only copied the first time.
        let output = match self.outputs.get_mut(&data.transform_id) {
            Some(output) => output,
            None => self.outputs.entry(data.transform_id.clone()).or_default(),
        };
        if output.is_last && (!data.data.is_empty() || data.is_last) {
            self.violations.push(format!(
                "data for '{}' after its is_last (Java runners throw here)",
                data.transform_id
            ));
        }
        if !data.data.is_empty() {
            output.bytes += data.data.len() as u64;
            output.chunk_count += 1;
            output.chunks.push(data.data);
        }
        output.is_last |= data.is_last;
    }

    pub(crate) fn sinks_done(&self) -> bool {
        self.sinks
            .iter()
            .all(|s| self.outputs.get(s).is_some_and(|o| o.is_last))
    }

    /// What is still missing, for timeout messages.
    pub(crate) fn describe(
        &self,
        instruction_id: &str,
        response: Option<&InstructionResponse>,
    ) -> String {
        let missing: Vec<&str> = self
            .sinks
            .iter()
            .filter(|s| !self.outputs.get(*s).is_some_and(|o| o.is_last))
            .map(String::as_str)
            .collect();
        let received: Vec<String> = self
            .outputs
            .iter()
            .map(|(t, o)| format!("{t}: {} bytes in {} chunks", o.bytes, o.chunk_count))
            .collect();
        format!(
            "bundle '{instruction_id}' to finish (response {}; is_last missing for {missing:?}; \
             output so far {received:?})",
            if response.is_some() {
                "received"
            } else {
                "not received"
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_messages_follow_the_requested_framing() {
        let spec = BundleSpec::new("d")
            .input("src", [Bytes::from_static(b"a"), Bytes::from_static(b"b")])
            .sink("snk");
        let m = spec.data_messages("i1");
        assert_eq!(m.len(), 3);
        assert!(m[2].data[0].is_last && m[2].data[0].data.is_empty());
        assert_eq!(m[0].data[0].instruction_id, "i1");
        let m = spec.clone().is_last_with_data().data_messages("i1");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].data.len(), 2);
        let m = spec.without_is_last().data_messages("i1");
        assert!(m.iter().all(|e| e.data.iter().all(|d| !d.is_last)));
        let empty = BundleSpec::new("d").input("src", []).data_messages("i2");
        assert_eq!(empty.len(), 1);
        assert!(empty[0].data[0].is_last);
    }
}
