"""The pool as a drop-in for Beam's own worker pool.

Pipelines run on Beam's portable runner (in-process job service) with the
pool as the *default* environment (`--environment_type=EXTERNAL`): every
Python step (Create, Map, assert_that) reaches the pool without our native
marker, and the pool starts Beam's Python SDK worker for it (delegated);
stages of our own transforms still run in-process. The mixed pipeline also
runs on every runner of the suite (the `runner` fixture: Prism, Flink).
Also: Beam's own `apache_beam.io.kafka` transforms expanded by our expansion
service (built, not run; the Kafka-backed runs live elsewhere).
"""

import os
import re
import sys
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.testing.util import assert_that, equal_to

from beam_rust_worker import KvEcho
from conftest import RustWorker, portable

KV = beam.typehints.Tuple[bytes, bytes]
KAFKA_READ_URN = "beam:transform:rust_worker:kafka_read:v1"
PARDO_URN = "beam:transform:pardo:v1"
NATIVE_PARAMS = {"beam-rust-worker": "native"}
HERE = Path(__file__).resolve().parent

STARTED = re.compile(r"started Python SDK worker.*?\bpid=(\d+)")


class DropInPool(RustWorker):
    """The worker binary with `--python` set to this test's Python. The
    workers run in this directory, so the pickled functions of this module
    (and `conftest`) import there, as a pipeline's own modules would."""

    def __init__(self, binary):
        super().__init__(binary, "--python-workdir", HERE, "--python-stop-grace-secs", 5,
                         name="dropin-pool")

    def python_worker_pids(self, since=0):
        return [int(pid) for pid in STARTED.findall(self.output(since))]


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def pool(worker_binary):
    pool = DropInPool(worker_binary)
    yield pool
    pids = pool.python_worker_pids()
    code = pool.stop()  # SIGTERM: the pool stops its Python workers first
    assert code == 0, f"the pool exited with {code}:\n{pool.output()[-5000:]}"
    left = [pid for pid in pids if _running(pid)]
    assert not left, f"Python workers outlived the pool: {left}"


def external(pool, *extra):
    return PipelineOptions(
        [
            "--runner=PortableRunner",
            "--job_endpoint=embed",
            "--environment_type=EXTERNAL",
            f"--environment_config={pool.pool_address}",
            *extra,
        ]
    )


def test_python_steps_run_in_delegated_python_workers(pool):
    mark = pool.mark()
    pool_pid = pool.proc.pid
    started = time.monotonic()
    with beam.Pipeline(options=external(pool)) as p:
        out = (
            p
            | beam.Create([1, 2, 3])
            # os.getppid() in the worker: the pool started the process that ran this.
            | beam.Map(lambda x: (x * 10, os.getppid()))
        )
        assert_that(out, equal_to([(10, pool_pid), (20, pool_pid), (30, pool_pid)]))
    elapsed = time.monotonic() - started
    log = pool.output(mark)
    assert pool.python_worker_pids(mark), f"no Python worker started:\n{log[-3000:]}"
    # Nothing went to the native harness.
    assert "stage planned" not in log and "stage cannot run here" not in log, log[-3000:]
    print(f"pipeline with delegated workers took {elapsed:.1f}s")


def run_echo_between_python_steps(pool, options):
    """Create -> KvEcho -> Map(adds the worker's parent pid), checked: the
    Python steps must run in workers whose parent is the pool."""
    pool_pid = pool.proc.pid
    with beam.Pipeline(options=options) as p:
        out = (
            p
            | beam.Create([(b"a", b"1"), (b"b", b"2")]).with_output_types(KV)
            | KvEcho(pool.expansion_address)
            | beam.Map(lambda kv: (kv[0], kv[1] + b"!", os.getppid()))
        )
        assert_that(out, equal_to([(b"a", b"1!", pool_pid), (b"b", b"2!", pool_pid)]))


def test_kv_echo_runs_natively_between_python_steps(pool):
    mark = pool.mark()
    run_echo_between_python_steps(pool, external(pool))
    log = pool.output(mark)
    assert pool.python_worker_pids(mark), f"no Python worker started:\n{log[-3000:]}"
    # Only the native harness plans stages (the echo travels as a ParDo).
    assert "stage planned" in log, (
        "the echo stage did not run in the native harness:\n" + log[-3000:]
    )
    assert "stage cannot run here" not in log, log[-3000:]


def _our_transform(transform, urn):
    """Our transforms travel as themselves or as ParDos whose DoFn is ours."""
    if transform.spec.urn == urn:
        return True
    if transform.spec.urn == PARDO_URN:
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        return payload.do_fn.urn == urn
    return False


def test_beams_read_from_kafka_expands_to_our_native_read(pool):
    from apache_beam.io.kafka import ReadFromKafka

    p = beam.Pipeline(options=portable())
    _ = p | ReadFromKafka(
        consumer_config={"bootstrap.servers": "127.0.0.1:9", "group.id": "g"},
        topics=["in"],
        max_num_records=10,
        commit_offset_in_finalize=True,
        expansion_service=pool.expansion_address,
    )
    proto = p.to_runner_api()
    comps = proto.components
    reads = [
        t for t in comps.transforms.values()
        if not t.subtransforms and _our_transform(t, KAFKA_READ_URN)
    ]
    assert len(reads) == 1, [t.spec.urn for t in comps.transforms.values()]
    env = comps.environments[reads[0].environment_id]
    assert env.urn == "beam:env:external:v1"
    payload = beam_runner_api_pb2.ExternalPayload.FromString(env.payload)
    assert payload.endpoint.url == pool.pool_address
    assert dict(payload.params) == NATIVE_PARAMS


@pytest.mark.parametrize(
    "argument, field",
    [
        ({"start_read_time": 1_700_000_000_000}, "start_read_time"),
        (
            {"key_deserializer": "org.apache.kafka.common.serialization.LongDeserializer"},
            "key_deserializer",
        ),
        ({"with_metadata": True}, "with_metadata"),
    ],
    ids=["start_read_time", "key_deserializer", "with_metadata"],
)
def test_unsupported_read_from_kafka_argument_fails_at_construction(pool, argument, field):
    from apache_beam.io.kafka import ReadFromKafka

    p = beam.Pipeline(options=portable())
    with pytest.raises(Exception) as info:
        _ = p | ReadFromKafka(
            consumer_config={"bootstrap.servers": "127.0.0.1:9"},
            topics=["in"],
            expansion_service=pool.expansion_address,
            **argument,
        )
    assert field in str(info.value), str(info.value)


def test_every_runner_starts_python_workers_through_the_pool(pool, runner):
    """The same drop-in on every runner the suite tests (Prism and Flink copy
    the environment's params into StartWorker as Beam's Python runner does)."""
    mark = pool.mark()
    options = runner.options(
        "--environment_type=EXTERNAL", f"--environment_config={pool.pool_address}"
    )
    run_echo_between_python_steps(pool, options)
    log = pool.output(mark)
    assert pool.python_worker_pids(mark), f"no Python worker started:\n{log[-3000:]}"
    assert "stage planned" in log, log[-3000:]
