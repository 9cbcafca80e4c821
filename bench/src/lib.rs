//! beam-bench: measures beam-rust-worker against Beam's Python worker pool and
//! against the bare gRPC transport, with the same driver and the same data.
//!
//! * [`driver`] plays the runner: it starts workers through any pool's
//!   `StartWorker` (using `beam-integration`'s runner stand-in), streams KV
//!   bundles through one stage, verifies every output byte and measures.
//! * [`ceiling`] holds the references: the transport echo (`grpc-echo`, a
//!   relay of the same gRPC bytes with no Beam logic), the loopback bound (the
//!   driver reading its own data stream back, no pool at all), and the
//!   runner side that drives both.
//! * [`procfs`] reads a pool's CPU time and memory from `/proc`.
//! * [`workload`] builds the elements and cuts them into bundles and chunks.
//! * [`python_stage`] loads the descriptor `bench/python/make_python_stage.py`
//!   writes for Beam's Python worker (a pickled `Map(identity)`).
//! * [`kafka`] bridges Kafka topics through a worker like Flink and KafkaIO do.
//! * [`kafka_stage`] runs the worker's fused Kafka → echo → Kafka stage, and
//!   its reference: a bare rdkafka consume → produce loop.

pub mod ceiling;
pub mod driver;
pub mod kafka;
pub mod kafka_stage;
pub mod procfs;
pub mod python_stage;
pub mod report;
pub mod stats;
pub mod workload;
