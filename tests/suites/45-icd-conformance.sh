#!/usr/bin/env bash
# ICD conformance (issue 19): tests/icd_conformance walks the Cache Service
# ICD section by section (one test per section and example, named after it)
# against the real cache-server on ephemeral loopback ports, a real
# `nats-server -js`, the Python client and the Go client (the ICD 5.1 and
# 5.2 examples run as written).
#
# Expects DND_CACHE_SERVER_BIN (set by tests/run-all.sh); builds the server
# when run alone without it. Extra arguments go to pytest (`-k s3_2`).
# needs: nats-server nats-server
# needs: golang-go go
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${DND_CACHE_SERVER_BIN:-}" ]; then
  cargo build --release --bin cache-server
  export DND_CACHE_SERVER_BIN="$PWD/target/release/cache-server"
fi
export DND_CACHE_SERVER_BIN

venv="${TMPDIR:-/tmp}/dnd-cache-icd-venv"
python=python3
[ -x /usr/bin/python3 ] && python=/usr/bin/python3
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/icd_conformance/requirements.txt -e clients/python
(cd tests/icd_conformance && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@")
