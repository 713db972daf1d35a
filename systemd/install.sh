#!/usr/bin/env bash
# Installs dnd-cache on this host (or into a staging root): the server
# binary, the systemd unit, the system user, an example config (only if none
# exists), the tuning scripts and the operator guide. Safe to run again: an
# unchanged file is left alone, the config is never overwritten.
#
#   systemd/install.sh [--dry-run] [--bin PATH] [--root DIR]
#
#   --bin PATH  server binary (default: target/release/cache-server)
#   --root DIR  install below DIR instead of / (packaging, tests); no
#               systemctl calls then
#   --dry-run   print each step, change nothing
#
# It does not enable or start the service: edit the config first, then
# `systemctl enable --now cache-server` (docs/operations.md).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() { sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 2; }

dry=0 root="" bin=$repo/target/release/cache-server
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1; shift ;;
    --bin) bin=${2:?--bin needs a path}; shift 2 ;;
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 >&2 ;;
  esac
done
if [ -n "$root" ]; then root=$(cd "$root" && pwd) || die "no such directory: $root"; fi
if ((!dry)) && ((EUID != 0)); then die "run as root (or with --dry-run)"; fi
if [ ! -x "$bin" ]; then
  ((dry)) || die "no server binary at $bin: run 'cargo build --release' or pass --bin"
  echo "# warning: no server binary at $bin yet" >&2
fi

changed=0
run() {
  echo "$*"
  ((dry)) || "$@"
}
# place MODE SRC DST: install SRC as DST (root-owned) unless identical.
place() {
  local mode=$1 src=$2 dst=$root$3
  if [ -e "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "${mode#0}" ]; then
    echo "# unchanged: $dst"
    return
  fi
  changed=1
  run install -D -m "$mode" -o root -g root "$src" "$dst"
}

place 0755 "$bin" /usr/local/bin/cache-server
place 0644 "$repo/systemd/cache-server.service" /usr/local/lib/systemd/system/cache-server.service
place 0644 "$repo/systemd/dnd-cache.sysusers.conf" /usr/lib/sysusers.d/dnd-cache.conf
for f in check apply lib.sh; do
  mode=0755; [ "$f" = lib.sh ] && mode=0644
  place "$mode" "$repo/tuning/$f" "/usr/local/lib/dnd-cache/tuning/$f"
done
place 0644 "$repo/tuning/README.md" /usr/local/share/doc/dnd-cache/tuning.md
place 0644 "$repo/docs/operations.md" /usr/local/share/doc/dnd-cache/operations.md

# The system user, from the sysusers entry just installed.
if grep -q '^dnd-cache:' "$root/etc/passwd" 2>/dev/null; then
  echo "# unchanged: user dnd-cache exists"
elif command -v systemd-sysusers >/dev/null; then
  changed=1
  # The file argument is a host path even with --root.
  run systemd-sysusers ${root:+--root="$root"} "$root/usr/lib/sysusers.d/dnd-cache.conf"
else
  changed=1
  run useradd ${root:+--root "$root"} --system --user-group --no-create-home \
    --home-dir / --shell /usr/sbin/nologin --comment "dnd-cache cache server" dnd-cache
fi

# The config: only when there is none. Group-readable by the service user
# because it may hold secrets (JWT keys, the value encryption key).
conf=$root/etc/dnd-cache/config.yaml
if [ -e "$conf" ]; then
  echo "# unchanged: $conf exists (compare with systemd/config.example.yaml after upgrades)"
else
  changed=1
  gid=$(awk -F: '$1 == "dnd-cache" { print $3 }' "$root/etc/group" 2>/dev/null || true)
  run install -d -m 0755 -o root -g root "$root/etc/dnd-cache"
  run install -m 0640 -o root -g "${gid:-dnd-cache}" "$repo/systemd/config.example.yaml" "$conf"
fi

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  if ((changed)); then run systemctl daemon-reload; fi
  if systemctl is-active --quiet cache-server 2>/dev/null && ((changed)); then
    echo "# cache-server is running the old version: 'systemctl restart cache-server' (its cache starts empty)"
  fi
elif [ -z "$root" ]; then
  echo "# systemd is not running here: files installed, no daemon-reload"
fi
echo "# next: edit $conf, run /usr/local/lib/dnd-cache/tuning/check, then: systemctl enable --now cache-server"
