"""Kafka -> KvEcho -> Kafka pipelines whose three steps run natively, fused, in
the Rust worker pool, against Apache Kafka (single-node KRaft on loopback) and
real Kafka clients (kcat, confluent-kafka).

Each pipeline runs on the runners of the matrix (conftest.py): Beam's embedded
Python runner, Prism, and Flink's job server in batch and streaming mode. The
read, the echo and the write are expanded by the pool's expansion service.
Every test gets topics of its own on the module's broker.

Flink in batch mode cannot finalize bundles (apache/beam#19526): a read that
commits offsets on finalization fails the job there, so commit tests run on
Flink in streaming mode (with checkpoints, as Kafka pipelines run on Flink).
"""

import importlib.util
import re
import time
import uuid
from collections import Counter
from datetime import datetime

import apache_beam as beam
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from beam_rust_worker import KV_ECHO_URN as KV_ECHO
from beam_rust_worker import KvEcho
from beam_rust_worker.kafka import KAFKA_READ_URN as KAFKA_READ
from beam_rust_worker.kafka import KAFKA_WRITE_URN as KAFKA_WRITE
from beam_rust_worker.kafka import ReadFromKafka, WriteToKafka
from conftest import REPO, free_port

STAGE_PLANNED = re.compile(r"stage planned .*transforms=(\S+)")


def run_echo(runner, worker, bootstrap, source, sink, group=None, producer=None,
             write_bootstrap=None, **read_args):
    """ReadFromKafka(source) -> KvEcho -> WriteToKafka(sink), run to the end on
    `runner`. With a `group`, offsets are committed when the runner finalizes
    the bundle."""
    with beam.Pipeline(options=runner.options()) as p:
        echo_pipeline(p, worker, bootstrap, source, sink, group, producer, write_bootstrap,
                      **read_args)


def echo_pipeline(p, worker, bootstrap, source, sink, group=None, producer=None,
                  write_bootstrap=None, **read_args):
    consumer = {"bootstrap.servers": bootstrap, "auto.offset.reset": "earliest"}
    if group:
        consumer["group.id"] = group
    # These pipelines run to the end: a bounded read unless a test says otherwise.
    if "max_num_records" not in read_args and "max_read_time" not in read_args:
        read_args.setdefault("stop_at_end", True)
    _ = (
        p
        | ReadFromKafka(consumer_config=consumer, topics=[source],
                        commit_offset_in_finalize=bool(group),
                        expansion_service=worker.expansion_address, **read_args)
        | KvEcho(expansion_service=worker.expansion_address)
        | WriteToKafka(
            producer_config={"bootstrap.servers": write_bootstrap or bootstrap,
                             **(producer or {})},
            topic=sink,
            expansion_service=worker.expansion_address)
    )


def _read_once(bootstrap, topic):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"test-reader-{uuid.uuid4().hex}",  # never commits
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records, at_end = [], set()
        while len(at_end) < len(partitions):
            m = consumer.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                    continue
                raise RuntimeError(f"reading {topic}: {m.error()}")
            records.append((m.key(), m.value()))
        return records
    finally:
        consumer.close()


def read_topic(bootstrap, topic, at_least=0):
    """Every (key, value) of `topic`, exact bytes (None for a null key/value),
    read to each partition's end with confluent-kafka. Re-read a few times while
    fewer than `at_least` came back: the broker may still be settling the last
    acknowledged batch."""
    for _ in range(10):
        records = _read_once(bootstrap, topic)
        if len(records) >= at_least:
            break
        time.sleep(0.5)
    return records


def produce(bootstrap, topic, records):
    """Produces exact bytes (None = no key / no value) and waits for every ack."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    failures = []
    for key, value in records:
        producer.produce(topic, key=key, value=value,
                         on_delivery=lambda err, _m: err and failures.append(err))
        producer.poll(0)
    assert producer.flush(60) == 0, "records not acknowledged by the broker"
    assert not failures, failures


def committed(bootstrap, topic, group):
    """The group's committed offset per partition (absent: none committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in offsets if tp.offset >= 0}
    finally:
        consumer.close()


def by_bytes(kv):
    key, value = kv
    return (key is not None, key or b"", value is not None, value or b"")


def assert_same_records(got, expected):
    got, expected = sorted(got, key=by_bytes), sorted(expected, key=by_bytes)
    if got != expected:
        g, e = Counter(got), Counter(expected)
        missing = sum((e - g).values())
        extra = sum((g - e).values())
        dup = sum(n - 1 for n in g.values() if n > 1)
        pytest.fail(f"{len(got)} records came back, {len(expected)} expected: {missing} "
                    f"missing, {extra} unexpected ({dup} duplicates); first missing: "
                    f"{list((e - g))[:3]}, first unexpected: {list((g - e))[:3]}")


def stage_runs(transform_urns):
    """The stage's own transforms, in order, without the runner's ports."""
    return [u for u in transform_urns if not u.startswith("beam:runner:")]


def planned_stages(log):
    return [m.group(1).split(",") for m in STAGE_PLANNED.finditer(log)]


def stage_seconds(log):
    """Seconds from the stage being planned to the runner closing the worker,
    from the worker's log timestamps (informative only)."""
    stamps = {}
    for line in log.splitlines():
        for what in ("stage planned", "runner closed the control stream"):
            if what in line and what not in stamps:
                stamps[what] = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
    if len(stamps) < 2:
        return None
    return (stamps["runner closed the control stream"] - stamps["stage planned"]).total_seconds()


def kafka_echo_example():
    spec = importlib.util.spec_from_file_location("kafka_echo", REPO / "examples" / "kafka_echo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------


@pytest.mark.runners("embedded", "prism", "flink", "flink-streaming")
def test_100k_records_round_trip_with_kcat(rust_worker, kafka_broker, worker_log, capsys,
                                           tmp_path, runner):
    """examples/kafka_echo.py over 100,000 keyed records: kcat produces them,
    kcat reads the output back, compared record by record."""
    n = 100_000
    source, sink = kafka_broker.topic("rt-in"), kafka_broker.topic("rt-out")
    pad = "x" * 60
    lines = [f"key-{i:06d}:value-{i:06d}-{pad}" for i in range(n)]
    kafka_broker.kcat("-P", "-t", source, "-K:", input=("\n".join(lines) + "\n").encode())

    start = time.monotonic()
    kafka_echo_example().run([
        "--bootstrap_servers", kafka_broker.address,
        "--input_topic", source, "--output_topic", sink,
        "--group_id", f"rt-{uuid.uuid4().hex[:8]}",
        "--expansion_service", rust_worker.expansion_address,
        *(["--no_commit"] if runner.name == "flink" else []),
        *runner.args(),
    ])
    seconds = time.monotonic() - start

    expected = sorted(line.replace(":", "\t", 1) for line in lines)
    # kcat -e stops at each partition's end; `dump` re-reads until all are there.
    kafka_broker.script("dump", sink, n, tmp_path / "out.txt")
    got = sorted((tmp_path / "out.txt").read_text().splitlines())
    assert len(got) == n, f"{len(got)} records in {sink}, expected {n}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"record {i} (sorted) differs: {g!r} != {e!r}"

    stage = stage_seconds(worker_log())
    with capsys.disabled():
        print(f"\n    kafka round trip on {runner}: {n} records in {seconds:.2f} s = {n / seconds:,.0f} "
              f"records/s (pipeline run incl. Beam job start-up)"
              + (f"; the fused stage took {stage:.2f} s in the pool = "
                 f"{n / stage:,.0f} records/s" if stage else ""))


@pytest.mark.runners("embedded", "prism", "flink", "flink-streaming")
def test_read_echo_write_is_one_fused_stage(rust_worker, kafka_broker, worker_log, runner):
    source, sink = kafka_broker.topic("fuse-in"), kafka_broker.topic("fuse-out")
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(200)]
    produce(kafka_broker.address, source, records)

    run_echo(runner, rust_worker, kafka_broker.address, source, sink)

    stages = planned_stages(worker_log())
    assert len(stages) == 1, f"expected one stage in the pool, got {stages}:\n{worker_log()}"
    assert sorted(stage_runs(stages[0])) == sorted([KAFKA_READ, KV_ECHO, KAFKA_WRITE]), stages[0]
    assert_same_records(read_topic(kafka_broker.address, sink, len(records)), records)


@pytest.mark.runners("embedded", "prism", "flink", "flink-streaming")
def test_null_keys_and_binary_values_come_back_identical(rust_worker, kafka_broker, runner):
    source, sink = kafka_broker.topic("bin-in"), kafka_broker.topic("bin-out")
    every_byte = bytes(range(256))
    records = [
        (None, b"no key"),
        (None, b"\x00"),
        (None, b""),
        (b"", b"empty key"),
        (b"nul", b"\x00\x00\x00"),
        (b"newlines", b"line 1\nline 2\r\n\n"),
        (b"tab\tkey\n", b"\tvalue\t"),
        (b"\x00key\xff", every_byte),
        (every_byte, every_byte * 40),  # ~10 KB
        (b"big", bytes(i % 251 for i in range(300_000))),
        (b"utf-8", "h\u00e9llo \u2603 \U0001F600".encode()),
        (b"tombstone", None),
        (None, None),
    ]
    records += [(None if i % 3 == 0 else b"k%d" % i, bytes([i % 256]) * (i % 17))
                for i in range(1000)]
    produce(kafka_broker.address, source, records)
    assert_same_records(read_topic(kafka_broker.address, source, len(records)), records)

    run_echo(runner, rust_worker, kafka_broker.address, source, sink)

    assert_same_records(read_topic(kafka_broker.address, sink, len(records)), records)


@pytest.mark.runners("embedded", "prism", "flink-streaming")
def test_second_run_with_the_same_group_reads_only_new_records(rust_worker, kafka_broker, runner):
    """Offsets are committed when the runner finalizes the bundle: a re-run
    with the same consumer group starts where the previous one ended."""
    bootstrap = kafka_broker.address
    source, sink = kafka_broker.topic("grp-in"), kafka_broker.topic("grp-out")
    group = f"grp-{uuid.uuid4().hex[:8]}"
    first = [(b"first-%d" % i, b"a" * (i % 50)) for i in range(3000)]
    second = [(b"second-%d" % i, b"b" * (i % 50)) for i in range(1500)]

    produce(bootstrap, source, first)
    run_echo(runner, rust_worker, bootstrap, source, sink, group=group)
    assert_same_records(read_topic(bootstrap, sink, len(first)), first)
    assert sum(committed(bootstrap, source, group).values()) == len(first)

    produce(bootstrap, source, second)
    run_echo(runner, rust_worker, bootstrap, source, sink, group=group)
    assert_same_records(read_topic(bootstrap, sink, len(first) + len(second)), first + second)
    assert sum(committed(bootstrap, source, group).values()) == len(first) + len(second)

    # Nothing new: the read ends at once and writes nothing.
    run_echo(runner, rust_worker, bootstrap, source, sink, group=group)
    assert_same_records(read_topic(bootstrap, sink, len(first) + len(second)), first + second)


@pytest.mark.runners("embedded", "prism", "flink")
def test_unreachable_broker_fails_naming_the_bootstrap_address(rust_worker, runner):
    closed = f"127.0.0.1:{free_port()}"  # bound, then closed: nothing listens there
    with pytest.raises(Exception) as info:
        run_echo(runner, rust_worker, closed, "echo-input", "echo-output")
    message = str(info.value)
    assert closed in message, message
    assert "cannot reach Kafka" in message, message


@pytest.mark.runners("embedded", "prism")
@pytest.mark.parametrize("missing", ["source", "sink"])
def test_missing_topic_fails_naming_the_topic(rust_worker, kafka_broker, missing, runner):
    """A missing output topic fails the bundle before anything is written, so
    nothing is committed either: once the topic exists, a re-run with the same
    group delivers every record, exactly once."""
    bootstrap = kafka_broker.address
    topics = {"source": kafka_broker.topic("mt-in"), "sink": kafka_broker.topic("mt-out")}
    records = [(b"k%d" % i, b"v%d" % i) for i in range(500)]
    produce(bootstrap, topics["source"], records)
    topics[missing] = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    group = f"mt-{uuid.uuid4().hex[:8]}"
    with pytest.raises(Exception) as info:
        run_echo(runner, rust_worker, bootstrap, topics["source"], topics["sink"], group=group)
    message = str(info.value)
    assert f"topic '{topics[missing]}' does not exist" in message, message
    assert bootstrap in message, message
    if missing == "sink":
        assert committed(bootstrap, topics["source"], group) == {}
        kafka_broker.create_topic(topics["sink"])
        run_echo(runner, rust_worker, bootstrap, topics["source"], topics["sink"], group=group)
        assert_same_records(read_topic(bootstrap, topics["sink"], len(records)), records)


@pytest.mark.runners("embedded", "prism")
def test_nothing_lost_when_the_write_fails_mid_run_and_the_job_is_rerun(
        rust_worker, kafka_broker, capsys, runner):
    """At-least-once across a write that fails in the middle of a bundle.

    "Mid-run" here is a record the producer cannot send arriving in the middle
    of the input (Kafka's classic RecordTooLarge): the first run's producer is
    configured with `message.max.bytes=100000` and the input holds 20,000
    small records, one 300 KB record, then 10,000 more, in one partition so the
    order is fixed. The read streams records into the write as it goes, so the
    small records before the big one are already handed to the producer (and
    some acknowledged) when the big one fails the bundle. The bundle failed, so
    the runner never finalizes it and the group's offsets are not committed.

    The fix (the limit raised) is re-run with the same consumer group: it reads
    from the start again, so every record arrives; the records the failed run
    wrote arrive twice (duplicates allowed, nothing missing).
    """
    bootstrap = kafka_broker.address
    source, sink = kafka_broker.topic("alo-in", 1), kafka_broker.topic("alo-out")
    group = f"alo-{uuid.uuid4().hex[:8]}"
    big = (b"too-big", b"B" * 300_000)
    records = ([(b"before-%d" % i, b"v" * 40) for i in range(20_000)] + [big]
               + [(b"after-%d" % i, b"w" * 40) for i in range(10_000)])
    produce(bootstrap, source, records)

    with pytest.raises(Exception) as info:
        run_echo(runner, rust_worker, bootstrap, source, sink, group=group,
                 producer={"message.max.bytes": "100000"})
    message = str(info.value)
    assert f"writing to topic '{sink}' failed" in message, message
    assert re.search(r"(?i)too large", message), message
    assert committed(bootstrap, source, group) == {}, "a failed bundle committed its offsets"
    written_by_failed_run = len(read_topic(bootstrap, sink))

    run_echo(runner, rust_worker, bootstrap, source, sink, group=group)

    out = Counter(read_topic(bootstrap, sink, len(records)))
    missing = [kv for kv in records if out[kv] == 0]
    assert not missing, f"{len(missing)} records lost, e.g. {[k for k, _ in missing[:5]]}"
    assert set(out) == set(records), "records that were never produced came back"
    assert sum(committed(bootstrap, source, group).values()) == len(records)
    with capsys.disabled():
        print(f"\n    at-least-once: the failed run wrote {written_by_failed_run} of "
              f"{len(records)} records before failing; after the re-run "
              f"{sum(out.values())} records, {sum(out.values()) - len(records)} duplicates, "
              f"none missing")


@pytest.mark.parametrize("transform, args, named", [
    (ReadFromKafka, {"with_metadata": True}, "with_metadata"),
    (ReadFromKafka, {"start_read_time": 1700000000000}, "start_read_time"),
    (ReadFromKafka, {"redistribute": True}, "redistribute"),
    (ReadFromKafka, {"timestamp_policy": "EventTime"}, "timestamp_policy"),
    (ReadFromKafka, {"key_deserializer":
                     "org.apache.kafka.common.serialization.StringDeserializer"},
     "key_deserializer"),
    (WriteToKafka, {"with_headers": True}, "with_headers"),
    (WriteToKafka, {"value_serializer":
                    "org.apache.kafka.common.serialization.StringSerializer"},
     "value_serializer"),
])
def test_unsupported_arguments_raise_value_error(transform, args, named):
    if transform is ReadFromKafka:
        base = {"consumer_config": {"bootstrap.servers": "127.0.0.1:9"}, "topics": ["t"]}
    else:
        base = {"producer_config": {"bootstrap.servers": "127.0.0.1:9"}, "topic": "t"}
    with pytest.raises(ValueError, match=rf"does not support {named}="):
        transform(**base, **args)


@pytest.mark.runners("flink-streaming")
def test_cancelled_streaming_job_and_stopped_job_server_release_every_worker(
        rust_worker, kafka_broker, worker_log, runner, capsys):
    """The seed's shape: a streaming Kafka job on Flink with checkpoints keeps
    running after its input is echoed (offsets committed by then). The job
    service accepts the cancel and reports CANCELLED, but Beam 2.62's Flink job
    server does not stop a job running on its embedded mini-cluster (its
    checkpoints go on), so the workers are released when the TaskManager goes
    away: here, when the job server process is stopped."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineState

    from conftest import released_workers, started_workers

    bootstrap = kafka_broker.address
    source, sink = kafka_broker.topic("cancel-in"), kafka_broker.topic("cancel-out")
    group = f"cancel-{uuid.uuid4().hex[:8]}"
    records = [(b"c%d" % i, b"v" * (i % 30)) for i in range(2000)]
    produce(bootstrap, source, records)
    # Without --shutdown_sources_after_idle_ms Flink keeps the job running.
    args = [a for a in runner.args() if not a.startswith("--shutdown_sources_after_idle_ms")]
    p = beam.Pipeline(options=PipelineOptions(args))
    echo_pipeline(p, rust_worker, bootstrap, source, sink, group=group)
    result = p.run()
    try:
        deadline = time.monotonic() + 180
        while len(_read_once(bootstrap, sink)) < len(records):
            assert time.monotonic() < deadline, "the records never reached the output topic"
            assert not PipelineState.is_terminal(result.state), result.state
            time.sleep(1)
        # Offsets are committed once a checkpoint completes after the bundle.
        while sum(committed(bootstrap, source, group).values()) < len(records):
            assert time.monotonic() < deadline, committed(bootstrap, source, group)
            time.sleep(0.5)
        assert result.state == PipelineState.RUNNING, result.state
    finally:
        result.cancel()
    try:
        result.wait_until_finish(duration=60_000)
    except RuntimeError as e:  # Beam raises for every end but DONE
        assert "CANCELLED" in str(e), e
    assert result.state == PipelineState.CANCELLED, result.state
    assert_same_records(read_topic(bootstrap, sink, len(records)), records)
    started = started_workers(worker_log())
    assert started, worker_log()[-3000:]

    stopped_at = time.monotonic()
    runner.services.stop("flink")  # later tests start a fresh one
    while sorted(released_workers(worker_log())) != sorted(started):
        assert time.monotonic() < stopped_at + 30, (
            f"started {started}, released {released_workers(worker_log())} 30 s after "
            f"the job server stopped:\n{worker_log()[-3000:]}")
        time.sleep(0.2)
    with capsys.disabled():
        print(f"\n    Flink job server stopped: {len(started)} worker(s) released "
              f"{time.monotonic() - stopped_at:.1f} s later")
