"""Pool memory after StartWorker storms, per build (allocator, trim).

For each `--build LABEL=PATH` (a beam-rust-worker binary), in turn and
`--reps` times interleaved: start the pool on a free loopback port, run
`worker-storm` against it (`--workers` native workers started, all connected,
then all released; `--rounds` storms per pool), record the pool's VmRSS before,
at the peak and after the release, and stop the pool (SIGTERM, by PID). The
report is a markdown table of medians (min–max) over repetitions.

  .venv/bin/python bench/storm/run.py --build system=target/release/beam-rust-worker \\
      --build mimalloc=/tmp/brw-mimalloc --reps 3 --report bench/storm/results.md
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STORM = os.path.join(ROOT, "target", "release", "worker-storm")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the pool exited with %s" % proc.returncode)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the pool did not listen on %d" % port)


def one(label, binary, args):
    port = free_port()
    pool = subprocess.Popen(
        [binary, "--port", str(port), "--expansion-port", "0", "--max-workers",
         str(args.workers + 16), "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, pool)
        time.sleep(1)  # start-up allocations settle
        out = subprocess.run(
            [STORM, "--pool", "127.0.0.1:%d" % port, "--pool-pid", str(pool.pid),
             "--workers", str(args.workers), "--concurrency", str(args.concurrency),
             "--rounds", str(args.rounds), "--after", args.after, "--label", label],
            capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError("worker-storm failed for %s:\n%s" % (label, out.stderr[-3000:]))
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    finally:
        pool.send_signal(signal.SIGTERM)
        try:
            pool.wait(60)
        except subprocess.TimeoutExpired:
            pool.kill()
            pool.wait()


def fmt(values):
    values = [v / 1024 for v in values]
    return "%.1f (%.1f–%.1f)" % (statistics.median(values), min(values), max(values))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", required=True, help="LABEL=PATH of a pool binary")
    ap.add_argument("--workers", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--after", default="1,3,5,10", help="seconds after release to sample")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--report")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.build]
    rows = {label: [] for label, _ in builds}
    load0 = os.getloadavg()[0]
    for rep in range(args.reps):
        for label, binary in builds:
            samples = one(label, binary, args)
            rows[label].append(samples)
            last = samples[-1]
            print("rep %d %s: before %d KiB, peak %d KiB, %s s after the last release %d KiB"
                  % (rep + 1, label, samples[0]["rss_kib"],
                     max(s["rss_kib"] for s in samples if s["at"] == "peak"),
                     last["t_s"], last["rss_kib"]), file=sys.stderr, flush=True)
    load1 = os.getloadavg()[0]
    after = args.after.split(",")
    head = ["build", "before", "peak (round 1)"] + [
        "%s s after round %d" % (a, r) for r in range(1, args.rounds + 1) for a in (after[0], after[-1])]
    lines = [
        "# Pool memory after StartWorker storms",
        "",
        "Command: `.venv/bin/python bench/storm/run.py %s --workers %d --concurrency %d --rounds %d "
        "--after %s --reps %d`" % (" ".join("--build %s=..." % l for l, _ in builds), args.workers,
                                    args.concurrency, args.rounds, args.after, args.reps),
        "",
        "VmRSS of the pool in MiB, median (min–max) over %d repetitions (a fresh pool each, builds "
        "interleaved). Load average (1 min) at start / end: %.2f / %.2f." % (args.reps, load0, load1),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, _ in builds:
        reps = rows[label]

        def pick(at, round_=None, t=None):
            vals = []
            for samples in reps:
                for s in samples:
                    if s["at"] == at and (round_ is None or s["round"] == round_) and (
                            t is None or s["nominal_s"] == int(t)):
                        vals.append(s["rss_kib"])
                        break
            return fmt(vals) if vals else "-"

        cells = [label, pick("before"), pick("peak", 1)]
        for r in range(1, args.rounds + 1):
            cells += [pick("after_release", r, after[0]), pick("after_release", r, after[-1])]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
