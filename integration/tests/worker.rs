//! End-to-end tests of the worker pool against the in-repo stand-in runner,
//! over real gRPC on loopback. Every test checks output bytes, not just success.

mod common;

use std::time::Duration;

use beam_integration::elements::{
    self, PANE_NO_FIRING, PANE_ON_TIME_AND_ONLY_FIRING, TIMESTAMP_MIN_MILLIS, Window, WindowKind,
    WireFormat,
};
use beam_integration::{
    BundleSpec, DataOrder, EchoDescriptor, ElementCoder, PortCoder, RunnerError, TestRunner,
    echo_descriptor, encode_kv_element, encode_kv_element_interval, encode_kv_param_element,
    experiments_options, pickled_python_pardo, urns,
};
use beam_proto::fn_execution::{
    FinalizeBundleRequest, HarnessMonitoringInfosRequest, MonitoringInfosMetadataRequest,
    ProcessBundleProgressRequest, ProcessBundleSplitRequest, SampleDataRequest,
    instruction_request::Request, instruction_response::Response,
};
use beam_proto::pipeline::ApiServiceDescriptor;
use beam_rust_worker::config::{HarnessConfig, PoolConfig};
use bytes::Bytes;
use common::{
    Pool, SOON, assert_clean, assert_whole_elements, kv_input, million, run_ok, setup, wait_for_log,
};

/// The worker batches log entries for 100 ms; this is ample.
const LOG_WAIT: Duration = Duration::from_secs(10);

/// Registers a plain `kv(bytes, bytes)` echo descriptor with the runner.
fn kv_echo(runner: &TestRunner, id: &str) -> EchoDescriptor {
    let echo = echo_descriptor(id, runner.url(), PortCoder::kv_bytes());
    runner.add_descriptor(echo.descriptor.clone());
    echo
}

/// Registers the "python-stage" descriptor: an echo stage with a pickled
/// Python DoFn (`transform_id`) fused in, which this worker cannot run.
fn python_stage(runner: &TestRunner, transform_id: &str) -> EchoDescriptor {
    let python = EchoDescriptor::builder("python-stage", runner.url())
        .extra_transform(transform_id, pickled_python_pardo("pc2", "pc3"))
        .build();
    runner.add_descriptor(python.descriptor.clone());
    python
}

fn chunks_of(input: &Bytes, per_chunk: usize) -> Vec<Bytes> {
    elements::chunk_elements(input, &WireFormat::KV_BYTES_GLOBAL, per_chunk).unwrap()
}

fn with_harness(harness: HarnessConfig) -> PoolConfig {
    PoolConfig {
        harness,
        ..PoolConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_order_data_before_request() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let input = kv_input(100);
    // The first bundle's data waits in the runner until the worker dials the
    // data stream; the second finds it connected; the third makes sure the
    // worker really held the data as pending before the request came.
    for spec in [
        echo.bundle(chunks_of(&input, 30))
            .order(DataOrder::DataFirst),
        echo.bundle(chunks_of(&input, 30))
            .order(DataOrder::DataFirst),
        echo.bundle(chunks_of(&input, 30))
            .data_first_with_delay(Duration::from_millis(200)),
    ] {
        let result = run_ok(&worker, spec).await;
        assert!(result.saw_is_last(&echo.sink_id));
        assert_eq!(result.output(&echo.sink_id), input);
        assert_eq!(result.element_count(&echo.input_pcollection), Some(100));
        assert_eq!(result.element_count(&echo.output_pcollection), Some(100));
        assert_eq!(result.read_index(&echo.source_id), Some(99));
    }
    assert_eq!(
        worker.data_streams_opened(),
        1,
        "one Data stream per (worker, url)"
    );
    assert_eq!(worker.descriptor_fetches(), 1, "descriptors are cached");
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flink_order_request_before_data() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let input = kv_input(100);
    let separate_is_last = echo
        .bundle(chunks_of(&input, 7))
        .order(DataOrder::RequestFirst);
    // Java's aggregator puts the last chunk and is_last in one message.
    let java_framing = separate_is_last.clone().is_last_with_data();
    for spec in [separate_is_last, java_framing] {
        let result = run_ok(&worker, spec).await;
        assert_eq!(result.output(&echo.sink_id), input);
        assert_eq!(result.element_count(&echo.input_pcollection), Some(100));
    }
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bundle_sends_is_last_and_zero_counts() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    for order in [DataOrder::DataFirst, DataOrder::RequestFirst] {
        let result = run_ok(&worker, echo.bundle([]).order(order)).await;
        assert!(
            result.saw_is_last(&echo.sink_id),
            "is_last is owed even for no output"
        );
        assert!(result.output(&echo.sink_id).is_empty());
        assert_eq!(result.element_count(&echo.input_pcollection), Some(0));
        assert_eq!(result.element_count(&echo.output_pcollection), Some(0));
        assert_eq!(result.read_index(&echo.source_id), Some(-1));
    }
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_element_bundle() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let element = Bytes::from(encode_kv_element(
        1_454_293_425_000,
        PANE_ON_TIME_AND_ONLY_FIRING,
        Some(b"key"),
        Some(b"value"),
        false,
    ));
    let result = run_ok(&worker, echo.bundle([element.clone()])).await;
    assert_eq!(result.output(&echo.sink_id), element);
    assert_eq!(result.element_count(&echo.output_pcollection), Some(1));
    assert_eq!(result.read_index(&echo.source_id), Some(0));
    assert_clean(&runner, &worker);
}

/// 1M × 125 B = 125 MB as one chunk, the way the Python runner sends a bundle.
/// Slow in debug builds (a few seconds each); CI may prefer `--release`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_elements_in_one_chunk() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let input = million();
    let result = run_ok(
        &worker,
        echo.bundle([input.clone()]).order(DataOrder::DataFirst),
    )
    .await;
    assert_eq!(
        result.element_count(&echo.input_pcollection),
        Some(1_000_000)
    );
    assert_eq!(
        result.element_count(&echo.output_pcollection),
        Some(1_000_000)
    );
    assert_eq!(result.read_index(&echo.source_id), Some(999_999));
    assert!(
        result.output(&echo.sink_id) == input,
        "output differs from input"
    );
    assert_clean(&runner, &worker);
}

/// The same 1M elements in 1000-element chunks, Flink order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_elements_in_many_chunks() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let input = million();
    let chunks = chunks_of(&input, 1000);
    assert_eq!(chunks.len(), 1000);
    let result = run_ok(&worker, echo.bundle(chunks).order(DataOrder::RequestFirst)).await;
    assert_eq!(
        result.element_count(&echo.input_pcollection),
        Some(1_000_000)
    );
    assert_eq!(
        result.element_count(&echo.output_pcollection),
        Some(1_000_000)
    );
    assert!(
        result.output(&echo.sink_id) == input,
        "output differs from input"
    );
    assert_eq!(
        assert_whole_elements(result.chunks(&echo.sink_id), &WireFormat::KV_BYTES_GLOBAL),
        1_000_000
    );
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bundles_on_one_worker() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let mut running = Vec::new();
    for i in 0..8usize {
        let input = kv_input(1000 + i * 37);
        let order = if i % 2 == 0 {
            DataOrder::DataFirst
        } else {
            DataOrder::RequestFirst
        };
        let spec = echo.bundle(chunks_of(&input, 100)).order(order);
        let worker = worker.clone();
        running.push(tokio::spawn(async move {
            (input, worker.process_bundle(spec).await)
        }));
    }
    for bundle in running {
        let (input, result) = bundle.await.unwrap();
        let result = result.unwrap();
        assert!(result.is_ok(), "{:?}", result.error());
        assert_eq!(
            result.output(&echo.sink_id),
            input,
            "outputs were mixed up between bundles"
        );
        let n = (input.len() / 125) as i64;
        assert_eq!(result.element_count(&echo.input_pcollection), Some(n));
    }
    assert_eq!(worker.data_streams_opened(), 1);
    assert_clean(&runner, &worker);
}

/// Two Python runner processes both call their first worker `worker_0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_start_the_same_worker_id() {
    let pool = Pool::start_default().await;
    let first = TestRunner::start().await.unwrap();
    let second = TestRunner::start().await.unwrap();
    let a = first.start_worker(pool.addr, "worker_0").await.unwrap();
    let b = second.start_worker(pool.addr, "worker_0").await.unwrap();
    let echo_a = kv_echo(&first, "stage-1");
    let echo_b = kv_echo(&second, "stage-1");
    let (input_a, input_b) = (kv_input(10), kv_input(20));
    let (ra, rb) = tokio::join!(
        a.process_bundle(echo_a.bundle([input_a.clone()])),
        b.process_bundle(echo_b.bundle([input_b.clone()])),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra.is_ok() && rb.is_ok(),
        "{:?} / {:?}",
        ra.error(),
        rb.error()
    );
    assert_eq!(ra.output(&echo_a.sink_id), input_a);
    assert_eq!(rb.output(&echo_b.sink_id), input_b);
    assert_clean(&first, &a);
    assert_clean(&second, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nullable_keys_and_values_pass_through() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = echo_descriptor("kafka-stage", runner.url(), PortCoder::kv_nullable_bytes());
    runner.add_descriptor(echo.descriptor.clone());
    type Row<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
    let rows: [Row; 5] = [
        (Some(b"k1"), Some(b"v1")),
        (None, Some(b"value without key")),
        (Some(b"tombstone"), None),
        (None, None),
        (Some(b""), Some(b"")),
    ];
    let mut input = Vec::new();
    for (i, (key, value)) in rows.iter().enumerate() {
        input.extend(encode_kv_element(
            1000 + i as i64,
            PANE_NO_FIRING,
            *key,
            *value,
            true,
        ));
    }
    let result = run_ok(&worker, echo.bundle([Bytes::from(input.clone())])).await;
    assert_eq!(result.output(&echo.sink_id), input);
    let output = result.output(&echo.sink_id);
    let parsed = elements::decode_elements(&output, &WireFormat::KV_NULLABLE_GLOBAL).unwrap();
    assert_eq!(parsed[1].key, None);
    assert_eq!(parsed[3].value, None);
    assert_eq!(parsed[4].key, Some(&b""[..]), "empty is not null");
    assert_eq!(result.element_count(&echo.output_pcollection), Some(5));
    assert_clean(&runner, &worker);
}

fn recode_descriptor(runner: &TestRunner, id: &str) -> EchoDescriptor {
    let echo = EchoDescriptor::builder(id, runner.url())
        .input_coder(PortCoder::kv_nullable_bytes())
        .output_coder(PortCoder::kv_bytes())
        .build();
    runner.add_descriptor(echo.descriptor.clone());
    echo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recode_nullable_input_to_plain_bytes_output() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = recode_descriptor(&runner, "recode");
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..50i64 {
        let key = format!("key-{i}");
        let value = vec![i as u8; i as usize];
        input.extend(encode_kv_element(
            i,
            PANE_NO_FIRING,
            Some(key.as_bytes()),
            Some(&value),
            true,
        ));
        expected.extend(encode_kv_element(
            i,
            PANE_NO_FIRING,
            Some(key.as_bytes()),
            Some(&value),
            false,
        ));
    }
    let input = Bytes::from(input);
    let chunks = elements::chunk_elements(&input, &WireFormat::KV_NULLABLE_GLOBAL, 8).unwrap();
    let result = run_ok(&worker, echo.bundle(chunks)).await;
    assert_eq!(result.output(&echo.sink_id), expected);
    assert_eq!(result.element_count(&echo.output_pcollection), Some(50));
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recode_of_a_null_key_into_plain_bytes_fails_naming_the_null() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = recode_descriptor(&runner, "recode");
    let mut input = encode_kv_element(0, PANE_NO_FIRING, Some(b"fine"), Some(b"v"), true);
    input.extend(encode_kv_element(1, PANE_NO_FIRING, None, Some(b"v"), true));
    let result = worker
        .process_bundle(echo.bundle([Bytes::from(input)]))
        .await
        .unwrap();
    let error = result
        .error()
        .expect("a null key cannot be written with bytes:v1");
    assert!(
        error.to_lowercase().contains("null"),
        "error does not name the null: {error}"
    );
    // The worker survives it.
    let input = encode_kv_element(2, PANE_NO_FIRING, Some(b"k"), Some(b"v"), true);
    let ok = run_ok(&worker, echo.bundle([Bytes::from(input)])).await;
    assert_eq!(
        ok.output(&echo.sink_id),
        encode_kv_element(2, PANE_NO_FIRING, Some(b"k"), Some(b"v"), false)
    );
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn param_windowed_value_input_is_expanded_to_windowed_value() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let cases = [
        (TIMESTAMP_MIN_MILLIS, Window::Global, PANE_NO_FIRING),
        (
            1_454_293_425_000,
            Window::Interval {
                start_millis: 1_454_289_825_000,
                end_millis: 1_454_293_425_000,
            },
            PANE_ON_TIME_AND_ONLY_FIRING,
        ),
    ];
    for (i, (ts, window, pane)) in cases.into_iter().enumerate() {
        let echo = EchoDescriptor::builder(format!("param-{i}"), runner.url())
            .input_coder(PortCoder::param(ElementCoder::KvBytes, ts, window, pane))
            .output_coder(PortCoder::windowed(ElementCoder::KvBytes, window.kind()))
            .build();
        runner.add_descriptor(echo.descriptor.clone());
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for k in 0..20u8 {
            input.extend(encode_kv_param_element(Some(&[k]), Some(&[k; 3]), false));
            elements::put_kv_element(
                &mut expected,
                ts,
                window,
                pane,
                Some(&[k]),
                Some(&[k; 3]),
                false,
            );
        }
        let result = worker
            .process_bundle(echo.bundle([Bytes::from(input)]))
            .await
            .unwrap();
        assert!(result.is_ok(), "{window:?}: {:?}", result.error());
        assert_eq!(result.output(&echo.sink_id), expected, "{window:?}");
        assert_eq!(result.element_count(&echo.input_pcollection), Some(20));
    }
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_windows_and_length_prefix_pass_through() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let interval = echo_descriptor(
        "interval",
        runner.url(),
        PortCoder::windowed(ElementCoder::KvBytes, WindowKind::Interval),
    );
    let prefixed = echo_descriptor(
        "length-prefixed",
        runner.url(),
        PortCoder::windowed(ElementCoder::KvLengthPrefixBytes, WindowKind::Global),
    );
    runner.add_descriptor(interval.descriptor.clone());
    runner.add_descriptor(prefixed.descriptor.clone());
    let mut windowed = Vec::new();
    for i in 0..10i64 {
        windowed.extend(encode_kv_element_interval(
            i * 1000 + 5,
            PANE_ON_TIME_AND_ONLY_FIRING,
            i * 1000,
            (i + 1) * 1000,
            Some(b"k"),
            Some(&[i as u8; 4]),
            false,
        ));
    }
    let result = interval.bundle([Bytes::from(windowed.clone())]);
    let result = run_ok(&worker, result).await;
    assert_eq!(result.output(&interval.sink_id), windowed);

    let input = kv_input(10);
    let result = run_ok(&worker, prefixed.bundle([input.clone()])).await;
    assert_eq!(result.output(&prefixed.sink_id), input);
    assert_clean(&runner, &worker);
}

/// What a Python pipeline with a global EXTERNAL environment sends: a pickled
/// DoFn fused into the stage. The worker must refuse it by name and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_transform_fails_by_name_and_worker_goes_on() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let python = python_stage(&runner, "ref_AppliedPTransform_Map_7");
    let result = worker
        .process_bundle(python.bundle([kv_input(5)]))
        .await
        .unwrap();
    let error = result
        .error()
        .expect("a pickled Python DoFn cannot run here");
    assert!(
        error.contains(urns::PICKLED_PYTHON_DOFN) || error.contains(urns::PARDO),
        "error does not name the transform it cannot run: {error}"
    );

    let unknown = EchoDescriptor::builder("unknown-urn", runner.url())
        .echo_urn("beam:transform:somebody_else:v1")
        .build();
    runner.add_descriptor(unknown.descriptor.clone());
    let result = worker
        .process_bundle(unknown.bundle([kv_input(5)]))
        .await
        .unwrap();
    let error = result.error().expect("an unknown URN cannot run here");
    assert!(error.contains("beam:transform:somebody_else:v1"), "{error}");

    let echo = kv_echo(&runner, "good-stage");
    let input = kv_input(5);
    let result = run_ok(&worker, echo.bundle([input.clone()])).await;
    assert_eq!(result.output(&echo.sink_id), input);
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_elements_fail_the_bundle_not_the_worker() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let nullable = echo_descriptor("nullable", runner.url(), PortCoder::kv_nullable_bytes());
    runner.add_descriptor(nullable.descriptor.clone());
    let good = kv_input(3);
    let truncated = good.slice(..good.len() - 1);
    let mut bad_marker = encode_kv_element(0, PANE_NO_FIRING, Some(b"k"), Some(b"v"), true);
    bad_marker[13] = 0x07;
    let huge_length = {
        let mut e = encode_kv_element(0, PANE_NO_FIRING, Some(b"k"), Some(b"v"), false);
        e.truncate(13);
        e.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        e
    };
    let cases: Vec<(&EchoDescriptor, Bytes, &str)> = vec![
        (&echo, truncated, "truncated element"),
        (&nullable, Bytes::from(bad_marker), "bad null marker"),
        (&echo, Bytes::from(huge_length), "length beyond the chunk"),
        (&echo, Bytes::from_static(&[0xff; 3]), "garbage"),
    ];
    for (descriptor, chunk, what) in cases {
        for order in [DataOrder::DataFirst, DataOrder::RequestFirst] {
            let result = worker
                .process_bundle(descriptor.bundle([chunk.clone()]).order(order))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(result.error().is_some(), "{what} was accepted");
        }
    }
    let result = run_ok(&worker, echo.bundle([good.clone()])).await;
    assert_eq!(result.output(&echo.sink_id), good);
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_control_mid_bundle_releases_the_worker() {
    let (pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let stuck = {
        let worker = worker.clone();
        let spec = echo.bundle([kv_input(10)]).without_is_last();
        tokio::spawn(async move { worker.process_bundle(spec).await })
    };
    tokio::time::timeout(SOON, worker.data_stream_connected())
        .await
        .expect("the worker never opened its data stream");
    assert!(worker.drop_control());
    tokio::time::timeout(SOON, worker.data_stream_closed())
        .await
        .expect("the worker kept its data stream after losing control");
    let outcome = stuck.await.unwrap();
    assert!(
        matches!(outcome, Err(RunnerError::ControlClosed { .. })),
        "{outcome:?}"
    );
    assert_clean(&runner, &worker);
    // The pool is still serving.
    let again = runner.start_worker(pool.addr, "worker_1").await.unwrap();
    let input = kv_input(3);
    let result = again
        .process_bundle(echo.bundle([input.clone()]))
        .await
        .unwrap();
    assert_eq!(result.output(&echo.sink_id), input);
    pool.shutdown().await;
}

/// The Python runner ends the control stream with OK at job end and never
/// calls StopWorker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_control_cleanly_releases_the_worker() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    run_ok(&worker, echo.bundle([kv_input(3)])).await;
    assert!(worker.close_control());
    tokio::time::timeout(SOON, worker.data_stream_closed())
        .await
        .expect("the worker kept its data stream after the control stream ended");
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_worker_releases_the_worker() {
    let (pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    worker
        .process_bundle(echo.bundle([kv_input(3)]))
        .await
        .unwrap();
    let response = TestRunner::stop_worker(pool.addr, "worker_0", SOON)
        .await
        .unwrap();
    assert_eq!(response.error, "");
    tokio::time::timeout(SOON, worker.control_closed())
        .await
        .expect("StopWorker did not end the control stream");
    tokio::time::timeout(SOON, worker.data_stream_closed())
        .await
        .expect("StopWorker did not release the data stream");
    // Unknown ids are fine, as the Java runner expects.
    let response = TestRunner::stop_worker(pool.addr, "never-started", SOON)
        .await
        .unwrap();
    assert_eq!(response.error, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_workers_cap_refuses_with_an_error() {
    let pool = Pool::start(PoolConfig {
        max_workers: 1,
        ..PoolConfig::default()
    })
    .await;
    let runner = TestRunner::start().await.unwrap();
    let first = runner.start_worker(pool.addr, "worker_0").await.unwrap();
    let refused = runner
        .start_worker(pool.addr, "worker_1")
        .await
        .unwrap_err();
    let error = refused
        .start_worker_error()
        .unwrap_or_else(|| panic!("expected a StartWorker error, got {refused}"));
    assert!(!error.is_empty());
    assert!(
        error.contains('1') || error.to_lowercase().contains("max"),
        "{error}"
    );
    // Releasing the first worker frees the slot (release is asynchronous).
    first.close_control();
    tokio::time::timeout(SOON, async {
        loop {
            match runner.start_worker(pool.addr, "worker_2").await {
                Ok(_) => break,
                Err(e) if e.start_worker_error().is_some() => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the slot of a released worker was never freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_worker_with_unusable_control_endpoint_is_refused() {
    let pool = Pool::start_default().await;
    let runner = TestRunner::start().await.unwrap();
    let url = |url: &str| {
        Some(ApiServiceDescriptor {
            url: url.into(),
            authentication: None,
        })
    };
    let cases = [
        ("missing", None),
        ("empty", url("")),
        ("unparseable", url("not a url::://")),
    ];
    for (what, endpoint) in cases {
        let mut request = runner.start_worker_request(&format!("worker_{what}"));
        request.control_endpoint = endpoint;
        let response = TestRunner::call_start_worker(pool.addr, request, SOON)
            .await
            .unwrap();
        assert!(
            !response.error.is_empty(),
            "a {what} control endpoint was accepted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_instructions_get_benign_answers() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let done = worker
        .process_bundle(echo.bundle([kv_input(2)]))
        .await
        .unwrap();
    let id = done.instruction_id.clone();

    let progress = worker
        .instruction(Some(Request::ProcessBundleProgress(
            ProcessBundleProgressRequest {
                instruction_id: id.clone(),
            },
        )))
        .await
        .unwrap();
    assert_eq!(progress.error, "");
    assert!(matches!(
        progress.response,
        Some(Response::ProcessBundleProgress(_))
    ));

    let split = worker
        .instruction(Some(Request::ProcessBundleSplit(
            ProcessBundleSplitRequest {
                instruction_id: id.clone(),
                ..Default::default()
            },
        )))
        .await
        .unwrap();
    assert_eq!(split.error, "");
    assert!(matches!(
        split.response,
        Some(Response::ProcessBundleSplit(_))
    ));

    let finalize = worker
        .instruction(Some(Request::FinalizeBundle(FinalizeBundleRequest {
            instruction_id: id.clone(),
        })))
        .await
        .unwrap();
    assert_eq!(finalize.error, "");
    assert!(matches!(
        finalize.response,
        Some(Response::FinalizeBundle(_))
    ));

    let metadata = worker
        .instruction(Some(Request::MonitoringInfos(
            MonitoringInfosMetadataRequest {
                monitoring_info_id: vec!["1".into()],
            },
        )))
        .await
        .unwrap();
    assert_eq!(metadata.error, "");
    assert!(matches!(
        metadata.response,
        Some(Response::MonitoringInfos(_))
    ));

    let harness = worker
        .instruction(Some(Request::HarnessMonitoringInfos(
            HarnessMonitoringInfosRequest {},
        )))
        .await
        .unwrap();
    assert_eq!(harness.error, "");
    assert!(matches!(
        harness.response,
        Some(Response::HarnessMonitoringInfos(_))
    ));

    // Either an empty answer or an error is fine; it must come back under its id.
    let sample = worker
        .instruction(Some(Request::SampleData(SampleDataRequest {
            pcollection_ids: vec![echo.input_pcollection.clone()],
        })))
        .await
        .unwrap();
    assert!(sample.response.is_some() || !sample.error.is_empty());

    // Progress for a bundle that is still running.
    let running = {
        let worker = worker.clone();
        let spec = echo
            .bundle([kv_input(2)])
            .without_is_last()
            .timeout(Duration::from_secs(5));
        tokio::spawn(async move { worker.process_bundle(spec).await })
    };
    worker.data_stream_connected().await;
    let progress = worker
        .instruction(Some(Request::ProcessBundleProgress(
            ProcessBundleProgressRequest {
                instruction_id: "bundle-that-may-run".into(),
            },
        )))
        .await
        .unwrap();
    assert_eq!(progress.error, "");
    running.abort();
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_a_type_gets_an_error_under_its_id() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let response = worker
        .instruction_with_id("custom-id-42".into(), None)
        .await
        .unwrap();
    assert_eq!(response.instruction_id, "custom-id-42");
    assert!(!response.error.is_empty());
    assert!(response.response.is_none());
    // The worker goes on.
    let echo = kv_echo(&runner, "stage-1");
    let input = kv_input(3);
    let result = worker
        .process_bundle(echo.bundle([input.clone()]))
        .await
        .unwrap();
    assert_eq!(result.output(&echo.sink_id), input);
    assert_clean(&runner, &worker);
}

/// Old Python runners push descriptors with `register` instead of serving them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_register_then_process() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    // Not added to the runner: only the register instruction carries it.
    let echo = echo_descriptor("pushed", runner.url(), PortCoder::kv_bytes());
    let response = worker
        .register(vec![echo.descriptor.clone()])
        .await
        .unwrap();
    assert_eq!(response.error, "");
    assert!(matches!(response.response, Some(Response::Register(_))));
    let input = kv_input(4);
    let result = run_ok(&worker, echo.bundle([input.clone()])).await;
    assert_eq!(result.output(&echo.sink_id), input);
    assert_eq!(worker.descriptor_fetches(), 0);
    assert_clean(&runner, &worker);
}

/// A small flush size cuts output into several chunks of whole elements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_flush_size_chunks_output_on_element_boundaries() {
    let (_pool, runner, worker) = setup(with_harness(HarnessConfig {
        flush_bytes: 1000,
        ..HarnessConfig::default()
    }))
    .await;
    let echo = kv_echo(&runner, "stage-1");
    let input = kv_input(100);
    let result = run_ok(&worker, echo.bundle([input.clone()])).await;
    let chunks = result.chunks(&echo.sink_id);
    assert!(
        chunks.len() >= 5,
        "12.5 kB came back in {} chunk(s)",
        chunks.len()
    );
    assert_eq!(
        assert_whole_elements(chunks, &WireFormat::KV_BYTES_GLOBAL),
        100
    );
    assert_eq!(result.output(&echo.sink_id), input);
    // The recode path must chunk on element boundaries too.
    let recode = recode_descriptor(&runner, "recode");
    let mut nullable = Vec::new();
    let mut expected = Vec::new();
    for i in 0..100u8 {
        nullable.extend(encode_kv_element(
            0,
            PANE_NO_FIRING,
            Some(&[i; 10]),
            Some(&[i; 100]),
            true,
        ));
        expected.extend(encode_kv_element(
            0,
            PANE_NO_FIRING,
            Some(&[i; 10]),
            Some(&[i; 100]),
            false,
        ));
    }
    let result = run_ok(&worker, recode.bundle([Bytes::from(nullable)])).await;
    let chunks = result.chunks(&recode.sink_id);
    assert!(chunks.len() >= 5, "{} chunk(s)", chunks.len());
    assert_eq!(
        assert_whole_elements(chunks, &WireFormat::KV_BYTES_GLOBAL),
        100
    );
    assert_eq!(result.output(&recode.sink_id), expected);
    assert_clean(&runner, &worker);
}

/// `--experiments=data_buffer_size_limit=1000` from the runner's pipeline
/// options overrides the pool's flush size, under either key runners use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_buffer_size_limit_experiment_from_provision() {
    let pool = Pool::start_default().await;
    for (i, key) in [urns::EXPERIMENTS_OPTION, "experiments"]
        .into_iter()
        .enumerate()
    {
        let runner = TestRunner::start_with(beam_integration::RunnerOptions {
            pipeline_options: Some(experiments_options(
                key,
                &["use_fast_avro", "data_buffer_size_limit=1000"],
            )),
            ..Default::default()
        })
        .await
        .unwrap();
        let worker = runner
            .start_worker(pool.addr, &format!("worker_{i}"))
            .await
            .unwrap();
        let echo = kv_echo(&runner, "stage-1");
        let input = kv_input(100);
        let result = run_ok(&worker, echo.bundle([input.clone()])).await;
        assert!(
            worker.provision_calls() >= 1,
            "the worker never asked for provision info"
        );
        let chunks = result.chunks(&echo.sink_id);
        assert!(
            chunks.len() >= 5,
            "with key '{key}' 12.5 kB came back in {} chunk(s): the experiment was ignored",
            chunks.len()
        );
        assert_eq!(
            assert_whole_elements(chunks, &WireFormat::KV_BYTES_GLOBAL),
            100
        );
        assert_eq!(result.output(&echo.sink_id), input);
        assert_clean(&runner, &worker);
    }
}

/// Data held for a bundle whose request has not come yet is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_data_beyond_the_limit_fails_that_bundle() {
    let (_pool, runner, worker) = setup(with_harness(HarnessConfig {
        max_pending_bytes: 10_000,
        ..HarnessConfig::default()
    }))
    .await;
    let echo = kv_echo(&runner, "stage-1");
    // Opens the data stream, so the next bundle's data reaches the worker first.
    let small = kv_input(10);
    run_ok(&worker, echo.bundle([small.clone()])).await;

    let within = worker
        .process_bundle(
            echo.bundle(chunks_of(&kv_input(40), 10))
                .data_first_with_delay(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    assert!(
        within.is_ok(),
        "5 kB pending is within 10 kB: {:?}",
        within.error()
    );
    assert_eq!(within.output(&echo.sink_id), kv_input(40));

    let over = worker
        .process_bundle(
            echo.bundle(chunks_of(&kv_input(400), 10))
                .data_first_with_delay(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let error = over
        .error()
        .expect("50 kB pending against a 10 kB limit was accepted");
    assert!(
        error.contains("10000")
            || error.to_lowercase().contains("limit")
            || error.contains("max_pending"),
        "error does not mention the limit: {error}"
    );

    let after = run_ok(&worker, echo.bundle([small.clone()])).await;
    assert_eq!(after.output(&echo.sink_id), small);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_logs_reach_the_runner() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let logs = worker.wait_for_logs(1, SOON).await.unwrap();
    assert!(logs.iter().all(|e| !e.message.is_empty()), "{logs:#?}");
    // A failed bundle is logged under its instruction id.
    let python = python_stage(&runner, "py");
    let failed = worker.process_bundle(python.bundle([])).await.unwrap();
    assert!(failed.error().is_some());
    let tagged = wait_for_log(&worker, &failed.instruction_id, LOG_WAIT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no log entry for failed bundle {}: {:#?}",
                failed.instruction_id,
                worker.logs()
            )
        });
    assert!(!tagged.message.is_empty());
    assert_clean(&runner, &worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_unknown_to_the_runner_fails_the_bundle() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let result = worker
        .process_bundle(
            BundleSpec::new("never-registered")
                .input("fn/read/pc1", [])
                .sink("fn/write/pc2"),
        )
        .await
        .unwrap();
    let error = result
        .error()
        .expect("a bundle for an unknown descriptor cannot succeed");
    assert!(error.contains("never-registered"), "{error}");
    assert_clean(&runner, &worker);
}

/// Two pools in one process (tests, or an embedding) each number their
/// workers from 1; each worker's logs must still reach its own runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stay_with_their_runner_when_two_pools_share_a_process() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    worker.wait_for_logs(1, SOON).await.unwrap();
    // A neighbour pool whose first worker has the same pool-local number.
    let (_other_pool, _other_runner, _other_worker) = setup(PoolConfig::default()).await;
    let python = python_stage(&runner, "py");
    let failed = worker.process_bundle(python.bundle([])).await.unwrap();
    assert!(failed.error().is_some());
    let found = wait_for_log(&worker, &failed.instruction_id, LOG_WAIT).await;
    assert!(
        found.is_some(),
        "the failed bundle's log entries never reached its runner (went to the other pool's \
         runner?); got: {:#?}",
        worker.logs()
    );
}

/// The Python runner's sender merges queued entries of many bundles into one
/// `Elements` message. Here the data of 8 bundles queues up before the worker
/// has dialled its data stream, so the first messages it reads mix bundles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_many_bundles_in_one_message_are_demultiplexed() {
    let pool = Pool::start_default().await;
    let runner = TestRunner::start_with(beam_integration::RunnerOptions {
        coalesce_data: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let worker = runner.start_worker(pool.addr, "worker_0").await.unwrap();
    let echo = kv_echo(&runner, "stage-1");
    let mut running = Vec::new();
    for i in 0..8usize {
        let input = kv_input(50 + i);
        let spec = echo
            .bundle(chunks_of(&input, 5))
            .order(DataOrder::DataFirst);
        let worker = worker.clone();
        running.push(tokio::spawn(async move {
            (input, worker.process_bundle(spec).await)
        }));
    }
    for bundle in running {
        let (input, result) = bundle.await.unwrap();
        let result = result.unwrap();
        assert!(result.is_ok(), "{:?}", result.error());
        assert_eq!(result.output(&echo.sink_id), input);
    }
    assert!(
        worker.mixed_messages_sent() > 0,
        "no message mixed bundles; the test did not test anything"
    );
    assert_clean(&runner, &worker);
}

/// Failing bundles share the data stream with good ones; their failure must
/// stay theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_bundles_do_not_disturb_concurrent_good_ones() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let python = python_stage(&runner, "py");
    let garbage = Bytes::from_static(&[0xff; 64]);
    let mut running = Vec::new();
    for i in 0..12usize {
        let input = kv_input(200 + i);
        let (spec, good) = match i % 3 {
            0 => (echo.bundle(chunks_of(&input, 20)), true),
            1 => (
                echo.bundle(chunks_of(&input, 20).into_iter().chain([garbage.clone()])),
                false,
            ),
            _ => (python.bundle(chunks_of(&input, 20)), false),
        };
        let order = if i % 2 == 0 {
            DataOrder::DataFirst
        } else {
            DataOrder::RequestFirst
        };
        let worker = worker.clone();
        let spec = spec.order(order);
        running.push(tokio::spawn(async move {
            (good, input, worker.process_bundle(spec).await)
        }));
    }
    for bundle in running {
        let (good, input, result) = bundle.await.unwrap();
        let result = result.unwrap();
        if good {
            assert!(result.is_ok(), "{:?}", result.error());
            assert_eq!(result.output(&echo.sink_id), input);
        } else {
            assert!(result.error().is_some(), "a bad bundle succeeded");
        }
    }
    assert_eq!(worker.data_streams_opened(), 1);
    assert_clean(&runner, &worker);
}

/// Empty `Data` entries that are not `is_last` carry nothing and must be harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_data_entries_are_harmless() {
    let (_pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-1");
    let input = kv_input(30);
    let mut chunks = vec![Bytes::new()];
    for chunk in chunks_of(&input, 10) {
        chunks.push(chunk);
        chunks.push(Bytes::new());
    }
    for order in [DataOrder::DataFirst, DataOrder::RequestFirst] {
        let result = run_ok(&worker, echo.bundle(chunks.clone()).order(order)).await;
        assert_eq!(result.output(&echo.sink_id), input);
        assert_eq!(result.element_count(&echo.input_pcollection), Some(30));
    }
    assert_clean(&runner, &worker);
}

/// SIGTERM semantics: a bundle already running finishes within the grace
/// period with all its output, a bundle asked for after the signal is refused
/// with an error saying why, and the pool then exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_bundles_finish_and_refuses_new_ones() {
    let (mut pool, runner, worker) = setup(PoolConfig::default()).await;
    let echo = kv_echo(&runner, "stage-drain");
    let input = kv_input(1000);
    // Held open: its input lacks is_last until the test sends it.
    let held = tokio::spawn({
        let worker = worker.clone();
        let spec = echo
            .bundle(chunks_of(&input, 100))
            .instruction_id("held-bundle")
            .without_is_last();
        async move { worker.process_bundle(spec).await }
    });
    // The worker counts a bundle as running before it fetches its descriptor.
    let waited = tokio::time::timeout(SOON, async {
        while worker.descriptor_fetches() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the worker never started the held bundle");

    pool.begin_shutdown();
    // The stop signal reaches the pool's task asynchronously: a bundle sent
    // before the pool has seen it may still run. Once it has, bundles are refused.
    let deadline = tokio::time::Instant::now() + SOON;
    let error = loop {
        let answer = worker
            .process_bundle(echo.bundle(chunks_of(&input, 100)))
            .await
            .unwrap();
        if let Some(error) = answer.error() {
            break error.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bundles were still accepted after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("shutting down"), "{error}");

    worker.send_data(vec![beam_proto::fn_execution::elements::Data {
        instruction_id: "held-bundle".into(),
        transform_id: echo.source_id.clone(),
        data: Bytes::new(),
        is_last: true,
    }]);
    let finished = held.await.unwrap().unwrap();
    assert!(finished.is_ok(), "{:?}", finished.error());
    assert_eq!(finished.output(&echo.sink_id), input);
    pool.shutdown().await;
}
