#!/usr/bin/env bash
# The all-reduce's cost per update, measured with `gandist bench` (docs/distributed.md, "The cost
# model against a measurement"): 1 node x 2 ranks (shared memory), 2 nodes x 1 rank over the
# test nodes' veth links (TCP), and the same with both links shaped to 10 Gb/s by tc tbf. The
# nodes are those of the system tests (tests/system/lib/nodes.sh: network namespaces on a bridge,
# 10.78.4.0/24), so it needs root. The configurations run in turns, ROUNDS times, so that a
# change in the machine's load touches all of them alike. Beside gandist's own figure, whose
# all-reduce time includes waiting for the slower rank, each configuration also times the bare
# MPI_Allreduce of the same 4.47 MB after a barrier (docs/scripts/allreduce-wire.c, built with
# mpicc), and before the runs a TCP stream between the nodes measures each link's throughput.
#   docs/scripts/allreduce-nodes.sh [ROUNDS]          (default 2)
# Environment: GANDIST (binary, default target/release/gandist), BATCH (64), ITERS (4), WARMUP (1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
. tests/system/lib/nodes.sh
rounds="${1:-2}"
GANDIST="$(realpath "${GANDIST:-target/release/gandist}")"
BATCH="${BATCH:-64}" ITERS="${ITERS:-4}" WARMUP="${WARMUP:-1}"
bench=("$GANDIST" bench --batch "$BATCH" --iters "$ITERS" --warmup "$WARMUP" --set train.threads=1)

nodes_up gdb 10.78.4 2
ip1="$(node_ip gdb1)" ip2="$(node_ip gdb2)"
wire="$NODES_DIR/allreduce-wire"
mpicc -O2 -o "$wire" docs/scripts/allreduce-wire.c
# gandist bench's mean all-reduce: 5 critic updates of 4.12 MB and 1 generator update of 6.22 MB.
wire_floats=1117500

shape() {
  local n
  for n in gdb1 gdb2; do
    if [ "$1" = on ]; then
      ip netns exec "$n" tc qdisc replace dev eth0 root tbf rate 10gbit burst 256kb latency 10ms
    else
      ip netns exec "$n" tc qdisc del dev eth0 root 2>/dev/null || true
    fi
  done
}

# Gb/s of one TCP stream of 512 MB from gdb1 to gdb2.
stream() {
  node_exec gdb2 python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5201)); s.listen(1); c, _ = s.accept()
while c.recv(1 << 20): pass' &
  local sink=$!
  sleep 0.5
  node_exec gdb1 python3 -c '
import socket, sys, time
buf = b"\0" * (1 << 20); n = 512
s = socket.create_connection((sys.argv[1], 5201)); t = time.perf_counter()
for _ in range(n): s.sendall(buf)
s.shutdown(socket.SHUT_WR); s.recv(1); dt = time.perf_counter() - t
print(f"{n * len(buf) * 8 / dt / 1e9:.2f} Gb/s")' "$ip2"
  wait "$sink"
}

echo "gandist: $("$GANDIST" --version); $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%MZ)"
shape off; echo "link gdb1 -> gdb2, unshaped: $(stream)"
shape on;  echo "link gdb1 -> gdb2, tbf 10gbit: $(stream)"; shape off

# One configuration: gandist bench, then the bare all-reduce, under the mpirun command given.
run() {
  local name="$1"; shift
  echo "=== $name"
  "$@" "${bench[@]}" 2>&1 | grep -E '^(time|all-reduce)'
  "$@" "$wire" "$wire_floats" 50 2>&1 | grep '^allreduce-wire'
}
one_node=(node_exec gdb1 mpirun -n 2 --bind-to none)
# shellcheck disable=SC2207
two_nodes=(node_exec gdb0 mpirun --host "$ip1:1,$ip2:1" -n 2 --bind-to none $(nodes_mpirun_args))
for r in $(seq "$rounds"); do
  echo "##### round $r, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  run "1 node x 2 ranks (shared memory)" "${one_node[@]}"
  run "2 nodes x 1 rank (TCP over veth)" "${two_nodes[@]}"
  shape on
  run "2 nodes x 1 rank (TCP, links shaped to 10 Gb/s)" "${two_nodes[@]}"
  shape off
done
