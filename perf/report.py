#!/usr/bin/env python3
"""Turns perf/compare's JSON summaries into compare.md and latency.svg.

Standard library only: the SVG is written by hand, so the comparison runs on
a bare Debian machine without matplotlib.
"""
import json
import sys
from pathlib import Path

SERVERS = [("dnd", "dnd-cache"), ("redis", "Redis"), ("memcached", "memcached"), ("echo", "echo (floor)")]
WORKLOADS = [
    ("get-p1", "GET, pipeline 1"),
    ("set-p1", "SET, pipeline 1"),
    ("get-p16", "GET, pipeline 16"),
    ("set-p16", "SET, pipeline 16"),
    ("mix-zipf-p1", "90/10 GET/SET, zipfian 0.99, pipeline 1"),
    ("open-50pct", "90/10 open loop at 50% of Redis's GET peak"),
    ("open-low", "90/10 open loop at {rate}/s (light)"),
    ("open-mid", "90/10 open loop at {rate}/s (middle)"),
    ("open-high", "90/10 open loop at {rate}/s (heavy)"),
]
OPEN_TAGS = ["open-low", "open-mid", "open-high"]
COLORS = {"dnd": "#d62728", "redis": "#1f77b4", "memcached": "#2ca02c", "echo": "#7f7f7f"}


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def round_of(path):
    """The round number in NAME.rN.json."""
    return int(path.suffixes[-2][2:])


def rounds(out, name):
    """Every round's summary of one server and workload, in round order."""
    paths = sorted(out.glob(f"{name}.r*.json"), key=round_of)
    if not paths and (out / f"{name}.json").exists():
        paths = [out / f"{name}.json"]
    return {round_of(p) if ".r" in p.name else 1: s for p in paths if (s := read_json(p)) is not None}


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def metric(summary, name):
    """ops, p50, p99, p999, cpu (server µs/op), client (client µs/op)."""
    if name in ("p50", "p99", "p999"):
        return summary["latency_us"][name]
    return {
        "ops": summary["ops_per_sec"],
        "cpu": summary.get("server_cpu_us_per_op"),
        "client": summary.get("client_cpu_us_per_op"),
    }[name]


def open_rates(peak, cap=60000):
    """perf/compare's open-loop rates when none are given: 25/50/75% of
    Redis's GET peak, the peak first capped at 4/3 of `cap` so that the
    highest rate is at most `cap` and the three stay evenly spaced."""
    base = min(peak, cap * 4 / 3)
    return [round(base * pct / 100) for pct in (25, 50, 75)]


def title_of(out, tag, title):
    """A workload's title; an open-loop rate's comes from its runs."""
    if "{rate}" not in title:
        return title
    for key, _ in SERVERS:
        for s in rounds(out, f"{key}-{tag}").values():
            if s.get("target_rate"):
                return title.format(rate=f"{s['target_rate']:,.0f}")
    return title.format(rate="?")


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def spread(values, digits):
    """median, with the range when there is more than one value."""
    values = [v for v in values if v is not None]
    m = median(values)
    if m is None:
        return "-"
    if len(values) < 2:
        return fmt(m, digits)
    return f"{fmt(m, digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def table(out):
    rows = [
        "| workload | server | ops/s | p50 (µs) | p99 (µs) | p99.9 (µs) | server CPU µs/op | client CPU µs/op | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tag, title in WORKLOADS:
        title = title_of(out, tag, title)
        for key, label in SERVERS:
            runs = list(rounds(out, f"{key}-{tag}").values())
            if not runs:
                continue
            col = lambda name: [metric(s, name) for s in runs]  # noqa: E731
            rate = fmt(median(col("ops")), 0)
            if runs[0].get("target_rate"):
                rate += f" (of {runs[0]['target_rate']:,.0f})"
            errors = sum(s["errors"] for s in runs)
            rows.append(
                f"| {title} | {label} | {rate} | {fmt(median(col('p50')))} | {fmt(median(col('p99')))} | "
                f"{fmt(median(col('p999')))} | {spread(col('cpu'), 2)} | {fmt(median(col('client')), 2)} | {errors} |"
            )
    return "\n".join(rows)


# The goals of the comparison: (what, workloads, peers, metric, the ratio's
# direction, the ratio it must reach). A ratio is ours against one peer in
# the same round; "higher" means a peer's value over ours (less is better).
GOALS = [
    ("server CPU per op, pipeline 1", ["get-p1", "set-p1", "mix-zipf-p1"], ["redis", "memcached"], "cpu", 1.15),
    ("server CPU per op, pipeline 16", ["get-p16", "set-p16"], ["redis"], "cpu", 2.0),
    ("throughput, pipeline 16", ["get-p16", "set-p16"], ["redis"], "ops", 2.0),
    ("throughput, pipeline 1 (not lower)", ["get-p1", "set-p1", "mix-zipf-p1"], ["redis", "memcached"], "ops", 1.0),
    ("open-loop p99 (lower)", ["open-50pct"], ["redis", "memcached"], "p99", 1.0),
    ("open-loop p99.9 (lower)", ["open-50pct"], ["redis", "memcached"], "p999", 1.0),
]


def ratio(ours, peer, name):
    """How many times better ours is: throughput ours/peer, costs peer/ours."""
    a, b = metric(ours, name), metric(peer, name)
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b if name == "ops" else b / a


def goals_section(out):
    rows = [
        "| goal | workload | against | dnd-cache's advantage: median (range) | rounds at goal | goal |",
        "|---|---|---|---:|---:|---:|",
    ]
    labels = dict(SERVERS)
    titles = {tag: title_of(out, tag, title) for tag, title in WORKLOADS}
    for what, tags, peers, name, need in GOALS:
        for tag in tags:
            ours = rounds(out, f"dnd-{tag}")
            for peer in peers:
                theirs = rounds(out, f"{peer}-{tag}")
                both = [ratio(ours[r], theirs[r], name) for r in sorted(ours) if r in theirs]
                both = [x for x in both if x is not None]
                if not both:
                    continue
                met = sum(x >= need if need > 1 else x > need for x in both)
                rows.append(
                    f"| {what} | {titles[tag]} | {labels[peer]} | {spread(both, 2)}x | "
                    f"{met} of {len(both)} | {need:g}x |"
                )
    if len(rows) == 2:
        return ""
    return (
        "Goals, as dnd-cache's advantage over each peer measured within one round "
        "(CPU and latency: the peer's over ours; throughput: ours over the peer's):\n\n" + "\n".join(rows)
    )


# Open loop (issue 18): (what, metric, peers, the most ours may be as a
# share of theirs). With several peers, each round compares with the best
# (lowest) of them in that round.
OPEN_GOALS = [
    ("server CPU per request", "cpu", ["memcached"], 0.8),
    ("p99", "p99", ["redis", "memcached"], 1.0),
    ("p99.9", "p999", ["redis", "memcached"], 1.0),
]


def open_goals_section(out):
    """dnd-cache's value over the peer's at each open-loop rate, per round."""
    rows = [
        "| goal | workload | against | dnd-cache / peer: median (range) | rounds at goal | goal |",
        "|---|---|---|---:|---:|---:|",
    ]
    labels = dict(SERVERS)
    titles = dict(WORKLOADS)
    for tag in OPEN_TAGS:
        ours = rounds(out, f"dnd-{tag}")
        for what, name, peers, most in OPEN_GOALS:
            theirs = {p: rounds(out, f"{p}-{tag}") for p in peers}
            present = [p for p in peers if theirs[p]]
            ratios = []
            for r in sorted(ours):
                values = [metric(theirs[p][r], name) for p in present if r in theirs[p]]
                values = [v for v in values if v is not None and v > 0]
                mine = metric(ours[r], name)
                if values and mine is not None:
                    ratios.append(mine / min(values))
            if not ratios:
                continue
            against = labels[present[0]] if len(present) == 1 else "best of " + " and ".join(labels[p] for p in present)
            met = sum(x <= most for x in ratios)
            rows.append(
                f"| {what} | {title_of(out, tag, titles[tag])} | {against} | {spread(ratios, 2)}x | "
                f"{met} of {len(ratios)} | ≤ {most:g}x |"
            )
    if len(rows) == 2:
        return ""
    return (
        "Open-loop goals, as dnd-cache's value over the peer's measured within one round "
        "(lower is better; against several peers, the best of them in that round):\n\n" + "\n".join(rows)
    )


# The floor (issue 18): dnd-cache's server CPU per request over that of
# perf-echo, a server that does nothing, at most this, per round.
FLOOR_TAGS = ["get-p1", "set-p1", "mix-zipf-p1"]
FLOOR_MOST = 1.1


def floor_section(out):
    """dnd-cache's server CPU per request over the echo's, per round."""
    rows = [
        "| workload | dnd-cache / echo, server CPU per request: median (range) | rounds at goal | goal |",
        "|---|---:|---:|---:|",
    ]
    titles = dict(WORKLOADS)
    for tag in FLOOR_TAGS:
        ours, floor = rounds(out, f"dnd-{tag}"), rounds(out, f"echo-{tag}")
        ratios = []
        for r in sorted(ours):
            if r in floor:
                mine, least = metric(ours[r], "cpu"), metric(floor[r], "cpu")
                if mine and least:
                    ratios.append(mine / least)
        if ratios:
            met = sum(x <= FLOOR_MOST for x in ratios)
            rows.append(f"| {titles[tag]} | {spread(ratios, 2)}x | {met} of {len(ratios)} | ≤ {FLOOR_MOST:g}x |")
    if len(rows) == 2:
        return ""
    return (
        "The floor: dnd-cache's server CPU per request over that of perf-echo, a server of the "
        "same protocol that does nothing (one epoll thread, a canned answer per frame), in the "
        "same round (lower is better):\n\n" + "\n".join(rows)
    )


def cpu_seconds(path):
    user, system = path.read_text().split()[-2:]
    return float(user) + float(system)


def client_cpu_section(out):
    n_file = out / "client-cpu-requests.txt"
    pairs = []
    for rb in sorted(out.glob("redis-benchmark.r*.cpu"), key=lambda p: int(p.name.split(".r")[1].split(".")[0])):
        ours = out / rb.name.replace("redis-benchmark", "loadgen-vs-redis-benchmark")
        if ours.exists():
            pairs.append((cpu_seconds(rb), cpu_seconds(ours)))
    if not pairs and (out / "redis-benchmark.cpu").exists() and (out / "loadgen-vs-redis-benchmark.cpu").exists():
        pairs.append((cpu_seconds(out / "redis-benchmark.cpu"), cpu_seconds(out / "loadgen-vs-redis-benchmark.cpu")))
    if not (pairs and n_file.exists()):
        return "redis-benchmark comparison not run (needs Redis and redis-benchmark)."
    n = int(n_file.read_text())
    rb_us = [a * 1e6 / n for a, _ in pairs]
    our_us = [b * 1e6 / n for _, b in pairs]
    ratios = [a / b for a, b in pairs if b > 0]
    return (
        f"Client CPU per request, GET, 50 connections, pipeline 16, {n:,} requests against the same Redis "
        f"(whole-process user+system time; {len(pairs)} round(s), median (range)):\n\n"
        f"| client | µs/request |\n|---|---:|\n"
        f"| redis-benchmark -P 16 | {spread(rb_us, 3)} |\n| loadgen --pipeline 16 | {spread(our_us, 3)} |\n\n"
        f"loadgen is {spread(ratios, 2)}x cheaper per request (goal: 2x; "
        f"{sum(r >= 2 for r in ratios)} of {len(ratios)} rounds at goal)."
    )


def curve_points(out, key):
    pts = []
    for f in sorted(out.glob(f"{key}-curve-*.json")):
        s = json.loads(f.read_text())
        pts.append((s["ops_per_sec"], s["latency_us"]["p99"], s["latency_us"]["p50"]))
    return sorted(pts)


def us_label(us):
    """10 µs, 1 ms, 100 ms, 1 s: short tick labels for a log axis."""
    if us >= 1e6:
        return f"{us / 1e6:g} s"
    if us >= 1e3:
        return f"{us / 1e3:g} ms"
    return f"{us:g} µs"


def svg(out):
    """p99 (solid) and p50 (dashed) latency against achieved throughput, log y."""
    import math

    series = {k: curve_points(out, k) for k, _ in SERVERS}
    series = {k: v for k, v in series.items() if v}
    w, h, ml, mr, mt, mb = 760, 460, 80, 170, 40, 60
    pw, ph = w - ml - mr, h - mt - mb
    if not series:
        return None
    xs = [p[0] for v in series.values() for p in v]
    ys = [y for v in series.values() for p in v for y in p[1:]]
    xmax = max(xs) * 1.05 or 1
    ylo = math.floor(math.log10(max(min(ys), 1)))
    yhi = math.ceil(math.log10(max(ys) * 1.01))
    yhi = max(yhi, ylo + 1)

    def px(x):
        return ml + pw * x / xmax

    def py(y):
        return mt + ph * (1 - (math.log10(max(y, 1)) - ylo) / (yhi - ylo))

    e = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="15">Latency vs throughput '
        f"(open loop, 90/10 GET/SET, 50 connections, pipeline 1)</text>",
    ]
    for d in range(ylo, yhi + 1):
        y = py(10**d)
        e.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        e.append(f'<text x="{ml - 6}" y="{y + 4}" text-anchor="end">{us_label(10**d)}</text>')
    for i in range(6):
        x = xmax * i / 5
        e.append(f'<line x1="{px(x)}" x2="{px(x)}" y1="{mt}" y2="{mt + ph}" stroke="#eee"/>')
        e.append(f'<text x="{px(x)}" y="{mt + ph + 18}" text-anchor="middle">{x / 1000:,.0f}k</text>')
    e.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    e.append(f'<text x="{ml + pw / 2}" y="{h - 14}" text-anchor="middle">achieved ops/s</text>')
    e.append(
        f'<text x="18" y="{mt + ph / 2}" text-anchor="middle" transform="rotate(-90 18 {mt + ph / 2})">'
        f"latency (log scale)</text>"
    )
    legend_y = mt + 10
    for key, label in SERVERS:
        pts = series.get(key)
        if not pts:
            continue
        c = COLORS[key]
        for idx, dash in ((1, ""), (2, ' stroke-dasharray="5,4"')):
            path = " ".join(f"{px(p[0]):.1f},{py(p[idx]):.1f}" for p in pts)
            e.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        for p in pts:
            e.append(f'<circle cx="{px(p[0]):.1f}" cy="{py(p[1]):.1f}" r="3" fill="{c}"/>')
        lx = ml + pw + 15
        e.append(f'<line x1="{lx}" x2="{lx + 25}" y1="{legend_y}" y2="{legend_y}" stroke="{c}" stroke-width="2"/>')
        e.append(f'<text x="{lx + 30}" y="{legend_y + 4}">{label} p99</text>')
        e.append(
            f'<line x1="{lx}" x2="{lx + 25}" y1="{legend_y + 18}" y2="{legend_y + 18}" stroke="{c}" '
            f'stroke-width="2" stroke-dasharray="5,4"/>'
        )
        e.append(f'<text x="{lx + 30}" y="{legend_y + 22}">{label} p50</text>')
        legend_y += 44
    e.append("</svg>")
    return "\n".join(e)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "target/perf-compare")
    machine = (out / "machine.txt").read_text().strip() if (out / "machine.txt").exists() else ""
    curve = svg(out)
    if curve:
        (out / "latency.svg").write_text(curve)
    md = [
        "# dnd-cache vs Redis vs memcached",
        "",
        "```",
        machine,
        "```",
        "",
        "50 connections, 100-byte values, uniform keys unless noted; gets run on prefilled keys.",
        "Each cell is the median of the rounds; server CPU per op also gives the range.",
        "Server CPU is utime+stime of the server process over the measured window, per op;",
        "client CPU is the loadgen process's, per op. Open-loop latency counts from the intended send time.",
        "",
        table(out),
        "",
        goals_section(out),
        "",
        open_goals_section(out),
        "",
        floor_section(out),
        "",
        client_cpu_section(out),
        "",
        "![latency vs throughput](latency.svg)" if curve else "(no latency curve: no curve runs found)",
        "",
    ]
    (out / "compare.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
