"""The wheel: `pip install` of it gives a fresh venv the pool and the Python API.

The wheel is BEAM_RUST_WORKER_WHEEL, or built here with scripts/build-wheel.sh
(maturin, reusing the workspace's target directory). It is installed with
`--no-deps` into a venv made for the test; that venv sees the project venv's
apache-beam through a `.pth` line (installing apache-beam afresh would download
hundreds of MB per run), but not its `beam_rust_worker`: a `.pth` line adds a
directory to sys.path without running the `.pth` files inside it, so the
project's development install stays invisible and only the wheel's copy can
be imported.
"""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, RustWorker, sample, scrape, started_workers


@pytest.fixture(scope="module")
def wheel() -> Path:
    override = os.environ.get("BEAM_RUST_WORKER_WHEEL")
    if override:
        return Path(override)
    proc = subprocess.run([str(REPO / "scripts" / "build-wheel.sh")], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail("scripts/build-wheel.sh failed:\n" + proc.stderr[-20000:])
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    # apache-beam (and its dependencies) from the project venv, read-only.
    Path(site, "project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The project venv's pip installs into the fresh venv's prefix.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
         "--prefix", str(venv), str(wheel)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return venv


def test_wheel_puts_the_binary_on_the_venv_path(fresh_venv):
    binary = fresh_venv / "bin" / "beam-rust-worker"
    assert binary.is_file(), sorted(p.name for p in (fresh_venv / "bin").iterdir())
    env = {**os.environ, "PATH": f"{fresh_venv / 'bin'}:/usr/bin:/bin"}
    proc = subprocess.run(["beam-rust-worker", "--help"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--port", "--expansion-port", "--metrics-port", "--log-format"):
        assert flag in proc.stdout, proc.stdout


def test_wheel_package_imports_from_the_venv(fresh_venv, tmp_path):
    proc = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c",
         "import beam_rust_worker, beam_rust_worker.kafka; print(beam_rust_worker.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    location = Path(proc.stdout.strip())
    assert fresh_venv in location.parents, f"imported from {location}, not the wheel"


def test_pool_from_the_wheel_runs_a_pipeline(fresh_venv, tmp_path):
    """The kv_echo example, with the venv's python, against the wheel's pool,
    whose metrics then count the workers the pipeline started."""
    pool = RustWorker(fresh_venv / "bin" / "beam-rust-worker", name="wheel-worker")
    metrics_port = pool.metrics_port
    try:
        started = 'beam_rust_worker_workers_started_total{kind="native"}'
        assert sample(scrape(metrics_port), started) == 0
        proc = subprocess.run(
            [str(fresh_venv / "bin" / "python"), str(REPO / "examples" / "kv_echo.py"),
             "--expansion_service", pool.expansion_address, "--count", "100"],
            cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-10000:]
        assert "ok: 101 records came back unchanged" in proc.stdout, proc.stdout
        workers = started_workers(pool.output())
        assert workers, pool.output()[-3000:]
        exposition = scrape(metrics_port)
        assert sample(exposition, started) == len(workers), exposition
    finally:
        pool.stop()


def test_wheel_pool_runs_the_kafka_demo(fresh_venv, kafka_broker, tmp_path):
    """examples/kafka_echo.py (ReadFromKafka -> KvEcho -> WriteToKafka, as
    scripts/demo.sh runs it) with the venv's python against the wheel's pool:
    every record comes back, and the pool's metrics count them."""
    from test_kafka import assert_same_records, produce, read_topic

    bootstrap = kafka_broker.address
    source, sink = kafka_broker.topic("wheel-in"), kafka_broker.topic("wheel-out")
    records = [(b"k%d" % i, b"v%d" % i) for i in range(1000)]
    produce(bootstrap, source, records)
    pool = RustWorker(fresh_venv / "bin" / "beam-rust-worker", name="wheel-kafka-worker")
    try:
        proc = subprocess.run(
            [str(fresh_venv / "bin" / "python"), str(REPO / "examples" / "kafka_echo.py"),
             "--bootstrap_servers", bootstrap, "--input_topic", source,
             "--output_topic", sink, "--expansion_service", pool.expansion_address],
            cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-10000:]
        assert_same_records(read_topic(bootstrap, sink, len(records)), records)
        exposition = pool.metrics()
        written = sample(exposition,
                         f'beam_rust_worker_kafka_records_written_total{{topic="{sink}"}}')
        assert written == len(records), exposition
    finally:
        pool.stop()
