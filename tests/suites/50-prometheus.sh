#!/usr/bin/env bash
# Monitoring (issue 20): the alert rules (promtool check rules, then their
# unit tests), then a real Prometheus scraping real cache-servers with and
# without bearer auth, checking hit rate, latency quantiles and memory
# against known traffic, and every PromQL expression of the Grafana
# dashboard and the alert rules (tests/prometheus/scrape_check.py).
#
# Expects DND_CACHE_SERVER_BIN (set by tests/run-all.sh); builds the server
# when run alone without it.
# needs: prometheus promtool
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${DND_CACHE_SERVER_BIN:-}" ]; then
  cargo build --release --bin cache-server
  export DND_CACHE_SERVER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/cache-server"
fi

echo "-- alert rules"
promtool check config deploy/prometheus/prometheus.yml
(cd deploy/prometheus && promtool test rules alerts_test.yaml)

echo "-- dashboard JSON"
python3 -m json.tool deploy/grafana/dnd-cache.json >/dev/null

echo "-- prometheus scrapes cache-server"
venv="${TMPDIR:-/tmp}/dnd-cache-prometheus-venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e clients/python
# The check stops its own processes; the timeout bounds the whole run.
timeout 300 "$venv/bin/python" tests/prometheus/scrape_check.py
