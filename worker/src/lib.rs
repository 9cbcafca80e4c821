//! beam-rust-worker: an Apache Beam Fn API worker pool whose harnesses run
//! Kafka-shaped `KV<bytes, bytes>` stages natively.
//!
//! Layout, one module per concern: [`pool`] serves `BeamFnExternalWorkerPool` and
//! starts a [`control`] harness per worker; each harness fetches descriptors,
//! turns them into a [`graph`] of operators ([`ops`]) found in the
//! [`registry`], and runs bundles on the [`engine`], a chunk at a time, with
//! elements arriving and leaving over [`data`] channels (their output framed
//! without copying by [`outbound`]), decoded by
//! [`coders`] (and [`value_coder`] off the hot path). [`metrics`] builds the
//! monitoring infos the runner reads, [`logging`] forwards logs to the runner, [`expansion`] lets pipelines bind
//! our transforms to this pool, and [`delegate`] starts Beam's Python SDK
//! worker for every other environment. [`telemetry`] counts what operators
//! watch (workers, bundles, elements, Kafka progress) and [`admin`] serves it,
//! with health probes, on `--metrics-port`.

pub mod admin;
pub mod artifacts;
pub mod coders;
pub mod config;
pub mod control;
pub mod data;
pub mod delegate;
pub mod engine;
pub mod expansion;
#[doc(hidden)]
pub mod fuzzing;
pub mod graph;
pub mod grpc;
pub mod kafka;
pub mod log_format;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod outbound;
pub mod pool;
pub mod registry;
pub mod row;
pub mod telemetry;
pub mod transforms;
pub mod trim;
pub mod value_coder;
