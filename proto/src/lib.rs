//! Beam model types and gRPC stubs generated from this crate's `proto/` folder.
//!
//! The files are our own minimal subset of Beam's model: same packages, message
//! names, service paths and field numbers, so they are wire compatible with any
//! Beam runner; fields we do not keep are skipped on decode.

#![allow(missing_docs)]

pub mod opaque;

/// Generated code refers across packages with `super::` paths, so the module
/// tree mirrors the proto packages; the short names below are what callers use.
#[allow(clippy::all)]
pub mod org {
    pub mod apache {
        pub mod beam {
            pub mod model {
                pub mod pipeline {
                    pub mod v1 {
                        tonic::include_proto!("org.apache.beam.model.pipeline.v1");
                    }
                }
                pub mod fn_execution {
                    pub mod v1 {
                        tonic::include_proto!("org.apache.beam.model.fn_execution.v1");
                    }
                }
                pub mod expansion {
                    pub mod v1 {
                        tonic::include_proto!("org.apache.beam.model.expansion.v1");
                    }
                }
                pub mod job_management {
                    pub mod v1 {
                        tonic::include_proto!("org.apache.beam.model.job_management.v1");
                    }
                }
            }
        }
    }
}

pub use org::apache::beam::model::expansion::v1 as expansion;
pub use org::apache::beam::model::fn_execution::v1 as fn_execution;
pub use org::apache::beam::model::job_management::v1 as job_management;
pub use org::apache::beam::model::pipeline::v1 as pipeline;

/// Serialized `FileDescriptorSet` of every file in `proto/`, for conformance checks.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/beam_descriptor.bin"));
