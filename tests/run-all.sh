#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (unit, property and
# integration tests, benches compiled in test mode), then each suite script in
# tests/suites/ (client libraries, deployment checks, ...) in name order.
#
# Installs what the tests need when it is missing, so it works on a clean
# Debian machine: `bash tests/run-all.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
for suite in tests/suites/*.sh; do
  [ -e "$suite" ] || continue
  # A suite names the Debian packages it needs on a line "# needs: pkg cmd".
  while read -r pkg cmd; do
    have "$cmd" || need_apt+=("$pkg")
  done < <(sed -n 's/^# needs: \([^ ]*\) \([^ ]*\)$/\1 \2/p' "$suite")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "== cargo test (workspace)"
# One release build of the server serves the integration tests and suites.
cargo build --release --workspace --bins
export DND_CACHE_SERVER_BIN="$PWD/target/release/cache-server"
export DND_LOADGEN_BIN="$PWD/target/release/loadgen"
# nats-server is installed above (tests/suites/25-nats.sh needs it): the
# NATS and cluster tests must run here, not skip; the suite then need not
# run them a second time.
export DND_REQUIRE_NATS=1
cargo test --workspace --all-targets
export DND_NATS_TESTS_RAN=1

for suite in tests/suites/*.sh; do
  [ -e "$suite" ] || continue
  echo "== suite $suite"
  bash "$suite"
done
echo "== all tests passed"
