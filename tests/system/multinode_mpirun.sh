#!/usr/bin/env bash
# gandist across nodes under Open MPI: two nodes (network and UTS namespaces on a bridge, see
# lib/nodes.sh) with two ranks each, mpirun on a third (the head node), Open MPI's daemons
# started through an ssh stand-in, TCP between the ranks. Checks that
#   - the 2 x 2 run ends with the parameters of a 1-process run (within 1e-5 of each tensor's
#     scale: float32 summation order; measured about 1e-6);
#   - each rank reports its node and local rank: the targets file lists ranks 0-1 under the
#     first node's host name and 2-3 under the second's, each on port_base + its local rank;
#   - every rank's metrics answer on its node's address, labelled with that rank;
#   - killing every process of one node ends the job within 60 s, leaves no rank running on the
#     other node, and the newest checkpoint loads.
# Takes about 25 s on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
. tests/system/lib/nodes.sh
. tests/system/lib/checkpoints.sh
BIN="${GANDIST_BIN:-$PWD/target/debug/gandist}"
DATA="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
[ -x "$BIN" ] || cargo build --bin gandist
PORT_BASE=19400

say() { echo "--- $*"; }
fail() {
  echo "FAIL: $*" >&2
  for f in "$NODES_DIR"/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -30 "$f" >&2; }; done
  exit 1
}

nodes_up gdm 10.78.1 2
work="$NODES_DIR"
ip1="$(node_ip gdm1)" ip2="$(node_ip gdm2)"
# shellcheck disable=SC2207
mpirun_nodes=(mpirun --host "$ip1:2,$ip2:2" -n 4 $(nodes_mpirun_args))
train=("$BIN" train --config configs/smoke.toml --data "$DATA")

say "2 nodes x 2 ranks against 1 process, 10 iterations"
node_exec gdm0 "${mpirun_nodes[@]}" "${train[@]}" --run-dir "$work/nodes" \
  --set train.iterations=10 --set train.checkpoint_every=10 >"$work/nodes.log" 2>&1 \
  || fail "the 2 x 2 run failed"
grep -q '"world_size":4' "$work/nodes/metrics.jsonl" || fail "the 2 x 2 run did not have 4 ranks"
"${train[@]}" --run-dir "$work/one" --set train.iterations=10 --set train.checkpoint_every=10 >"$work/one.log" 2>&1 \
  || fail "the 1-process run failed"
python3 tests/system/lib/params_diff.py "$work/one/checkpoints/step-000000010" "$work/nodes/checkpoints/step-000000010" --tol 1e-5 \
  || fail "2 x 2 ranks on two nodes differ from 1 process"

say "a long 2 x 2 run with metrics on every node's address"
node_exec gdm0 "${mpirun_nodes[@]}" "${train[@]}" --run-dir "$work/long" \
  --set train.iterations=100000 --set train.checkpoint_every=2 \
  --set metrics.enabled=true --set metrics.host=0.0.0.0 --set metrics.port_base=$PORT_BASE \
  >"$work/long.log" 2>&1 &
job=$!
nodes_track_pid $job
targets="$work/long/prometheus-targets.json"
for _ in $(seq 600); do
  [ -s "$targets" ] && [ "$(jq length "$targets" 2>/dev/null)" = 4 ] && break
  running $job || fail "the long run ended early"
  sleep 0.1
done
[ "$(jq length "$targets" 2>/dev/null)" = 4 ] || fail "no targets file with 4 ranks at $targets"
jq -c '.[]' "$targets"
for rank in 0 1 2 3; do
  target="$(jq -r --arg r $rank '.[] | select(.labels.rank == $r) | .targets[0]' "$targets")"
  host="${target%:*}" port="${target##*:}"
  want_host=gdm$((rank / 2 + 1)) want_local=$((rank % 2))
  [ "$host" = "$want_host" ] || fail "rank $rank reports node '$host', expected $want_host (ranks 0-1 on gdm1, 2-3 on gdm2)"
  [ "$((port - PORT_BASE))" = "$want_local" ] || fail "rank $rank serves on port $port: local rank $((port - PORT_BASE)), expected $want_local"
  addr="$(node_ip "$host")"
  body="$(curl -sf --max-time 5 "http://$addr:$port/metrics")" || fail "rank $rank's metrics do not answer at $addr:$port"
  grep -q "^gandist_world_size{rank=\"$rank\"} 4$" <<<"$body" \
    || fail "$addr:$port does not serve rank $rank of 4: $(grep '^gandist_world_size' <<<"$body")"
  echo "rank $rank: node $host, local rank $want_local, metrics at $addr:$port"
done

say "kill every process of node gdm2"
step=0
for _ in $(seq 1200); do
  c="$(newest_checkpoint "$work/long")"
  step="$(checkpoint_step "${c:-none}")"
  [ "${step:-0}" -ge 4 ] && break
  running $job || fail "the long run ended early"
  sleep 0.1
done
[ "${step:-0}" -ge 4 ] || fail "the long run wrote no checkpoint at step 4 or later"
killed_at=$SECONDS
node_kill_processes gdm2 || fail "gdm2's processes survived SIGKILL"
for _ in $(seq 600); do running $job || break; sleep 0.1; done
running $job && fail "the job still runs 60 s after node gdm2 died"
took=$((SECONDS - killed_at))
rc=0; wait $job || rc=$?
[ "$rc" != 0 ] || fail "mpirun exited 0 although a node died"
echo "the job ended $took s after the node died (mpirun exit $rc): $(grep -m1 -E 'lost communication|exited on signal' "$work/long.log" || true)"
# The other node's ranks, killed by their daemon, may take a moment to be gone.
left=""
for _ in $(seq 100); do left="$(ip netns pids gdm1)"; [ -z "$left" ] && break; sleep 0.1; done
[ -z "$left" ] || fail "processes still running on gdm1 10 s after the job ended: $(ps -o pid,args -p "${left//$'\n'/,}")"
newest="$(newest_checkpoint "$work/long")"
"$BIN" sample --checkpoint "$newest" --n 4 --out "$work/after.png" >"$work/sample.log" 2>&1 \
  || fail "the newest checkpoint $newest does not load: $(cat "$work/sample.log")"
grep -q '"world_size": 4' "$newest/meta.json" || fail "$newest was not written by the 4-rank run"
echo "newest checkpoint $(basename "$newest") loads"
echo "multinode mpirun system test: ok"
