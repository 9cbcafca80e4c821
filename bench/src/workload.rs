//! The data a run sends: fixed-size KV elements, cut into bundles and each
//! bundle into runner chunks of whole elements.
//!
//! Elements come from `beam-integration` (keys hold the element index, values a
//! pattern derived from it, so a dropped or reordered element changes the
//! bytes). At most [`WorkloadSpec::max_generated_bytes`] are generated; longer
//! runs cycle over them, so memory stays bounded whatever the element count.

use std::collections::HashMap;

use beam_integration::elements::{chunk_elements, synthetic_kv_elements};
use beam_integration::{PortCoder, WireFormat, echo_descriptor};
use beam_proto::fn_execution::RemoteGrpcPort;
use beam_rust_worker::coders::WireCoder;
use bytes::Bytes;
use prost::Message;

/// What to send.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkloadSpec {
    /// Elements in the whole run.
    pub elements: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Elements per bundle; 0 puts the whole run in one bundle.
    pub bundle_elements: u64,
    /// Bytes per runner `Data` chunk (whole elements, at least one); 0 sends
    /// each bundle as one chunk, as Beam's Python runner does.
    pub chunk_bytes: usize,
    /// KafkaIO's `kv(nullable(bytes), nullable(bytes))` instead of `kv(bytes, bytes)`.
    pub nullable: bool,
    /// The coder the worker must write (the sink port's): when it differs
    /// from `nullable`, the worker decodes and re-encodes every element.
    pub output_nullable: bool,
    /// Bound on the element bytes generated up front.
    pub max_generated_bytes: usize,
}

impl WorkloadSpec {
    pub fn wire_format(&self) -> WireFormat {
        kv_format(self.nullable)
    }
}

/// Windowed KV elements in the global window, nullable components or not.
fn kv_format(nullable: bool) -> WireFormat {
    if nullable {
        WireFormat::KV_NULLABLE_GLOBAL
    } else {
        WireFormat::KV_BYTES_GLOBAL
    }
}

/// One bundle's input: `chunks` concatenated equal `data`; `expected` is the
/// same elements in the output coder (`data` itself when the coders agree).
#[derive(Debug, Clone)]
pub struct BundleInput {
    pub data: Bytes,
    pub chunks: Vec<Bytes>,
    pub elements: u64,
    pub expected: Bytes,
}

/// Generated elements, ready to be handed out bundle by bundle.
#[derive(Debug)]
pub struct Workload {
    pub spec: WorkloadSpec,
    /// Encoded size of one element on the wire.
    pub element_len: usize,
    /// The same in the output coder.
    pub output_len: usize,
    /// Distinct bundles generated; bundle `i` of the run is `distinct[i % len]`.
    distinct: Vec<BundleInput>,
    elements_per_chunk: usize,
    bundle_elements: u64,
}

/// The workload cannot be built as asked.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("--elements must be at least 1")]
    NoElements,
    #[error("generated elements do not parse back: {0}")]
    Encoding(#[from] beam_integration::elements::ElementError),
}

impl Workload {
    pub fn build(spec: WorkloadSpec) -> Result<Workload, WorkloadError> {
        if spec.elements == 0 {
            return Err(WorkloadError::NoElements);
        }
        let element_len =
            synthetic_kv_elements(1, spec.key_size, spec.value_size, spec.nullable).len();
        let output_len =
            synthetic_kv_elements(1, spec.key_size, spec.value_size, spec.output_nullable).len();
        let bundle_elements = match spec.bundle_elements {
            0 => spec.elements,
            n => n.min(spec.elements),
        };
        // Whole bundles, at least one, within the generation bound.
        let cap = (spec.max_generated_bytes / element_len).max(1) as u64;
        let bundles_generated = (cap / bundle_elements).max(1);
        let generated = (bundles_generated * bundle_elements).min(spec.elements) as usize;
        let elements_per_chunk = match spec.chunk_bytes {
            0 => usize::MAX,
            b => (b / element_len).max(1),
        };
        let per_bundle = bundle_elements as usize;
        let inputs = bundles_of(&spec, spec.nullable, generated, per_bundle)?;
        let expected = if spec.output_nullable == spec.nullable {
            inputs.clone()
        } else {
            bundles_of(&spec, spec.output_nullable, generated, per_bundle)?
        };
        let distinct = inputs
            .into_iter()
            .zip(expected)
            .map(|(data, expected)| {
                let elements = (data.len() / element_len) as u64;
                let chunks = split_chunks(&data, element_len, elements_per_chunk);
                BundleInput {
                    data,
                    chunks,
                    elements,
                    expected,
                }
            })
            .collect();
        Ok(Workload {
            spec,
            element_len,
            output_len,
            distinct,
            elements_per_chunk,
            bundle_elements,
        })
    }

    /// Bundles in the whole run.
    pub fn bundle_count(&self) -> u64 {
        self.spec.elements.div_ceil(self.bundle_elements)
    }

    /// Bundle `index` of the run (`index < bundle_count()`); the last one may
    /// be shorter.
    pub fn bundle(&self, index: u64) -> BundleInput {
        let base = &self.distinct[(index % self.distinct.len() as u64) as usize];
        let remaining = self.spec.elements - index * self.bundle_elements;
        if remaining >= base.elements {
            return base.clone();
        }
        let data = base.data.slice(..remaining as usize * self.element_len);
        BundleInput {
            chunks: split_chunks(&data, self.element_len, self.elements_per_chunk),
            data,
            elements: remaining,
            expected: base.expected.slice(..remaining as usize * self.output_len),
        }
    }

    /// Bytes of element data in the whole run (one direction).
    pub fn total_bytes(&self) -> u64 {
        self.spec.elements * self.element_len as u64
    }
}

/// `generated` synthetic elements in the `nullable` or plain KV coder, cut
/// into bundles of `per_bundle`.
fn bundles_of(
    spec: &WorkloadSpec,
    nullable: bool,
    generated: usize,
    per_bundle: usize,
) -> Result<Vec<Bytes>, WorkloadError> {
    let all = synthetic_kv_elements(generated, spec.key_size, spec.value_size, nullable);
    Ok(chunk_elements(&all, &kv_format(nullable), per_bundle)?)
}

/// The worker's wire coder for data ports carrying `coder`, resolved by the
/// worker's own code from a descriptor's source port.
pub fn wire_coder(coder: PortCoder) -> WireCoder {
    let d = echo_descriptor("bench", "127.0.0.1:1", coder);
    let spec = d.descriptor.transforms[&d.source_id]
        .spec
        .clone()
        .expect("the echo descriptor's source has a spec");
    let port = RemoteGrpcPort::decode(spec.payload).expect("the stand-in writes a RemoteGrpcPort");
    let coders: HashMap<_, _> = d.descriptor.coders.into_iter().collect();
    WireCoder::resolve(&port.coder_id, &coders).expect("the worker resolves the stand-in's coders")
}

/// Zero-copy chunks of `per_chunk` fixed-size elements.
fn split_chunks(data: &Bytes, element_len: usize, per_chunk: usize) -> Vec<Bytes> {
    let step = element_len.saturating_mul(per_chunk).max(element_len);
    (0..data.len())
        .step_by(step)
        .map(|start| data.slice(start..(start + step).min(data.len())))
        .collect()
}

/// Whether `output` (chunks in arrival order) is byte for byte `expected`;
/// a memcmp per chunk, no per-element work.
pub fn same_bytes(expected: &[u8], output: &[Bytes]) -> bool {
    let mut pos = 0;
    for chunk in output {
        let end = pos + chunk.len();
        if end > expected.len() || expected[pos..end] != chunk[..] {
            return false;
        }
        pos = end;
    }
    pos == expected.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use beam_integration::elements::count_elements;

    fn spec(elements: u64, bundle: u64, chunk_bytes: usize, max: usize) -> WorkloadSpec {
        WorkloadSpec {
            elements,
            key_size: 10,
            value_size: 100,
            bundle_elements: bundle,
            chunk_bytes,
            nullable: false,
            output_nullable: false,
            max_generated_bytes: max,
        }
    }

    #[test]
    fn bundles_and_chunks_hold_whole_elements() {
        let w = Workload::build(spec(1050, 100, 1000, 1 << 20)).unwrap();
        assert_eq!(w.element_len, 125);
        assert_eq!(w.bundle_count(), 11);
        let mut total = 0;
        for i in 0..w.bundle_count() {
            let b = w.bundle(i);
            assert_eq!(b.chunks.concat(), b.data.to_vec());
            for c in &b.chunks {
                assert_eq!(c.len() % 125, 0);
                assert!(c.len() <= 1000);
            }
            assert_eq!(
                count_elements(&b.data, &w.spec.wire_format()).unwrap() as u64,
                b.elements
            );
            total += b.elements;
        }
        assert_eq!(total, 1050);
        assert_eq!(w.bundle(10).elements, 50);
    }

    #[test]
    fn generation_is_bounded_and_cycles() {
        // Room for 2 bundles of 10 elements: bundle 2 repeats bundle 0.
        let w = Workload::build(spec(100, 10, 0, 25 * 125)).unwrap();
        assert_eq!(w.distinct.len(), 2);
        assert_eq!(w.bundle(2).data, w.bundle(0).data);
        assert_eq!(
            w.bundle(0).chunks.len(),
            1,
            "chunk_bytes 0 = one chunk per bundle"
        );
        assert_eq!(w.total_bytes(), 100 * 125);
    }

    #[test]
    fn one_bundle_for_everything_and_nullable_elements() {
        let mut s = spec(7, 0, 0, 1 << 20);
        s.nullable = true;
        s.output_nullable = true;
        let w = Workload::build(s).unwrap();
        assert_eq!(w.bundle_count(), 1);
        assert_eq!(w.element_len, 127);
        assert_eq!(w.bundle(0).elements, 7);
    }

    #[test]
    fn re_encoded_output_is_expected_in_the_output_coder() {
        let mut s = spec(25, 10, 0, 1 << 20);
        s.output_nullable = true;
        let w = Workload::build(s).unwrap();
        assert_eq!((w.element_len, w.output_len), (125, 127));
        let last = w.bundle(2);
        assert_eq!((last.elements, last.expected.len()), (5, 5 * 127));
        let out = WireFormat::KV_NULLABLE_GLOBAL;
        assert_eq!(count_elements(&last.expected, &out).unwrap(), 5);
        assert_eq!(w.bundle(0).data, w.bundle(0).chunks.concat());
    }

    #[test]
    fn byte_comparison_spans_chunks() {
        let expected = b"abcdef";
        let ok = [Bytes::from_static(b"ab"), Bytes::from_static(b"cdef")];
        assert!(same_bytes(expected, &ok));
        assert!(!same_bytes(expected, &ok[..1]));
        assert!(!same_bytes(expected, &[Bytes::from_static(b"abcdeX")]));
        assert!(!same_bytes(expected, &[Bytes::from_static(b"abcdefg")]));
        assert!(same_bytes(b"", &[]));
    }
}
