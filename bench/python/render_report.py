"""Renders bench/results/latest.md and latest.png from one scripts/bench.sh run.

Reads the JSON files the run wrote into its raw folder (run-<scenario>-<target>-r<rep>.json,
kafka-<target>-r<rep>.json, load.tsv, counts.md) and puts the targets side by side: our
worker ("rust"), Beam's Python worker pool ("python"), the transport reference ("echo", a
relay process), the bound ("bound": no pool, the driver reads its own stream back) and any
extra kv-echo builds (e.g. "rust-sysalloc"). Every figure is the median (min–max) over the
repetitions; every ratio the median (min–max) of per-repetition ratios.
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


RUN_FILE = re.compile(r"run-(.+)-r(\d+)\.json$")
KAFKA_FILE = re.compile(r"kafka-(.+)-r(\d+)\.json$")


def load(raw):
    """runs[scenario][target][rep] and kafka[name][rep]: one report per repetition."""
    runs, kafka = {}, {}
    for path in sorted(glob.glob(os.path.join(raw, "run-*.json"))):
        with open(path) as f:
            r = json.load(f)
        m = RUN_FILE.search(os.path.basename(path))
        target = m.group(1)[len(r["label"]) + 1:]
        runs.setdefault(r["label"], {}).setdefault(target, {})[int(m.group(2))] = r
    for path in sorted(glob.glob(os.path.join(raw, "kafka-*.json"))):
        m = KAFKA_FILE.search(os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            kafka.setdefault(m.group(1), {})[int(m.group(2))] = json.load(f)
    return runs, kafka


def load_averages(raw):
    """(phase, name, target, rep, (1, 5, 15 min), UTC time) rows of load.tsv."""
    path = os.path.join(raw, "load.tsv")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                phase, name, target, rep, avg, clock = line.rstrip("\n").split("\t")
                rows.append((phase, name, target, rep, tuple(float(x) for x in avg.split()), clock))
    return rows


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def values(reps, *path):
    """The figure at `path` in every repetition that has it, in repetition order."""
    out = []
    for rep in sorted(reps or {}):
        v = get(reps[rep], *path)
        if v is not None:
            out.append(v)
    return out


def spread(xs, fmt):
    """median (min–max) of xs, each formatted with fmt; one value alone as is."""
    if not xs:
        return "—"
    if len(xs) == 1:
        return fmt(xs[0])
    return "%s (%s–%s)" % (fmt(median(xs)), fmt(min(xs)), fmt(max(xs)))


def per_rep_ratios(a_reps, b_reps, *path):
    """a/b for every repetition both sides ran."""
    out = []
    for rep in sorted(set(a_reps or {}) & set(b_reps or {})):
        a, b = get(a_reps[rep], *path), get(b_reps[rep], *path)
        if a and b:
            out.append(a / b)
    return out


def fmt_ratio(x):
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


# How a ratio's denominator bounds it: "bound" does strictly less work than
# any target by construction (a repetition above 1 means the instrument is
# broken); "reference" does less work than a worker but shares what limits
# both (the driver or the broker on the same 2 cores), so a worker can tie it
# and, within the machine's noise, pass it in some repetitions; "" is a
# plain comparison.
BOUND, REFERENCE = "bound", "reference"


def ratio_cell(xs, kind=""):
    """A ratio's median (min–max). Above 1 in any repetition: against the
    bound, the instrument is broken, and that is what shows; against a
    reference, the cell says in how many repetitions it was passed."""
    if not xs:
        return "—"
    above = sum(1 for x in xs if x > 1)
    if kind == BOUND and above:
        return "**bound broken** (max %s)" % fmt_ratio(max(xs))
    cell = spread(xs, fmt_ratio)
    if kind == REFERENCE and above:
        cell += " (above 1 in %d of %d)" % (above, len(xs))
    return cell


# (section, scenario, ratio, goal): the goals of issue 11, against the bound
# and against the transport reference.
GOALS = [
    ("fn", "flink", "rust/bound", 0.9),
    ("fn", "flink", "rust/echo", 0.9),
    ("fn", "flink", "rust/python", 30.0),
    ("fn", "latency", "rust/bound", 0.8),
    ("fn", "latency", "rust/echo", 0.8),
    ("fn", "latency-df", "rust/bound", 0.8),
    ("fn", "latency-df", "rust/echo", 0.8),
    ("kafka", "fused", "fused/bare", 0.8),
    ("kafka", "fused", "bare/fused CPU", 0.8),
]


def ratio_kind(name):
    """How the denominator of `name` ("a/b") bounds it."""
    return {"bound": BOUND, "echo": REFERENCE, "bare": REFERENCE,
            "fused CPU": REFERENCE}.get(name.split("/")[1], "")


def verdict(xs, goal, kind):
    """met when every repetition reaches the goal, not met when none does,
    not established when the range crosses it."""
    if not xs:
        return "no data"
    if kind == BOUND and max(xs) > 1:
        return "bound broken"
    if min(xs) >= goal:
        return "met"
    if max(xs) < goal:
        return "not met"
    return "not established"


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


def fmt_ms(x):
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def load_section(raw):
    rows = load_averages(raw)
    if not rows:
        return []
    first, last = rows[0][4], rows[-1][4]
    during = [r[4][0] for r in rows if r[0] in ("start", "end")]
    lines = ["## Load on the machine", "",
             "The machine (2 cores) is shared; the 1/5/15-minute load averages from `/proc/loadavg`:", "",
             "- at the start of the run (%s UTC): %.2f / %.2f / %.2f" % ((rows[0][5],) + first),
             "- at the end of the run (%s UTC): %.2f / %.2f / %.2f" % ((rows[-1][5],) + last)]
    if during:
        lines.append("- 1-minute load at the start and end of each measurement: median %.2f, min %.2f, max %.2f"
                     % (median(during), min(during), max(during)))
    lines.append("")
    return lines


def fn_section(runs, targets, extra_targets):
    scenarios = scenario_order(runs)
    lines = ["## Throughput (elements/s, median (min–max) over the repetitions)", ""]
    head = ["scenario", "reps"] + targets
    rows = []
    for s in scenarios:
        t = runs[s]
        reps = max(len(t[x]) for x in t)
        rows.append([s, reps] + [spread(values(t.get(x), "elements_per_sec"), fmt_rate) for x in targets])
    lines += [table(head, rows), ""]
    lines += ["## Ratios (median (min–max) of the per-repetition ratios)", ""]
    names = ["rust/python", "rust/bound", "rust/echo", "echo/bound"]
    rows = []
    for s in scenarios:
        t = runs[s]
        cells = []
        for name in names:
            a, b = name.split("/")
            cells.append(ratio_cell(per_rep_ratios(t.get(a), t.get(b), "elements_per_sec"), ratio_kind(name)))
        rows.append([s] + cells)
    lines += [table(["scenario"] + names, rows), "",
              "Repetition *i* of each target ran back to back, so each ratio compares runs "
              "that saw about the same load. The bound does strictly less work than any target "
              "(no pool process, one loopback crossing instead of two): a rust/bound ratio above 1 "
              "in any repetition would mean the instrument is broken, and the cell would say so "
              "instead of a ratio. The echo is a relay process with no Beam logic; where the "
              "driver's core limits both, a worker ties it, and a cell says in how many "
              "repetitions the worker passed it. echo/bound is what a second process and a "
              "second loopback crossing cost by themselves.", ""]
    lines += ["## Bundle latency (ms, median over repetitions of each run's p50 / p99)", ""]
    rows = []
    for s in scenarios:
        t = runs[s]
        cell = lambda x: "—" if x not in t else "%s / %s" % (
            fmt_ms(median(values(t[x], "bundle_latency", "p50_ms"))),
            fmt_ms(median(values(t[x], "bundle_latency", "p99_ms"))))
        rows.append([s] + [cell(x) for x in targets])
    lines += [table(["scenario"] + targets, rows), ""]
    lines += ["## Pool CPU and memory", "",
              "CPU seconds of the pool process tree per million elements during the measured "
              "phase, and its peak RSS (VmHWM, summed over the pool and its worker processes); "
              "median (min–max).", ""]
    rows = []
    for s in scenarios:
        t = runs[s]
        cpu = lambda x: spread(values(t.get(x), "pool_usage", "cpu_seconds_per_million"), lambda v: "%.2f" % v)
        rss = lambda x: spread(values(t.get(x), "pool_usage", "peak_rss_mb"), lambda v: "%.0f" % v)
        rows.append([s, cpu("rust"), cpu("python"), cpu("echo"), rss("rust"), rss("python"), rss("echo")])
    lines += [table(["scenario", "rust CPU s/M", "python CPU s/M", "echo CPU s/M", "rust peak MB",
                     "python peak MB", "echo peak MB"], rows), ""]
    lines += ["## StartWorker → control stream connected (ms, median (min–max) over every worker started)", ""]
    rows = []
    for s in scenarios:
        t = runs[s]
        c = lambda x: spread([v for rep in values(t.get(x), "connect_ms") for v in rep], lambda v: "%.1f" % v)
        rows.append([s, c("rust"), c("python")])
    lines += [table(["scenario", "rust", "python"], rows), ""]
    truncated = [f"{s} on {x} ({sum(1 for r in runs[s][x].values() if r.get('truncated'))} of {len(runs[s][x])})"
                 for s in scenarios for x in runs[s]
                 if any(r.get("truncated") for r in runs[s][x].values())]
    if truncated:
        lines += ["Stopped by the time bound (rate over what was done): " + ", ".join(truncated) + ".", ""]
    return lines


KAFKA_NAMES = {
    "fused": "fused stage (our Kafka read → kv_echo → our Kafka write, in the worker)",
    "bare": "bare rdkafka loop (consume → produce, nothing in between): the reference",
    "bridge-rust": "driver-bridged: rdkafka → bundles → our worker → rdkafka",
    "bridge-python": "driver-bridged: rdkafka → bundles → Beam's Python pool → rdkafka",
}


def kafka_section(kafka):
    lines = ["## Kafka (Apache Kafka broker on loopback, records/s, median (min–max))", "",
             "One broker; the input topic (4 partitions, ~125-byte records) is filled once by kcat, "
             "then every target moves all of it to its own output topic, interleaved per repetition. "
             "Every run must add exactly the input's record count to its output topic, and in the first "
             "repetition the output's sorted key/value pairs must equal the input's. The fused stage and "
             "the bare loop are timed from before their Kafka clients start to the last "
             "acknowledgement; the bridged runs from the first record consumed to the last "
             "acknowledgement. The broker and every client share the 2 cores.", ""]
    rows = []
    for name in [n for n in KAFKA_NAMES if n in kafka] + sorted(n for n in kafka if n not in KAFKA_NAMES):
        reps = kafka[name]
        cpu = [(get(r, "pool_usage", "cpu_seconds") if name != "bare" else r.get("cpu_seconds")) for r in reps.values()]
        cpu_m = [c * 1e6 / r["records"] for c, r in zip(cpu, reps.values()) if c is not None and r["records"]]
        rows.append([KAFKA_NAMES.get(name, name), len(reps),
                     spread(values(reps, "records_per_sec"), fmt_rate),
                     spread(cpu_m, lambda v: "%.2f" % v)])
    lines += [table(["target", "reps", "records/s", "CPU s per M records (worker pool; loop: itself)"], rows), ""]
    ratio = per_rep_ratios(kafka.get("fused"), kafka.get("bare"), "records_per_sec")
    if ratio:
        lines += ["fused/bare records/s (median of per-repetition ratios): "
                  + ratio_cell(ratio, REFERENCE), ""]
    cpu = kafka_cpu_ratios(kafka)
    if cpu:
        lines += ["bare/fused CPU per record (the loop's client CPU over the worker pool's, "
                  "per repetition; 1 would mean the fused stage costs no more than the bare "
                  "clients): " + ratio_cell(cpu, REFERENCE), "",
                  "Both runs share the 2 cores with the broker, which moves every record twice "
                  "and limits both; records/s therefore compares the broker's speed in two "
                  "runs as much as the clients, while CPU per record compares the clients alone.", ""]
    return lines


def kafka_cpu_ratios(kafka):
    """bare CPU per record / fused pool CPU per record, per repetition."""
    out = []
    fused, bare = kafka.get("fused") or {}, kafka.get("bare") or {}
    for rep in sorted(set(fused) & set(bare)):
        f = get(fused[rep], "pool_usage", "cpu_seconds")
        b = bare[rep].get("cpu_seconds")
        if f and b and fused[rep]["records"] and bare[rep]["records"]:
            out.append((b / bare[rep]["records"]) / (f / fused[rep]["records"]))
    return out


def goals_section(runs, kafka):
    lines = ["## Goals (issue 11)", "",
             "*met*: every repetition reaches the goal; *not met*: none does; *not established*: "
             "the range of per-repetition ratios crosses the goal.", ""]
    rows = []
    for section, scenario, name, goal in GOALS:
        if section == "fn":
            t = runs.get(scenario, {})
            a, b = name.split("/")
            xs = per_rep_ratios(t.get(a), t.get(b), "elements_per_sec")
        elif name == "bare/fused CPU":
            xs = kafka_cpu_ratios(kafka)
        else:
            xs = per_rep_ratios(kafka.get("fused"), kafka.get("bare"), "records_per_sec")
        kind = ratio_kind(name)
        rows.append([scenario, name, "≥ %s" % fmt_ratio(goal), ratio_cell(xs, kind),
                     verdict(xs, goal, kind)])
    lines += [table(["scenario", "ratio", "goal", "measured", "verdict"], rows), ""]
    return lines


def counts_section(raw):
    path = os.path.join(raw, "counts.md")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [f.read().rstrip("\n"), ""]


def render(runs, kafka, extra_targets, smoke, worker_bin, raw_dir, command):
    targets = ["rust", "python", "echo", "bound"] + extra_targets
    lines = ["# Benchmark results", ""]
    if smoke:
        lines += ["**Smoke run (tiny element counts): the figures mean nothing.**", ""]
    lines += [
        f"Produced by `{command}` in one run: every scenario repeated with the targets "
        "interleaved (rust, python, echo, bound, rust, …): our worker (`rust`, the kv_echo "
        "stage), Beam's Python worker pool (`python`, a pickled `Map(identity)`), the "
        "transport reference (`echo`: `grpc-echo` dials the driver's data endpoint as a worker "
        "does and returns the bytes of the gRPC stream verbatim, with no decoding, re-framing "
        "or copying) and the bound (`bound`: no pool; the driver dials its own data endpoint "
        "and reads its stream back as if it were a worker's output, so the bytes cross the "
        "loopback once, not twice), with the same Rust driver (`fnapi-loadgen`) and the same "
        "data. Every "
        "output byte was compared with the input. Elements are windowed `KV<bytes, bytes>` in "
        "the global window (125 B on the wire with a 10 B key and 100 B value). A fresh pool "
        "process per run. Throughput counts elements one way; MB = 10^6 bytes.",
        "",
    ]
    lines += load_section(raw_dir)
    lines += goals_section(runs, kafka)
    if runs:
        lines += fn_section(runs, targets, extra_targets)
    if kafka:
        lines += kafka_section(kafka)
    lines += counts_section(raw_dir)
    crit = criterion(raw_dir)
    if crit:
        lines += ["## Micro-benchmarks (criterion, `benches/data_path.rs`)", "",
                  "One 1 MB chunk of 125-byte elements per iteration; median time and throughput.",
                  ""]
        lines += [table(["benchmark", "time", "throughput"], crit), ""]
    lines += ["## Scenarios", ""]
    for s in scenario_order(runs):
        any_run = next(iter(next(iter(runs[s].values())).values()))
        w = any_run["workload"]
        note = SCENARIO_NOTES.get(s, "")
        lines.append(f"- **{s}**: {note}; {w['elements']} elements requested, "
                     f"{w['key_size']} B keys, {w['value_size']} B values")
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine()]
    lines += [f"- worker binary: `{os.path.basename(worker_bin)}`", ""]
    return "\n".join(lines) + "\n"


def chart(runs, extra_targets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = scenario_order(runs)
    targets = ["rust", "python", "echo", "bound"] + extra_targets
    colors = {"rust": "#d2691e", "python": "#3572a5", "echo": "#7f7f7f", "bound": "#b7b7b7"}
    for t, c in zip(extra_targets, ["#e8b04a", "#6aa84f", "#a64d79", "#45818e"]):
        colors[t] = c
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(targets)
    for i, t in enumerate(targets):
        series = [values(runs[s].get(t), "elements_per_sec") for s in scenarios]
        meds = [median(v) if v else 0 for v in series]
        err = [[m - min(v) if v else 0 for m, v in zip(meds, series)],
               [max(v) - m if v else 0 for m, v in zip(meds, series)]]
        xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(scenarios))]
        ax.bar(xs, meds, width, yerr=err, capsize=2, label=t, color=colors.get(t))
    ax.set_yscale("log")
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels(scenarios)
    ax.set_ylabel("elements/s (log scale; median, bars min–max)")
    ax.set_title("KV echo stage through the Fn API: our worker, Beam's Python worker, the echo and the bound")
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
    parser.add_argument("--command", default="scripts/bench.sh", help="the command that made the run")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG (needs matplotlib)")
    args = parser.parse_args()
    runs, kafka = load(args.raw)
    if not runs and not kafka:
        print("no results in " + args.raw, file=sys.stderr)
        return 1
    extra = sorted({t for r in runs.values() for t in r} - {"rust", "python", "echo", "bound"})
    md = render(runs, kafka, extra, args.smoke, args.worker_bin, args.raw, args.command)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(md)
    if not args.no_chart and runs:
        chart(runs, extra, os.path.join(args.out, "latest.png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
