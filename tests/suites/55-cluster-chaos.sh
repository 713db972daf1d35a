#!/usr/bin/env bash
# The cluster's chaos run (issue 17), short: perf/cluster-chaos --quick
# starts a real nats-server -js and three real nodes (zones a, b, a,
# replication 2), writes strong and eventual keys, kills and restarts two
# nodes, pauses one, restarts nats-server, then reads every acknowledged
# write back. Fails if one acknowledged strong write was lost. Counts, not
# timings (the timings it prints are reported, not asserted).
# needs: nats-server nats-server
set -euo pipefail
cd "$(dirname "$0")/../.."

export DND_CACHE_SERVER_BIN=${DND_CACHE_SERVER_BIN:-target/release/cache-server}
[ -x "$DND_CACHE_SERVER_BIN" ] || cargo build --release --bin cache-server
perf/cluster-chaos --quick --json target/cluster-chaos-ci.json
echo "55-cluster-chaos: 1 passed, 0 failed"
