//! libFuzzer entry point; the harness is `beam_rust_worker::fuzzing::wire_coder`
//! so the stable replay test (worker/tests/fuzz_corpus.rs) runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| beam_rust_worker::fuzzing::wire_coder(data));
