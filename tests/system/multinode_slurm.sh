#!/usr/bin/env bash
# A real multi-node Slurm cluster on one machine (lib/nodes.sh, lib/slurm-nodes.sh): slurmctld
# and a real Prometheus on the head node, one slurmd per compute node with its own NodeName,
# NodeAddr, spool and log. With the project's launch/slurm/gandist.sbatch it checks that
#   - `sbatch --nodes=2 --ntasks-per-node=2` trains across both nodes and ends with the
#     parameters of a 1-process run (within 1e-5 of each tensor's scale);
#   - Prometheus, fed by the run's targets file, scrapes all 4 ranks with up == 1, each rank on
#     its own node's host name;
#   - a node that dies without a word (link cut, every process killed, slurmd included) ends the
#     job; Slurm records the node as down and the job as NODE_FAIL; Prometheus sees the dead
#     node's ranks go down; the newest checkpoint loads.
# Takes 60-90 s on 2 cores (half of it Slurm noticing the dead node: SlurmdTimeout=10).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
. tests/system/lib/nodes.sh
. tests/system/lib/checkpoints.sh
. tests/system/lib/slurm-nodes.sh
BIN="${GANDIST_BIN:-$PWD/target/debug/gandist}"
DATA="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
[ -x "$BIN" ] || cargo build --bin gandist
PORT_BASE=19400
PROM_PORT=9090

say() { echo "--- $*"; }
fail() {
  echo "FAIL: $*" >&2
  for f in "$NODES_DIR"/*.log "$NODES_DIR"/*.out; do [ -f "$f" ] && { echo "== $f" >&2; tail -30 "$f" >&2; }; done
  [ -n "$SLURM_DIR" ] && slurm_logs >&2
  exit 1
}

# The run directory a job wrote: RUN_DIR itself, or the one folder under it that holds
# checkpoints (should the batch script give each job a folder of its own).
job_run_dir() {
  local base="$1" found
  if [ -d "$base/checkpoints" ]; then echo "$base"; return; fi
  found="$(find "$base" -mindepth 2 -maxdepth 3 -type d -name checkpoints 2>/dev/null | head -1)"
  if [ -n "$found" ]; then dirname "$found"; fi
}

nodes_up gds 10.78.2 2
work="$NODES_DIR"
slurm_cluster_up
# Open MPI inside the job: TCP between the ranks, over the nodes' subnet only.
export OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include="$NODES_SUBNET.0/24"
export GANDIST="$BIN" CONFIG=configs/smoke.toml DATA
submit=(sbatch --nodes=2 --ntasks-per-node=2 --cpus-per-task=1 --overcommit --time=10 --no-requeue)

say "sbatch --nodes=2 --ntasks-per-node=2 launch/slurm/gandist.sbatch, 10 iterations, against 1 process"
set +e
RUN_DIR="$work/run1" timeout 300 "${submit[@]}" --wait --output="$work/job1.out" launch/slurm/gandist.sbatch \
  --set train.iterations=10 --set train.checkpoint_every=10
rc=$?
set -e
cat "$work/job1.out"
[ "$rc" = 0 ] || fail "sbatch --wait exited $rc"
run1="$(job_run_dir "$work/run1")"
[ -n "$run1" ] || fail "the job wrote no checkpoints under $work/run1"
grep -q '"world_size":4' "$run1/metrics.jsonl" || fail "the job did not run 4 ranks"
"$BIN" train --config configs/smoke.toml --data "$DATA" --run-dir "$work/one" \
  --set train.iterations=10 --set train.checkpoint_every=10 >"$work/one.log" 2>&1 || fail "the 1-process run failed"
python3 tests/system/lib/params_diff.py "$work/one/checkpoints/step-000000010" "$run1/checkpoints/step-000000010" --tol 1e-5 \
  || fail "the 2-node Slurm job differs from 1 process"

say "a long job, scraped by Prometheus on the head node"
job=$(RUN_DIR="$work/run2" "${submit[@]}" --parsable --output="$work/job2.out" launch/slurm/gandist.sbatch \
  --set train.iterations=100000 --set train.checkpoint_every=2 \
  --set metrics.enabled=true --set metrics.host=0.0.0.0 --set metrics.port_base=$PORT_BASE)
targets=""
for _ in $(seq 1200); do
  run2="$(job_run_dir "$work/run2")"
  if [ -n "$run2" ] && [ "$(jq length "$run2/prometheus-targets.json" 2>/dev/null)" = 4 ]; then
    targets="$run2/prometheus-targets.json"; break
  fi
  [ -n "$(squeue -h -j "$job" 2>/dev/null)" ] || fail "job $job ended early"
  sleep 0.1
done
[ -n "$targets" ] || fail "job $job wrote no targets file with 4 ranks"
jq -c '.[]' "$targets"
mkdir -p "$work/prom"
cp monitoring/prometheus/alerts.yml "$work/prom/"
sed -e "s#/gandist-sd/gandist-\\*\\.json#$targets#" -e 's/scrape_interval: .*/scrape_interval: 1s/' \
  -e 's/scrape_timeout: .*/scrape_timeout: 900ms/' -e 's/evaluation_interval: .*/evaluation_interval: 1s/' \
  -e 's/refresh_interval: .*/refresh_interval: 1s/' monitoring/prometheus/prometheus.yml >"$work/prom/prometheus.yml"
grep -qF "$targets" "$work/prom/prometheus.yml" \
  || fail "the shipped monitoring/prometheus/prometheus.yml no longer has the file_sd glob this test points at the run's targets file"
head_ip="$(node_ip gds0)"
# On the head node, whose /etc/hosts names every node: the targets carry node host names.
node_exec gds0 prometheus --config.file="$work/prom/prometheus.yml" --storage.tsdb.path="$work/prom/data" \
  --web.listen-address="$head_ip:$PROM_PORT" --log.level=warn >"$work/prometheus.log" 2>&1 &
nodes_track_pid $!
url="http://$head_ip:$PROM_PORT"
query() { curl -sf --max-time 5 "$url/api/v1/query" --data-urlencode "query=$1"; }
up=""
for _ in $(seq 60); do
  up="$(query 'up{job="gandist"}' | jq -r '[.data.result[] | select(.value[1] == "1") | .metric.rank + "@" + .metric.instance] | sort | join(" ")' 2>/dev/null || true)"
  [ "$up" = "0@gds1:$PORT_BASE 1@gds1:$((PORT_BASE + 1)) 2@gds2:$PORT_BASE 3@gds2:$((PORT_BASE + 1))" ] && break
  [ -n "$(squeue -h -j "$job" 2>/dev/null)" ] || fail "job $job ended before Prometheus scraped it"
  sleep 1
done
[ "$up" = "0@gds1:$PORT_BASE 1@gds1:$((PORT_BASE + 1)) 2@gds2:$PORT_BASE 3@gds2:$((PORT_BASE + 1))" ] \
  || fail "Prometheus does not see all 4 ranks up on their nodes within 60 s (up == 1: '$up')"
echo "Prometheus: up == 1 for rank@instance $up"
n="$(query 'count(gandist_world_size == 4)' | jq -r '.data.result[0].value[1] // 0')"
[ "$n" = 4 ] || fail "gandist_world_size == 4 on $n ranks, expected 4"

say "node gds2 dies without a word"
step=0
for _ in $(seq 1200); do
  c="$(newest_checkpoint "$run2")"
  step="$(checkpoint_step "${c:-none}")"
  [ "${step:-0}" -ge 4 ] && break
  [ -n "$(squeue -h -j "$job" 2>/dev/null)" ] || fail "job $job ended early"
  sleep 0.1
done
[ "${step:-0}" -ge 4 ] || fail "job $job wrote no checkpoint at step 4 or later"
died_at=$SECONDS
node_power_off gds2 || fail "could not power off gds2"
for _ in $(seq 1800); do
  [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break
  sleep 0.1
done
[ -z "$(squeue -h -j "$job" 2>/dev/null)" ] || fail "job $job still runs 180 s after gds2 died"
echo "job $job ended $((SECONDS - died_at)) s after gds2 died"
cat "$work/job2.out"
state="$(slurm_job_field "$job" JobState)"
[ "$state" = NODE_FAIL ] || fail "job $job ended as '$state', expected NODE_FAIL"
node_state="$(slurm_node_state gds2)"
case "$node_state" in down*) ;; *) fail "Slurm shows gds2 as '$node_state', expected down" ;; esac
reason="$(sinfo -h -n gds2 -o %E)"
echo "Slurm: job $job $state; node gds2 $node_state ($reason); gds1 $(slurm_node_state gds1)"
down=""
for _ in $(seq 30); do
  down="$(query 'up{job="gandist"} == 0' | jq -r '[.data.result[].metric.rank] | sort | join(" ")' 2>/dev/null || true)"
  [[ " $down " == *" 2 "* && " $down " == *" 3 "* ]] && break
  sleep 1
done
[[ " $down " == *" 2 "* && " $down " == *" 3 "* ]] || fail "Prometheus does not show ranks 2 and 3 down (up == 0 for ranks '$down')"
echo "Prometheus: up == 0 for ranks $down"
newest="$(newest_checkpoint "$run2")"
"$BIN" sample --checkpoint "$newest" --n 4 --out "$work/after.png" >"$work/sample.log" 2>&1 \
  || fail "the newest checkpoint $newest does not load: $(cat "$work/sample.log")"
echo "newest checkpoint $(basename "$newest") loads"
echo "multinode slurm system test: ok"
