//! Shared setup for the integration tests: a real worker pool on a free port,
//! tracing that forwards worker logs to the runner, and common assertions.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Once, OnceLock};
use std::time::Duration;

use beam_integration::elements::{self, WireFormat};
use beam_integration::{BundleResult, BundleSpec, TestRunner, WorkerHandle};
use beam_proto::fn_execution::LogEntry;
use beam_rust_worker::config::PoolConfig;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous bound for things that should happen "soon" (release, logs), so a
/// slow debug build on 2 cores does not flake, while a hang still fails.
pub const SOON: Duration = Duration::from_secs(30);

/// A worker pool served in this process.
pub struct Pool {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), beam_rust_worker::pool::PoolError>>>,
}

impl Pool {
    pub async fn start(config: PoolConfig) -> Pool {
        init_tracing();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(beam_rust_worker::pool::serve(listener, config, async {
            let _ = stopped.await;
        }));
        Pool {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn start_default() -> Pool {
        Pool::start(PoolConfig::default()).await
    }

    /// Signals shutdown (as SIGTERM does) without waiting for the pool to end.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the pool and checks it ended without error (or panic).
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("pool did not stop within 60 s");
            result.expect("pool task panicked").expect("pool failed");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Installs, once per test binary, the worker's log forwarding layer (so
/// workers log to their runner, as in the real binary) and a stderr layer
/// governed by `RUST_LOG`.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::{EnvFilter, Layer};
        let _ = tracing_subscriber::registry()
            .with(beam_rust_worker::logging::RunnerLogLayer)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(EnvFilter::from_default_env()),
            )
            .try_init();
    });
}

/// A pool, a runner and one started worker.
pub async fn setup(config: PoolConfig) -> (Pool, TestRunner, WorkerHandle) {
    let pool = Pool::start(config).await;
    let runner = TestRunner::start().await.unwrap();
    let worker = runner.start_worker(pool.addr, "worker_0").await.unwrap();
    (pool, runner, worker)
}

pub use beam_integration::elements::kv_input;

/// Runs `spec` on `worker` and checks the worker reported success.
pub async fn run_ok(worker: &WorkerHandle, spec: BundleSpec) -> BundleResult {
    let result = worker.process_bundle(spec).await.unwrap();
    assert!(result.is_ok(), "{:?}", result.error());
    result
}

/// Polls `worker`'s logs until an entry for `instruction_id` arrives; `None`
/// if none did within `timeout`.
pub async fn wait_for_log(
    worker: &WorkerHandle,
    instruction_id: &str,
    timeout: Duration,
) -> Option<LogEntry> {
    tokio::time::timeout(timeout, async {
        loop {
            if let Some(entry) = worker
                .logs()
                .into_iter()
                .find(|e| e.instruction_id == instruction_id)
            {
                return entry;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .ok()
}

/// The 1M-element input, built once per test binary.
pub fn million() -> Bytes {
    static INPUT: OnceLock<Bytes> = OnceLock::new();
    INPUT.get_or_init(|| kv_input(1_000_000)).clone()
}

/// The worker behaved like a well-behaved harness towards this runner.
pub fn assert_clean(runner: &TestRunner, worker: &WorkerHandle) {
    assert_eq!(
        runner.rejected_calls(),
        0,
        "the worker made calls without worker_id metadata"
    );
    let violations = worker.protocol_violations();
    assert!(
        violations.is_empty(),
        "protocol violations: {violations:#?}"
    );
}

/// Every chunk holds whole elements; returns the total element count.
pub fn assert_whole_elements(chunks: &[Bytes], format: &WireFormat) -> usize {
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            elements::count_elements(chunk, format).unwrap_or_else(|e| {
                panic!(
                    "output chunk {i} ({} bytes) splits an element: {e}",
                    chunk.len()
                )
            })
        })
        .sum()
}
