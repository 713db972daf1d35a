#!/usr/bin/env bash
# Architecture rules (issue 15, docs/architecture.md), checked on every run:
# - no import cycle between the top-level modules of src/;
# - no source file over 600 lines;
# - the Rust client crate builds without the server's dependencies.
# The `unsafe` rule (every block has a SAFETY comment) is a clippy lint
# (workspace lints in Cargo.toml), enforced by .ci/run's clippy -D warnings.
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "-- module cycles"
python3 tests/tools/module_cycles.py src

echo "-- file sizes"
long=$(find src proto/src clients/rust/src -name '*.rs' -print0 | xargs -0 wc -l | awk '$2 != "total" && $1 > 600 {print}')
if [ -n "$long" ]; then
  echo "files over 600 lines (split them by concept):" >&2
  echo "$long" >&2
  exit 1
fi

echo "-- client crate without the server"
deps=$(cargo tree -p dnd-cache-client -e normal --prefix none --offline 2>/dev/null || cargo tree -p dnd-cache-client -e normal --prefix none)
for server_only in glommio io-uring async-nats rustls futures-rustls jsonwebtoken hdrhistogram; do
  if echo "$deps" | grep -q "^$server_only "; then
    echo "dnd-cache-client depends on $server_only" >&2
    exit 1
  fi
done
echo "dnd-cache-client: $(echo "$deps" | awk '{print $1}' | sort -u | wc -l) crates, none of the server's"
