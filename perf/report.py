#!/usr/bin/env python3
"""Turns perf/compare's JSON summaries into compare.md and latency.svg.

Standard library only: the SVG is written by hand, so the comparison runs on
a bare Debian machine without matplotlib.
"""
import json
import sys
from pathlib import Path

SERVERS = [("dnd", "dnd-cache"), ("redis", "Redis"), ("memcached", "memcached")]
WORKLOADS = [
    ("get-p1", "GET, pipeline 1"),
    ("set-p1", "SET, pipeline 1"),
    ("get-p16", "GET, pipeline 16"),
    ("set-p16", "SET, pipeline 16"),
    ("mix-zipf-p1", "90/10 GET/SET, zipfian 0.99, pipeline 1"),
    ("open-50pct", "90/10 open loop at 50% of Redis's GET peak"),
]
COLORS = {"dnd": "#d62728", "redis": "#1f77b4", "memcached": "#2ca02c"}


def load(out, name):
    p = out / f"{name}.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def table(out):
    rows = [
        "| workload | server | ops/s | p50 (µs) | p99 (µs) | p99.9 (µs) | server CPU µs/op | client CPU µs/op | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tag, title in WORKLOADS:
        for key, label in SERVERS:
            s = load(out, f"{key}-{tag}")
            if s is None:
                continue
            lat = s["latency_us"]
            rate = f"{s['ops_per_sec']:,.0f}"
            if s.get("target_rate"):
                rate += f" (of {s['target_rate']:,.0f})"
            rows.append(
                f"| {title} | {label} | {rate} | {fmt(lat['p50'])} | {fmt(lat['p99'])} | "
                f"{fmt(lat['p999'])} | {fmt(s.get('server_cpu_us_per_op'), 2)} | "
                f"{fmt(s.get('client_cpu_us_per_op'), 2)} | {s['errors']} |"
            )
    return "\n".join(rows)


def cpu_seconds(path):
    user, system = path.read_text().split()[-2:]
    return float(user) + float(system)


def client_cpu_section(out):
    rb, ours = out / "redis-benchmark.cpu", out / "loadgen-vs-redis-benchmark.cpu"
    n_file = out / "client-cpu-requests.txt"
    if not (rb.exists() and ours.exists() and n_file.exists()):
        return "redis-benchmark comparison not run (needs Redis and redis-benchmark)."
    n = int(n_file.read_text())
    rb_us = cpu_seconds(rb) * 1e6 / n
    our_us = cpu_seconds(ours) * 1e6 / n
    return (
        f"Client CPU per request, GET, 50 connections, pipeline 16, {n:,} requests against the same Redis "
        f"(whole-process user+system time):\n\n"
        f"| client | µs/request |\n|---|---:|\n"
        f"| redis-benchmark -P 16 | {rb_us:.3f} |\n| loadgen --pipeline 16 | {our_us:.3f} |\n\n"
        f"loadgen is {rb_us / our_us:.2f}x cheaper per request (goal: 2x)."
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
        "Server CPU is utime+stime of the server process over the measured window, per op;",
        "client CPU is the loadgen process's, per op. Open-loop latency counts from the intended send time.",
        "",
        table(out),
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
