#!/usr/bin/env bash
# OpenAPI conformance (issue 19): schemathesis (PyPI) generates requests from
# docs/openapi.yaml, valid and invalid, and sends them to a real cache-server;
# every check is on (`--checks all`: no server error, documented statuses,
# content types and headers, response bodies valid against the schema,
# invalid requests refused, valid ones accepted, unsupported methods
# answered 405) and the run must end with zero failures.
#
# Bounded run time: DND_SCHEMATHESIS_EXAMPLES cases per operation (default
# 300; about a minute on 2 cores). Seeds are random: schemathesis prints
# the seed of each run, `--seed N` replays it.
#
# Expects DND_CACHE_SERVER_BIN (set by tests/run-all.sh); builds the server
# when run alone without it.
# needs: python3-venv python3
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${DND_CACHE_SERVER_BIN:-}" ]; then
  cargo build --release --bin cache-server
  DND_CACHE_SERVER_BIN="$PWD/target/release/cache-server"
fi
examples=${DND_SCHEMATHESIS_EXAMPLES:-300}
work=$(mktemp -d)
server_pid=
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

venv="${TMPDIR:-/tmp}/dnd-cache-schemathesis-venv"
# Debian's python3 when there is one: the suite is meant for a clean
# Debian host, and other interpreters on PATH may lack ensurepip.
python=python3
[ -x /usr/bin/python3 ] && python=/usr/bin/python3
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==4.32.5"

# Defaults (no key file: requests with options.encryption use the key the
# server generates at start).
"$DND_CACHE_SERVER_BIN" --port 0 --shard-port-base 0 --http-port 0 --shards 2 --no-pin \
  --max-memory 64MiB >"$work/stdout" 2>"$work/stderr" &
server_pid=$!
for _ in $(seq 100); do
  grep -qs '^LISTENING ' "$work/stdout" && break
  sleep 0.1
done
line=$(grep '^LISTENING ' "$work/stdout") || { echo "no LISTENING line"; cat "$work/stderr"; exit 1; }
http=$(tr ' ' '\n' <<<"$line" | sed -n 's/^http=//p')
echo "# $line"

"$venv/bin/python" tests/schemathesis/run.py \
  --config-file tests/schemathesis/schemathesis.toml \
  run docs/openapi.yaml --url "http://$http" --checks all \
  --max-examples "$examples" --workers 2 --output-truncate true

kill -TERM "$server_pid"
wait "$server_pid"
server_pid=
