//! Compiles `proto/` with protox (pure Rust), so building needs no `protoc`.

const FILES: &[&str] = &[
    "org/apache/beam/model/pipeline/v1/endpoints.proto",
    "org/apache/beam/model/pipeline/v1/beam_runner_api.proto",
    "org/apache/beam/model/pipeline/v1/metrics.proto",
    "org/apache/beam/model/pipeline/v1/schema.proto",
    "org/apache/beam/model/pipeline/v1/external_transforms.proto",
    "org/apache/beam/model/fn_execution/v1/beam_fn_api.proto",
    "org/apache/beam/model/fn_execution/v1/beam_provision_api.proto",
    "org/apache/beam/model/expansion/v1/beam_expansion_api.proto",
    "org/apache/beam/model/job_management/v1/beam_artifact_api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(FILES, ["proto"])?;
    // The descriptor set is exported so the conformance test can compare it with Beam's.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("beam_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Payloads stay reference-counted slices of the receive buffer instead of Vec copies.
        .bytes(".")
        // Passed through untouched (see src/opaque.rs): keeps every field the SDK sent.
        .extern_path(
            ".org.apache.beam.model.pipeline.v1.Trigger",
            "crate::opaque::OpaqueMessage",
        )
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
