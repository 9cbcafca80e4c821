"""Real Beam pipelines whose KvEcho stage runs in the Rust worker pool.

Each pipeline runs on every runner of the matrix (Beam's embedded Python
runner, Prism, Flink's job server; see conftest.py) with LOOPBACK Python
workers; only the KvEcho stage is bound, by the worker's expansion service, to
the external environment of the pool.
"""

import random
import re
import typing

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to, is_empty
from apache_beam.transforms.external import ExternalTransform
from apache_beam.transforms.window import FixedWindows, SlidingWindows, TimestampedValue

from beam_rust_worker import KV_ECHO_URN, KvEcho
from conftest import native_urn, portable, released_workers, started_workers

KV = beam.typehints.Tuple[bytes, bytes]
OPTIONAL_KEY_KV = beam.typehints.Tuple[typing.Optional[bytes], bytes]

URN_KV = "beam:coder:kv:v1"
URN_BYTES = "beam:coder:bytes:v1"
URN_NULLABLE = "beam:coder:nullable:v1"


def coder_tree(components, coder_id):
    coder = components.coders[coder_id]
    inner = [coder_tree(components, c) for c in coder.component_coder_ids]
    return (coder.spec.urn, *inner) if inner else coder.spec.urn


def assert_ran_in_pool(worker_log, at_least=1):
    """The echo really went through the pool, not some other worker."""
    started = started_workers(worker_log())
    assert len(started) >= at_least, (
        f"expected {at_least}+ StartWorker call(s) in the pool's log, saw {sorted(started)}:\n"
        + worker_log()[-3000:]
    )


def echo_transform(pipeline_proto):
    [(_, transform)] = [
        (tid, t)
        for tid, t in pipeline_proto.components.transforms.items()
        if native_urn(t) == KV_ECHO_URN
    ]
    return transform


# --------------------------------------------------------------------------
# Construction only: the expansion service's answers as the SDK sees them.


@pytest.mark.parametrize(
    "element_type, key_coder",
    [(KV, URN_BYTES), (OPTIONAL_KEY_KV, (URN_NULLABLE, URN_BYTES))],
    ids=["bytes", "optional-key"],
)
def test_expansion_binds_kv_echo_to_the_pool(rust_worker, element_type, key_coder):
    from apache_beam.portability.api import beam_runner_api_pb2

    p = beam.Pipeline(options=portable())
    out = (
        p
        | beam.Create([(b"k", b"v")]).with_output_types(element_type)
        | KvEcho(rust_worker.expansion_address)
    )
    assert out.element_type == element_type
    proto = p.to_runner_api()
    echo = echo_transform(proto)
    comps = proto.components
    [input_id] = echo.inputs.values()
    [output_id] = echo.outputs.values()
    assert coder_tree(comps, comps.pcollections[input_id].coder_id) == (
        URN_KV,
        key_coder,
        URN_BYTES,
    )
    assert coder_tree(comps, comps.pcollections[output_id].coder_id) == coder_tree(
        comps, comps.pcollections[input_id].coder_id
    )
    env = comps.environments[echo.environment_id]
    assert env.urn == "beam:env:external:v1"
    payload = beam_runner_api_pb2.ExternalPayload.FromString(env.payload)
    assert payload.endpoint.url == rust_worker.pool_address
    # Every other transform keeps the SDK's own environment.
    others = {
        t.environment_id
        for t in comps.transforms.values()
        if t.environment_id and native_urn(t) != KV_ECHO_URN
    }
    assert echo.environment_id not in others


def test_unknown_urn_is_refused_at_construction(rust_worker):
    p = beam.Pipeline(options=portable())
    pcoll = p | beam.Create([(b"k", b"v")]).with_output_types(KV)
    with pytest.raises(RuntimeError) as info:
        _ = pcoll | ExternalTransform(
            "beam:transform:rust_worker:nope:v1", None, rust_worker.expansion_address
        )
    message = str(info.value)
    assert "beam:transform:rust_worker:nope:v1" in message
    assert KV_ECHO_URN in message


@pytest.mark.parametrize(
    "element_type, coder_urn",
    [(typing.Any, "beam:coder:pickled_python:v1"),
     (beam.typehints.Tuple[str, bytes], "beam:coder:string_utf8:v1")],
    ids=["any", "str-key"],
)
def test_input_without_a_kv_of_bytes_coder_is_refused(rust_worker, element_type, coder_urn):
    p = beam.Pipeline(options=portable())
    untyped = (
        p
        | beam.Create([(b"k", b"v")])
        | beam.Map(lambda kv: kv).with_output_types(element_type)
    )
    # The Python wrapper explains what to declare...
    with pytest.raises(TypeError, match=r"Tuple\[bytes, bytes\]"):
        _ = untyped | "Checked" >> KvEcho(rust_worker.expansion_address)
    # ...and the expansion service itself names the coder it cannot carry.
    with pytest.raises(RuntimeError, match=coder_urn):
        _ = untyped | "Raw" >> ExternalTransform(
            KV_ECHO_URN, None, rust_worker.expansion_address
        )


# --------------------------------------------------------------------------
# Pipelines that run the echo in the pool.


def run_echo(data, expansion, element_type=KV, options=None, runner=None):
    """Create(data) | KvEcho, asserting every element comes back exactly once."""
    with beam.Pipeline(runner=runner, options=options) as p:
        out = p | beam.Create(data).with_output_types(element_type) | KvEcho(expansion)
        assert out.element_type == element_type
        assert_that(out, equal_to(data))


@pytest.mark.runners("embedded", "prism", "flink", "flink-streaming")
def test_100k_kvs_come_back_unchanged(rust_worker, worker_log, runner):
    data = [(b"key-%06d" % i, b"value-%d" % (i * 7)) for i in range(100_000)]
    run_echo(data, rust_worker.expansion_address, options=runner.options())
    assert_ran_in_pool(worker_log)


def test_empty_huge_and_arbitrary_binary_kvs(rust_worker, worker_log, runner):
    rng = random.Random(20240607)
    data = [
        (b"", b""),
        (b"", b"value only"),
        (b"key only", b""),
        (bytes(range(256)), bytes(reversed(range(256)))),
        (b"\x00", b"\xff" * 3),
    ]
    # Lengths at varint boundaries (1, 2 and 3 length bytes).
    for k, v in [(127, 128), (128, 16383), (16384, 1), (0, 300), (1, 0)]:
        data.append((rng.randbytes(k), rng.randbytes(v)))
    # 1 MiB values.
    data += [(b"big-%d" % i, rng.randbytes(1 << 20)) for i in range(4)]
    data += [
        (rng.randbytes(rng.randrange(40)), rng.randbytes(rng.randrange(400)))
        for _ in range(2000)
    ]
    # Duplicates must stay duplicates.
    data += data[:50]
    run_echo(data, rust_worker.expansion_address, options=runner.options())
    assert_ran_in_pool(worker_log)


def test_optional_keys_with_none_use_the_nullable_coder(rust_worker, worker_log, runner):
    data = [(None, b"v0"), (b"k1", b"v1"), (None, b""), (b"", b"v3")] * 100
    run_echo(data, rust_worker.expansion_address, element_type=OPTIONAL_KEY_KV,
             options=runner.options())
    assert_ran_in_pool(worker_log)


def test_empty_input_and_chained_echoes(rust_worker, worker_log, runner):
    """A bundle with no elements still ends, and two echoes in a row compose.
    (Each expansion creates its own environment, but the runner merges equal
    environments, so the chain can reach one worker as a single fused stage.)"""
    data = [(b"k%d" % i, b"v" * i) for i in range(300)]
    with beam.Pipeline(options=runner.options()) as p:
        empty = (p | "Nothing" >> beam.Create([]).with_output_types(KV)
                 | "EchoNothing" >> KvEcho(rust_worker.expansion_address))
        assert_that(empty, is_empty(), label="empty")
        twice = (p | beam.Create(data).with_output_types(KV)
                 | "Echo1" >> KvEcho(rust_worker.expansion_address)
                 | "Echo2" >> KvEcho(rust_worker.expansion_address))
        assert_that(twice, equal_to(data), label="twice")
    assert_ran_in_pool(worker_log)


def _describe(kv, ts=beam.DoFn.TimestampParam, w=beam.DoFn.WindowParam,
              pane=beam.DoFn.PaneInfoParam):
    return (kv[0], kv[1], ts.micros, w.start.micros, w.end.micros,
            pane.is_first, pane.is_last, int(pane.timing), pane.index)


@pytest.mark.runners("embedded", "prism", "flink", "flink-streaming")
@pytest.mark.parametrize("windowing", ["fixed", "sliding"])
def test_windows_timestamps_and_panes_survive(rust_worker, worker_log, windowing, runner):
    """Elements in interval windows (one each, or two each when sliding) keep
    their timestamp, windows and pane, also the non-default panes and
    end-of-window timestamps a GroupByKey produces."""
    raw = [(b"k%d" % i, b"v%d" % i, i * 3.5) for i in range(60)]
    size = 10
    if windowing == "fixed":
        fn, starts_of = FixedWindows(size), lambda t: [(t // 10) * 10]
    else:
        fn, starts_of = SlidingWindows(size, 5), lambda t: [(t // 5) * 5, (t // 5) * 5 - 5]
    sec = 1_000_000
    unknown, on_time = 3, 1
    expected_plain = [
        (k, v, int(t * sec), int(s * sec), int((s + size) * sec), True, True, unknown, 0)
        for k, v, t in raw
        for s in starts_of(t)
    ]
    # After a GroupByKey the pane is ON_TIME, first, not last (pane byte 0x05)
    # and the timestamp is the window's last millisecond; Flink in batch mode
    # and Prism emit their one pane as NO_FIRING (first, last, UNKNOWN). Either
    # way the echo must hand back the runner's own pane untouched.
    grouped_pane = ((True, True, unknown) if runner.name in ("flink", "prism")
                    else (True, False, on_time))
    expected_grouped = []
    for start, end in sorted({(e[3], e[4]) for e in expected_plain}):
        keys = sorted(e[0] for e in expected_plain if (e[3], e[4]) == (start, end))
        expected_grouped.append(
            (b"all", b",".join(keys), end - 1000, start, end, *grouped_pane, 0))

    with beam.Pipeline(options=runner.options()) as p:
        windowed = (
            p
            | beam.Create(raw)
            | beam.Map(lambda x: TimestampedValue((x[0], x[1]), x[2])).with_output_types(KV)
            | beam.WindowInto(fn)
        )
        echoed = (windowed | "Echo" >> KvEcho(rust_worker.expansion_address)
                  | "Describe" >> beam.Map(_describe))
        assert_that(echoed, equal_to(expected_plain), label="echoed")
        grouped = (
            windowed
            | beam.Map(lambda kv: (b"all", kv[0])).with_output_types(KV)
            | beam.GroupByKey()
            | beam.Map(lambda kv: (kv[0], b",".join(sorted(kv[1])))).with_output_types(KV)
        )
        # The same expectation holds without the echo: it changes nothing.
        reference = grouped | "DescribeReference" >> beam.Map(_describe)
        grouped_echoed = (grouped | "EchoGrouped" >> KvEcho(rust_worker.expansion_address)
                          | "DescribeGroupedEchoed" >> beam.Map(_describe))
        assert_that(reference, equal_to(expected_grouped), label="grouped reference")
        assert_that(grouped_echoed, equal_to(expected_grouped), label="grouped echoed")
    assert_ran_in_pool(worker_log)


def test_two_sdk_workers_each_element_exactly_once(rust_worker, worker_log):
    """Two workers of our environment, each running part of the input.

    The job services (embedded or stand-alone) ignore --direct_num_workers (the
    FnApiRunner reads it only when it runs a Pipeline object itself), so this
    test drives the FnApiRunner directly."""
    data = [(b"key-%05d" % i, b"v" * (i % 50)) for i in range(40_000)]
    options = PipelineOptions(
        ["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    run_echo(data, rust_worker.expansion_address, options=options, runner=FnApiRunner())
    assert_ran_in_pool(worker_log, at_least=2)


def test_two_pipelines_one_after_the_other(rust_worker, worker_log, runner):
    for run in range(2):
        data = [(b"run-%d-%d" % (run, i), b"x" * i) for i in range(1000)]
        run_echo(data, rust_worker.expansion_address, options=runner.options())
        assert_ran_in_pool(worker_log, at_least=run + 1)


def test_standalone_job_service(rust_worker, job_service, worker_log):
    data = [(b"k%d" % i, b"v%d" % i) for i in range(5000)]
    run_echo(data, rust_worker.expansion_address, options=portable(job_endpoint=job_service))
    assert_ran_in_pool(worker_log)


# --------------------------------------------------------------------------
# Flink-specific behaviour.

SERVED = re.compile(r"worker\{worker_id=(\S+) worker_serial=\d+\}:bundle\{[^}]*\}: \S+: stage planned")


@pytest.mark.runners("flink")
def test_flink_parallelism_2_and_sdk_worker_parallelism_2_serve_every_worker(
        rust_worker, worker_log, runner):
    """Two SDK workers per TaskManager and two subtasks per stage: the pool
    gets several StartWorkers, each worker runs bundles, and every element
    comes back exactly once. Flink hands each stage instance one of the
    TaskManager's environments in turn, counting every stage of the job (in
    an order that varies from run to run: once, with two echo branches, all
    four echo instances got the same environment), so four echo branches
    make it very unlikely that one environment gets none."""
    data = {b: [(b"%s-%05d" % (b, i), b"v" * (i % 40)) for i in range(5_000)]
            for b in (b"a", b"b", b"c", b"d")}
    options = runner.options("--parallelism=2", "--sdk_worker_parallelism=2")
    with beam.Pipeline(options=options) as p:
        for branch, elements in data.items():
            name = branch.decode()
            out = (p | f"Create{name}" >> beam.Create(elements).with_output_types(KV)
                   | f"Shuffle{name}" >> beam.Reshuffle().with_output_types(KV)
                   | f"Echo{name}" >> KvEcho(rust_worker.expansion_address))
            assert_that(out, equal_to(elements), label=f"Check{name}")
    log = worker_log()
    started = set(started_workers(log))
    served = set(SERVED.findall(log))
    assert len(started) >= 2, f"one StartWorker only: {started}\n{log[-3000:]}"
    assert served == started, f"started {sorted(started)}, ran bundles {sorted(served)}"
