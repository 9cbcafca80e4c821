//! Tunables shared by the pool and every harness it starts.

use std::time::Duration;

/// How each harness batches output and bounds what it buffers.
#[derive(Debug, Clone)]
pub struct HarnessConfig {
    /// Outbound data is sent once this many bytes of whole elements are pending
    /// (the runner's `data_buffer_size_limit` experiment overrides it per worker).
    pub flush_bytes: usize,
    /// Pending outbound data is also sent after this long, if set
    /// (`data_buffer_time_limit_ms` overrides it per worker).
    pub flush_interval: Option<Duration>,
    /// Bytes of input held for bundles whose `ProcessBundle` has not arrived yet,
    /// per data stream. The Python runner sends a whole bundle before its request.
    pub max_pending_bytes: usize,
    /// Early input held longer than this for a bundle whose `ProcessBundle`
    /// never came is dropped: a runner may give up on a bundle after sending its
    /// data, and that data must not fill the pending bound for good.
    pub pending_ttl: Duration,
    /// A runner endpoint that accepts TCP but sends nothing (no HTTP/2) within
    /// this long fails the connection, so the worker is released instead of
    /// waiting forever.
    pub connect_timeout: Duration,
    /// Finalization callbacks (offset commits) of a bundle the runner has not
    /// finalized after this long are dropped: Flink finalizes only on
    /// completed checkpoints, and never without checkpointing.
    pub finalization_ttl: Duration,
    /// The runner's bundle size in elements (Flink's `max_bundle_size`), if it
    /// sent one: operators that decide how much to read per bundle (the
    /// splittable Kafka read) read at most this many elements per restriction,
    /// so a runner that sizes bundles for its checkpoints gets bundles that size.
    pub max_bundle_elements: Option<u64>,
    /// How long one process call of a splittable DoFn (the streaming Kafka
    /// read) runs before it hands the rest of its restriction back to the
    /// runner as a residual. Every residual costs the runner bookkeeping (on
    /// Beam 2.62's Flink job server, keyed state that is never freed,
    /// apache/beam#27648), and Flink cannot complete a checkpoint while a
    /// bundle runs: longer windows mean fewer residuals, later checkpoints.
    pub process_window: Duration,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            flush_bytes: 1_000_000,
            flush_interval: None,
            max_pending_bytes: 1 << 30,
            pending_ttl: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            finalization_ttl: Duration::from_secs(600),
            max_bundle_elements: None,
            process_window: Duration::from_secs(1),
        }
    }
}

/// Pool-wide settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// `StartWorker` beyond this many live workers is refused with an error.
    pub max_workers: usize,
    /// How long running bundles may take to finish after a shutdown signal.
    pub grace_period: Duration,
    pub harness: HarnessConfig,
    /// Bounds on the pool's own server connections (runners calling StartWorker).
    pub connections: ConnectionLimits,
    /// How workers for environments other than ours (Python SDK processes) run.
    pub delegate: crate::delegate::DelegateConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_workers: 64,
            grace_period: Duration::from_secs(30),
            harness: HarnessConfig::default(),
            connections: ConnectionLimits::default(),
            delegate: crate::delegate::DelegateConfig::default(),
        }
    }
}

/// Bounds on the connections a server keeps.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections served at once; further peers wait in the listen backlog.
    /// Kept well below the usual 1024 file-handle limit, which the pool also
    /// needs for the connections its workers open to runners.
    pub max_connections: usize,
    /// A peer that sends nothing (not even the HTTP/2 preface) this long after
    /// connecting is disconnected.
    pub handshake_timeout: Duration,
    /// A connection with no bytes in either direction this long is closed;
    /// gRPC clients reconnect on their next call.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}
