#!/usr/bin/env bash
# Client libraries (issue 9): the Python package (pytest) and the Go module
# (go test), each against a real cache-server on ephemeral ports, plus the
# cross-language test (Python, Go and Rust read each other's values).
#
# Expects DND_CACHE_SERVER_BIN (set by tests/run-all.sh); builds the server
# when run alone without it.
# needs: golang-go go
# needs: nats-server nats-server
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${DND_CACHE_SERVER_BIN:-}" ]; then
  cargo build --release --bin cache-server
  export DND_CACHE_SERVER_BIN="$PWD/target/release/cache-server"
fi
# The cluster tests of both clients need a real nats-server (-js).
export DND_CACHE_REQUIRE_SERVER=1 DND_INTEROP_REQUIRED=1 DND_REQUIRE_NATS=1

echo "-- python client"
venv="${TMPDIR:-/tmp}/dnd-cache-clients-venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e "clients/python[test]"
(cd clients/python && PATH="$venv/bin:$PATH" python -m pytest -q)

echo "-- go client"
(
  cd clients/go
  unformatted=$(gofmt -l .)
  if [ -n "$unformatted" ]; then
    echo "gofmt needed: $unformatted" >&2
    exit 1
  fi
  go vet ./...
  go test -count=1 ./...
)
