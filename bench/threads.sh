#!/usr/bin/env bash
# libtorch threads per rank under Open MPI's binding: `gandist bench` as one plain process and
# under `mpirun -n 1` and `mpirun -n 2`, bound (Open MPI binds each rank to one core when it
# starts two or fewer) and not (--bind-to none), for two binaries in turn (the first alternating), several rounds, so that a
# shared machine's noise hits every variant alike. Prints images/s per run and the median per
# variant; "plain" runs the same thread count in both binaries, so its ratio shows the noise.
#
#   [DIM=64] bash bench/threads.sh OLD_BINARY NEW_BINARY [ROUNDS] [ITERS]
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY [ROUNDS] [ITERS]" >&2; exit 2; }
old="$1"; new="$2"; rounds="${3:-3}"; iters="${4:-5}"; dim="${DIM:-64}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/../launch/env.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# model.dim, the old name of critic.width and generator.width: binaries from before and after
# the [critic]/[generator] tables both read it (the newer ones with a warning).
args=(bench --batch 64 --iters "$iters" --warmup 1 --set "model.dim=$dim")
echo "model.dim $dim, batch 64, $iters iterations after 1 warm-up; machine: $(uname -m), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A all
variants=("plain" "mpirun -n 1" "mpirun -n 1 --bind-to none" "mpirun -n 2" "mpirun -n 2 --bind-to none")
for r in $(seq "$rounds"); do
  for v in "${variants[@]}"; do
    # Alternate which binary goes first, so that a drift in the machine's load favours neither.
    order="old new"; [ $((r % 2)) = 0 ] && order="new old"
    for which in $order; do
      bin="$old"; [ "$which" = new ] && bin="$new"
      case "$v" in
        plain) out="$("$bin" "${args[@]}" 2>&1)" ;;
        *) out="$($v "$bin" "${args[@]}" 2>&1)" ;;
      esac
      ips="$(echo "$out" | sed -n 's/.*, \([0-9.]*\) images\/s.*/\1/p' | head -1)"
      threads="$(echo "$out" | sed -n 's/.*threads per rank \([0-9]*\).*/\1/p' | head -1)"
      echo "round $r: $v, $which binary: $ips images/s (threads per rank: ${threads:-not reported})"
      all["$v/$which"]+="$ips "
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for v in "${variants[@]}"; do
  o="$(echo "${all[$v/old]}" | median)"; n="$(echo "${all[$v/new]}" | median)"
  echo "$v: old median $o images/s, new median $n images/s, new/old $(awk -v a="$n" -v b="$o" 'BEGIN {printf "%.2f", a/b}')"
done
