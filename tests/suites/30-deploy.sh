#!/usr/bin/env bash
# Deployment checks: the systemd unit (systemd-analyze verify against the
# built binary, security exposure, io_uring in the syscall filter), the
# installer, and the host tuning scripts on this host and on a fake 16-CPU
# host with a multi-queue NIC. Runs as root (CI), with or without systemd as
# PID 1: everything here works offline.
# needs: systemd systemd-analyze
# needs: procps pgrep
# needs: shellcheck shellcheck
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0 failed=0
pass() { echo "ok   - $1"; passed=$((passed + 1)); }
fail() { echo "FAIL - $1"; failed=$((failed + 1)); }
# expect NAME COMMAND...: the command must succeed; refute: it must fail
expect() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }
refute() { local name=$1; shift; if "$@"; then fail "$name"; else pass "$name"; fi; }
# has FILE REGEX / hasnt FILE REGEX
has() { grep -Eq -- "$2" "$1"; }
hasnt() { ! grep -Eq -- "$2" "$1"; }

unit=$repo/systemd/cache-server.service
bin=${DND_CACHE_SERVER_BIN:-$repo/target/release/cache-server}
echo "# PID 1 here: $(ps -o comm= -p 1 2>/dev/null || echo unknown); $(systemd-analyze --version | head -n1)"

# --- lint ---------------------------------------------------------------
expect "shellcheck: tuning/, systemd/install.sh, this suite" \
  shellcheck -x tuning/check tuning/apply tuning/lib.sh systemd/install.sh tests/suites/30-deploy.sh

# --- systemd-analyze verify -------------------------------------------------
# verify checks that ExecStart's binary exists, so verify a copy that points
# at the binary just built; every message about the unit counts as a failure.
verify_unit() {  # verify_unit FILE OUT: 0 only if verify passes and says nothing about it
  local rc=0
  (cd "$(dirname "$1")" && systemd-analyze verify "./$(basename "$1")") >"$2" 2>&1 || rc=$?
  ((rc == 0)) && ! grep -q 'cache-server' "$2"
}
mkdir -p "$work/unit" "$work/bad"
if [ -x "$bin" ]; then
  sed "s#^ExecStart=/usr/local/bin/cache-server #ExecStart=$bin #" "$unit" >"$work/unit/cache-server.service"
  expect "unit's ExecStart rewritten to the built binary" has "$work/unit/cache-server.service" "^ExecStart=$bin --config"
  if verify_unit "$work/unit/cache-server.service" "$work/verify.out"; then
    pass "systemd-analyze verify cache-server.service (ExecStart=$bin)"
  else
    fail "systemd-analyze verify cache-server.service:"; sed 's/^/    /' "$work/verify.out"
  fi
else
  fail "server binary $bin missing: build it first (cargo build --release)"
fi
# The verification can fail: a unit with a directive systemd 252 lacks and a
# missing binary must be caught.
sed -e 's/^Type=notify$/Type=notify-reload/' "$unit" >"$work/bad/cache-server.service"
refute "verify catches a directive value systemd 252 rejects (Type=notify-reload)" \
  verify_unit "$work/bad/cache-server.service" "$work/bad.out"
sed -e "s#^ExecStart=/usr/local/bin/cache-server #ExecStart=$work/no-such-binary #" "$unit" >"$work/bad/cache-server.service"
refute "verify catches a missing ExecStart binary" verify_unit "$work/bad/cache-server.service" "$work/bad.out"

# --- unit contents ------------------------------------------------------------
expect "ExecStart runs /usr/local/bin/cache-server --config /etc/dnd-cache/config.yaml" \
  has "$unit" '^ExecStart=/usr/local/bin/cache-server --config /etc/dnd-cache/config.yaml$'
# shellcheck disable=SC2016  # $MAINPID is literal unit text
for d in 'Type=notify' 'ExecReload=/bin/kill -HUP \$MAINPID' 'Restart=on-failure' 'LimitMEMLOCK=infinity' \
  'LimitNOFILE=1048576' 'User=dnd-cache' 'CapabilityBoundingSet=' 'AmbientCapabilities=' \
  'SystemCallFilter=@system-service' 'SystemCallArchitectures=native' 'ProtectSystem=strict' \
  'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' 'ConfigurationDirectory=dnd-cache' 'UMask=0077'; do
  expect "unit sets $d" has "$unit" "^$d\$"
done
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$unit")
expect "TimeoutStopSec ($stop s) covers the 10 s graceful shutdown with margin, at most 30 s" \
  test "${stop:-0}" -gt 10 -a "${stop:-0}" -le 30
if systemd-analyze security --offline=true --threshold=20 "$unit" >"$work/security.out" 2>&1; then
  pass "systemd-analyze security: $(grep -o 'Overall exposure level.*' "$work/security.out")"
else
  fail "systemd-analyze security exposure above 2.0:"; tail -n 3 "$work/security.out" | sed 's/^/    /'
fi

# The unit's filter must allow what glommio and the server call. Groups nest
# (@system-service -> @aio -> io_uring_*), so expand them recursively, then
# take the allow lines minus the deny (~) lines, as systemd does.
expand() {
  local g
  systemd-analyze syscall-filter "$1" 2>/dev/null | sed -n '2,$p' | sed 's/^ *//; /^#/d; /^$/d' | while read -r g; do
    if [[ $g == @* ]]; then expand "$g"; else echo "$g"; fi
  done
}
filter_set() {  # filter_set UNIT allow|deny
  local line item
  sed -n 's/^SystemCallFilter=//p' "$1" | while read -r line; do
    if [[ $line == "~"* ]]; then [ "$2" = deny ] || continue; line=${line#\~}
    else [ "$2" = allow ] || continue; fi
    for item in $line; do if [[ $item == @* ]]; then expand "$item"; else echo "$item"; fi; done
  done | sort -u
}
effective() { comm -23 <(filter_set "$1" allow) <(filter_set "$1" deny); }
effective "$unit" >"$work/syscalls"
expect "syscall filter expands to a real allow list ($(wc -l <"$work/syscalls") calls)" test "$(wc -l <"$work/syscalls")" -gt 200
for s in io_uring_setup io_uring_enter io_uring_register sched_setaffinity membarrier mlock mprotect \
  eventfd2 timerfd_create timerfd_settime epoll_wait accept4 getrandom clone3 madvise; do
  expect "unit's syscall filter allows $s" grep -qx "$s" "$work/syscalls"
done
# ... and the check catches Debian redis's ~@resources, which blocks pinning.
sed 's/^SystemCallFilter=~@privileged$/SystemCallFilter=~@privileged @resources/' "$unit" >"$work/bad/resources.service"
refute "a unit with ~@resources is caught (no sched_setaffinity)" grep -qx sched_setaffinity <(effective "$work/bad/resources.service")

# --- installer ------------------------------------------------------------------
if [ -x "$bin" ]; then
  root=$work/root; mkdir -p "$root/etc"
  systemd/install.sh --dry-run --root "$root" --bin "$bin" >"$work/i0.out"
  expect "install.sh --dry-run changes nothing" test -z "$(find "$root" -mindepth 2 -print -quit)"
  systemd/install.sh --root "$root" --bin "$bin" >"$work/i1.out"
  expect "install.sh installs the binary" cmp -s "$bin" "$root/usr/local/bin/cache-server"
  expect "install.sh installs the unit" cmp -s "$unit" "$root/usr/local/lib/systemd/system/cache-server.service"
  expect "install.sh creates the dnd-cache user" has "$root/etc/passwd" '^dnd-cache:x:[0-9]+:[0-9]+:.*:/usr/sbin/nologin$'
  gid=$(awk -F: '$1 == "dnd-cache" { print $3 }' "$root/etc/group")
  expect "config is 0640 root:dnd-cache" test "$(stat -c '%a %u %g' "$root/etc/dnd-cache/config.yaml")" = "640 0 $gid"
  echo "# edited" >>"$root/etc/dnd-cache/config.yaml"
  systemd/install.sh --root "$root" --bin "$bin" >"$work/i2.out"
  expect "install.sh is idempotent (second run changes nothing)" hasnt "$work/i2.out" '^(install|systemd-sysusers|useradd) '
  expect "install.sh keeps an existing config" has "$root/etc/dnd-cache/config.yaml" '^# edited$'
fi

# --- tuning/check and tuning/apply on this host ---------------------------------------
if tuning/check >"$work/check.out" 2>&1; then
  pass "tuning/check exits 0 on this host"
else
  fail "tuning/check exited $? on this host"
fi
sed 's/^/    /' "$work/check.out"
expect "tuning/check prints only OK/WARN/N/A lines with fixes" \
  eval "! sed -n '/^\$/,/^summary/p' '$work/check.out' | grep -Ev '^(OK    |WARN  |N/A   |      fix: |summary: |\$)'"
expect "tuning/check reports a summary" has "$work/check.out" '^summary: [0-9]+ OK, [0-9]+ WARN, [0-9]+ N/A$'
state() { cat /proc/sys/net/core/somaxconn /proc/sys/net/ipv4/tcp_max_syn_backlog /sys/kernel/mm/transparent_hugepage/enabled \
  /proc/irq/*/smp_affinity_list /etc/sysctl.d/60-dnd-cache.conf 2>/dev/null || true; }
before=$(state)
expect "tuning/apply --dry-run succeeds" tuning/apply --dry-run --irq-mode auto >"$work/apply.out"
sed 's/^/    /' "$work/apply.out"
expect "tuning/apply --dry-run changes nothing (sysctls, THP, IRQ affinity, sysctl.d file)" test "$before" = "$(state)"
# Without root it refuses (unless --dry-run). Run a copy that nobody can read.
mkdir -p "$work/t" && cp tuning/apply tuning/lib.sh "$work/t/" && chmod -R a+rX "$work"
rc=0; setpriv --reuid=65534 --regid=65534 --clear-groups "$work/t/apply" >/dev/null 2>"$work/nonroot.err" || rc=$?
expect "tuning/apply refuses to run without root (exit $rc)" test "$rc" -eq 2
expect "tuning/apply --dry-run works without root" \
  setpriv --reuid=65534 --regid=65534 --clear-groups "$work/t/apply" --dry-run >/dev/null

# --- a fake 16-thread host (8 cores x 2), one NUMA node, an 8-queue NIC --------------
fx=$work/fx
mk() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" >"$1"; }
mk "$fx/sys/devices/system/cpu/online" "0-15"
for c in $(seq 0 15); do
  mk "$fx/sys/devices/system/cpu/cpu$c/topology/thread_siblings_list" "$((c % 8)),$((c % 8 + 8))"
  mk "$fx/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor" "$([ "$c" -lt 8 ] && echo performance || echo powersave)"
done
mk "$fx/sys/devices/system/node/node0/cpulist" "0-15"
mk "$fx/sys/kernel/mm/transparent_hugepage/enabled" "[always] madvise never"
mk "$fx/sys/kernel/mm/transparent_hugepage/defrag" "always defer defer+madvise [madvise] never"
for kv in kernel/io_uring_disabled=0 kernel/osrelease=6.1.0-fake kernel/hostname=fake16 net/core/somaxconn=128 \
  net/ipv4/tcp_max_syn_backlog=512 vm/overcommit_memory=0 vm/swappiness=60 net/core/rps_sock_flow_entries=0; do
  mk "$fx/proc/sys/${kv%%=*}" "${kv#*=}"
done
mk "$fx/proc/meminfo" "SwapTotal:       0 kB"
{
  printf '            CPU0\n'
  printf ' 59:  5  IO-APIC  4-edge  ttyS0\n'
  printf ' 60:  1  PCI-MSIX-0000:3b:00.0  0-edge  mlx5_async0@pci:0000:3b:00.0\n'
  for q in $(seq 0 7); do printf ' %d:  9  PCI-MSIX-0000:3b:00.0  %d-edge  mlx5_comp%d@pci:0000:3b:00.0\n' $((61 + q)) $((q + 1)) "$q"; done
} >"$fx/proc/interrupts"
mkdir -p "$fx/sys/class/net/eth9/device/msi_irqs" "$fx/sys/class/net/lo"
mk "$fx/sys/class/net/eth9/device/numa_node" "0"
for irq in $(seq 60 68); do
  : >"$fx/sys/class/net/eth9/device/msi_irqs/$irq"
  mk "$fx/proc/irq/$irq/smp_affinity_list" "$(( (irq - 60) * 2 % 16 ))"
done
mk "$fx/proc/irq/59/smp_affinity_list" "0-15"
for q in $(seq 0 7); do
  mk "$fx/sys/class/net/eth9/queues/rx-$q/rps_cpus" "0000"
  mk "$fx/sys/class/net/eth9/queues/rx-$q/rps_flow_cnt" "0"
  mk "$fx/sys/class/net/eth9/queues/tx-$q/xps_cpus" "0000"
done
mk "$fx/run/irqbalance.running" ""
mk "$fx/etc/default/irqbalance" "#IRQBALANCE_ONESHOT="

tuning/check --root "$fx" >"$work/fx1.out"
sed 's/^/    /' "$work/fx1.out"
expect "fake host: suggests sq_split with IRQs on core 0 (0,8), hub 1, shards 2-7,9-15" \
  has "$work/fx1.out" '^suggested for this host \(sq_split\): shards 2-7,9-15, hub 1, NIC IRQs 0,8$'
for w in 'THP enabled = always' 'net.core.somaxconn = 128' 'net.ipv4.tcp_max_syn_backlog = 512' \
  'shard CPUs not on the performance governor \(8:powersave' 'eth9: queue IRQs on shard CPUs' \
  'eth9: 8 TX queues and no XPS map' 'irqbalance running and free to move'; do
  expect "fake host: WARN $w" has "$work/fx1.out" "^WARN  $w"
done
expect "fake host: the control IRQ (mlx5_async) is not counted as a queue" has "$work/fx1.out" 'eth9: queue IRQs on shard CPUs \(61->2 '
rc=0; tuning/check --root "$fx" --strict >/dev/null || rc=$?
expect "tuning/check --strict exits 1 when a WARN is printed (got $rc)" test "$rc" -eq 1

tuning/apply --root "$fx" --dry-run --irq-mode auto --irqbalance >"$work/fx-dry.out"
expect "fake host: apply --dry-run prints the IRQ change" has "$work/fx-dry.out" "^echo 0 > $fx/proc/irq/61/smp_affinity_list"
expect "fake host: apply --dry-run leaves IRQs alone" test "$(cat "$fx/proc/irq/61/smp_affinity_list")" = 2

tuning/apply --root "$fx" --irq-mode auto --irqbalance >"$work/fx-apply.out"
sed 's/^/    /' "$work/fx-apply.out"
aff=$(for irq in $(seq 61 68); do cat "$fx/proc/irq/$irq/smp_affinity_list"; done | paste -sd' ' -)
expect "fake host: queue IRQs alternate over core 0 ($aff)" test "$aff" = "0 8 0 8 0 8 0 8"
expect "fake host: control IRQ untouched" test "$(cat "$fx/proc/irq/60/smp_affinity_list")" = 0
expect "fake host: RPS over shards 2-7,9-15" test "$(cat "$fx/sys/class/net/eth9/queues/rx-3/rps_cpus")" = 0000fefc
expect "fake host: RFS flow count 32768/8" test "$(cat "$fx/sys/class/net/eth9/queues/rx-3/rps_flow_cnt")" = 4096
expect "fake host: XPS tx-0 = CPUs 2,11" test "$(cat "$fx/sys/class/net/eth9/queues/tx-0/xps_cpus")" = 00000804
expect "fake host: THP enabled = madvise" test "$(cat "$fx/sys/kernel/mm/transparent_hugepage/enabled")" = madvise
expect "fake host: somaxconn = 4096" test "$(cat "$fx/proc/sys/net/core/somaxconn")" = 4096
expect "fake host: sysctl.d file written" has "$fx/etc/sysctl.d/60-dnd-cache.conf" '^net.ipv4.tcp_max_syn_backlog = 4096$'
expect "fake host: irqbalance bans shard CPUs" has "$fx/etc/default/irqbalance" '^IRQBALANCE_BANNED_CPULIST=2-7,9-15$'
expect "fake host: irqbalance bans the pinned IRQs" has "$fx/etc/default/irqbalance" '^IRQBALANCE_ARGS="--banirq=61 .*--banirq=68"$'
expect "fake host: irqbalance file keeps its own lines" has "$fx/etc/default/irqbalance" '^#IRQBALANCE_ONESHOT=$'
tuning/apply --root "$fx" --irq-mode auto --irqbalance >"$work/fx-again.out"
expect "fake host: apply again changes nothing" hasnt "$work/fx-again.out" '^(echo|cat) '
expect "fake host: irqbalance block not duplicated" test "$(grep -c '^IRQBALANCE_BANNED_CPULIST' "$fx/etc/default/irqbalance")" = 1

# After apply (and the governor, which apply leaves to the operator) the
# planned layout passes --strict, with the unit installed in the fake root.
for c in $(seq 8 15); do echo performance >"$fx/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor"; done
mkdir -p "$fx/usr/local/lib/systemd/system" && cp "$unit" "$fx/usr/local/lib/systemd/system/"
rc=0; tuning/check --root "$fx" --strict --shard-cpus 2-7,9-15 --hub-cpu 1 --irq-cpus 0,8 >"$work/fx2.out" || rc=$?
sed 's/^/    /' "$work/fx2.out"
expect "fake host: tuned layout passes tuning/check --strict (exit $rc)" test "$rc" -eq 0
expect "fake host: unit's LimitMEMLOCK seen" has "$work/fx2.out" '^OK    memlock: unit .*LimitMEMLOCK=infinity'
sed 's/^LimitMEMLOCK=infinity$/LimitMEMLOCK=8M/' "$unit" >"$fx/usr/local/lib/systemd/system/cache-server.service"
mkdir -p "$fx/usr/local/lib/systemd/system/cache-server.service.d"
tuning/check --root "$fx" >"$work/fx-memlock.out"
expect "fake host: a unit with LimitMEMLOCK=8M is flagged" has "$work/fx-memlock.out" '^WARN  memlock: unit .*LimitMEMLOCK=8M'
printf '[Service]\nLimitMEMLOCK=infinity\n' >"$fx/usr/local/lib/systemd/system/cache-server.service.d/memlock.conf"
tuning/check --root "$fx" >"$work/fx-memlock.out"
expect "fake host: a drop-in's LimitMEMLOCK=infinity wins" has "$work/fx-memlock.out" '^OK    memlock: unit .*LimitMEMLOCK=infinity'
rc=0; tuning/check --root "$fx" --shard-cpus 0-7 --hub-cpu 3 --irq-cpus 0 >"$work/fx3.out" || rc=$?
expect "fake host: a plan with IRQs and hub on shard CPUs is flagged" \
  test "$rc" -eq 0 -a "$(grep -c '^WARN  \(hub CPU 3 is also a shard CPU\|eth9: queue IRQs on shard CPUs\)' "$work/fx3.out")" -eq 2

# Suggested layouts of the guide's table: THREADS CORES NODES -> mode, IRQ CPUs, hub, shards
# (siblings numbered N and N+cores, nodes split the cores in halves).
while read -r threads cores nodes want; do
  h=$work/h$threads-$cores; mk "$h/sys/devices/system/cpu/online" "0-$((threads - 1))"
  for ((c = 0; c < threads; c++)); do
    k=$((c % cores))
    if ((threads > cores)); then sib="$k,$((k + cores))"; else sib=$k; fi
    mk "$h/sys/devices/system/cpu/cpu$c/topology/thread_siblings_list" "$sib"
  done
  per=$((cores / nodes))
  for ((n = 0; n < nodes; n++)); do
    l="$((n * per))-$((n * per + per - 1))"; ((threads > cores)) && l+=",$((n * per + cores))-$((n * per + per - 1 + cores))"
    mk "$h/sys/devices/system/node/node$n/cpulist" "$l"
  done
  got=$(tuning/check --root "$h" | sed -n 's/^suggested for this host //p')
  expect "$threads threads / $cores cores / $nodes nodes: suggests $want" test "$got" = "$want"
done <<'END'
2 2 1 (mq): shards 0-1, hub 0, NIC IRQs 0-1
8 4 1 (sq): shards 1-3,5-7, hub 4, NIC IRQs 0
8 8 1 (sq_split): shards 2-7, hub 1, NIC IRQs 0
16 8 1 (sq_split): shards 2-7,9-15, hub 1, NIC IRQs 0,8
64 32 2 (sq_split): shards 2-15,17-31,33-47,49-63, hub 1, NIC IRQs 0,16,32,48
END

# A container-like host: no NIC, no cpufreq, no NUMA, no THP: all N/A, exit 0.
bare=$work/bare; mk "$bare/sys/devices/system/cpu/online" "0-3"; mk "$bare/proc/interrupts" "CPU0"
rc=0; tuning/check --root "$bare" >"$work/bare.out" 2>&1 || rc=$?
expect "bare host: tuning/check exits 0 (got $rc)" test "$rc" -eq 0
expect "bare host: NIC and cpufreq reported N/A" test "$(grep -c '^N/A   \(NIC interrupts\|CPU frequency\)' "$work/bare.out")" -eq 2

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
