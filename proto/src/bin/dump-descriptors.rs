//! Writes the serialized `FileDescriptorSet` of our protos, so tools outside
//! Rust (the Python conformance test) can compare it with Beam's.
//!
//! Usage: `dump-descriptors [OUTPUT_FILE]` — without an argument the bytes go
//! to stdout.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let bytes = beam_proto::FILE_DESCRIPTOR_SET;
    let result = match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(&path, bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.to_string_lossy())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write to stdout: {e}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dump-descriptors: {e}");
            ExitCode::FAILURE
        }
    }
}
