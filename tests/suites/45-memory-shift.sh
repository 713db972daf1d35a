#!/usr/bin/env bash
# Memory follows the value size (issue #16): perf/memory-shift --quick fills
# a 64MiB server with 100-byte values, switches to 1 KiB ... 300 KiB values
# and fails unless 95% of the last 500 written are held at once and RSS
# stays within max_memory plus the stated baseline. Counts, not timings.
set -euo pipefail
cd "$(dirname "$0")/../.."

export DND_CACHE_SERVER_BIN=${DND_CACHE_SERVER_BIN:-target/release/cache-server}
[ -x "$DND_CACHE_SERVER_BIN" ] || cargo build --release --bin cache-server
perf/memory-shift --quick --json target/memory-shift-ci.json
echo "45-memory-shift: 1 passed, 0 failed"
