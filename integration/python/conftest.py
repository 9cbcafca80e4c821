"""Fixtures that run the real beam-rust-worker binary (and a stand-alone Beam
job service) as subprocesses for pipelines built with the real Beam SDK.

Also a Kafka-protocol broker (tansu, memory storage) on loopback, started and
stopped with `scripts/kafka.sh`, for the Kafka tests.

Environment variables:
  BEAM_RUST_WORKER_BIN   use this worker binary instead of building
                         `target/release/beam-rust-worker` with cargo.
  BEAM_RUST_WORKER_LOG   the worker's `--log-level` (default `info`).
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
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


class RustWorker(Process):
    def __init__(self, binary):
        self.pool_port = free_port()
        self.expansion_port = free_port()
        self.pool_address = f"localhost:{self.pool_port}"
        self.expansion_address = f"localhost:{self.expansion_port}"
        super().__init__(
            "rust-worker",
            [
                binary,
                "--port", self.pool_port,
                "--expansion-port", self.expansion_port,
                "--advertise", self.pool_address,
                "--log-level", os.environ.get("BEAM_RUST_WORKER_LOG", "info"),
            ],
        )
        self.wait_for_ports(self.pool_port, self.expansion_port)


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
    """A fresh broker started by `scripts/kafka.sh start` in its own state
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

    def topic(self, prefix: str, partitions: int = 3) -> str:
        """Creates a topic with a name no other test uses; returns the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.script("topic", name, partitions)
        return name

    def kcat(self, *args, input: bytes = None) -> bytes:
        """Real kcat against this broker (`scripts/kafka.sh kcat`), bytes out."""
        return self.script("kcat", *args, input=input, text=False)

    def stop(self):
        self.script("stop")


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory):
    """A fresh Kafka-protocol broker for one test module; topics come from
    `kafka_broker.topic(prefix)` so every test has its own."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-state"))
    try:
        yield broker
    finally:
        broker.stop()
