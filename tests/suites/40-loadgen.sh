#!/usr/bin/env bash
# Load generator suite: the report's unit tests, a short perf/compare run against real dnd-cache, Redis,
# memcached and the do-nothing floor (perf-echo) (every workload must finish without errors and the report and
# plot must be written), then a capacity search with a loose objective.
# Timings are printed, never asserted: they depend on the machine.
# needs: redis-server redis-server
# needs: memcached memcached
# needs: redis-tools redis-benchmark
set -euo pipefail
cd "$(dirname "$0")/../.."

python3 -m unittest perf/test_report.py

LOADGEN=${DND_LOADGEN_BIN:-target/release/loadgen}
[ -x "$LOADGEN" ] || cargo build --release -p loadgen
OUT=target/perf-compare-ci
# Two rounds, so the interleaving and the per-round ratios are exercised.
perf/compare --quick --rounds 2 --out "$OUT" >/dev/null

python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
failed = []
checked = 0
# The floor (perf-echo) runs the closed-loop pipeline-1 workloads only.
runs = [(server, tag) for server in ("dnd", "redis", "memcached")
        for tag in ("get-p1", "set-p1", "get-p16", "set-p16", "mix-zipf-p1", "open-low", "open-mid", "open-high")]
runs += [("echo", tag) for tag in ("get-p1", "set-p1", "mix-zipf-p1")]
for server, tag in runs:
    for rnd in (1, 2):
        p = out / f"{server}-{tag}.r{rnd}.json"
        if not p.exists():
            failed.append(f"{p}: missing")
            continue
        s = json.loads(p.read_text())
        checked += 1
        if s["errors"] or s["ops"] == 0 or s["sent"] != s["ops"]:
            failed.append(f"{p}: ops {s['ops']} sent {s['sent']} errors {s['errors_by_status']}")
        if s.get("server_cpu_us_per_op") is None:
            failed.append(f"{p}: no server CPU")
if list(out.glob("echo-get-p16.*")) or list(out.glob("echo-open-*")) or list(out.glob("echo-curve-*")):
    failed.append("the echo ran workloads other than the closed-loop pipeline-1 ones")
for f in ("compare.md", "latency.svg"):
    if not (out / f).exists() or (out / f).stat().st_size == 0:
        failed.append(f"{out / f}: not written")
md = (out / "compare.md").read_text() if (out / "compare.md").exists() else ""
for label in ("dnd-cache", "Redis", "memcached", "redis-benchmark", "of 2 rounds at goal", "| 1.15x |",
              "Open-loop goals", "| ≤ 0.8x |", "open-loop rates: ", "The floor:", "| ≤ 1.1x |", "echo (floor)"):
    if label not in md:
        failed.append(f"compare.md lacks {label}")
for f in failed:
    print("FAIL", f)
print(f"perf/compare: {checked} runs checked, {len(failed)} problems")
sys.exit(1 if failed else 0)
PY
sed -n '/^| workload/,/^$/p' "$OUT/compare.md"
grep -A1 "cheaper per request" "$OUT/compare.md" || true

# Capacity search against Redis with an objective any machine meets at low rates.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
REDIS=$!
trap 'kill $REDIS 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
"$LOADGEN" capacity --protocol resp --addr "127.0.0.1:$port" --connections 10 --keys 1000 --prefill \
  --slo-p99 500ms --step-duration 500ms --start-pct 5 --step-pct 45 --refine 0 --json >target/capacity-ci.json
python3 - <<'PY'
import json
r = json.load(open("target/capacity-ci.json"))
assert r["closed_loop_peak"] > 0, r
assert r["capacity_ops_per_sec"] > 0, r
assert r["steps"] and r["steps"][0]["met"], r
print(f"capacity: peak {r['closed_loop_peak']:.0f} ops/s, {r['capacity_ops_per_sec']:.0f} ops/s under p99 500 ms")
PY
echo "40-loadgen: 2 passed, 0 failed"
