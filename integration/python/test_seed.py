"""The seed's own pipeline, run as its users run it (`python pipeline.py`),
with our one process in the roles of Beam's Java expansion service and Beam's
Python worker pool.

`seed/pipeline.py` and `seed/worker.py` are the seed's files, unchanged; each
test copies them into the folder the pool was started in (as the seed's users
start `boot -worker_pool` next to their pipeline) and changes only hosts and
ports: the broker address and the free ports of the services started here.
`seed_pipeline` checks that no other line differs.

The pipeline is streaming (`streaming: True`, checkpoints every 60 s), reads
with Beam's `apache_beam.io.kafka.ReadFromKafka` (no limit: the unbounded
read), maps each record with `worker.kafka_record_processor` in a pickled
lambda that needs the pipeline's main session, and writes with
`WriteToKafka`. Its consumer group has no `auto.offset.reset`, so it reads
from the end: warm-up records are produced until one comes back, then the
checked records. Every checked record must come back exactly once as the
seed's function makes it (`str()` of key and value).

Runs on Flink and Prism. Beam's embedded Python runner cannot run this
pipeline in streaming: it never schedules a stage downstream of a read that
keeps returning residuals unless that stage is fused with it, and the
Python `Map` is a stage of its own (README, "Known limitations").
"""

import difflib
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from conftest import RustWorker
from test_streaming import SinkWatcher

SEED = Path(__file__).resolve().parent / "seed"
INPUT, OUTPUT = "echo-input", "echo-output"
#: Records checked per run (after the warm-up).
RECORDS = 300
#: Bounds on the job's start and on the records' arrival (not latency claims).
WARM_UP_TIMEOUT = 240
ARRIVAL_TIMEOUT = 180
#: Prints of the seed's worker.py, forwarded into the pool's log.
PRINTED = "Got kafka record value:"


@pytest.fixture(scope="module")
def seed_folder(tmp_path_factory):
    """Where the seed's files go and the pool runs."""
    folder = tmp_path_factory.mktemp("seed")
    shutil.copy(SEED / "worker.py", folder / "worker.py")
    return folder


@pytest.fixture(scope="module")
def pool(worker_binary, seed_folder):
    """Our process on free ports, started in the pipeline's folder with no
    --python-workdir: its Python workers import `worker` from there."""
    pool = RustWorker(worker_binary, name="seed-pool", cwd=seed_folder)
    yield pool
    assert pool.stop() == 0, pool.output()[-5000:]


@pytest.fixture(scope="module")
def seed_topics(kafka_broker):
    """The seed's topics, as the tutorial creates them before the pipeline."""
    for topic in (INPUT, OUTPUT):
        try:
            kafka_broker.create_topic(topic, 4)
        except KafkaException as e:
            # The admin client retries a request whose answer was lost; the
            # retry then finds the topic its first attempt created.
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return kafka_broker


def seed_pipeline(folder, *, broker, job, artifacts, expansion, pool, our_kafka=False):
    """Writes the seed's pipeline.py into `folder` with only the given hosts
    and ports changed (and, with `our_kafka`, the Kafka import); returns it."""
    original = (SEED / "pipeline.py").read_text()
    changes = [
        ('"host.docker.internal:9092"', f'"{broker}"'),
        ('"localhost:8096"', f'"{expansion}"'),
        ('"localhost:50000"', f'"{pool}"'),
        ('f"{job_server}:8099"', 'f"{job_server}:%d"' % job),
        ('f"{job_server}:8098"', 'f"{job_server}:%d"' % artifacts),
    ]
    if our_kafka:
        changes.append(("from apache_beam.io import kafka", "from beam_rust_worker import kafka"))
    text = original
    for old, new in changes:
        assert text.count(old) == 1, f"the seed's pipeline.py no longer has {old} once"
        text = text.replace(old, new)
    changed = [line for line in difflib.ndiff(original.splitlines(), text.splitlines())
               if line.startswith(("- ", "+ "))]
    assert len(changed) == 2 * len(changes), "\n".join(changed)
    path = folder / "pipeline.py"
    path.write_text(text)
    return path


def flink_artifact_port(runner) -> int:
    """The Flink job server's artifact staging port, from its log."""
    ports = re.findall(r"ArtifactStagingService started on [^\s:]+:(\d+)", runner.log())
    assert ports, runner.log()[-3000:]
    return int(ports[-1])


class SeedJob:
    """`python pipeline.py` in `folder`: submits the job and waits on it
    forever (a streaming job), so it is killed at the end; the runner is then
    stopped too, which is what ends a streaming job there (Beam 2.62's Flink
    job server keeps a cancelled job running)."""

    def __init__(self, folder, runner):
        self.runner = runner
        self.log = folder / f"submit-{uuid.uuid4().hex[:6]}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "pipeline.py"], cwd=folder, stdout=out, stderr=out)

    def assert_running(self):
        code = self.proc.poll()
        assert code is None, f"pipeline.py exited with {code}:\n{self.log.read_text()[-5000:]}"

    def stop(self):
        self.proc.kill()
        self.proc.wait(30)
        self.runner.services.stop("flink" if self.runner.is_flink else self.runner.name)


def produce(bootstrap, records):
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        producer.produce(INPUT, key=key, value=value)
    assert producer.flush(60) == 0


def echo_is_exact(broker, job, tag):
    """Warm-up until the job reads, then RECORDS keyed records; each must come
    back exactly once as `kafka_record_processor` makes it."""
    watcher = SinkWatcher(broker.address, OUTPUT)
    try:
        warm_prefix = repr(f"warm-{tag}".encode()).encode()[:-1]
        deadline = time.monotonic() + WARM_UP_TIMEOUT
        sent = 0
        while not watcher.matching(warm_prefix):
            job.assert_running()
            assert time.monotonic() < deadline, (
                f"none of {sent} warm-up records came back within {WARM_UP_TIMEOUT} s")
            produce(broker.address, [(f"warm-{tag}-{sent}".encode(), b"w")])
            sent += 1
            time.sleep(2)
        records = [(f"k-{tag}-{i}".encode(), f"value {i}".encode()) for i in range(RECORDS)]
        produce(broker.address, records)
        # str() of a bytes object, as the seed's function returns it (utf-8).
        expected = {str(k).encode(): str(v).encode() for k, v in records}
        prefix = repr(f"k-{tag}-".encode()).encode()[:-1]
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while len({k for k, _ in watcher.matching(prefix)}) < RECORDS:
            job.assert_running()
            assert time.monotonic() < deadline, (
                f"{RECORDS - len({k for k, _ in watcher.matching(prefix)})} of {RECORDS} "
                f"records never came back")
            time.sleep(0.5)
        time.sleep(3)  # so a duplicate would show
        got = watcher.matching(prefix)
    finally:
        watcher.close()
    counts = Counter(k for k, _ in got)
    assert set(counts) == set(expected), sorted(set(counts) ^ set(expected))[:5]
    twice = [k for k, c in counts.items() if c > 1]
    assert not twice, f"{len(twice)} records came back more than once, e.g. {twice[:3]}"
    wrong = [(k, v) for k, v in got if expected[k] != v]
    assert not wrong, wrong[:3]
    return len(got)


def run_seed(runner, pool, folder, broker, expansion, our_kafka=False):
    job_port = int(runner.job_endpoint.rsplit(":", 1)[1])
    # Prism serves artifacts on its job port; Flink's job server on a port of its own.
    artifacts = flink_artifact_port(runner) if runner.is_flink else job_port
    seed_pipeline(folder, broker=broker.address, job=job_port, artifacts=artifacts,
                  expansion=expansion, pool=pool.pool_address, our_kafka=our_kafka)
    mark = pool.mark()
    job = SeedJob(folder, runner)
    try:
        n = echo_is_exact(broker, job, uuid.uuid4().hex[:8])
    finally:
        job.stop()
    log = pool.output(mark)
    assert "started Python SDK worker" in log, log[-3000:]
    # The Map's prints reach the pool's log, tagged with the worker.
    assert PRINTED in log, log[-3000:]
    return n, log


@pytest.mark.runners("flink", "prism")
def test_seed_pipeline_runs_unchanged_on_our_process(runner, pool, seed_folder, seed_topics):
    """Our process as the seed's expansion service (Beam's Kafka URNs expanded
    into our native read and write) and as its EXTERNAL environment (the
    Python Map in a delegated Python worker with the main session staged)."""
    n, log = run_seed(runner, pool, seed_folder, seed_topics, pool.expansion_address)
    assert "beam:transform:org.apache.beam:kafka_read_without_metadata:v1" in log, log[-3000:]
    assert "Kafka partitions listed for the streaming read" in log, log[-3000:]
    assert "staged the pipeline's artifacts" in log, log[-3000:]
    print(f"{runner}: {n} records echoed exactly once by the seed's unchanged pipeline")


@pytest.mark.runners("flink", "prism")
def test_seed_pipeline_with_our_kafka_module(runner, pool, seed_folder, seed_topics):
    """The same with one more change, the import: `from beam_rust_worker
    import kafka` (our transforms, same arguments)."""
    n, log = run_seed(runner, pool, seed_folder, seed_topics, pool.expansion_address,
                      our_kafka=True)
    assert "beam:transform:rust_worker:kafka_read:v1" in log, log[-3000:]
    assert "Kafka partitions listed for the streaming read" in log, log[-3000:]
    print(f"{runner}: {n} records echoed exactly once with our Kafka module")


@pytest.mark.runners("flink")
def test_seed_setup_with_only_the_pool_swapped(runner, pool, seed_folder, seed_topics):
    """The seed's setup as it is (Beam's Java expansion service, Java KafkaIO
    running in the Flink job server) with our pool instead of Beam's Python
    pool: only the Python Map reaches the pool, which runs it in a delegated
    Python worker; nothing runs natively."""
    java_expansion = runner.services.endpoint("java-expansion")
    n, log = run_seed(runner, pool, seed_folder, seed_topics, java_expansion)
    assert "stage planned" not in log, log[-3000:]
    print(f"{runner}: {n} records echoed exactly once through Java KafkaIO and our pool")
