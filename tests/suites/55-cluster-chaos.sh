#!/usr/bin/env bash
# The cluster's chaos run (issue 17), short: perf/cluster-chaos --quick
# starts a real nats-server -js and three real nodes (zones a, b, a,
# replication 2), writes strong and eventual keys, kills and restarts two
# nodes, pauses one, restarts nats-server (then, second run, one of a
# three-server NATS cluster), then reads every acknowledged
# write back. Fails if one acknowledged strong write was lost. Counts, not
# timings (the timings it prints are reported, not asserted).
# needs: nats-server nats-server
set -euo pipefail
cd "$(dirname "$0")/../.."

export DND_CACHE_SERVER_BIN=${DND_CACHE_SERVER_BIN:-target/release/cache-server}
[ -x "$DND_CACHE_SERVER_BIN" ] || cargo build --release --bin cache-server
perf/cluster-chaos --quick --json target/cluster-chaos-ci.json
# The same against a NATS cluster of three servers, one of them killed in
# turn (the map bucket keeps three copies).
perf/cluster-chaos --quick --nats-cluster --json target/cluster-chaos-nats-cluster-ci.json
echo "55-cluster-chaos: 2 passed, 0 failed"
