"""End-to-end Kafka -> echo -> Kafka on Beam's Flink job server (issue 8, items 4-5).

  run.py seed  --records N     the seed's setup, checked record by record
                               (scripts/seed-baseline.sh calls this)
  run.py bench [--quick] ...   (a) seed, (b) Java KafkaIO + KvEcho, (c) all ours,
                               (d) the seed with our pool instead of Beam's,
                               interleaved, throughput / latency / CPU / RSS

Every service runs on loopback, in a private services.sh state folder, and is
stopped by PID at the end (also on error or Ctrl-C). Exit status 0 only if every
run returned exactly the expected records.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SERVICES = os.path.join(ROOT, "scripts", "services.sh")
PY = os.path.join(ROOT, ".venv", "bin", "python")
WORKER_BIN = os.path.join(ROOT, "target", "release", "beam-rust-worker")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# The seed's ports (pipeline.py / tutorial): services run on exactly these.
SEED_PORTS = {"KAFKA_PORT": "9092", "FLINK_JOB_PORT": "8099", "FLINK_ARTIFACT_PORT": "8098",
              "JAVA_EXPANSION_PORT": "8096", "PYTHON_POOL_PORT": "50000"}
BOOTSTRAP = "localhost:9092"
RUST_POOL_PORT, RUST_EXPANSION_PORT = 50100, 8196


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


class Failure(Exception):
    pass


# ------------------------------------------------------------------ services

class Services:
    """services.sh with a private state folder; our pool started here."""

    def __init__(self, state, pool_dir=os.path.join(HERE, "seed")):
        self.state = state
        self.pool_dir = pool_dir
        # PYTHON_POOL_DIR: the Python workers import the seed's `worker` module from there.
        self.env = dict(os.environ, SERVICES_STATE=state, PYTHON_POOL_DIR=pool_dir,
                        PYTHONDONTWRITEBYTECODE="1", **SEED_PORTS)
        self.started = []
        self.rust = None
        self.rust_log = None
        self.deprecated_read = True

    def check_ports_free(self, extra=()):
        import socket
        busy = []
        for p in list(SEED_PORTS.values()) + [str(x) for x in extra]:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                s.bind(("127.0.0.1", int(p)))
            except OSError:
                busy.append(p)
            finally:
                s.close()
        if busy:
            raise Failure("ports already in use: %s (the seed's setup needs them; stop "
                          "whatever listens there)" % ", ".join(busy))

    def sh(self, *args, timeout=600, env=None):
        r = subprocess.run([SERVICES, *args], env=env or self.env, cwd=HERE, capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise Failure("services.sh %s failed:\n%s" % (" ".join(args), r.stderr[-3000:]))
        return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""

    def start(self, name):
        t0 = time.time()
        self.started.append(name)
        env = None
        if name == "java-expansion" and not self.deprecated_read:
            # services.sh starts it with --experiments=use_deprecated_read, as the
            # tutorial does; empty options leave KafkaIO its SDF read.
            env = dict(self.env, JAVA_EXPANSION_ARGS="")
        ep = self.sh("start", name, env=env)
        log("started %s at %s in %.1f s" % (name, ep, time.time() - t0))
        return ep

    def pid(self, name):
        with open(os.path.join(self.state, name + ".pid")) as f:
            return int(f.read())

    def log_path(self, name):
        return os.path.join(self.state, name + ".log")

    def start_rust_pool(self):
        self.rust_log = os.path.join(self.state, "rust-pool.log")
        self.rust = subprocess.Popen(
            [WORKER_BIN, "--port", str(RUST_POOL_PORT), "--expansion-port", str(RUST_EXPANSION_PORT),
             "--advertise", "localhost:%d" % RUST_POOL_PORT,
             # (d): the seed's Map in delegated Python workers; they print every
             # record, which is logged as Beam's pool logs it.
             "--python", PY, "--log-level", "info"],
            # Started where Beam's pool is (PYTHON_POOL_DIR), so `import worker` works alike.
            cwd=self.pool_dir,
            stdout=open(self.rust_log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 30
        while not accepts(RUST_EXPANSION_PORT):
            if self.rust.poll() is not None or time.time() > deadline:
                raise Failure("beam-rust-worker did not start (log %s)" % self.rust_log)
            time.sleep(0.1)
        log("started beam-rust-worker pid %d (pool :%d, expansion :%d)"
            % (self.rust.pid, RUST_POOL_PORT, RUST_EXPANSION_PORT))

    def stop_all(self):
        if self.rust is not None and self.rust.poll() is None:
            self.rust.send_signal(signal.SIGTERM)
            try:
                self.rust.wait(35)
            except subprocess.TimeoutExpired:
                self.rust.kill()
        for name in reversed(self.started):
            try:
                self.sh("stop", name, timeout=60)
                log("stopped", name)
            except Exception as e:  # keep stopping the others
                log("stopping %s failed: %s" % (name, e))
        self.started = []

    def create_topic(self, name, partitions, log_append_time=True):
        from confluent_kafka.admin import AdminClient, NewTopic

        config = {}
        if log_append_time:
            # Broker-assigned timestamps: produce->consume latency and drain time are
            # measured on the broker's clock, independent of client batching.
            config["message.timestamp.type"] = "LogAppendTime"
        admin = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
        future = admin.create_topics([NewTopic(name, partitions, 1, config=config)])[name]
        try:
            future.result(timeout=60)
        except Exception as e:
            raise Failure("creating topic %s failed: %s" % (name, e))


def accepts(port):
    import socket
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ------------------------------------------------------------------ job service

def job_stub():
    import grpc
    from apache_beam.portability.api import beam_job_api_pb2_grpc
    ch = grpc.insecure_channel("localhost:8099")
    return beam_job_api_pb2_grpc.JobServiceStub(ch)


def jobs():
    from apache_beam.portability.api import beam_job_api_pb2
    r = job_stub().GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=30)
    return [(j.job_id, j.job_name, beam_job_api_pb2.JobState.Enum.Name(j.state)) for j in r.job_info]


def cancel_jobs(job_name, timeout=60):
    """Cancels every non-terminal job named job_name; waits for a terminal state."""
    from apache_beam.portability.api import beam_job_api_pb2
    terminal = {"DONE", "FAILED", "CANCELLED", "UPDATED", "DRAINED"}
    stub = job_stub()
    deadline = time.time() + timeout
    states = {}
    for jid, name, state in jobs():
        if name.startswith(job_name) and state not in terminal:
            stub.Cancel(beam_job_api_pb2.CancelJobRequest(job_id=jid), timeout=30)
            log("cancel requested for %s (%s, was %s)" % (name, jid, state))
    while time.time() < deadline:
        states = {jid: st for jid, name, st in jobs() if name.startswith(job_name)}
        if all(st in terminal for st in states.values()):
            return states
        time.sleep(0.5)
    raise Failure("job %s did not stop within %d s: %s" % (job_name, timeout, states))


def job_state(job_name):
    for jid, name, st in jobs():
        if name.startswith(job_name):
            return st
    return None


# ------------------------------------------------------------------ records

def make_record(tag, i):
    # 10-byte key, 100-byte value (the size scripts/bench.sh uses).
    key = "%s%09d" % (tag, i)
    return key, ("v%09d" % i) + "x" * 90


def expected(variant, key, value):
    if variant in SEED_MAP:  # the seed's kafka_record_processor: str() of each bytes
        return str(key.encode()), str(value.encode())
    return key, value


def produce(topic, lines, rate=None):
    """Feeds key<TAB>value lines to kcat; with rate, paced in 10 ms ticks."""
    p = subprocess.Popen(["kcat", "-b", BOOTSTRAP, "-P", "-t", topic, "-K", "\t", "-z", "none",
                          "-X", "linger.ms=5"],
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    if rate is None:
        buf = []
        for k, v in lines:
            buf.append("%s\t%s\n" % (k, v))
            if len(buf) >= 10000:
                p.stdin.write("".join(buf).encode())
                buf = []
        p.stdin.write("".join(buf).encode())
    else:
        per_tick = rate / 100.0
        sent = 0.0
        it = iter(lines)
        done = False
        tick = 0
        while not done:
            tick += 1
            target = per_tick * tick
            chunk = []
            while sent < target:
                try:
                    k, v = next(it)
                except StopIteration:
                    done = True
                    break
                chunk.append("%s\t%s\n" % (k, v))
                sent += 1
            if chunk:
                p.stdin.write("".join(chunk).encode())
                p.stdin.flush()
            delay = t0 + tick / 100.0 - time.time()
            if delay > 0:
                time.sleep(delay)
    p.stdin.close()
    err = p.stderr.read().decode()
    if p.wait(300) != 0:
        raise Failure("kcat producer failed: %s" % err[-2000:])
    return time.time() - t0


class Consumer:
    """kcat following a topic from the beginning into a file: ts<TAB>key<TAB>value."""

    def __init__(self, topic, path):
        self.path = path
        self.f = open(path, "w")
        self.p = subprocess.Popen(["kcat", "-b", BOOTSTRAP, "-C", "-t", topic, "-o", "beginning",
                                   "-u", "-q", "-f", "%T\t%k\t%s\n"],
                                  stdout=self.f, stderr=subprocess.DEVNULL, start_new_session=True)

    def count(self):
        self.f.flush()
        with open(self.path, "rb") as f:
            return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.f.close()

    def records(self):
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 3:
                    out.append((0, "<malformed>", line))
                else:
                    out.append((int(parts[0]), parts[1], parts[2]))
        return out


def dump_timestamps(topic):
    r = subprocess.run(["kcat", "-b", BOOTSTRAP, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
                        "-f", "%T\t%k\n"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise Failure("kcat dump of %s failed: %s" % (topic, r.stderr[-2000:]))
    return {k: int(t) for t, k in (l.split("\t", 1) for l in r.stdout.splitlines() if "\t" in l)}


def verify(variant, tag, n, recs):
    """Every record exactly once, with the content the variant makes; returns problems."""
    want = {}
    for i in range(n):
        k, v = make_record(tag, i)
        ek, ev = expected(variant, k, v)
        want[ek] = ev
    seen = set()
    missing, wrong, dup, extra = 0, [], 0, []
    for _, k, v in recs:
        if k in want:
            if k in seen:
                dup += 1
            seen.add(k)
            if want[k] != v:
                wrong.append((k, v))
        else:
            extra.append((k, v))
    missing = len(want) - len(seen)
    problems = []
    if missing:
        problems.append("%d of %d records missing" % (missing, n))
    if wrong:
        problems.append("%d records with wrong content, e.g. %r (expected value %r)"
                        % (len(wrong), wrong[0], want[wrong[0][0]]))
    if dup:
        problems.append("%d duplicates" % dup)
    if extra:
        problems.append("%d unexpected records, e.g. %r" % (len(extra), extra[0]))
    return problems


# ------------------------------------------------------------------ process accounting

def proc_children():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    s = f.read()
                ppid = int(s[s.rindex(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    return kids


def tree(root, kids):
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def stat(pid):
    """(start_ticks, cpu_ticks incl. reaped children, rss_bytes, hwm_bytes, name) or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        with open("/proc/%d/status" % pid) as f:
            st = f.read()
    except OSError:
        return None
    name = s[s.index("(") + 1:s.rindex(")")]
    fs = s[s.rindex(")") + 2:].split()
    cpu = sum(int(x) for x in fs[11:15])  # utime stime cutime cstime
    rss = hwm = 0
    for line in st.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return int(fs[19]), cpu, rss, hwm, name


class Sampler(threading.Thread):
    """Samples CPU ticks and RSS of process trees (by group label) every 0.5 s.

    A process's CPU in a window = its last sample minus its first (0 if it was
    born in the window); cutime/cstime count children the process reaped, so a
    pool's short-lived helpers are included once reaped. Peak RSS per process is
    VmHWM if it was born in the window, else the highest sampled VmRSS (the
    long-lived JVMs' VmHWM would carry earlier runs)."""

    def __init__(self, roots):
        super().__init__(daemon=True)
        self.roots = roots  # label -> pid
        self.first, self.last, self.peak = {}, {}, {}
        self.born = set()
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.marks = {}
        self.sample(initial=True)

    def sample(self, initial=False):
        kids = proc_children()
        with self.lock:
            for label, root in self.roots.items():
                if root is None:
                    continue
                for pid in tree(root, kids):
                    s = stat(pid)
                    if s is None:
                        continue
                    key = (label, pid, s[0])
                    if key not in self.first:
                        self.first[key] = s[1] if initial else 0
                        if not initial:
                            self.born.add(key)
                    self.last[key] = s[1]
                    pk = s[3] if key in self.born else s[2]
                    self.peak[key] = max(self.peak.get(key, 0), pk, s[2])

    def mark(self, name):
        self.sample()
        with self.lock:
            self.marks[name] = dict(self.last)

    def run(self):
        while not self.stop_ev.wait(0.5):
            self.sample()

    def finish(self):
        self.stop_ev.set()
        self.join(5)
        self.sample()

    def cpu(self, since=None, until=None):
        """CPU seconds per label between marks (None = start / end)."""
        a = self.marks[since] if since else self.first
        b = self.marks[until] if until else self.last
        out = {}
        for key, v in b.items():
            base = a.get(key, 0)  # absent: born after the first mark
            out[key[0]] = out.get(key[0], 0) + max(0, v - base) / TICK
        return out

    def rss(self):
        """Peak RSS per label: the roots plus processes born in this run. Older
        children are left out: the Python pool keeps the SDK workers of earlier
        (cancelled) jobs alive, idle, and they are not this run's cost."""
        out = {}
        roots = set(self.roots.values())
        for key, v in self.peak.items():
            if key[1] in roots or key in self.born:
                out[key[0]] = out.get(key[0], 0) + v
        return out

    def stale(self):
        """Processes under the roots that predate the run (e.g. leftover workers)."""
        roots = set(self.roots.values())
        return sorted({(k[0], k[1]) for k in self.first if k not in self.born and k[1] not in roots})


# ------------------------------------------------------------------ one run

VARIANT_NAMES = {
    "a": "seed: Java KafkaIO + Python Map (Python pool)",
    "b": "Java KafkaIO + our KvEcho",
    "c": "our read + KvEcho + write (one stage)",
    "d": "seed with our pool: Java KafkaIO + Python Map (our pool, delegated)",
}

#: Variants running the seed's Python Map (its output is str() of the input).
SEED_MAP = ("a", "d")


def submit(variant, tag, in_topic, out_topic, workdir, idle_ms=5000):
    job_name = "e2e-%s" % tag
    logf = open(os.path.join(workdir, "submit-%s.log" % tag), "w")
    p = subprocess.Popen(
        [PY, os.path.join(HERE, "submit.py"), "--variant", variant, "--bootstrap", BOOTSTRAP,
         "--input-topic", in_topic, "--output-topic", out_topic, "--group", "g-" + tag,
         "--job-name", job_name, "--rust-expansion", "localhost:%d" % RUST_EXPANSION_PORT,
         "--rust-pool", "localhost:%d" % RUST_POOL_PORT, "--idle-ms", str(idle_ms)],
        cwd=os.path.join(HERE, "seed") if variant in SEED_MAP else HERE,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    return p, job_name, logf.name


def wait_for(consumer, n, timeout, proc, what, on_first=None):
    t0 = time.time()
    last, last_change = -1, time.time()
    first_seen = None
    while True:
        c = consumer.count()
        if c > 0 and first_seen is None:
            first_seen = time.time()
            if on_first:
                on_first()
        if c >= n:
            return c
        if c != last:
            last, last_change = c, time.time()
        if proc is not None and proc.poll() is not None and proc.returncode != 0:
            raise Failure("%s: the submitting process exited with %d after %d/%d records"
                          % (what, proc.returncode, c, n))
        if time.time() - t0 > timeout:
            raise Failure("%s: %d of %d records after %d s" % (what, c, n, timeout))
        time.sleep(0.2)


def stop_job(proc, job_name):
    states = {}
    try:
        states = cancel_jobs(job_name)
    finally:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return states


def throughput_run(svc, variant, rep, n, workdir, timeout):
    topic_tag = "%s-r%d-%d" % (variant, rep, int(time.time()))
    in_t, out_t = "in-" + topic_tag, "out-" + topic_tag
    svc.create_topic(in_t, 4)
    svc.create_topic(out_t, 4)
    prod_s = produce(in_t, (make_record("k", i) for i in range(n)))
    log("[%s rep %d] produced %d records into %s in %.1f s" % (variant, rep, n, in_t, prod_s))
    cons = Consumer(out_t, os.path.join(workdir, "out-%s.tsv" % topic_tag))
    sampler = Sampler(svc.roots(variant))
    sampler.start()
    t_submit = time.time()
    proc, job_name, sublog = submit(variant, topic_tag, in_t, out_t, workdir)
    try:
        wait_for(cons, n, timeout, proc, "%s rep %d" % (variant, rep),
                 on_first=lambda: sampler.mark("first"))
        t_done = time.time()
        time.sleep(1.0)  # let stragglers/duplicates show up
        sampler.mark("done")
    finally:
        sampler.finish()
        states = stop_job(proc, job_name)
        cons.stop()
    recs = cons.records()
    problems = verify(variant, "k", n, recs)
    ts = sorted(r[0] for r in recs)
    drain_s = (ts[-1] - ts[0]) / 1000.0 if len(ts) > 1 else float("nan")
    cpu_total = sampler.cpu(None, "done")
    cpu_drain = sampler.cpu("first", "done")
    res = {
        "variant": variant, "rep": rep, "n": n, "topic": topic_tag,
        "records_per_s": (len(ts) - 1) / drain_s if drain_s > 0 else float("nan"),
        "drain_s": drain_s, "wall_s": t_done - t_submit,
        "cpu_total": cpu_total, "cpu_drain": cpu_drain, "rss": sampler.rss(),
        "job_states": states, "problems": problems, "submit_log": sublog,
        "stale_processes": sampler.stale(),
    }
    log("[%s rep %d] %s: %.0f records/s over %.1f s drain, %.1f s wall; drain CPU %s"
        % (variant, rep, "OK" if not problems else "FAILED " + "; ".join(problems),
           res["records_per_s"], drain_s, res["wall_s"],
           {k: round(v, 2) for k, v in cpu_drain.items()}))
    return res


def latency_run(svc, variant, rep, rate, secs, workdir, timeout):
    topic_tag = "%s-lat%d-%d" % (variant, rep, int(time.time()))
    in_t, out_t = "in-" + topic_tag, "out-" + topic_tag
    svc.create_topic(in_t, 4)
    svc.create_topic(out_t, 4)
    cons = Consumer(out_t, os.path.join(workdir, "out-%s.tsv" % topic_tag))
    proc, job_name, sublog = submit(variant, topic_tag, in_t, out_t, workdir)
    n = rate * secs
    try:
        # Warm-up: one record every 0.5 s until the pipeline echoes one.
        w, deadline = 0, time.time() + timeout
        while cons.count() == 0:
            if time.time() > deadline:
                raise Failure("%s latency rep %d: no warm-up record came back in %d s"
                              % (variant, rep, timeout))
            if proc.poll() is not None:
                raise Failure("%s latency rep %d: submitter exited %s" % (variant, rep, proc.returncode))
            produce(in_t, [make_record("w", w)])
            w += 1
            time.sleep(0.5)
        time.sleep(2)
        warm = cons.count()
        log("[%s lat %d] pipeline echoes (%d warm-up records); producing %d/s for %d s"
            % (variant, rep, w, rate, secs))
        produce(in_t, (make_record("k", i) for i in range(n)), rate=rate)
        wait_for(cons, warm + n, timeout, proc, "%s latency rep %d" % (variant, rep))
        time.sleep(1.0)
    finally:
        stop_job(proc, job_name)
        cons.stop()
    recs = [r for r in cons.records() if not r[1].startswith(("w", "b'w"))]
    problems = verify(variant, "k", n, recs)
    sent = dump_timestamps(in_t)
    lat = []
    for t, k, _ in recs:
        ik = k[2:-1] if variant in SEED_MAP else k
        if ik in sent:
            lat.append(t - sent[ik])
    lat.sort()
    res = {"variant": variant, "rep": rep, "rate": rate, "secs": secs, "n": n,
           "p50_ms": lat[len(lat) // 2] if lat else None,
           "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
           "max_ms": lat[-1] if lat else None, "problems": problems}
    log("[%s lat %d] %s p50 %s ms p99 %s ms max %s ms" % (
        variant, rep, "OK" if not problems else "FAILED " + "; ".join(problems),
        res["p50_ms"], res["p99_ms"], res["max_ms"]))
    return res


def roots_for(svc):
    def roots(variant):
        r = {"flink": svc.pid("flink"), "kafka": svc.pid("kafka")}
        if variant != "c":  # (c) never calls it
            r["java-expansion"] = svc.pid("java-expansion")
        if variant == "a":
            r["python-pool"] = svc.pid("python-pool")
        else:
            r["rust-pool"] = svc.rust.pid
        return r
    return roots


# ------------------------------------------------------------------ commands

def start_services(svc, variants):
    svc.check_ports_free(extra=(RUST_POOL_PORT, RUST_EXPANSION_PORT) if set(variants) - {"a"} else ())
    svc.start("kafka")
    svc.start("flink")
    svc.start("java-expansion")
    if "a" in variants:
        svc.start("python-pool")
    if set(variants) - {"a"}:
        svc.start_rust_pool()
    svc.roots = roots_for(svc)


def cmd_seed(args):
    """Item 4: the seed's pipeline.py as written (hosts changed), checked."""
    work = args.workdir
    seed_dir = os.path.join(work, "seed")
    svc = Services(os.path.join(work, "state"), pool_dir=seed_dir)
    svc.deprecated_read = not args.sdf_read
    ok = False
    t0 = time.time()
    try:
        start_services(svc, "a")
        for t in ("echo-input", "echo-output"):
            svc.create_topic(t, args.partitions, log_append_time=False)
        n = args.records
        prod = produce("echo-input", (make_record("k", i) for i in range(n)))
        log("produced %d records into echo-input (%d partitions) in %.1f s" % (n, args.partitions, prod))
        cons = Consumer("echo-output", os.path.join(work, "echo-output.tsv"))
        logf = open(os.path.join(work, "pipeline.log"), "w")
        t_submit = time.time()
        proc = subprocess.Popen([PY, "pipeline.py"], cwd=seed_dir, stdout=logf,
                                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(cons, n, args.timeout, proc, "seed pipeline")
            t_done = time.time()
            time.sleep(2.0)
        finally:
            try:
                states = cancel_jobs("kafka_echo_demo")
                log("job states after cancel: %s" % states)
            finally:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                cons.stop()
        problems = verify("a", "k", n, cons.records())
        print("seed-baseline: %d records through the seed's pipeline on Flink (streaming, "
              "parallelism 2): %s; first submit to last record %.1f s; total %.0f s"
              % (n, "all present, each key/value = str() of the input bytes" if not problems
                 else "FAILED: " + "; ".join(problems), t_done - t_submit, time.time() - t0))
        print("seed-baseline: logs in %s (pipeline.log, state/*.log)" % work)
        ok = not problems
    except Failure as e:
        print("seed-baseline: FAILED: %s" % e)
        print("seed-baseline: logs in %s (pipeline.log, state/*.log)" % work)
    finally:
        svc.stop_all()
    return 0 if ok else 1


def median_range(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, None
    return statistics.median(xs), min(xs), max(xs)


def parse_variants(text):
    """'ac', 'a,c' or 'a c' -> 'ac'; anything but a-d and separators is refused."""
    variants = "".join(ch for ch in text if ch not in ", ")
    unknown = sorted(set(variants) - set(VARIANT_NAMES))
    if not variants or unknown:
        raise argparse.ArgumentTypeError(
            "variants are letters among %s, not %r" % (", ".join(VARIANT_NAMES), text))
    return variants


def cmd_bench(args):
    work = args.workdir
    variants = args.variants
    svc = Services(os.path.join(work, "state"))
    svc.deprecated_read = not args.sdf_read
    results = {"throughput": [], "latency": [], "args": vars(args),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "failures": []}
    t0 = time.time()
    try:
        start_services(svc, variants)
        results["startup_s"] = time.time() - t0
        for rep in range(1, args.reps + 1):
            for v in variants:
                try:
                    r = throughput_run(svc, v, rep, args.records, work, args.timeout)
                    results["throughput"].append(r)
                    if r["problems"]:
                        results["failures"].append("%s rep %d: %s" % (v, rep, "; ".join(r["problems"])))
                except Failure as e:
                    log("FAILED:", e)
                    results["failures"].append(str(e))
            if args.latency_secs > 0:
                for v in variants:
                    if v == "c":
                        continue  # our read is bounded: no latency until the streaming read exists
                    try:
                        r = latency_run(svc, v, rep, args.latency_rate, args.latency_secs, work,
                                        args.timeout)
                        results["latency"].append(r)
                        if r["problems"]:
                            results["failures"].append("%s latency rep %d: %s"
                                                       % (v, rep, "; ".join(r["problems"])))
                    except Failure as e:
                        log("FAILED:", e)
                        results["failures"].append(str(e))
            with open(os.path.join(work, "results.json"), "w") as f:
                json.dump(results, f, indent=1, default=str)
    except Failure as e:
        log("FAILED:", e)
        results["failures"].append(str(e))
    finally:
        svc.stop_all()
    results["total_s"] = time.time() - t0
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    report = summarize(results)
    print(report)
    if args.report:
        with open(args.report, "w") as f:
            f.write(report)
    if results["failures"]:
        print("e2e: FAILED:\n  " + "\n  ".join(results["failures"]))
        return 1
    print("e2e: every run returned exactly the expected records (%d throughput, %d latency runs); %.0f s"
          % (len(results["throughput"]), len(results["latency"]), results["total_s"]))
    return 0


def fmt(m, lo, hi, f="%.0f"):
    if m is None:
        return "n/a"
    return (f + " (" + f + "–" + f + ")") % (m, lo, hi)


def summarize(res):
    lines = []
    a = res["args"]
    lines.append("Throughput: %d records drained per run (4 partitions, parallelism 2), %d repetition(s), "
                 "median (min–max)" % (a["records"], a["reps"]))
    lines.append("")
    lines.append("| variant | records/s | drain s | submit→last record s | CPU s / M records (drain) "
                 "| CPU s / M records (incl. job start) | Kafka broker CPU s / M | peak RSS MB |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for v in a["variants"]:
        rs = [r for r in res["throughput"] if r["variant"] == v and not r["problems"]]
        if not rs:
            lines.append("| (%s) %s | failed | | | | | | |" % (v, VARIANT_NAMES[v]))
            continue
        n = rs[0]["n"] / 1e6

        def cpu(r, key):
            return sum(x for k, x in r[key].items() if k != "kafka") / n

        def rss(r):
            return sum(x for k, x in r["rss"].items() if k != "kafka") / 2**20
        lines.append("| (%s) %s | %s | %s | %s | %s | %s | %s | %s |" % (
            v, VARIANT_NAMES[v],
            fmt(*median_range([r["records_per_s"] for r in rs])),
            fmt(*median_range([r["drain_s"] for r in rs]), f="%.1f"),
            fmt(*median_range([r["wall_s"] for r in rs]), f="%.1f"),
            fmt(*median_range([cpu(r, "cpu_drain") for r in rs]), f="%.1f"),
            fmt(*median_range([cpu(r, "cpu_total") for r in rs]), f="%.1f"),
            fmt(*median_range([r["cpu_drain"].get("kafka", 0) / n for r in rs]), f="%.1f"),
            fmt(*median_range([rss(r) for r in rs]))))
    lines.append("")
    lines.append("CPU per process group, drain window, CPU s per million records (median):")
    lines.append("")
    for v in a["variants"]:
        rs = [r for r in res["throughput"] if r["variant"] == v and not r["problems"]]
        if rs:
            n = rs[0]["n"] / 1e6
            keys = sorted({k for r in rs for k in r["cpu_drain"]})
            parts = ["%s %.1f" % (k, statistics.median([r["cpu_drain"].get(k, 0) / n for r in rs]))
                     for k in keys]
            rparts = ["%s %.0f MB" % (k, statistics.median([r["rss"].get(k, 0) / 2**20 for r in rs]))
                      for k in keys]
            lines.append("- (%s): CPU %s; peak RSS %s" % (v, ", ".join(parts), ", ".join(rparts)))
    lines.append("")
    lines.append("Per run: " + ", ".join("%s%d %.0f/s" % (r["variant"], r["rep"], r["records_per_s"])
                                          for r in res["throughput"]))
    if a["latency_secs"] > 0:
        lines.append("")
        lines.append("Latency: %d records/s for %d s, produce→consume (broker LogAppendTime of the "
                     "input record to that of its output record), median (min–max) over repetitions"
                     % (a["latency_rate"], a["latency_secs"]))
        lines.append("")
        lines.append("| variant | p50 ms | p99 ms | max ms |")
        lines.append("|---|---|---|---|")
        for v in a["variants"]:
            if v == "c":
                lines.append("| (c) %s | n/a (bounded read) | n/a | n/a |" % VARIANT_NAMES[v])
                continue
            rs = [r for r in res["latency"] if r["variant"] == v and not r["problems"]]
            lines.append("| (%s) %s | %s | %s | %s |" % (
                v, VARIANT_NAMES[v], fmt(*median_range([r["p50_ms"] for r in rs])),
                fmt(*median_range([r["p99_ms"] for r in rs])),
                fmt(*median_range([r["max_ms"] for r in rs]))))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed", help="the seed's setup, checked (item 4)")
    s.add_argument("--records", type=int, default=1000)
    s.add_argument("--partitions", type=int, default=4)
    s.add_argument("--timeout", type=int, default=600, help="seconds to wait for the output")
    s.add_argument("--workdir", default=None)
    s.add_argument("--sdf-read", action="store_true",
                   help="start the Java expansion service exactly as services.sh does (without "
                   "--experiments=use_deprecated_read): KafkaIO then reads through its SDF")
    b = sub.add_parser("bench", help="side-by-side benchmark (item 5)")
    b.add_argument("--records", type=int, default=None, help="backlog per throughput run (default 1,000,000; --quick 2,000)")
    b.add_argument("--reps", type=int, default=None, help="repetitions (default 3; --quick 1)")
    b.add_argument("--variants", default="abc", type=parse_variants,
                   help="any of a, b, c, d, e.g. 'ac' or 'a,c' (d: the seed with our pool in "
                        "place of Beam's)")
    b.add_argument("--latency-rate", type=int, default=2000)
    b.add_argument("--latency-secs", type=int, default=None,
                   help="latency phase per repetition, 0 = none (default 60; --quick 0)")
    b.add_argument("--timeout", type=int, default=900, help="seconds per run to wait for output")
    b.add_argument("--quick", action="store_true",
                   help="CI smoke: 2000 records, 1 repetition, no latency phase")
    b.add_argument("--report", default=None, help="also write the summary (markdown) here")
    b.add_argument("--workdir", default=None)
    b.add_argument("--sdf-read", action="store_true",
                   help="Java expansion service without --experiments=use_deprecated_read")
    args = ap.parse_args()
    if args.cmd == "bench":
        if args.quick:
            args.records = args.records or 2000
            args.reps = args.reps or 1
            args.latency_secs = 0 if args.latency_secs is None else args.latency_secs
        args.records = args.records or 1000000
        args.reps = args.reps or 3
        args.latency_secs = 60 if args.latency_secs is None else args.latency_secs
    args.workdir = os.path.abspath(args.workdir or os.path.join(ROOT, ".cache", "e2e", args.cmd))
    if os.path.exists(args.workdir):
        shutil.rmtree(args.workdir)
    os.makedirs(args.workdir)
    if args.cmd == "seed":
        shutil.copytree(os.path.join(HERE, "seed"), os.path.join(args.workdir, "seed"),
                        ignore=shutil.ignore_patterns("__pycache__"))
    # SIGTERM (timeout(1), CI) becomes an exception so the finally blocks stop services.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    return cmd_seed(args) if args.cmd == "seed" else cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
