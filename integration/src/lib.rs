//! beam-integration: an in-repo stand-in for an Apache Beam runner, to test
//! and load the worker pool over real gRPC.
//!
//! A [`TestRunner`] serves the runner side of the Fn API (BeamFnControl with
//! GetProcessBundleDescriptor, BeamFnData, BeamFnLogging, ProvisionService) on
//! one `127.0.0.1` port, like the Python runner, and insists on the
//! `worker_id` metadata real runners need. It starts workers through a pool's
//! `StartWorker` and hands back a [`WorkerHandle`] that runs bundles in either
//! runner's data order ([`DataOrder`]), sends any other instruction, and
//! records logs and protocol violations.
//!
//! Built for load as well as tests: payloads stay `Bytes` end to end (input
//! chunks are shared with the caller, never copied) and nothing is done per
//! element.
//!
//! ```no_run
//! # async fn demo(pool: std::net::SocketAddr) -> beam_integration::Result<()> {
//! use beam_integration::{PortCoder, TestRunner, echo_descriptor, encode_kv_element};
//! let runner = TestRunner::start().await?;
//! let echo = echo_descriptor("d1", runner.url(), PortCoder::kv_bytes());
//! runner.add_descriptor(echo.descriptor.clone());
//! let worker = runner.start_worker(pool, "worker_0").await?;
//! let element = bytes::Bytes::from(encode_kv_element(0, 0x0f, Some(b"k"), Some(b"v"), false));
//! let result = worker.process_bundle(echo.bundle([element.clone()])).await?;
//! assert_eq!(result.output(&echo.sink_id), element);
//! # Ok(()) }
//! ```

mod bundle;
mod descriptor;
pub mod elements;
mod error;
mod handle;
pub mod process;
mod runner;
mod state;

pub use bundle::{BundleInput, BundleResult, BundleSpec, DataOrder, OutputStream};
pub use descriptor::{
    EchoDescriptor, EchoDescriptorBuilder, ElementCoder, PortCoder, echo_descriptor,
    pickled_python_pardo, urns,
};
pub use elements::{
    Window, WindowKind, WireFormat, encode_kv_element, encode_kv_element_interval,
    encode_kv_param_element,
};
pub use error::{Result, RunnerError};
pub use handle::WorkerHandle;
pub use runner::{NATIVE_PARAMS, RunnerOptions, TestRunner, experiments_options};

#[cfg(test)]
mod self_test;
