#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 60), one
# after the other, and prints a table: target, seconds, executions,
# coverage, crashes. Exits 1 if any target found a crash (its input is in
# fuzz/artifacts/TARGET/: copy it into tests/corpus/ once fixed).
#
#   fuzz/run.sh [SECONDS]
#
# Needs the nightly toolchain (rustup toolchain install nightly); installs
# cargo-fuzz when it is missing. Each target's corpus (fuzz/corpus/TARGET,
# kept between runs, not in git) is seeded from its tests/corpus/ directory.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: fuzz/run.sh [SECONDS]" >&2
  exit 2
fi
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz/run.sh: the nightly toolchain is not installed (rustup toolchain install nightly)" >&2
  exit 3
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# tests/corpus/ directory that seeds each target.
declare -A seeds=(
  [binary_frames]=binary
  [http_requests]=http
  [jwt]=jwt
  [value_codec]=value_codec
  [hub_message]=hub
  [config_file]=config
)

targets=$(cargo +nightly fuzz list)
echo "== building: $(echo $targets)"
cargo +nightly fuzz build

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
summary=()
for target in $targets; do
  corpus="corpus/$target"
  mkdir -p "$corpus" "artifacts/$target"
  seed_dir="../tests/corpus/${seeds[$target]:-$target}"
  if [ -d "$seed_dir" ]; then
    cp -n "$seed_dir"/* "$corpus"/ 2>/dev/null || true
  else
    echo "   (no seeds for $target: $seed_dir is missing)"
  fi
  find "artifacts/$target" -type f | sort >"$logs/$target.before"
  echo "== $target: ${seconds}s, corpus $(find "$corpus" -type f | wc -l) inputs"
  log="$logs/$target.log"
  # -timeout: an input running over 10 s is reported (as a timeout artifact);
  # the outer timeout bounds a fuzzer that does not stop by itself.
  rc=0
  timeout $((seconds + 120)) cargo +nightly fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || rc=$?
  find "artifacts/$target" -type f | sort | comm -13 "$logs/$target.before" - >"$logs/$target.new"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s+=$1} END {print s+0}')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  crashes=$(wc -l <"$logs/$target.new")
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    failed=1
    tail -40 "$log"
    echo "!! $target: exit $rc, new artifacts:"
    sed 's|^|   fuzz/|' "$logs/$target.new"
  fi
  summary+=("$(printf '%-14s %6ss %12s %8s %8s' "$target" "$seconds" "${execs:-?}" "${cov:-?}" "$crashes")")
done

printf '\n%-14s %7s %12s %8s %8s\n' target time executions coverage crashes
printf '%s\n' "${summary[@]}"
exit "$failed"
