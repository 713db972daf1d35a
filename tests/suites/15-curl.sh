#!/usr/bin/env bash
# REST API with curl (issue 4): starts the release server on free ports,
# does a PUT / GET / DELETE round trip plus the health checks, checks every
# answer, and stops the server.
#
# Expects DND_CACHE_SERVER_BIN (set by tests/run-all.sh); builds the server
# when run alone without it.
# needs: curl curl
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${DND_CACHE_SERVER_BIN:-}" ]; then
  cargo build --release --bin cache-server
  DND_CACHE_SERVER_BIN="$PWD/target/release/cache-server"
fi
work=$(mktemp -d)
server_pid=
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$DND_CACHE_SERVER_BIN" --port 0 --shard-port-base 0 --http-port 0 --shards 2 --no-pin \
  --max-memory 64MiB >"$work/stdout" 2>"$work/stderr" &
server_pid=$!
for _ in $(seq 100); do
  grep -qs '^LISTENING ' "$work/stdout" && break
  sleep 0.1
done
line=$(grep '^LISTENING ' "$work/stdout") || { echo "no LISTENING line"; cat "$work/stderr"; exit 1; }
http=$(tr ' ' '\n' <<<"$line" | sed -n 's/^http=//p')
[ -n "$http" ] || { echo "no http= in: $line"; exit 1; }
base="http://$http"
echo "# $line"

failed=0
check() {  # check NAME EXPECTED ACTUAL
  if [ "$2" == "$3" ]; then echo "ok   - $1"; else echo "FAIL - $1: expected [$2], got [$3]"; failed=1; fi
}
status() { curl -s -o "$work/body" -w '%{http_code}' "$@"; }

check "PUT a JSON value" 200 "$(status -X PUT -H 'Content-Type: application/json' \
  --data '{"cache_request": {"value": {"hp": 12}, "ttl": 60}}' "$base/api/v2/cache/character:1234")"
check "PUT answers OK" '"OK"' "$(grep -o '"status":"OK"' "$work/body" | cut -d: -f2)"
check "GET it back" 200 "$(status "$base/api/v2/cache/character:1234")"
check "GET shows the stored JSON verbatim" '{"hp": 12}' "$(sed -n 's/.*"data":\({[^}]*}\).*/\1/p' "$work/body")"
check "GET raw bytes" '{"hp": 12}' "$(curl -s -H 'Accept: application/octet-stream' "$base/api/v2/cache/character:1234")"
printf '\000\001\376\377' >"$work/blob"
check "PUT raw bytes" 200 "$(status -X PUT -H 'Content-Type: application/octet-stream' \
  --data-binary @"$work/blob" "$base/api/v2/cache/blob")"
curl -s -H 'Accept: application/octet-stream' "$base/api/v2/cache/blob" >"$work/blob.back"
if cmp -s "$work/blob" "$work/blob.back"; then check "raw bytes round trip" same same; else check "raw bytes round trip" same different; fi
check "DELETE" 200 "$(status -X DELETE "$base/api/v2/cache/character:1234")"
check "GET after DELETE" 404 "$(status "$base/api/v2/cache/character:1234")"
check "error code" CACHE_001 "$(grep -o 'CACHE_001' "$work/body" | head -n1)"
check "live" 200 "$(status "$base/health/live")"
check "ready" 200 "$(status "$base/health/ready")"
check "metrics" 200 "$(status "$base/health/metrics")"
check "metrics are Prometheus text" "# TYPE cache_items gauge" "$(grep '^# TYPE cache_items ' "$work/body")"

kill -TERM "$server_pid"
if wait "$server_pid"; then check "clean stop on SIGTERM" 0 0; else check "clean stop on SIGTERM" 0 $?; fi
server_pid=
exit "$failed"
