#!/usr/bin/env bash
# Throughput of SET with Message Hub events on (NATS up, every write
# published) versus off, on this machine. Alternates the two modes ROUNDS
# times and prints each run and the median of each mode.
#
#   bash perf/events-overhead.sh            # defaults below
#   ROUNDS=5 SECS=10 PIPELINE=1 bash perf/events-overhead.sh
#
# Load: the bundled loadgen when USE_LOADGEN=1 and it is built
# (target/release/loadgen), else examples/set_throughput.rs (closed loop,
# one thread per connection). The server runs one shard pinned to
# SERVER_CPU, the client (CLIENT_THREADS loadgen threads) is pinned to
# CLIENT_CPU (a CPU or a range); the bridge thread is pinned to HUB_CPU and
# nats-server to NATS_CPU when set (else they float). EXTRA_ON adds server
# flags in the "on" runs (e.g. EXTRA_ON="--event-coalesce-ms 1000").
# Besides throughput it prints the server's CPU time per SET, for the shard
# threads and the bridge thread: on a loaded 2-core host, throughput mostly
# shows who else is using the cores, the shard's CPU per SET shows whether
# the data path itself slowed. Needs nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECS=${SECS:-8}
CONNS=${CONNS:-50}
PIPELINE=${PIPELINE:-16}
KEYS=${KEYS:-100000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
HUB_CPU=${HUB_CPU:-}
NATS_CPU=${NATS_CPU:-}
CLIENT_THREADS=${CLIENT_THREADS:-1}

nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$nats_bin" ] || { echo "nats-server is required (apt-get install nats-server)" >&2; exit 1; }
server_bin=${DND_CACHE_SERVER_BIN:-target/release/cache-server}
loadgen_bin=${DND_LOADGEN_BIN:-target/release/loadgen}
if command -v cargo >/dev/null; then
  cargo build --release --quiet --bin cache-server --example set_throughput
  [ "${USE_LOADGEN:-0}" = 1 ] && cargo build --release --quiet -p loadgen
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
nats_pin=(); [ -n "$NATS_CPU" ] && nats_pin=(taskset -c "$NATS_CPU")
"${nats_pin[@]}" "$nats_bin" -a 127.0.0.1 -p "$nats_port" >/dev/null 2>&1 &
nats_pid=$!
pids+=("$nats_pid")

run_once() { # mode → ops/s
  local mode=$1 extra=()
  if [ "$mode" = on ]; then
    extra=(--nats-url "nats://127.0.0.1:$nats_port")
    [ -n "$HUB_CPU" ] && extra+=(--hub-cpu "$HUB_CPU")
    # shellcheck disable=SC2206 # EXTRA_ON is a list of flags
    [ -n "${EXTRA_ON:-}" ] && extra+=($EXTRA_ON)
  fi
  "$server_bin" --cpus "$SERVER_CPU" --port 0 --shard-port-base 0 --http-port 0 \
    --max-memory 1GiB "${extra[@]}" >"$work/server.out" 2>"$work/server.err" &
  local server=$!
  pids+=("$server")
  local addr=""
  for _ in $(seq 100); do
    addr=$(sed -n 's/^LISTENING binary=\([^ ]*\).*/\1/p' "$work/server.out")
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/server.err" >&2; exit 1; }
  local before json after
  before=$(cpu_ticks "$server"),$(nats_ticks)
  if [ "${USE_LOADGEN:-0}" = 1 ] && [ -x "$loadgen_bin" ]; then
    json=$(taskset -c "$CLIENT_CPU" "$loadgen_bin" run --protocol binary --addr "$addr" \
      --threads "$CLIENT_THREADS" --cpus "$CLIENT_CPU" --connections "$CONNS" --pipeline "$PIPELINE" --ratio 0:1 --keys "$KEYS" --value-size 100 \
      --duration "$SECS" --json --quiet)
  else
    json=$(taskset -c "$CLIENT_CPU" target/release/examples/set_throughput "$addr" \
      "$CONNS" "$PIPELINE" "$KEYS" 100 "$SECS")
  fi
  after=$(cpu_ticks "$server"),$(nats_ticks)
  kill "$server"
  wait "$server" 2>/dev/null || true
  # ops/s, then CPU µs per SET: shard threads, hub thread, nats-server.
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
ops_s = d.get("ops_per_sec") or d.get("throughput") or d["ops"] / d["seconds"]
b, a = (dict(zip(("shard", "hub", "nats"), map(int, x.split(",")))) for x in sys.argv[2:4])
total = ops_s * float(sys.argv[4]) + 1
us = lambda k: (a[k] - b[k]) * 1e6 / 100 / total
sh, hb, nt = us("shard"), us("hub"), us("nats")
print(f"{int(ops_s)} {sh:.2f} {hb:.2f} {nt:.2f}")' "$json" "$before" "$after" "$((SECS + 1))"
}

nats_ticks() { # nats-server's utime + stime (1/100 s)
  awk '{print $14 + $15}' "/proc/$nats_pid/stat"
}

cpu_ticks() { # pid → "shard_ticks,hub_ticks" (utime + stime, 1/100 s)
  python3 - "$1" <<'PY'
import glob, sys
t = {"shard": 0, "hub": 0}
for stat in glob.glob(f"/proc/{sys.argv[1]}/task/*/stat"):
    try:
        text = open(stat).read()
    except OSError:
        continue
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    if comm.startswith("shard"):
        t["shard"] += ticks
    elif comm == "hub":
        t["hub"] += ticks
print(f"{t['shard']},{t['hub']}")
PY
}

declare -A results=([off]="" [on]="") shard_cpu=([off]="" [on]="")
for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    read -r ops shard_us hub_us nats_us < <(run_once "$mode")
    echo "round $round events $mode: $ops SET/s; CPU per SET: shard ${shard_us} µs, hub ${hub_us} µs, nats-server ${nats_us} µs"
    results[$mode]+="$ops "
    shard_cpu[$mode]+="$shard_us "
  done
done
python3 - "${results[off]}" "${results[on]}" "${shard_cpu[off]}" "${shard_cpu[on]}" <<'PY'
import statistics, sys
off, on, c_off, c_on = ([float(x) for x in a.split()] for a in sys.argv[1:5])
m_off, m_on = statistics.median(off), statistics.median(on)
print(f"median events off: {m_off:.0f} SET/s, events on: {m_on:.0f} SET/s, on/off = {m_on / m_off:.3f}")
print(f"median shard CPU per SET: off {statistics.median(c_off):.2f} µs, on {statistics.median(c_on):.2f} µs")
PY
