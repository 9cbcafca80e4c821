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
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            flush_bytes: 1_000_000,
            flush_interval: None,
            max_pending_bytes: 1 << 30,
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
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_workers: 64,
            grace_period: Duration::from_secs(30),
            harness: HarnessConfig::default(),
        }
    }
}
