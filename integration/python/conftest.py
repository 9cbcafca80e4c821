"""Fixtures that run the real beam-rust-worker binary (and a stand-alone Beam
job service) as subprocesses for pipelines built with the real Beam SDK.

The runners: a test that takes the `runner` fixture runs once per runner, on
Beam's embedded Python runner, on Prism and on Flink's job server (embedded
Flink mini-cluster), the last two started once per session with
`scripts/services.sh`. `@pytest.mark.runners(...)` narrows a test's list,
e.g. to add "flink-streaming" (Flink with --streaming and checkpoints).

Also an Apache Kafka broker on loopback, started and stopped with
`scripts/kafka.sh`, for the Kafka tests.

Environment variables:
  BEAM_RUST_WORKER_BIN   use this worker binary instead of building
                         `target/release/beam-rust-worker` with cargo.
  BEAM_RUST_WORKER_LOG   the worker's `--log-level` (default `info`).
  BEAM_TEST_RUNNERS      comma-separated runners to test on (default: all of
                         embedded, prism, flink, flink-streaming).
"""

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("beam-rust-worker")

# How long a started process may take to accept connections.
STARTUP_TIMEOUT_S = 60
# How long a process may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15


RUNNERS = ("embedded", "prism", "flink")
ALL_RUNNERS = RUNNERS + ("flink-streaming",)


def selected_runners():
    chosen = os.environ.get("BEAM_TEST_RUNNERS")
    if not chosen:
        return ALL_RUNNERS
    names = tuple(r.strip() for r in chosen.split(",") if r.strip())
    unknown = set(names) - set(ALL_RUNNERS)
    if unknown:
        raise pytest.UsageError(f"BEAM_TEST_RUNNERS names unknown runners {sorted(unknown)}; "
                                f"known: {', '.join(ALL_RUNNERS)}")
    return names


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "runners(*names): the runners a test that takes `runner` runs on")


def pytest_generate_tests(metafunc):
    """One instance of each `runner` test per runner it is marked for."""
    if "runner" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("runners")
    names = marker.args if marker else RUNNERS
    chosen = [n for n in names if n in selected_runners()]
    metafunc.parametrize("runner", chosen, indirect=True)


class Services:
    """The outside services (`scripts/services.sh`), each started on first use
    and kept for the session, in a state folder of the session's own (so
    nothing started by anyone else is touched); all stopped at the end."""

    SCRIPT = REPO / "scripts" / "services.sh"

    def __init__(self, state_dir: Path):
        self.state = state_dir
        self.env = {**os.environ, "SERVICES_STATE": str(state_dir)}
        self._endpoints = {}

    def run(self, *args, env=None, timeout=1800) -> str:
        proc = subprocess.run([str(self.SCRIPT), *map(str, args)], cwd=REPO,
                              env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/services.sh {' '.join(map(str, args))} failed "
                               f"({proc.returncode}):\n{proc.stderr[-5000:]}")
        return proc.stdout

    def endpoint(self, name: str, **env) -> str:
        """host:port of the service, started now if it is not running yet."""
        if name not in self._endpoints:
            self._endpoints[name] = self.run("start", name, env=env).strip().splitlines()[-1]
        return self._endpoints[name]

    def log(self, name: str) -> str:
        path = self.state / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str):
        self.run("stop", name)
        self._endpoints.pop(name, None)

    def stop_all(self):
        self.run("stop-all")
        self._endpoints.clear()


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    started = Services(tmp_path_factory.mktemp("services"))
    try:
        yield started
    finally:
        started.stop_all()


class Runner:
    """One of the runners the pipelines run on; `options()` gives the
    pipeline options for it (Python steps in-process, LOOPBACK)."""

    def __init__(self, name: str, job_endpoint: str, services=None):
        self.name = name
        self.job_endpoint = job_endpoint
        self.services = services
        self.streaming = name == "flink-streaming"
        self.is_flink = name.startswith("flink")

    def args(self, *extra):
        args = ["--runner=PortableRunner", f"--job_endpoint={self.job_endpoint}",
                "--environment_type=LOOPBACK"]
        if self.streaming:
            # Checkpoints drive bundle finalization (Kafka offset commits); with
            # them Flink keeps idle sources alive forever unless told to stop
            # them, so bounded test pipelines end 3 s after their input does.
            args += ["--streaming", "--checkpointing_interval=500",
                     "--shutdown_sources_after_idle_ms=3000"]
        return args + list(extra)

    def options(self, *extra):
        from apache_beam.options.pipeline_options import PipelineOptions

        return PipelineOptions(self.args(*extra))

    def log(self) -> str:
        """The job server's log (Flink, Prism); empty for the embedded runner."""
        if self.services is None:
            return ""
        return self.services.log("flink" if self.is_flink else self.name)

    def __repr__(self):
        return self.name


@pytest.fixture
def runner(request, services):
    name = request.param
    if name == "embedded":
        return Runner(name, "embed")
    service = "flink" if name.startswith("flink") else name
    return Runner(name, services.endpoint(service), services)


def portable(*extra, job_endpoint="embed"):
    """Options for Beam's portable runner; the pipelines' Python steps run in-process."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(
        [
            "--runner=PortableRunner",
            f"--job_endpoint={job_endpoint}",
            "--environment_type=LOOPBACK",
            *extra,
        ]
    )


PARDO_URN = "beam:transform:pardo:v1"


def native_urn(transform) -> str:
    """What a transform runs: our expansion service sends our transforms as
    ParDos whose DoFn spec carries our URN; anything else is its own URN."""
    if transform.spec.urn == PARDO_URN:
        from apache_beam.portability.api import beam_runner_api_pb2

        pardo = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        return pardo.do_fn.urn
    return transform.spec.urn


def started_workers(log: str) -> list:
    """Worker ids of the native workers the pool started, from its log."""
    return re.findall(r'starting worker worker_id="([^"]*)"', log)


def released_workers(log: str) -> list:
    return re.findall(r'worker released worker_id="([^"]*)"', log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Process:
    """A child process whose output lines are kept and forwarded to `logging`,
    so they appear in pytest's captured log of whichever test was running."""

    def __init__(self, name, args, cwd=REPO):
        self.name = name
        self.args = [str(a) for a in args]
        self.lines = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            self.args,
            cwd=cwd,
            env={**os.environ, "NO_COLOR": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._lock:
                self.lines.append(line)
            LOG.info("[%s] %s", self.name, line)

    def output(self, since: int = 0) -> str:
        with self._lock:
            return "\n".join(self.lines[since:])

    def mark(self) -> int:
        with self._lock:
            return len(self.lines)

    def wait_for_ports(self, *ports):
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pending = list(ports)
        while pending:
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before listening "
                    f"on {pending}; command: {' '.join(self.args)}\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not listen on {pending} within "
                    f"{STARTUP_TIMEOUT_S}s\n{self.output()}"
                )
            pending = [p for p in pending if not _accepts(p)]
            if pending:
                time.sleep(0.1)

    def stop(self):
        """SIGTERM by PID, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                LOG.warning("%s (pid %d) ignored SIGTERM; killing", self.name, self.proc.pid)
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=5)
        return self.proc.returncode


def scrape(port: int) -> str:
    """The pool's /metrics text (Prometheus/OpenMetrics exposition)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def sample(exposition: str, series: str):
    """The value of one exact series (name{labels}), or None."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return None


def sample_sum(exposition: str, name: str, **labels) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    total = 0.0
    for line in exposition.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


class RustWorker(Process):
    """The pool with its expansion service on free ports; `extra` flags added."""

    def __init__(self, binary, *extra, name="rust-worker", ports=None, cwd=REPO):
        # Fixed `ports` (pool, expansion) let a test restart a pool where the
        # runner expects it.
        self.pool_port, self.expansion_port = ports or (free_port(), free_port())
        self.metrics_port = free_port()
        self.pool_address = f"localhost:{self.pool_port}"
        self.expansion_address = f"localhost:{self.expansion_port}"
        super().__init__(
            name,
            [
                binary,
                "--port", self.pool_port,
                "--expansion-port", self.expansion_port,
                "--advertise", self.pool_address,
                # Environments not made by our expansion service (the default
                # Python one) get Beam's SDK worker, run by this venv's Python.
                "--python", sys.executable,
                "--log-level", os.environ.get("BEAM_RUST_WORKER_LOG", "info"),
                "--metrics-port", self.metrics_port,
                *extra,
            ],
            cwd=cwd,
        )
        self.wait_for_ports(self.pool_port, self.expansion_port, self.metrics_port)

    def metrics(self) -> str:
        return scrape(self.metrics_port)


@pytest.fixture(scope="session")
def worker_binary() -> Path:
    """The release binary: BEAM_RUST_WORKER_BIN, or built here with cargo."""
    override = os.environ.get("BEAM_RUST_WORKER_BIN")
    if override:
        path = Path(override)
        if not path.is_file():
            pytest.fail(f"BEAM_RUST_WORKER_BIN={override} does not exist")
        return path
    proc = subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "beam-rust-worker", "--bin", "beam-rust-worker"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail("cargo build --release failed:\n" + proc.stderr[-20000:])
    return REPO / "target" / "release" / "beam-rust-worker"


@pytest.fixture(scope="session")
def rust_worker(worker_binary):
    """One worker pool with its expansion service, shared by the session."""
    worker = RustWorker(worker_binary)
    yield worker
    code = worker.stop()
    if code not in (0, -signal.SIGTERM):
        LOG.warning("worker exited with %s", code)


@pytest.fixture
def worker_log(rust_worker):
    """The worker's output produced while the test ran (a callable)."""
    start = rust_worker.mark()
    return lambda: rust_worker.output(start)


@pytest.fixture(scope="session")
def job_service():
    """Beam's stand-alone Python job service; yields its `host:port`."""
    port = free_port()
    service = Process(
        "job-service",
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
         "--port", port],
    )
    service.wait_for_ports(port)
    yield f"localhost:{port}"
    service.stop()


@pytest.fixture(autouse=True)
def _worker_alive_after_test(request):
    """A test that killed the shared worker must not pass silently."""
    yield
    if "rust_worker" in request.fixturenames:
        worker = request.getfixturevalue("rust_worker")
        code = worker.proc.poll()
        assert code is None, (
            f"the worker exited with {code} during this test:\n{worker.output()[-5000:]}"
        )


class KafkaBroker:
    """A fresh Apache Kafka broker started by `scripts/kafka.sh start` in its own state
    folder (KAFKA_STATE), so it never touches a broker started by someone else
    with the same script; stopped by PID with `scripts/kafka.sh stop`."""

    SCRIPT = REPO / "scripts" / "kafka.sh"

    def __init__(self, state_dir: Path):
        self.env = {**os.environ, "KAFKA_STATE": str(state_dir)}
        self.address = self.script("start").strip().splitlines()[-1]

    def script(self, *args, input=None, text=True) -> "str | bytes":
        proc = subprocess.run(
            [str(self.SCRIPT), *[str(a) for a in args]],
            cwd=REPO,
            env=self.env,
            input=input,
            capture_output=True,
            text=text,
            timeout=300,
        )
        if proc.returncode != 0:
            err = proc.stderr if text else proc.stderr.decode(errors="replace")
            raise RuntimeError(f"scripts/kafka.sh {' '.join(map(str, args))} failed "
                               f"({proc.returncode}):\n{err[-5000:]}")
        return proc.stdout

    def topic(self, prefix: str, partitions: int = 4) -> str:
        """Creates a topic with a name no other test uses; returns the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.create_topic(name, partitions)
        return name

    def create_topic(self, name: str, partitions: int = 4):
        """With Kafka's admin API (a `kafka.sh topic` call starts a JVM each time)."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.address})
        future = admin.create_topics([NewTopic(name, partitions, 1)])[name]
        future.result(timeout=30)

    def kcat(self, *args, input: bytes = None) -> bytes:
        """Real kcat against this broker (`scripts/kafka.sh kcat`), bytes out."""
        return self.script("kcat", *args, input=input, text=False)

    def restart(self):
        """Stops the broker and starts it again, same port, same data."""
        assert self.script("restart").strip().splitlines()[-1] == self.address

    def stop(self):
        self.script("stop")


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory):
    """A fresh Apache Kafka broker for one test module; topics come from
    `kafka_broker.topic(prefix)` so every test has its own."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-state"))
    try:
        yield broker
    finally:
        broker.stop()
