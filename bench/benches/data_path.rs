//! Micro-benchmarks of the worker's data path on a 1 MB chunk of 125-byte
//! `windowed_value(kv(bytes, bytes), global_window)` elements (10 B keys,
//! 100 B values): the coder's boundary scan, decode and encode; the echo stage
//! (zero-copy pass-through and decode/re-encode between coders); and outbound
//! batching (pieces gathered into one `Elements` message and serialized as
//! tonic does). Run: `cargo bench -p beam-bench --bench data_path`.

use std::hint::black_box;

use beam_bench::workload::wire_coder;
use beam_integration::PortCoder;
use beam_integration::elements::synthetic_kv_elements;
use beam_proto::fn_execution::{Elements, elements::Data};
use beam_rust_worker::coders::ElementParts;
use beam_rust_worker::transforms::{recode, split_whole_elements};
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

const CHUNK_ELEMENTS: usize = 8000; // 8000 × 125 B = 1 MB
const FLUSH_BYTES: usize = 1_000_000;

fn chunk(nullable: bool) -> Bytes {
    synthetic_kv_elements(CHUNK_ELEMENTS, 10, 100, nullable)
}

fn coder(c: &mut Criterion) {
    let wire = wire_coder(PortCoder::kv_bytes());
    let data = chunk(false);
    let mut g = c.benchmark_group("coder");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("boundary_scan_1MB", |b| {
        b.iter(|| {
            let mut pos = 0;
            let mut n = 0u32;
            while pos < data.len() {
                pos += wire.element_len(&data[pos..]).unwrap();
                n += 1;
            }
            black_box(n)
        })
    });
    g.bench_function("decode_1MB", |b| {
        b.iter(|| {
            let mut pos = 0;
            let mut sum = 0usize;
            while pos < data.len() {
                let (parts, len) = wire.decode(&data[pos..]).unwrap();
                sum += parts.key.map_or(0, <[u8]>::len) + parts.value.map_or(0, <[u8]>::len);
                pos += len;
            }
            black_box(sum)
        })
    });
    let mut parts: Vec<ElementParts<'_>> = Vec::with_capacity(CHUNK_ELEMENTS);
    let mut pos = 0;
    while pos < data.len() {
        let (p, len) = wire.decode(&data[pos..]).unwrap();
        parts.push(p);
        pos += len;
    }
    g.bench_function("encode_1MB", |b| {
        let mut out = BytesMut::with_capacity(data.len());
        b.iter(|| {
            out.clear();
            for p in &parts {
                wire.encode(p, &mut out).unwrap();
            }
            black_box(out.len())
        })
    });
    g.finish();
}

fn echo(c: &mut Criterion) {
    let plain = wire_coder(PortCoder::kv_bytes());
    let nullable = wire_coder(PortCoder::kv_nullable_bytes());
    let data = chunk(false);
    let mut g = c.benchmark_group("echo");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("pass_through_1MB", |b| {
        b.iter(|| black_box(split_whole_elements(&plain, &data, FLUSH_BYTES).unwrap()))
    });
    g.bench_function("re_encode_bytes_to_nullable_1MB", |b| {
        b.iter(|| black_box(recode(&plain, &nullable, &data, FLUSH_BYTES).unwrap()))
    });
    let nullable_data = chunk(true);
    g.bench_function("re_encode_nullable_to_bytes_1MB", |b| {
        b.iter(|| black_box(recode(&nullable, &plain, &nullable_data, FLUSH_BYTES).unwrap()))
    });
    g.finish();
}

/// Outbound batching: the worker gathers whole-element pieces as `Data` entries
/// of one `Elements` message until the flush threshold, then tonic serializes
/// it. Batching is internal to the worker's bundle module, so this measures the
/// same steps with the public pieces: cut a 1 MB chunk into pieces, gather them
/// into one message, encode it.
fn batching(c: &mut Criterion) {
    let wire = wire_coder(PortCoder::kv_bytes());
    let data = chunk(false);
    let mut g = c.benchmark_group("batching");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for piece in [1_000_000usize, 125_000, 12_500, 125] {
        g.bench_function(format!("gather_and_encode_1MB_in_{piece}B_pieces"), |b| {
            let mut out = BytesMut::with_capacity(data.len() + (1 << 20));
            b.iter(|| {
                let pieces = split_whole_elements(&wire, &data, piece).unwrap().pieces;
                let message = Elements {
                    data: pieces
                        .into_iter()
                        .map(|p| Data {
                            instruction_id: "bundle-1".to_owned(),
                            transform_id: "fn/write/pc2".to_owned(),
                            data: p,
                            is_last: false,
                        })
                        .collect(),
                    timers: vec![],
                };
                out.clear();
                message.encode(&mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, coder, echo, batching);
criterion_main!(benches);
