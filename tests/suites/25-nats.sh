#!/usr/bin/env bash
# Message Hub bridge (issue 7): the hub_events integration tests against a
# real nats-server (Debian package nats-server, installed by tests/run-all.sh
# from the line below). DND_REQUIRE_NATS makes a missing binary a failure
# instead of a skip.
# needs: nats-server nats-server
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "nats-server is required (apt-get install nats-server)" >&2
  exit 1
fi
if [ -n "${DND_NATS_TESTS_RAN:-}" ]; then
  # tests/run-all.sh ran the workspace tests with DND_REQUIRE_NATS=1: these
  # three ran there against a real nats-server, none skipped.
  echo "hub_events, cluster, cluster_failover: ran in the workspace tests with DND_REQUIRE_NATS=1"
  exit 0
fi
export DND_REQUIRE_NATS=1
cargo test --test hub_events --test cluster --test cluster_failover
