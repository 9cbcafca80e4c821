"""The streaming Kafka read: ReadFromKafka (unbounded) -> KvEcho -> WriteToKafka
as one fused stage in the pool, on Flink (streaming, checkpoints), Prism and
Beam's embedded Python runner. While the job runs, records produced at any
later time must reach the output topic; offsets are committed when the runner
finalizes bundles.

The test bounds the job's life itself (the read never ends): the embedded
runner runs in a child process that is killed, Prism's job is cancelled, and
Flink's job is cancelled and its job server stopped (Beam 2.62's Flink job
server reports CANCELLED but keeps an embedded job running).

Latency (produce -> appear on the output topic) is measured at a steady rate
and printed, never asserted: STREAMING_RATE records/s for STREAMING_SECONDS
seconds (defaults 1000 and 10; the README's figures used 60 s).
"""

import os
import statistics
import subprocess
import sys
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer

from conftest import sample_sum
from test_kafka import committed, read_topic

RATE = int(os.environ.get("STREAMING_RATE", "1000"))
SECONDS = int(os.environ.get("STREAMING_SECONDS", "10"))
#: How long records may take to show up before the test fails (not a latency claim).
ARRIVAL_TIMEOUT = 120

JOB = r"""
import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from beam_rust_worker import KvEcho
from beam_rust_worker.kafka import ReadFromKafka, WriteToKafka
bootstrap, source, sink, group, expansion = sys.argv[1:6]
with beam.Pipeline(options=PipelineOptions(sys.argv[6:])) as p:
    _ = (p
         | ReadFromKafka(consumer_config={"bootstrap.servers": bootstrap,
                                          "group.id": group,
                                          "auto.offset.reset": "earliest"},
                         topics=[source], commit_offset_in_finalize=True,
                         expansion_service=expansion)
         | KvEcho(expansion_service=expansion)
         | WriteToKafka(producer_config={"bootstrap.servers": bootstrap},
                        topic=sink, expansion_service=expansion))
"""


def streaming_args(runner):
    """Pipeline options for a job with the never-ending read on `runner`."""
    args = [a for a in runner.args()
            if not a.startswith(("--shutdown_sources_after_idle_ms", "--checkpointing_interval"))]
    if runner.is_flink:
        # Without finish_bundle_before_checkpointing, a checkpoint that lands
        # while the partition-listing bundle runs strands that bundle's output
        # in Flink's operator buffer for good (Beam 2.62: nothing flushes it
        # once the impulse's input has ended).
        args += ["--checkpointing_interval=1000", "--finish_bundle_before_checkpointing"]
    if runner.name == "prism":
        args.append("--streaming")
    return args


class StreamingJob:
    """A running streaming echo job on `runner`, stopped by `stop()`."""

    def __init__(self, runner, worker, bootstrap, source, sink, group, extra_args=()):
        self.runner = runner
        args = streaming_args(runner) + list(extra_args)
        self.args = [bootstrap, source, sink, group, worker.expansion_address] + args
        self.process = None
        self.result = None
        if runner.name == "embedded":
            # The embedded runner runs the job inside the submitting process.
            self.process = subprocess.Popen([sys.executable, "-c", JOB] + self.args)
        else:
            import apache_beam as beam
            from apache_beam.options.pipeline_options import PipelineOptions
            from beam_rust_worker import KvEcho
            from beam_rust_worker.kafka import ReadFromKafka, WriteToKafka
            p = beam.Pipeline(options=PipelineOptions(args))
            _ = (p
                 | ReadFromKafka(consumer_config={"bootstrap.servers": bootstrap,
                                                  "group.id": group,
                                                  "auto.offset.reset": "earliest"},
                                 topics=[source], commit_offset_in_finalize=True,
                                 expansion_service=worker.expansion_address)
                 | KvEcho(expansion_service=worker.expansion_address)
                 | WriteToKafka(producer_config={"bootstrap.servers": bootstrap},
                                topic=sink, expansion_service=worker.expansion_address))
            self.result = p.run()

    def assert_running(self):
        from apache_beam.runners.runner import PipelineState
        if self.process is not None:
            assert self.process.poll() is None, f"job exited with {self.process.returncode}"
        else:
            assert not PipelineState.is_terminal(self.result.state), self.result.state

    def stop(self, keep_runner=False):
        """Ends the job; on Flink also stops the job server (see the module
        doc) unless `keep_runner`, which leaves an orphaned job reading."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
            return
        try:
            self.result.cancel()
        except Exception as e:  # a job that already failed cannot be cancelled
            print(f"cancel: {e}")
        if self.runner.is_flink and not keep_runner:
            # Beam 2.62's Flink job server keeps an embedded job running after
            # CANCELLED; later tests start a fresh one.
            self.runner.services.stop("flink")


class SinkWatcher:
    """Consumes the output topic from the start: every (key, value) in order,
    and when each key first arrived."""

    def __init__(self, bootstrap, topic):
        self.arrived = {}
        self.records = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"watch-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        self._consumer.subscribe([topic])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            m = self._consumer.poll(0.05)
            if m is None or m.error():
                continue
            with self._lock:
                self.records.append((m.key(), m.value()))
            self.arrived.setdefault(m.key(), time.time_ns())

    def matching(self, prefix: bytes):
        """The (key, value) pairs so far whose key starts with `prefix`."""
        with self._lock:
            return [(k, v) for k, v in self.records if k is not None and k.startswith(prefix)]

    def wait_for(self, keys, timeout=ARRIVAL_TIMEOUT, job=None):
        deadline = time.monotonic() + timeout
        while not set(keys) <= self.arrived.keys():
            missing = len(set(keys) - self.arrived.keys())
            assert time.monotonic() < deadline, f"{missing} of {len(keys)} records never arrived"
            if job is not None:
                job.assert_running()
            time.sleep(0.2)

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def produce_at_rate(bootstrap, topic, prefix, rate, seconds):
    """Produces `rate` records/s for `seconds`, each keyed uniquely; returns
    key -> send time (ns)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    sent = {}
    start = time.monotonic()
    for i in range(rate * seconds):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key = b"%s-%d" % (prefix, i)
        sent[key] = time.time_ns()
        producer.produce(topic, key=key, value=b"v%d" % i)
        producer.poll(0)
    assert producer.flush(60) == 0
    return sent


def latency_ms(sent, arrived):
    lat = sorted((arrived[k] - t) / 1e6 for k, t in sent.items() if k in arrived)
    return {
        "n": len(lat),
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "max": lat[-1],
    }


@pytest.mark.runners("embedded", "prism", "flink-streaming")
def test_streaming_read_echoes_records_produced_while_the_job_runs(
        rust_worker, kafka_broker, worker_log, runner, capsys):
    bootstrap = kafka_broker.address
    source, sink = kafka_broker.topic("stream-in", 4), kafka_broker.topic("stream-out")
    group = f"stream-{uuid.uuid4().hex[:8]}"
    backlog = {b"backlog-%d" % i: 0 for i in range(500)}
    producer = Producer({"bootstrap.servers": bootstrap})
    for key in backlog:
        producer.produce(source, key=key, value=b"b")
    assert producer.flush(30) == 0

    watcher = SinkWatcher(bootstrap, sink)
    job = StreamingJob(runner, rust_worker, bootstrap, source, sink, group)
    try:
        # The backlog (auto.offset.reset=earliest) comes through first.
        watcher.wait_for(backlog, job=job)
        # Then records produced at any later time, twice, with a pause that
        # leaves every partition idle between them.
        first = produce_at_rate(bootstrap, source, b"first", 50, 2)
        watcher.wait_for(first, job=job)
        time.sleep(5)
        job.assert_running()
        steady = produce_at_rate(bootstrap, source, b"steady", RATE, SECONDS)
        watcher.wait_for(steady, job=job)
        job.assert_running()
        stats = latency_ms(steady, watcher.arrived)
        with capsys.disabled():
            print(f"\n[{runner.name}] produce->output latency at {RATE} rec/s for "
                  f"{SECONDS} s: p50 {stats['p50']:.0f} ms, p99 {stats['p99']:.0f} ms, "
                  f"max {stats['max']:.0f} ms (n={stats['n']})")
        # Offsets are committed as the runner finalizes bundles (Flink: on
        # completed checkpoints), never beyond what was read.
        total = len(backlog) + len(first) + len(steady)
        deadline = time.monotonic() + 60
        while sum(committed(bootstrap, source, group).values()) < total:
            assert time.monotonic() < deadline, committed(bootstrap, source, group)
            time.sleep(0.5)
        assert sum(committed(bootstrap, source, group).values()) == total
        # The pool's metrics count what this pipeline did (its topics are its own).
        deadline = time.monotonic() + 30
        while True:
            m = rust_worker.metrics()
            read = sample_sum(m, "beam_rust_worker_kafka_records_read_total", topic=source)
            written = sample_sum(m, "beam_rust_worker_kafka_records_written_total", topic=sink)
            committed_gauge = sample_sum(m, "beam_rust_worker_kafka_committed_offset", topic=source)
            if (read, written, committed_gauge) == (total, total, total):
                break
            assert time.monotonic() < deadline, (read, written, committed_gauge, total)
            time.sleep(1)
        assert sample_sum(m, "beam_rust_worker_bundles_finished_total", outcome="succeeded") > 0
        assert sample_sum(m, "beam_rust_worker_elements_total", transform="kv_echo",
                          direction="in") >= total
        with capsys.disabled():
            print(f"[{runner.name}] metrics: read {read:.0f}, written {written:.0f}, "
                  f"committed offsets sum {committed_gauge:.0f} (pipeline: {total} records)")
    finally:
        job.stop()
        watcher.close()
    out = read_topic(bootstrap, sink, total)
    keys = [k for k, _ in out]
    lost = set(backlog) | set(first) | set(steady)
    lost -= set(keys)
    assert not lost, f"{len(lost)} records lost"
    with capsys.disabled():
        print(f"[{runner.name}] {len(keys) - len(set(keys))} duplicates in {len(keys)} records")
    assert "kafka_read_partition" in worker_log(), "the streaming read did not run in the pool"


@pytest.mark.runners("flink-streaming")
def test_the_read_takes_no_more_per_bundle_than_the_runners_bundle_size(
        rust_worker, kafka_broker, worker_log, runner):
    """Flink's `max_bundle_size` reaches the worker in the pipeline options;
    the read then takes at most that many records per partition per bundle, so
    a backlog comes through in many small bundles instead of a few large ones."""
    bootstrap = kafka_broker.address
    source, sink = kafka_broker.topic("bundle-in", 1), kafka_broker.topic("bundle-out")
    group = f"bundle-{uuid.uuid4().hex[:8]}"
    cap, backlog_size = 40, 4000
    backlog = [b"capped-%d" % i for i in range(backlog_size)]
    producer = Producer({"bootstrap.servers": bootstrap})
    for key in backlog:
        producer.produce(source, key=key, value=b"b")
    assert producer.flush(30) == 0

    bundles = lambda: sample_sum(rust_worker.metrics(),  # noqa: E731
                                 "beam_rust_worker_bundles_finished_total", outcome="succeeded")
    before = bundles()
    watcher = SinkWatcher(bootstrap, sink)
    job = StreamingJob(runner, rust_worker, bootstrap, source, sink, group,
                       extra_args=[f"--max_bundle_size={cap}"])
    try:
        watcher.wait_for(backlog, job=job)
        during = bundles() - before
    finally:
        job.stop()
        watcher.close()
    log = worker_log()
    assert "reads per bundle capped by the runner's max_bundle_size" in log, \
        "the worker did not see the runner's max_bundle_size"
    assert f"elements={cap}" in log
    # One partition, `cap` records a bundle at most: the backlog alone needs
    # backlog_size / cap bundles (uncapped, a 1 s read window takes it in one or two).
    assert during >= backlog_size // cap, f"{during} bundles for {backlog_size} records"
