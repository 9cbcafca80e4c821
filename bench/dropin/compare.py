#!/usr/bin/env python3
"""Drop-in comparison of our pool's delegated Python workers with Beam's Python pool.

Issue 10 item 6 (measurement only). Run with the repo's venv from the repo root:

    .venv/bin/python bench/dropin/compare.py --reps 3 --cycles-ours 1000 --cycles-beam 20

1. StartWorker -> control stream connected, pools interleaved (ours, Beam's, ours, ...).
2. N StartWorker/StopWorker cycles per pool: processes whose parent is the pool and their
   zombies right after the cycles and after settling, leftover SDK workers anywhere on the
   machine (found by the fake runner's control endpoint in their environment), and the
   pool's VmRSS/VmHWM before and after.

Everything listens on 127.0.0.1. The script ends only processes it started (the pools, by
PID / by `scripts/services.sh stop`); workers are ended by their pools, or by the fake runner
closing their control streams at the end, and the script checks that none remain.
"""
import argparse
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc
from google.protobuf import struct_pb2
from apache_beam.portability.api import beam_artifact_api_pb2
from apache_beam.portability.api import beam_artifact_api_pb2_grpc
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.portability.api import beam_provision_api_pb2_grpc
from apache_beam.portability.api import endpoints_pb2

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEADLINE = None


def left():
    return DEADLINE - time.monotonic()


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# --------------------------------------------------------------------- fake runner
class FakeRunner(beam_fn_api_pb2_grpc.BeamFnControlServicer,
                 beam_fn_api_pb2_grpc.BeamFnLoggingServicer,
                 beam_provision_api_pb2_grpc.ProvisionServiceServicer,
                 beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceServicer):
    """Control, logging, provision and artifact retrieval on one loopback port."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.connected = {}  # worker_id -> monotonic time of the first Control call
        self.events = {}  # worker_id -> threading.Event, set when the worker connects
        self.close = {}  # worker_id -> threading.Event, set to end its control stream
        self.open_streams = 0
        self.stopping = threading.Event()
        self.calls = {"provision": 0, "resolve": 0, "get_artifact": 0, "logging": 0}
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=1024),
                                  options=[("grpc.so_reuseport", 0)])
        beam_fn_api_pb2_grpc.add_BeamFnControlServicer_to_server(self, self.server)
        beam_fn_api_pb2_grpc.add_BeamFnLoggingServicer_to_server(self, self.server)
        beam_provision_api_pb2_grpc.add_ProvisionServiceServicer_to_server(self, self.server)
        beam_artifact_api_pb2_grpc.add_ArtifactRetrievalServiceServicer_to_server(
            self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.url = "127.0.0.1:%d" % self.port
        self.server.start()

    def _ev(self, table, wid):
        with self.lock:
            return table.setdefault(wid, threading.Event())

    # Control: record the connection, keep the stream open until told to close it.
    def Control(self, request_iterator, context):
        t = time.monotonic()
        wid = dict(context.invocation_metadata()).get("worker_id", "?")
        with self.lock:
            self.connected.setdefault(wid, t)
            self.open_streams += 1
        self._ev(self.events, wid).set()
        close = self._ev(self.close, wid)

        def drain():
            try:
                for _ in request_iterator:
                    pass
            except Exception:
                pass
            close.set()

        threading.Thread(target=drain, daemon=True).start()
        try:
            while not close.wait(0.2):
                if self.stopping.is_set() or not context.is_active():
                    break
        finally:
            with self.lock:
                self.open_streams -= 1
        return
        yield  # a generator that yields nothing: returning ends the stream

    def Logging(self, request_iterator, context):
        with self.lock:
            self.calls["logging"] += 1
        for _ in request_iterator:
            if self.stopping.is_set():
                break
        return
        yield

    def GetProvisionInfo(self, request, context):
        with self.lock:
            self.calls["provision"] += 1
        info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=struct_pb2.Struct())
        return beam_provision_api_pb2.GetProvisionInfoResponse(info=info)

    def ResolveArtifacts(self, request, context):
        with self.lock:
            self.calls["resolve"] += 1
        return beam_artifact_api_pb2.ResolveArtifactsResponse(replacements=request.artifacts)

    def GetArtifact(self, request, context):
        with self.lock:
            self.calls["get_artifact"] += 1
        return
        yield

    def endpoints(self):
        d = endpoints_pb2.ApiServiceDescriptor(url=self.url)
        return dict(control_endpoint=d, logging_endpoint=d, provision_endpoint=d,
                    artifact_endpoint=d)

    def close_worker(self, wid):
        self._ev(self.close, wid).set()

    def stop(self):
        self.stopping.set()
        self.server.stop(2).wait()


# --------------------------------------------------------------------- /proc helpers
def proc_stat(pid):
    """(state, ppid) of pid, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children(pid):
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st and st[1] == pid:
            out.append((p, st[0]))
    return out


def status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None


def mem(pid):
    return {"VmRSS_kB": status_kb(pid, "VmRSS"), "VmHWM_kB": status_kb(pid, "VmHWM")}


def workers_of(runner_url):
    """Processes anywhere whose environment or command line names the fake runner's
    endpoint (the SDK workers and boot processes started for this runner)."""
    needle = runner_url.encode()
    me = os.getpid()
    found = []
    for p in all_pids():
        if p == me:
            continue
        try:
            with open("/proc/%d/environ" % p, "rb") as f:
                env = f.read()
            with open("/proc/%d/cmdline" % p, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if needle in env or needle in cmd:
            st = proc_stat(p)
            found.append({"pid": p, "state": st[0] if st else "?",
                          "ppid": st[1] if st else None,
                          "cmd": cmd.replace(b"\0", b" ").decode(errors="replace")[:120]})
    return found


def tree_counts(pool_pid):
    kids = children(pool_pid)
    return {"children": len(kids), "zombies": sum(1 for _, s in kids if s == "Z")}


# --------------------------------------------------------------------- pools
def wait_port(port, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


class OurPool:
    name = "ours (beam-rust-worker, delegated)"
    key = "ours"

    def __init__(self, args, logdir):
        self.port = free_port()
        self.logf = open(os.path.join(logdir, "ours.log"), "w")
        cmd = [os.path.join(ROOT, "target/release/beam-rust-worker"), "--port", str(self.port),
               "--expansion-port", "0", "--python", os.path.join(ROOT, ".venv/bin/python"),
               "--max-workers", "64", "--grace-secs", "5", "--log-level", "warn"]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        if not wait_port(self.port, 20):
            raise RuntimeError("our pool did not listen")
        self.addr = "127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


class BeamPool:
    name = "Beam's (worker_pool_main + boot, scripts/services.sh)"
    key = "beam"

    def __init__(self, args, logdir):
        self.state = os.path.join(logdir, "services-state")
        os.makedirs(self.state, exist_ok=True)
        self.port = free_port()
        self.env = dict(os.environ, SERVICES_STATE=self.state, PYTHON_POOL_PORT=str(self.port))
        self.cmd = [os.path.join(ROOT, "scripts/services.sh"), "start", "python-pool"]
        out = subprocess.run(self.cmd, cwd=ROOT, env=self.env, capture_output=True, text=True,
                             timeout=max(30, min(300, left())))
        if out.returncode != 0:
            raise RuntimeError("services.sh start python-pool failed: %s" % out.stderr[-2000:])
        with open(os.path.join(self.state, "python-pool.pid")) as f:
            self.pid = int(f.read().strip())
        self.addr = "127.0.0.1:%d" % self.port
        if not wait_port(self.port, 20):
            raise RuntimeError("Beam's pool did not listen")

    def stop(self):
        out = subprocess.run([os.path.join(ROOT, "scripts/services.sh"), "stop", "python-pool"],
                             cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60)
        return out.returncode


# --------------------------------------------------------------------- measurements
def start_worker(stub, runner, wid, timeout):
    req = beam_fn_api_pb2.StartWorkerRequest(worker_id=wid, **runner.endpoints())
    t0 = time.monotonic()
    resp = stub.StartWorker(req, timeout=timeout)
    t_resp = time.monotonic()
    return t0, t_resp, resp.error


def stop_worker(stub, wid, timeout):
    t0 = time.monotonic()
    resp = stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id=wid), timeout=timeout)
    return time.monotonic() - t0, resp.error


def one_start(pool, stub, runner, connect_timeout, stop=True, snapshot=False):
    wid = "dropin-%s-%s" % (pool.key, uuid.uuid4().hex[:8])
    t0, t_resp, err = start_worker(stub, runner, wid, timeout=connect_timeout)
    r = {"worker_id": wid, "start_rpc_s": t_resp - t0, "error": err or None}
    ev = runner._ev(runner.events, wid)
    if not err and ev.wait(max(0.0, min(connect_timeout - (t_resp - t0), left()))):
        r["connect_s"] = runner.connected[wid] - t0
    else:
        r["connect_s"] = None
    if snapshot:  # which processes serve this worker while it is connected
        r["procs_connected"] = [(w["pid"], w["ppid"], w["state"], w["cmd"][:80])
                                for w in workers_of(runner.url)]
    if stop:
        r["stop_rpc_s"], r["stop_error"] = stop_worker(stub, wid, timeout=60)
    return r


def fmt_stats(xs, scale=1000.0, unit="ms"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return "%.1f %s (%.1f–%.1f, n=%d)" % (statistics.median(xs) * scale, unit,
                                            min(xs) * scale, max(xs) * scale, len(xs))


def main():
    global DEADLINE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="item 1 repetitions per pool (>= 3)")
    ap.add_argument("--cycles-ours", type=int, default=1000, help="item 2 cycles, our pool")
    ap.add_argument("--cycles-beam", type=int, default=20,
                    help="item 2 cycles, Beam's pool (each boot cycle takes seconds)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to settle after cycles")
    ap.add_argument("--connect-timeout", type=float, default=60.0)
    ap.add_argument("--max-seconds", type=float, default=900.0, help="bound on the whole run")
    ap.add_argument("--json", default=None, help="write raw results here")
    args = ap.parse_args()
    DEADLINE = time.monotonic() + args.max_seconds
    # A hard stop in case something hangs: SIGALRM ends the run (pools stopped in finally).
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("--max-seconds")))
    signal.alarm(int(args.max_seconds) + 1)

    logdir = tempfile.mkdtemp(prefix="dropin-")
    log("logs in", logdir)
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv,
               "nproc": os.cpu_count(), "loadavg_start": os.getloadavg(), "logdir": logdir}
    runners = {"ours": FakeRunner("ours"), "beam": FakeRunner("beam")}
    pools = {}
    try:
        pools["ours"] = OurPool(args, logdir)
        pools["beam"] = BeamPool(args, logdir)
        results["pools"] = {k: {"pid": p.pid, "addr": p.addr, "cmd": " ".join(p.cmd)}
                            for k, p in pools.items()}
        stubs = {k: beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(
            grpc.insecure_channel(p.addr)) for k, p in pools.items()}
        results["mem_start"] = {k: mem(p.pid) for k, p in pools.items()}

        # ---- item 1: interleaved StartWorker -> control connected
        item1 = {"ours": [], "beam": []}
        for rep in range(args.reps):
            for k in ("ours", "beam"):
                if left() < 30:
                    log("time budget: stopping item 1 at rep", rep)
                    break
                r = one_start(pools[k], stubs[k], runners[k], args.connect_timeout,
                              snapshot=(rep == 0))
                runners[k].close_worker(r["worker_id"])
                item1[k].append(r)
                log("item1 rep", rep, k, {x: r[x] for x in ("start_rpc_s", "connect_s", "error")})
                time.sleep(1.0)  # let the stopped worker go before the next one starts
        results["item1"] = item1
        results["provision_calls_after_item1"] = {k: dict(r.calls) for k, r in runners.items()}

        # ---- item 2: cycles
        item2 = {}
        for k, n in (("ours", args.cycles_ours), ("beam", args.cycles_beam)):
            p, stub, runner = pools[k], stubs[k], runners[k]
            time.sleep(1.0)
            before = {"mem": mem(p.pid), "tree": tree_counts(p.pid)}
            done, errors, connects, t_start = 0, [], [], time.monotonic()
            # reserve time for the other pool, settling and shutdown
            budget_end = time.monotonic() + (left() - 60) * (0.6 if k == "ours" else 0.9)
            for i in range(n):
                if time.monotonic() > budget_end:
                    log("time budget: %s stopped after %d cycles" % (k, done))
                    break
                r = one_start(p, stub, runner, args.connect_timeout)
                # The control stream stays open: a worker the pool failed to stop stays alive
                # (and is counted below) instead of exiting because its runner went away.
                done += 1
                connects.append(r["connect_s"])
                if r["error"] or r.get("stop_error") or r["connect_s"] is None:
                    errors.append(r)
                if done % 50 == 0:
                    log("item2", k, done, "cycles")
            elapsed = time.monotonic() - t_start
            after = {"mem": mem(p.pid), "tree": tree_counts(p.pid),
                     "workers_alive": workers_of(runner.url)}
            time.sleep(args.settle)
            settled = {"mem": mem(p.pid), "tree": tree_counts(p.pid),
                       "workers_alive": workers_of(runner.url),
                       "open_control_streams": runner.open_streams}
            item2[k] = {"requested": n, "cycles": done, "elapsed_s": elapsed,
                        "errors": len(errors), "first_errors": errors[:3],
                        "connect": fmt_stats(connects), "before": before,
                        "after": after, "settled": settled}
            log("item2", k, json.dumps({x: item2[k][x] for x in ("cycles", "elapsed_s", "errors")}),
                "after", after["tree"], len(after["workers_alive"]), "settled", settled["tree"],
                len(settled["workers_alive"]))
        results["item2"] = item2
    finally:
        signal.alarm(0)
        stop_rc = {}
        for k, p in pools.items():
            try:
                stop_rc[k] = p.stop()
            except Exception as e:  # noqa
                stop_rc[k] = repr(e)
        results["pool_stop_rc"] = stop_rc
        time.sleep(2)
        results["workers_after_pool_stop"] = {k: workers_of(r.url) for k, r in runners.items()}
        for r in runners.values():
            r.stop()
        time.sleep(3)
        results["workers_after_runner_stop"] = {k: workers_of(r.url) for k, r in runners.items()}
        results["pool_alive_after_stop"] = {k: proc_stat(p.pid) is not None
                                            for k, p in pools.items()}
        results["fake_runner_calls"] = {k: dict(r.calls) for k, r in runners.items()}
        results["loadavg_end"] = os.getloadavg()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1, default=str)
        summary(results)


def summary(res):
    print("# run", res["date"], "nproc", res["nproc"], "load", res["loadavg_start"])
    if "item1" in res:
        print("\n## item 1: StartWorker -> control stream connected (median (min–max))")
        for k, rs in res["item1"].items():
            print("%-5s connect %s | StartWorker RPC %s | StopWorker RPC %s | errors %s" % (
                k, fmt_stats([r["connect_s"] for r in rs]),
                fmt_stats([r["start_rpc_s"] for r in rs]),
                fmt_stats([r.get("stop_rpc_s") for r in rs]),
                [r["error"] for r in rs if r["error"]]))
            print("      processes while connected (rep 0):", rs[0].get("procs_connected") if rs else None)
    if "item2" in res:
        print("\n## item 2: StartWorker/StopWorker cycles")
        for k, d in res["item2"].items():
            print("%-5s cycles %d/%d in %.1f s, errors %d, connect %s" % (
                k, d["cycles"], d["requested"], d["elapsed_s"], d["errors"], d["connect"]))
            for ph in ("before", "after", "settled"):
                x = d[ph]
                print("   %-8s tree %s mem %s workers_alive %s" % (
                    ph, x["tree"], x["mem"], len(x.get("workers_alive", [])) if ph != "before"
                    else "-"))
            if d["settled"]["workers_alive"]:
                print("   e.g.", d["settled"]["workers_alive"][:2])
    print("\npool stop rc", res.get("pool_stop_rc"))
    print("workers after pool stop", {k: len(v) for k, v in res["workers_after_pool_stop"].items()})
    print("workers after runner stop", {k: len(v) for k, v in
                                        res["workers_after_runner_stop"].items()})
    print("pool alive after stop", res.get("pool_alive_after_stop"))
    print("fake runner calls", res.get("fake_runner_calls"))


if __name__ == "__main__":
    main()
