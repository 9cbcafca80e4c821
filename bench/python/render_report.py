"""Renders bench/results/latest.md and latest.png from one scripts/bench.sh run.

Reads the JSON files fnapi-loadgen wrote into the run's raw folder
(run-<scenario>-<target>.json, kafka-<target>.json) and puts the targets side by
side: our worker ("rust"), Beam's Python worker pool ("python"), the bare gRPC
echo ("ceiling"), and any extra kv-echo builds (e.g. "rust-sysalloc").
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys

SCENARIO_NOTES = {
    "big": "1M elements (10 B key, 100 B value) in one bundle, 1 MB runner chunks (Flink batch shape)",
    "flink": "1000-element bundles, 1 MB runner chunks, 4 bundles in flight (Flink streaming shape)",
    "flink-2w": "as flink, 2 workers",
    "latency": "1-element bundles, one at a time, ProcessBundle before the data (Flink's order)",
    "latency-df": "1-element bundles, one at a time, data before ProcessBundle (Beam's Python runner's order)",
    "value-10B": "10 B values, 10k-element bundles, 2 in flight",
    "value-100B": "100 B values, 10k-element bundles, 2 in flight",
    "value-10KB": "10 KB values, 100-element bundles, 2 in flight",
}
ORDER = list(SCENARIO_NOTES)


def scenario_order(runs):
    """The known scenarios in ORDER, then any others by name."""
    return [s for s in ORDER if s in runs] + sorted(s for s in runs if s not in ORDER)


def load(raw):
    runs, kafka = {}, {}
    for path in sorted(glob.glob(os.path.join(raw, "run-*.json"))):
        with open(path) as f:
            r = json.load(f)
        target = re.match(r"run-%s-(.+)\.json" % re.escape(r["label"]), os.path.basename(path)).group(1)
        runs.setdefault(r["label"], {})[target] = r
    for path in sorted(glob.glob(os.path.join(raw, "kafka-*.json"))):
        with open(path) as f:
            kafka[os.path.basename(path)[6:-5]] = json.load(f)
    return runs, kafka


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001 - best effort machine info
        return ""


def machine():
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip() or platform.processor()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    try:
        import apache_beam

        beam = apache_beam.__version__
    except Exception:  # noqa: BLE001
        beam = "?"
    return [
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("cpu", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", mem),
        ("kernel", platform.release()),
        ("rustc", sh("rustc --version")),
        ("apache-beam (Python worker)", f"{beam}, Python {platform.python_version()}"),
        ("git", sh("git -C %s describe --always --dirty" % os.path.dirname(__file__))),
    ]


def fmt_rate(x):
    if x is None:
        return "—"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def ratio(a, b):
    if not a or not b:
        return "—"
    return f"{a / b:.2f}×" if a / b < 10 else f"{a / b:.0f}×"


def get(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p)
    return r


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def criterion(raw_dir):
    """(name, median time, median throughput) rows from criterion's console output."""
    path = os.path.join(raw_dir, "criterion.txt")
    if not os.path.exists(path):
        return []
    rows, name = [], None
    with open(path) as f:
        for line in f:
            m = re.match(r"^(\S+/\S+)", line)
            if m and "time:" not in line[:8]:
                name = m.group(1)
            t = re.search(r"time:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]", line)
            if t and name:
                rows.append([name, t.group(1), ""])
            h = re.search(r"thrpt:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]", line)
            if h and rows and rows[-1][0] == name:
                rows[-1][2] = h.group(1)
    return rows


def render(runs, kafka, extra_targets, smoke, worker_bin, raw_dir):
    scenarios = scenario_order(runs)
    lines = ["# Benchmark results", ""]
    if smoke:
        lines += ["**Smoke run (tiny element counts): the figures mean nothing.**", ""]
    lines += [
        "Produced by `scripts/bench.sh` in one run: every scenario against our worker "
        "(`rust`, the kv_echo stage), Beam's Python worker pool (`python`, a pickled "
        "`Map(identity)`), and a bare gRPC bidi echo of the same chunks (`ceiling`, the "
        "transport limit: `grpc-echo` dials the driver's data endpoint as a worker does and "
        "sends every message straight back), with the same Rust driver (`fnapi-loadgen`) and the same data. "
        "Every output byte was compared with the input. Elements are windowed "
        "`KV<bytes, bytes>` in the global window (125 B on the wire with a 10 B key and "
        "100 B value). A fresh pool process per scenario. Throughput counts elements "
        "one way; MB = 10^6 bytes.",
        "",
        "## Throughput (elements/s)",
        "",
    ]
    head = ["scenario", "rust", "python", "ceiling"] + extra_targets + [
        "rust/python", "rust/ceiling", "rust MB/s"]
    rows = []
    for s in scenarios:
        t = runs[s]
        rust = get(t, "rust", "elements_per_sec")
        py = get(t, "python", "elements_per_sec")
        ceil = get(t, "ceiling", "elements_per_sec")
        rows.append([s, fmt_rate(rust), fmt_rate(py), fmt_rate(ceil)]
                    + [fmt_rate(get(t, x, "elements_per_sec")) for x in extra_targets]
                    + [ratio(rust, py), ratio(rust, ceil),
                       f"{get(t, 'rust', 'mb_per_sec') or 0:.0f}"])
    lines += [table(head, rows), ""]
    lines += ["## Bundle latency (ms, p50 / p99 / max)", ""]
    rows = []
    for s in scenarios:
        t = runs[s]
        cell = lambda x: ("—" if x not in t else "%.3f / %.3f / %.3f" % (
            t[x]["bundle_latency"]["p50_ms"], t[x]["bundle_latency"]["p99_ms"],
            t[x]["bundle_latency"]["max_ms"]))
        rows.append([s, cell("rust"), cell("python"), cell("ceiling")])
    lines += [table(["scenario", "rust", "python", "ceiling"], rows), ""]
    lines += ["## Pool CPU and memory", "",
              "CPU seconds of the pool process tree per million elements during the measured "
              "phase, and its peak RSS (VmHWM, summed over the pool and its worker processes).",
              ""]
    rows = []
    for s in scenarios:
        t = runs[s]
        cpu = lambda x: "—" if not get(t, x, "pool_usage") else "%.2f" % t[x]["pool_usage"]["cpu_seconds_per_million"]
        rss = lambda x: "—" if not get(t, x, "pool_usage") else "%.0f" % t[x]["pool_usage"]["peak_rss_mb"]
        rows.append([s, cpu("rust"), cpu("python"), rss("rust"), rss("python"), rss("ceiling")])
    lines += [table(["scenario", "rust CPU s/M", "python CPU s/M", "rust peak MB",
                     "python peak MB", "ceiling peak MB"], rows), ""]
    if extra_targets:
        lines += ["## Other builds of our worker", "",
                  "Extra kv-echo builds run on every scenario (`EXTRA_WORKERS`), e.g. the same "
                  "source with and without mimalloc: elements/s, pool CPU s per million "
                  "elements, peak RSS MB.", ""]
        head = ["scenario"]
        for x in ["rust"] + extra_targets:
            head += [f"{x} el/s", f"{x} CPU s/M", f"{x} peak MB"]
        rows = []
        for s in scenarios:
            t = runs[s]
            row = [s]
            for x in ["rust"] + extra_targets:
                pu = get(t, x, "pool_usage") or {}
                row += [fmt_rate(get(t, x, "elements_per_sec")),
                        "%.2f" % pu.get("cpu_seconds_per_million", 0) if pu else "—",
                        "%.0f" % pu.get("peak_rss_mb", 0) if pu else "—"]
            rows.append(row)
        lines += [table(head, rows), ""]
    lines += ["## StartWorker → control stream connected (ms)", ""]
    rows = []
    for s in scenarios:
        t = runs[s]
        c = lambda x: "—" if x not in t else ", ".join("%.1f" % v for v in t[x]["connect_ms"])
        rows.append([s, c("rust"), c("python")])
    lines += [table(["scenario", "rust", "python"], rows), ""]
    if kafka:
        lines += ["## Kafka-fed echo (Apache Kafka broker, kcat in and out)", "",
                  "kcat produced N keyed records to `echo-input`; `fnapi-loadgen kafka` consumed "
                  "them (rdkafka), sent 1000-record / 1 s bundles of KafkaIO-encoded elements "
                  "through the worker (4 in flight) and produced the output to `echo-output`; "
                  "kcat read both topics back and they were identical. records/s is from the "
                  "first record consumed to the last output acknowledged (consumer-group join "
                  "excluded). The broker and both clients share the same 2 cores.", ""]
        rows = []
        for name, k in sorted(kafka.items()):
            pu = k.get("pool_usage") or {}
            rows.append([name, k["records"], fmt_rate(k["records_per_sec"]),
                         "%.2f" % pu.get("cpu_seconds_per_million", 0),
                         "%.1f / %.1f" % (k["bundle_latency"]["p50_ms"], k["bundle_latency"]["p99_ms"]),
                         "%.0f" % pu.get("peak_rss_mb", 0)])
        lines += [table(["worker", "records", "records/s", "worker CPU s / M records",
                         "bundle p50 / p99 ms", "peak RSS MB"], rows), ""]
    crit = criterion(raw_dir)
    if crit:
        lines += ["## Micro-benchmarks (criterion, `benches/data_path.rs`)", "",
                  "One 1 MB chunk of 125-byte elements per iteration; median time and throughput.",
                  ""]
        lines += [table(["benchmark", "time", "throughput"], crit), ""]
    lines += ["## Scenarios", ""]
    for s in scenarios:
        any_run = next(iter(runs[s].values()))
        w = any_run["workload"]
        trunc = [x for x, r in runs[s].items() if r.get("truncated")]
        note = SCENARIO_NOTES.get(s, "")
        lines.append(
            f"- **{s}**: {note}; {w['elements']} elements requested, "
            f"{w['key_size']} B keys, {w['value_size']} B values"
            + (f"; stopped early by the time bound for {', '.join(trunc)}" if trunc else ""))
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine()]
    lines += [f"- worker binary: `{os.path.basename(worker_bin)}`", ""]
    return "\n".join(lines) + "\n"


def chart(runs, extra_targets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = scenario_order(runs)
    targets = ["rust", "python", "ceiling"] + extra_targets
    colors = {"rust": "#d2691e", "python": "#3572a5", "ceiling": "#7f7f7f"}
    for t, c in zip(extra_targets, ["#e8b04a", "#6aa84f", "#a64d79", "#45818e"]):
        colors[t] = c
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(targets)
    for i, t in enumerate(targets):
        vals = [get(runs[s], t, "elements_per_sec") or 0 for s in scenarios]
        xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(scenarios))]
        ax.bar(xs, vals, width, label=t, color=colors.get(t))
    ax.set_yscale("log")
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels(scenarios)
    ax.set_ylabel("elements/s (log scale)")
    ax.set_title("KV echo stage through the Fn API: our worker vs Beam's Python worker vs bare gRPC")
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", required=True, help="the run's raw JSON folder")
    parser.add_argument("--out", required=True, help="folder for latest.md and latest.png")
    parser.add_argument("--worker-bin", default="beam-rust-worker")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG (needs matplotlib)")
    args = parser.parse_args()
    runs, kafka = load(args.raw)
    if not runs:
        print("no results in " + args.raw, file=sys.stderr)
        return 1
    extra = sorted({t for r in runs.values() for t in r} - {"rust", "python", "ceiling"})
    md = render(runs, kafka, extra, args.smoke, args.worker_bin, args.raw)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(md)
    if not args.no_chart:
        chart(runs, extra, os.path.join(args.out, "latest.png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
