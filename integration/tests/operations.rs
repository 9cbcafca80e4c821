//! Issue 13: what an operator sees of the real binary: the metrics endpoint
//! and its probes, gRPC health on the pool port, and JSON logs. Each test
//! starts `beam-rust-worker` as a child process (on kernel-chosen ports) and
//! talks to it the way Prometheus, the kubelet and a log shipper would.

use std::time::Duration;

use beam_integration::process::{WorkerProcess, http_get, metric};
use beam_integration::{PortCoder, TestRunner, echo_descriptor, elements};
use beam_proto::fn_execution::elements::Data;
use beam_rust_worker::pool::POOL_SERVICE;
use bytes::Bytes;
use serde_json::Value;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Bound for anything that should happen soon on a loaded 2-core machine;
/// a hang still fails the test.
const SOON: Duration = Duration::from_secs(30);

fn start(extra: &[&str]) -> WorkerProcess {
    WorkerProcess::start(extra, SOON).unwrap_or_else(|e| panic!("{e}"))
}

async fn scrape(process: &WorkerProcess) -> String {
    let addr = process.metrics.expect("started with --metrics-port");
    let (status, body) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `/metrics` until `series` reads `want`; panics with the last scrape
/// if it does not within [`SOON`].
async fn wait_metric(process: &WorkerProcess, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let text = scrape(process).await;
        if metric(&text, series) == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {want}; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const STARTED_NATIVE: &str = r#"beam_rust_worker_workers_started_total{kind="native"}"#;
const ACTIVE_NATIVE: &str = r#"beam_rust_worker_workers_active{kind="native"}"#;
const FAILED_NATIVE: &str = r#"beam_rust_worker_workers_failed_total{kind="native"}"#;
const REFUSED: &str = "beam_rust_worker_start_worker_refused_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_workers_and_answers_probes() {
    let mut process = start(&["--metrics-port", "0"]);
    let addr = process.metrics.unwrap();
    assert_eq!(
        http_get(addr, "/healthz").await.unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(
        http_get(addr, "/readyz").await.unwrap(),
        (200, "ready\n".into())
    );
    assert_eq!(http_get(addr, "/no-such-page").await.unwrap().0, 404);

    let text = scrape(&process).await;
    assert!(
        text.ends_with("# EOF\n"),
        "not an OpenMetrics exposition:\n{text}"
    );
    let rss = metric(&text, "process_resident_memory_bytes").unwrap_or(0.0);
    assert!(
        rss > 1e6,
        "the pool's resident memory reads {rss} bytes:\n{text}"
    );
    for (series, want) in [
        (r#"beam_rust_worker_build_info{version="0.1.0"}"#, 1.0),
        (STARTED_NATIVE, 0.0),
        (ACTIVE_NATIVE, 0.0),
        (r#"beam_rust_worker_workers_active{kind="delegated"}"#, 0.0),
        (REFUSED, 0.0),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }

    let runner = TestRunner::start().await.unwrap();
    let first = runner.start_worker(process.pool, "ops_1").await.unwrap();
    let second = runner.start_worker(process.pool, "ops_2").await.unwrap();
    let text = scrape(&process).await;
    assert_eq!(metric(&text, STARTED_NATIVE), Some(2.0), "{text}");
    assert_eq!(metric(&text, ACTIVE_NATIVE), Some(2.0), "{text}");

    // A request the pool refuses starts nothing.
    let mut bad = runner.start_worker_request("ops_bad");
    if let Some(control) = bad.control_endpoint.as_mut() {
        control.url = "localhost".into(); // no port
    }
    let answer = TestRunner::call_start_worker(process.pool, bad, SOON)
        .await
        .unwrap();
    assert!(
        !answer.error.is_empty(),
        "a port-less endpoint was accepted"
    );
    let text = scrape(&process).await;
    assert_eq!(metric(&text, REFUSED), Some(1.0), "{text}");
    assert_eq!(metric(&text, STARTED_NATIVE), Some(2.0), "{text}");

    // StopWorker (Flink) and a closed control stream (Python runner) both
    // give the slot back; neither is a failure.
    TestRunner::stop_worker(process.pool, "ops_1", SOON)
        .await
        .unwrap();
    first.control_closed().await;
    wait_metric(&process, ACTIVE_NATIVE, 1.0).await;
    assert!(
        second.close_control(),
        "the second worker had no control stream"
    );
    wait_metric(&process, ACTIVE_NATIVE, 0.0).await;
    let text = scrape(&process).await;
    assert_eq!(metric(&text, FAILED_NATIVE), Some(0.0), "{text}");
    assert_eq!(metric(&text, STARTED_NATIVE), Some(2.0), "{text}");

    process.terminate().unwrap();
    let status = process.wait_exit(SOON).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

async fn health_check(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<i32, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    Ok(client.check(request).await?.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_readyz_and_grpc_health_not_serving_while_bundles_drain() {
    let mut process = start(&["--metrics-port", "0", "--grace-secs", "60"]);
    let metrics = process.metrics.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", process.pool))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let serving = ServingStatus::Serving as i32;
    assert_eq!(health_check(&mut health, "").await.unwrap(), serving);
    assert_eq!(
        health_check(&mut health, POOL_SERVICE).await.unwrap(),
        serving
    );
    let unknown = health_check(&mut health, "no.such.Service").await;
    assert_eq!(
        unknown.map_err(|s| s.code()),
        Err(tonic::Code::NotFound),
        "an unknown service must not be reported healthy"
    );
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first: HealthCheckResponse = tokio::time::timeout(SOON, watch.next())
        .await
        .expect("no first Watch message")
        .expect("Watch ended at once")
        .unwrap();
    assert_eq!(first.status, serving);

    // A bundle held open (no is_last) keeps the pool in its grace period.
    let runner = TestRunner::start().await.unwrap();
    let echo = echo_descriptor("ops-drain", runner.url(), PortCoder::kv_bytes());
    runner.add_descriptor(echo.descriptor.clone());
    let worker = runner
        .start_worker(process.pool, "ops_drain")
        .await
        .unwrap();
    let input = elements::kv_input(100);
    let held = tokio::spawn({
        let worker = worker.clone();
        let spec = echo
            .bundle([input.clone()])
            .instruction_id("held")
            .without_is_last();
        async move { worker.process_bundle(spec).await }
    });
    let started = tokio::time::timeout(SOON, async {
        while worker.descriptor_fetches() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(started.is_ok(), "the worker never started the held bundle");

    process.terminate().unwrap();
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let (status, body) = http_get(metrics, "/readyz").await.unwrap();
        if status == 503 {
            assert_eq!(body, "draining\n");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Alive (liveness must not fail a draining pod), still draining, and
    // the running worker is still counted.
    assert_eq!(http_get(metrics, "/healthz").await.unwrap().0, 200);
    assert_eq!(
        metric(&scrape(&process).await, ACTIVE_NATIVE),
        Some(1.0),
        "the draining worker is not counted"
    );
    assert!(
        process.wait_exit(Duration::from_millis(1)).await.is_err(),
        "the pool exited with a bundle running"
    );
    let next = tokio::time::timeout(SOON, watch.next())
        .await
        .expect("Watch did not report the drain");
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(
        next.map(|r| r.map(|r| r.status).ok()),
        Some(Some(not_serving))
    );
    // ... and then ends, rather than holding the server open for the whole
    // grace period.
    let ended = tokio::time::timeout(SOON, watch.next()).await;
    assert!(
        matches!(ended, Ok(None) | Ok(Some(Err(_)))),
        "Watch stream stayed open: {ended:?}"
    );

    worker.send_data(vec![Data {
        instruction_id: "held".into(),
        transform_id: echo.source_id.clone(),
        data: Bytes::new(),
        is_last: true,
    }]);
    let finished = tokio::time::timeout(SOON, held)
        .await
        .expect("held bundle did not finish")
        .unwrap()
        .unwrap();
    assert!(finished.is_ok(), "{:?}", finished.error());
    assert_eq!(finished.output(&echo.sink_id), input);
    let status = process.wait_exit(SOON).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_worker_and_instruction_fields() {
    let mut process = start(&["--log-format", "json"]);
    let runner = TestRunner::start().await.unwrap();
    let echo = echo_descriptor("json-stage", runner.url(), PortCoder::kv_bytes());
    runner.add_descriptor(echo.descriptor.clone());
    let worker = runner
        .start_worker(process.pool, "json_worker")
        .await
        .unwrap();
    // Input that is not a windowed KV fails the bundle, and the worker logs
    // why inside the bundle's span.
    let garbage = Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff");
    let failed = worker
        .process_bundle(echo.bundle([garbage]).instruction_id("json-bad-1"))
        .await
        .unwrap();
    assert!(failed.error().is_some(), "a bundle of garbage succeeded");
    let has_instruction = |line: &str| line.contains("\"instruction_id\":\"json-bad-1\"");
    let deadline = tokio::time::Instant::now() + SOON;
    while !process.output().iter().any(|l| has_instruction(l)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line names the failed bundle's instruction:\n{}",
            process.output().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process.terminate().unwrap();
    let status = process.wait_exit(SOON).await.unwrap();
    assert!(status.success(), "exit status {status}");

    let lines: Vec<Value> = process
        .output()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 4, "{lines:#?}");
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line[field].is_string(), "no {field} in {line}");
        }
        let level = line["level"].as_str().unwrap_or_default();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l["worker_id"] == "json_worker"),
        "no line carries the worker's id: {lines:#?}"
    );
    let bundle_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["instruction_id"] == "json-bad-1")
        .collect();
    for line in &bundle_lines {
        assert_eq!(line["worker_id"], "json_worker", "{line}");
    }
    assert!(
        bundle_lines
            .iter()
            .any(|l| ["WARN", "ERROR"].contains(&l["level"].as_str().unwrap_or_default())),
        "the bundle's failure is not logged with its instruction id: {bundle_lines:#?}"
    );
    // The runner's log still gets the worker's events, as before.
    assert!(
        !runner.logs_of("json_worker").is_empty(),
        "the runner's logging endpoint received nothing"
    );
}

/// Stands in for the `--python` of delegated workers: answers the pool's
/// `python -c "import apache_beam"` check, then crashes at once for worker
/// ids starting with `crash_` and otherwise runs until stopped.
const FAKE_PYTHON: &str = r#"#!/bin/sh
if [ "$1" = "-c" ]; then exit 0; fi
case "$WORKER_ID" in
  crash_*) echo "fake failure" >&2; exit 3 ;;
  *) exec sleep 1000 ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_workers_are_counted_started_failed_and_released() {
    use std::os::unix::fs::PermissionsExt;
    let python = std::env::temp_dir().join(format!("ops-fake-python-{}", std::process::id()));
    std::fs::write(&python, FAKE_PYTHON).unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let python_arg = python.to_string_lossy().into_owned();
    let mut process = start(&[
        "--metrics-port",
        "0",
        "--python",
        &python_arg,
        "--python-startup-window-ms",
        "300",
        "--python-stop-grace-secs",
        "1",
    ]);
    let started = r#"beam_rust_worker_workers_started_total{kind="delegated"}"#;
    let active = r#"beam_rust_worker_workers_active{kind="delegated"}"#;
    let failed = r#"beam_rust_worker_workers_failed_total{kind="delegated"}"#;

    let runner = TestRunner::start().await.unwrap();
    // Without the native marker in params, the pool starts a Python worker.
    let delegated = |id: &str| {
        let mut request = runner.start_worker_request(id);
        request.params.clear();
        request
    };
    let answer = TestRunner::call_start_worker(process.pool, delegated("crash_1"), SOON)
        .await
        .unwrap();
    assert!(answer.error.contains("exit"), "{}", answer.error);
    let text = scrape(&process).await;
    for (series, want) in [(started, 0.0), (active, 0.0), (failed, 1.0), (REFUSED, 0.0)] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }

    let answer = TestRunner::call_start_worker(process.pool, delegated("steady_1"), SOON)
        .await
        .unwrap();
    assert_eq!(answer.error, "");
    let text = scrape(&process).await;
    assert_eq!(metric(&text, started), Some(1.0), "{text}");
    assert_eq!(metric(&text, active), Some(1.0), "{text}");

    TestRunner::stop_worker(process.pool, "steady_1", SOON)
        .await
        .unwrap();
    wait_metric(&process, active, 0.0).await;
    // Stopped on request: not a failure.
    assert_eq!(metric(&scrape(&process).await, failed), Some(1.0));

    process.terminate().unwrap();
    let status = process.wait_exit(SOON).await.unwrap();
    let _ = std::fs::remove_file(&python);
    assert!(status.success(), "exit status {status}");
}
