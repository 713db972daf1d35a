# Shared helpers of tuning/check and tuning/apply (sourced, not run).
#
# Every host path goes through "$R", empty on a real host; the test suite
# points DND_TUNING_ROOT (or --root) at a fake /proc + /sys tree so that the
# IRQ, RPS and NUMA logic is exercised on machines without such hardware.
# shellcheck shell=bash

# shellcheck disable=SC2034  # used by the scripts that source this file
R=${DND_TUNING_ROOT:-}

die() { echo "error: $*" >&2; exit 2; }

# read_first FILE: first line of FILE, or nothing (status 1) if unreadable.
read_first() {
  local line
  [ -r "$1" ] || return 1
  IFS= read -r line <"$1" 2>/dev/null || [ -n "${line:-}" ] || return 1
  printf '%s\n' "$line"
}

# cpulist_expand "0-3,8" -> "0 1 2 3 8" (sorted, unique). Dies on bad input.
cpulist_expand() {
  local list=${1// /} part i a b
  local -a parts out=()
  [ -n "$list" ] || return 0
  IFS=, read -ra parts <<<"$list"
  for part in "${parts[@]}"; do
    [ -n "$part" ] || continue
    if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
      a=$((10#${BASH_REMATCH[1]})); b=$((10#${BASH_REMATCH[2]}))
      ((a <= b)) || die "bad CPU range '$part'"
      for ((i = a; i <= b; i++)); do out+=("$i"); done
    elif [[ $part =~ ^[0-9]+$ ]]; then
      out+=("$((10#$part))")
    else
      die "bad CPU list '$1' (want e.g. 0-3,8)"
    fi
  done
  printf '%s\n' "${out[@]}" | sort -n -u | paste -sd' ' -
}

# cpulist_compress "0 1 2 3 8" -> "0-3,8"
cpulist_compress() {
  local res="" start="" prev="" c
  for c in $1; do
    if [ -z "$start" ]; then start=$c; prev=$c; continue; fi
    if ((c == prev + 1)); then prev=$c; continue; fi
    res+="${res:+,}$start"; ((prev > start)) && res+="-$prev"
    start=$c; prev=$c
  done
  if [ -n "$start" ]; then res+="${res:+,}$start"; ((prev > start)) && res+="-$prev"; fi
  printf '%s\n' "$res"
}

# cpus_to_mask "0 1 33" -> "00000002,00000003" (the /proc and /sys mask format)
cpus_to_mask() {
  local c max=0 nwords w res=""
  local -a words
  for c in $1; do ((c > max)) && max=$c; done
  nwords=$((max / 32 + 1))
  for ((w = 0; w < nwords; w++)); do words[w]=0; done
  for c in $1; do words[c / 32]=$((words[c / 32] | (1 << (c % 32)))); done
  for ((w = nwords - 1; w >= 0; w--)); do
    res+="${res:+,}$(printf '%08x' "${words[w]}")"
  done
  printf '%s\n' "$res"
}

# mask_to_cpus "00000002,00000003" -> "0 1 33"
mask_to_cpus() {
  local hex=${1//,/} i d bit n out=()
  hex=${hex#0x}
  n=${#hex}
  for ((i = 0; i < n; i++)); do
    d=$((16#${hex:n-1-i:1}))
    for ((bit = 0; bit < 4; bit++)); do
      ((d & (1 << bit))) && out+=("$((i * 4 + bit))")
    done
  done
  printf '%s\n' "${out[*]}"
}

# cpus_minus A B: CPUs of A not in B.  cpus_and A B: CPUs in both.
cpus_minus() { comm -23 <(cpus_lines "$1") <(cpus_lines "$2") | sort -n | paste -sd' ' -; }
cpus_and() { comm -12 <(cpus_lines "$1") <(cpus_lines "$2") | sort -n | paste -sd' ' -; }
cpus_lines() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -u; }
cpus_count() { local -a a; read -ra a <<<"$1"; echo "${#a[@]}"; }
# first_cpu "3 4 5" -> 3
first_cpu() { local -a a; read -ra a <<<"$1"; echo "${a[0]:-}"; }

# online_cpus -> "0 1 2 ..."
online_cpus() {
  local online
  if online=$(read_first "$R/sys/devices/system/cpu/online"); then
    cpulist_expand "$online"
  else
    seq 0 $(($(getconf _NPROCESSORS_ONLN) - 1)) | paste -sd' ' -
  fi
}

# core_of CPU -> lowest CPU id among its hyperthread siblings
core_of() {
  local sib
  if sib=$(read_first "$R/sys/devices/system/cpu/cpu$1/topology/thread_siblings_list"); then
    first_cpu "$(cpulist_expand "$sib")"
  else
    echo "$1"
  fi
}

# siblings_of CPU -> all hyperthreads of CPU's core
siblings_of() {
  local sib
  if sib=$(read_first "$R/sys/devices/system/cpu/cpu$1/topology/thread_siblings_list"); then
    cpulist_expand "$sib"
  else
    echo "$1"
  fi
}

# numa_nodes -> "0 1"; node_cpus N -> CPUs of node N
numa_nodes() {
  local d out=()
  for d in "$R"/sys/devices/system/node/node[0-9]*; do
    [ -d "$d" ] && out+=("${d##*node}")
  done
  [ ${#out[@]} -gt 0 ] || out=(0)
  printf '%s\n' "${out[@]}" | sort -n | paste -sd' ' -
}
node_cpus() {
  local l
  if l=$(read_first "$R/sys/devices/system/node/node$1/cpulist"); then cpulist_expand "$l"; else online_cpus; fi
}

# plan_layout: the suggested layout for this host, following perftune.py's
# auto-detection (<=4 threads: mq; <=4 cores: one IRQ thread; <=16 cores: one
# IRQ core; more: one IRQ core per 16 cores spread evenly over NUMA nodes),
# plus a hub CPU next to the IRQ CPUs. Sets PLAN_MODE, PLAN_IRQ, PLAN_HUB,
# PLAN_SHARDS.
plan_layout() {
  local cpus threads cores_list ncores c n per_node node k want got
  cpus=$(online_cpus)
  threads=$(cpus_count "$cpus")
  cores_list=$(for c in $cpus; do core_of "$c"; done | sort -n -u | paste -sd' ' -)
  ncores=$(cpus_count "$cores_list")
  if ((threads <= 4)); then
    PLAN_MODE=mq; PLAN_IRQ=$cpus; PLAN_SHARDS=$cpus
    PLAN_HUB=$(first_cpu "$cpus")  # shares a shard CPU
    return
  fi
  local -a core
  read -ra core <<<"$cores_list"
  if ((ncores <= 4)); then
    PLAN_MODE=sq; PLAN_IRQ=${core[0]}
    # The hub takes the IRQ CPU's hyperthread sibling when there is one.
    PLAN_HUB=$(first_cpu "$(cpus_minus "$(siblings_of "${core[0]}")" "${core[0]}")")
    [ -n "$PLAN_HUB" ] || PLAN_HUB=${core[1]}
  elif ((ncores <= 16)); then
    PLAN_MODE=sq_split; PLAN_IRQ=$(siblings_of "${core[0]}"); PLAN_HUB=${core[1]}
  else
    PLAN_MODE=sq_split
    n=$(cpus_count "$(numa_nodes)")
    want=$(((ncores + 15) / 16)); per_node=$(((want + n - 1) / n))
    PLAN_IRQ=""
    for node in $(numa_nodes); do
      got=0
      for k in $(for c in $(node_cpus "$node"); do core_of "$c"; done | sort -n -u); do
        ((got < per_node)) || break
        PLAN_IRQ+=" $(siblings_of "$k")"; got=$((got + 1))
      done
    done
    PLAN_IRQ=$(cpulist_expand "$(tr ' ' ',' <<<"${PLAN_IRQ# }")")
    PLAN_HUB=$(first_cpu "$(cpus_minus "$cpus" "$PLAN_IRQ")")
  fi
  PLAN_SHARDS=$(cpus_minus "$(cpus_minus "$cpus" "$PLAN_IRQ")" "$PLAN_HUB")
}

# nics -> physical network interfaces (those with a device), not lo/veth/ifb.
nics() {
  local d
  for d in "$R"/sys/class/net/*; do
    [ -e "$d/device" ] || continue
    printf '%s\n' "${d##*/}"
  done
}

# irq_names: "IRQ NAME" per line from /proc/interrupts (numbered IRQs only).
irq_names() {
  [ -r "$R/proc/interrupts" ] || return 0
  awk '$1 ~ /^[0-9]+:$/ { sub(":", "", $1); print $1, $NF }' "$R/proc/interrupts"
}

# nic_queue_irqs IF -> IRQ numbers of IF's data queues (control IRQs such as
# mlx5 "async" or virtio "config" are left out), like perftune's discovery:
# the PCI device's msi_irqs (virtio: its parent's), else /proc/interrupts
# names that start with the interface name.
nic_queue_irqs() {
  local ifc=$1 dir="" d irq name virt=""
  for d in "$R/sys/class/net/$ifc/device" "$R/sys/class/net/$ifc/device/.."; do
    [ -d "$d/msi_irqs" ] && { dir="$d/msi_irqs"; break; }
  done
  if [ -L "$R/sys/class/net/$ifc/device" ]; then
    virt=$(basename "$(readlink "$R/sys/class/net/$ifc/device")")
    [[ $virt == virtio* ]] || virt=""
  fi
  irq_names | while read -r irq name; do
    if [ -n "$dir" ]; then
      [ -e "$dir/$irq" ] || continue
    elif ! [[ $name == "$ifc"[-_@]* || ( -n $virt && $name == "$virt"-* ) ]]; then
      continue
    fi
    [[ ${name,,} =~ (config|async|cmd|ctrl|admin|misc|lsc|err) ]] && continue
    echo "$irq"
  done
}

# irq_affinity IRQ -> CPUs the IRQ may run on
irq_affinity() {
  local l
  l=$(read_first "$R/proc/irq/$1/smp_affinity_list") || return 1
  cpulist_expand "$l"
}

# thp_selected "always [madvise] never" -> madvise (a bare word passes through)
thp_selected() {
  if [[ $1 =~ \[([^]]*)\] ]]; then echo "${BASH_REMATCH[1]}"; else echo "$1"; fi
}

# irqbalance_running: true if irqbalance runs (fixtures: a marker file).
irqbalance_running() {
  if [ -n "$R" ]; then [ -e "$R/run/irqbalance.running" ]; else pgrep -x irqbalance >/dev/null 2>&1; fi
}
