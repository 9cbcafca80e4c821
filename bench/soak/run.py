"""Soak: the streaming Kafka pipeline on Flink against one pool, for a long time.

Our unbounded ReadFromKafka -> KvEcho -> WriteToKafka (one fused stage in the
pool) runs on Beam's Flink job server in streaming mode with checkpoints, while
records are produced at a fixed rate. Every SAMPLE seconds the pool's resident
memory, threads, open file descriptors and CPU time are sampled from /proc, with
the size of Flink's latest completed checkpoint (from the job server's log) and
the records produced and echoed so far. At the end production stops, every
record must come back (duplicates are counted, not failed: at-least-once), and a
report gives the samples and the first-vs-last comparison.

Everything runs on loopback, in a private services.sh state folder; every
process started here is stopped by PID at the end, also on error or Ctrl-C.

  .venv/bin/python bench/soak/run.py --minutes 30 --rate 500 --report bench/soak/results.md
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SERVICES = os.path.join(ROOT, "scripts", "services.sh")
WORKER_BIN = os.path.join(ROOT, "target", "release", "beam-rust-worker")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")

JOB = r"""
import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from beam_rust_worker import KvEcho
from beam_rust_worker.kafka import ReadFromKafka, WriteToKafka
bootstrap, source, sink, group, expansion = sys.argv[1:6]
p = beam.Pipeline(options=PipelineOptions(sys.argv[6:]))
_ = (p
     | ReadFromKafka(consumer_config={"bootstrap.servers": bootstrap, "group.id": group,
                                      "auto.offset.reset": "earliest"},
                     topics=[source], commit_offset_in_finalize=True,
                     expansion_service=expansion)
     | KvEcho(expansion_service=expansion)
     | WriteToKafka(producer_config={"bootstrap.servers": bootstrap}, topic=sink,
                    expansion_service=expansion))
p.run().wait_until_finish()
"""

CHECKPOINT = re.compile(r"Completed checkpoint (\d+) for job \S+ \((\d+) bytes")
CHECKPOINT_FAILED = re.compile(r"Failed to trigger or complete checkpoint")
JOB_RESTARTING = re.compile(r"switched from state RUNNING to RESTARTING")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Services:
    def __init__(self, state):
        self.env = dict(os.environ, SERVICES_STATE=state)
        self.state = state
        self.started = []

    def start(self, name):
        out = subprocess.run([SERVICES, "start", name], env=self.env, capture_output=True,
                             text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError("services.sh start %s failed:\n%s" % (name, out.stderr[-3000:]))
        self.started.append(name)
        return out.stdout.strip().splitlines()[-1]

    def log(self, name):
        try:
            with open(os.path.join(self.state, name + ".log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def pid(self, name):
        with open(os.path.join(self.state, name + ".pid")) as f:
            return int(f.read())

    def stop_all(self):
        for name in reversed(self.started):
            subprocess.run([SERVICES, "stop", name], env=self.env, capture_output=True, timeout=120)
        self.started = []


def proc_sample(pid):
    """RSS (KB), threads, fds and CPU seconds of one process."""
    status = open("/proc/%d/status" % pid).read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir("/proc/%d/fd" % pid))
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    return {"rss_kb": rss, "threads": threads, "fds": fds, "cpu_s": cpu}


class Producer(threading.Thread):
    """`rate` records/s with unique keys until stopped."""

    def __init__(self, bootstrap, topic, rate):
        super().__init__(daemon=True)
        from confluent_kafka import Producer as KafkaProducer
        self.producer = KafkaProducer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic, self.rate = topic, rate
        self.sent = 0
        self.stop = threading.Event()

    def run(self):
        start = time.monotonic()
        while not self.stop.is_set():
            due = start + self.sent / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.1))
                continue
            self.producer.produce(self.topic, key=b"s%010d" % self.sent, value=b"v" * 100)
            self.sent += 1
            if self.sent % 100 == 0:
                self.producer.poll(0)
        if self.producer.flush(60) != 0:
            raise RuntimeError("records not delivered to the input topic")


class Watcher(threading.Thread):
    """Counts every key arriving on the output topic."""

    def __init__(self, bootstrap, topic):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": "soak-watch-" + uuid.uuid4().hex,
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.consumer.subscribe([topic])
        self.seen = {}
        self.total = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for m in self.consumer.consume(1000, 0.2):
                if m.error():
                    continue
                self.total += 1
                self.seen[m.key()] = self.seen.get(m.key(), 0) + 1

    def close(self):
        self.stop.set()
        self.join(10)
        self.consumer.close()


def create_topics(bootstrap, names, partitions):
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name, fut in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).items():
        fut.result(30)


def soak(args, work):
    svc = Services(os.path.join(work, "state"))
    pool = submit = None
    samples = []
    try:
        bootstrap = svc.start("kafka")
        job_endpoint = svc.start("flink")
        log("kafka at %s, flink job server at %s" % (bootstrap, job_endpoint))
        pool_port, exp_port, metrics_port = free_port(), free_port(), free_port()
        pool_log = open(os.path.join(work, "pool.log"), "w")
        pool = subprocess.Popen(
            [args.worker, "--port", str(pool_port), "--expansion-port", str(exp_port),
             "--metrics-port", str(metrics_port), "--log-level", "warn", *args.pool_arg],
            stdout=pool_log, stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(1)
        source, sink = "soak-in", "soak-out"
        create_topics(bootstrap, [source, sink], args.partitions)
        watcher = Watcher(bootstrap, sink)
        watcher.start()
        options = ["--runner=PortableRunner", "--job_endpoint=" + job_endpoint,
                   "--environment_type=EXTERNAL", "--environment_config=localhost:%d" % pool_port,
                   "--streaming", "--checkpointing_interval=%d" % args.checkpoint_ms,
                   "--finish_bundle_before_checkpointing", *args.job_arg]
        submit = subprocess.Popen(
            [sys.executable, "-c", JOB, bootstrap, source, sink, "soak-group",
             "localhost:%d" % exp_port] + options,
            stdout=open(os.path.join(work, "submit.log"), "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        producer = Producer(bootstrap, source, args.rate)
        producer.start()
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        flink_pid = svc.pid("flink")
        while time.monotonic() < end:
            if submit.poll() is not None:
                raise RuntimeError("the job's submitter exited with %s" % submit.returncode)
            if pool.poll() is not None:
                raise RuntimeError("the pool exited with %s" % pool.returncode)
            checkpoints = CHECKPOINT.findall(svc.log("flink"))
            s = {"t_s": round(time.monotonic() - t0, 1), "produced": producer.sent,
                 "echoed": watcher.total, "pool": proc_sample(pool.pid),
                 "flink": proc_sample(flink_pid),
                 "checkpoints": len(checkpoints),
                 "checkpoint_bytes": int(checkpoints[-1][1]) if checkpoints else None}
            samples.append(s)
            if len(samples) % 6 == 1:
                log("t=%4.0fs produced %d echoed %d pool rss %d KB thr %d fds %d | flink rss %d MB"
                    " | checkpoint %s: %s bytes" % (
                        s["t_s"], s["produced"], s["echoed"], s["pool"]["rss_kb"],
                        s["pool"]["threads"], s["pool"]["fds"], s["flink"]["rss_kb"] // 1024,
                        s["checkpoints"], s["checkpoint_bytes"]))
            time.sleep(args.sample)
        producer.stop.set()
        producer.join(120)
        sent = producer.sent
        deadline = time.monotonic() + 180
        while len(watcher.seen) < sent and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(3)
        watcher.close()
        expected = {b"s%010d" % i for i in range(sent)}
        lost = len(expected - set(watcher.seen))
        dups = sum(c - 1 for c in watcher.seen.values())
        flink_log = svc.log("flink")
        return {"args": vars(args), "produced": sent, "lost": lost, "duplicates": dups,
                "samples": samples,
                "checkpoints_failed": len(CHECKPOINT_FAILED.findall(flink_log)),
                "job_restarts": len(JOB_RESTARTING.findall(flink_log)),
                "state_too_large": "larger than the maximum permitted memory-backed state" in flink_log}
    finally:
        for p in (submit, pool):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(40)
                except subprocess.TimeoutExpired:
                    p.kill()
        svc.stop_all()


def spread(values):
    return "%s → %s (min %s, max %s)" % (values[0], values[-1], min(values), max(values))


def report(res, load):
    s = res["samples"]
    a = res["args"]
    # The first minute is start-up (job submission, first checkpoints).
    steady = [x for x in s if x["t_s"] >= 60] or s
    pool_rss = [x["pool"]["rss_kb"] for x in steady]
    lines = [
        "# Soak: streaming Kafka → KvEcho → Kafka on Flink, one pool",
        "",
        "Command: `.venv/bin/python bench/soak/run.py --minutes %g --rate %d --partitions %d "
        "--checkpoint-ms %d --sample %d%s`" % (
            a["minutes"], a["rate"], a["partitions"], a["checkpoint_ms"], a["sample"],
            "".join(" --pool-arg=" + x for x in a["pool_arg"])
            + "".join(" --job-arg=" + x for x in a["job_arg"])),
        "",
        "Load average (1 min) at start / end: %s / %s. Samples every %d s; \"steady\" = from 60 s on."
        % (load[0], load[1], a["sample"]),
        "",
        "| | value |",
        "|---|---|",
        "| records produced | %d |" % res["produced"],
        "| lost | **%d** |" % res["lost"],
        "| duplicates | %d |" % res["duplicates"],
        "| pool RSS, KB (first → last steady sample) | %s |" % spread(pool_rss),
        "| pool threads | %s |" % spread([x["pool"]["threads"] for x in steady]),
        "| pool open fds | %s |" % spread([x["pool"]["fds"] for x in steady]),
        "| pool CPU, share of one core (whole run) | %.1f %% |" % (
            100 * (s[-1]["pool"]["cpu_s"] - s[0]["pool"]["cpu_s"]) / max(1e-9, s[-1]["t_s"] - s[0]["t_s"])),
        "| Flink job server RSS, MB | %s |" % spread([x["flink"]["rss_kb"] // 1024 for x in steady]),
        "| Flink checkpoints completed | %d |" % s[-1]["checkpoints"],
        "| Flink checkpoints failed | %d%s |" % (
            res["checkpoints_failed"],
            " (state over the 5 MB limit of Flink's default in-memory checkpoint storage)"
            if res["state_too_large"] else ""),
        "| Flink job restarts | %d |" % res["job_restarts"],
        "| Flink checkpoint size, bytes | %s |" % spread(
            [x["checkpoint_bytes"] for x in steady if x["checkpoint_bytes"] is not None] or [0]),
        "",
        "Every 60 s:",
        "",
        "| t s | produced | echoed | pool RSS KB | threads | fds | Flink RSS MB | checkpoint # | checkpoint bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    step = max(1, int(60 / a["sample"]))
    for x in s[::step] + ([s[-1]] if (len(s) - 1) % step else []):
        lines.append("| %.0f | %d | %d | %d | %d | %d | %d | %d | %s |" % (
            x["t_s"], x["produced"], x["echoed"], x["pool"]["rss_kb"], x["pool"]["threads"],
            x["pool"]["fds"], x["flink"]["rss_kb"] // 1024, x["checkpoints"], x["checkpoint_bytes"]))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30, help="how long records are produced")
    ap.add_argument("--rate", type=int, default=500, help="records per second")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--checkpoint-ms", type=int, default=10000, help="Flink checkpoint interval")
    ap.add_argument("--sample", type=int, default=10, help="seconds between samples")
    ap.add_argument("--worker", default=WORKER_BIN, help="the beam-rust-worker binary")
    ap.add_argument("--pool-arg", action="append", default=[],
                    help="one more argument for the pool, e.g. --pool-arg=--process-window-ms=5000")
    ap.add_argument("--job-arg", action="append", default=[],
                    help="one more pipeline option, e.g. --job-arg=--state_backend=filesystem")
    ap.add_argument("--workdir", default=os.path.join(ROOT, ".cache", "soak"))
    ap.add_argument("--report", help="write the markdown report here")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    load0 = os.getloadavg()[0]
    res = soak(args, args.workdir)
    load = ("%.2f" % load0, "%.2f" % os.getloadavg()[0])
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(res, f)
    text = report(res, load)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
    print(text)
    return 0 if res["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
