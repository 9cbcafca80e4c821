"""At-least-once under faults, for the streaming Kafka read (issue 9): while
records are produced at a steady rate into a running streaming job, the pool
is SIGKILLed and restarted, or SIGTERMed under load and restarted, or the job
is cancelled and submitted again with the same consumer group, or the broker
is restarted (same port and data). Every record
must reach the output topic (0 lost); duplicates are counted and printed.

On Beam's embedded runner and Prism a job whose worker died does not come
back, so it is submitted again after the pool restarts and resumes from the
group's committed offsets. On Flink the job is given execution retries and
recovers by itself from its last checkpoint (whose residuals hold the next
offsets), reconnecting to the restarted pool.
"""

import collections
import threading
import time
import uuid

import pytest

from conftest import RustWorker
from test_kafka import read_topic
from test_streaming import SinkWatcher, StreamingJob, produce_at_rate

RATE, SECONDS = 300, 12
FAULT_AT = 4  # seconds into the production


@pytest.mark.runners("embedded", "prism", "flink-streaming")
@pytest.mark.parametrize("fault", ["sigkill", "sigterm", "resubmit", "broker-restart"])
def test_no_record_is_lost_when(fault, worker_binary, kafka_broker, runner, capsys):
    bootstrap = kafka_broker.address
    source = kafka_broker.topic(f"fault-{fault}-in", 4)
    sink = kafka_broker.topic(f"fault-{fault}-out")
    group = f"fault-{uuid.uuid4().hex[:8]}"
    extra = ["--grace-secs", "10"]
    pool = RustWorker(worker_binary, *extra, name=f"pool-{fault}")
    ports = (pool.pool_port, pool.expansion_port)
    retries = ["--number_of_execution_retries=20", "--execution_retry_delay=2000"]
    job = StreamingJob(runner, pool, bootstrap, source, sink, group,
                       extra_args=retries if runner.is_flink else [])
    watcher = SinkWatcher(bootstrap, sink)
    sent = {}
    producer = threading.Thread(
        target=lambda: sent.update(produce_at_rate(bootstrap, source, b"r", RATE, SECONDS)))
    try:
        # The job is reading once records come through.
        warm = produce_at_rate(bootstrap, source, b"warm", 10, 1)
        watcher.wait_for(warm, job=job)
        producer.start()
        time.sleep(FAULT_AT)
        if fault == "broker-restart":
            # The job keeps running; reads and writes fail or wait while the
            # broker is away, and bundles that failed are retried by the
            # runner (Flink: from its checkpoint) or by a resubmission.
            kafka_broker.restart()
            if not runner.is_flink:
                job.stop(keep_runner=True)
                job = StreamingJob(runner, pool, bootstrap, source, sink, group)
        elif fault == "resubmit":
            job.stop(keep_runner=True)
            job = StreamingJob(runner, pool, bootstrap, source, sink, group)
        else:
            if fault == "sigkill":
                pool.proc.kill()
                pool.proc.wait(30)
            else:
                code = pool.stop()  # SIGTERM: running bundles get the grace period
                assert code == 0, f"pool exited with {code} on SIGTERM"
            pool = RustWorker(worker_binary, *extra, name=f"pool-{fault}-2", ports=ports)
            if not runner.is_flink:
                job.stop(keep_runner=True)
                job = StreamingJob(runner, pool, bootstrap, source, sink, group)
        producer.join(SECONDS + 30)
        watcher.wait_for(sent, timeout=180)
    finally:
        job.stop()
        watcher.close()
        pool.stop()
    keys = [k for k, _ in read_topic(bootstrap, sink, len(sent) + len(warm))]
    counts = collections.Counter(keys)
    lost = [k for k in list(sent) + list(warm) if k not in counts]
    duplicates = sum(c - 1 for c in counts.values())
    with capsys.disabled():
        print(f"\n[{runner.name}] {fault}: {len(sent)} records produced during the fault, "
              f"{len(lost)} lost, {duplicates} duplicates")
    assert not lost, f"{len(lost)} records lost"
