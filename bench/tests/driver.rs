//! The load driver against an in-process worker pool and the in-process echo
//! server: small workloads, checked for correctness only (no timings asserted).

use std::net::SocketAddr;
use std::time::Duration;

use beam_bench::driver::{self, RunConfig, TargetConfig, TargetKind};
use beam_bench::workload::WorkloadSpec;
use beam_integration::DataOrder;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

async fn start_pool() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(beam_rust_worker::pool::serve(
        listener,
        beam_rust_worker::config::PoolConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

async fn start_echo() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(beam_bench::ceiling::serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn config(kind: TargetKind, pool: SocketAddr, workers: usize, order: DataOrder) -> RunConfig {
    RunConfig {
        label: "test".into(),
        target: TargetConfig {
            kind,
            pool,
            python_descriptor: None,
            workers,
            order,
            nullable: false,
            output_nullable: false,
            timeout: Duration::from_secs(60),
            pool_wait: Duration::from_secs(10),
        },
        workload: WorkloadSpec {
            elements: 5_000,
            key_size: 10,
            value_size: 100,
            bundle_elements: 700,
            chunk_bytes: 10_000,
            nullable: false,
            output_nullable: false,
            max_generated_bytes: 1 << 20,
        },
        in_flight: 3,
        pool_pid: Some(std::process::id()),
        max_duration: None,
        progress_every: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_echo_round_trips_every_byte_in_both_data_orders() {
    let (pool, _stop) = start_pool().await;
    for (workers, order) in [(1, DataOrder::RequestFirst), (2, DataOrder::DataFirst)] {
        let report = driver::run(config(TargetKind::KvEcho, pool, workers, order))
            .await
            .unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!(report.elements, 5_000);
        assert_eq!(report.bundles, 8);
        assert_eq!(report.bytes, 5_000 * 125);
        assert_eq!(report.workers, workers);
        assert_eq!(report.connect_ms.len(), workers);
        assert_eq!(report.bundle_latency.count, 8);
        assert!(report.pool_usage.is_some());
        assert!(!report.truncated);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nullable_elements_and_a_pool_that_is_not_there() {
    let (pool, _stop) = start_pool().await;
    let mut c = config(TargetKind::KvEcho, pool, 1, DataOrder::RequestFirst);
    c.target.nullable = true;
    c.workload.nullable = true;
    c.target.output_nullable = true;
    c.workload.output_nullable = true;
    let report = driver::run(c).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.element_bytes, 127);

    // Plain in, nullable out: the worker re-encodes, the driver checks the
    // elements in the output coder.
    let mut c = config(TargetKind::KvEcho, pool, 1, DataOrder::RequestFirst);
    c.target.output_nullable = true;
    c.workload.output_nullable = true;
    let report = driver::run(c).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.elements, 5_000);

    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = config(TargetKind::KvEcho, closed, 1, DataOrder::RequestFirst);
    c.target.pool_wait = Duration::from_millis(200);
    let err = driver::run(c).await.unwrap_err();
    assert!(err.to_string().contains("is the pool running"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_the_same_workload() {
    let (echo, _stop) = start_echo().await;
    let report = driver::run(config(TargetKind::Echo, echo, 2, DataOrder::RequestFirst))
        .await
        .unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.elements, 5_000);
    assert_eq!(report.target, "echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_reads_the_drivers_own_stream_back_without_a_pool() {
    // Nothing listens on this address: the loopback lane must not dial it.
    let nowhere = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = config(TargetKind::Loopback, nowhere, 2, DataOrder::RequestFirst);
    c.target.pool_wait = Duration::from_millis(200);
    let report = driver::run(c).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.elements, 5_000);
    assert_eq!(report.target, "loopback");
    assert_eq!(report.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_the_worker_cannot_run_is_reported_not_hidden() {
    // python-map against our worker: the pickled DoFn is refused, so the
    // warm-up bundle fails and the run says why.
    let (pool, _stop) = start_pool().await;
    let dir = std::env::temp_dir().join(format!("bench-test-stage-{}", std::process::id()));
    let mut echo = beam_integration::EchoDescriptor::builder("x", "placeholder:0")
        .echo_urn(beam_integration::urns::PARDO)
        .build()
        .descriptor;
    echo.transforms.remove("echo");
    echo.transforms.insert(
        "py".into(),
        beam_integration::pickled_python_pardo("pc1", "pc2"),
    );
    std::fs::write(&dir, prost::Message::encode_to_vec(&echo)).unwrap();
    let mut c = config(TargetKind::PythonMap, pool, 1, DataOrder::RequestFirst);
    c.target.python_descriptor = Some(dir.clone());
    let err = driver::run(c).await.unwrap_err();
    std::fs::remove_file(&dir).unwrap();
    assert!(err.to_string().contains("warm-up"), "{err}");
}
