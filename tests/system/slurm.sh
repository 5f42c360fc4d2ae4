#!/usr/bin/env bash
# Starts a private single-node Slurm cluster (munge, slurmctld, slurmd; tests/system/lib/
# slurm-local.sh), checks that both shipped batch scripts (CPU and GPU) pass
# `sbatch --test-only` and that it would refuse a GPU request the node cannot meet, runs
# launch/slurm/gandist.sbatch for a 2-rank training, checks the checkpoint it wrote, preempts
# a second job with SIGTERM, and stops every daemon it started by pid.
# (The time-limit requeue has its own test: tests/system/slurm-requeue.sh.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
. tests/system/lib/slurm-local.sh
bin="$PWD/target/debug/gandist"
data="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
[ -x "$bin" ] || cargo build --bin gandist
tmp="$(mktemp -d /tmp/gandist-slurm.XXXXXX)"
cleanup() {
  slurm_stop
  rm -rf "$tmp"
}
trap cleanup EXIT
slurm_start "$tmp/cluster"

# Both batch scripts as shipped: their #SBATCH lines parse and fit a node with 8 GPUs and 64
# CPUs; the same GPU script asking for more GPUs than a node has is refused, so the check
# reads the GPU request.
for script in launch/slurm/gandist.sbatch launch/slurm/gandist-gpu.sbatch; do
  bash -n "$script" || { echo "FAIL: $script has a shell syntax error"; exit 1; }
  msg="$(sbatch --test-only "$script" 2>&1)" || { echo "FAIL: sbatch --test-only $script: $msg"; exit 1; }
  case "$msg" in *"to start at"*) echo "ok: sbatch --test-only $script: $msg" ;; *) echo "FAIL: sbatch --test-only $script: $msg"; exit 1 ;; esac
done
grep -q '^#SBATCH --gpus-per-node=8' launch/slurm/gandist-gpu.sbatch || { echo "FAIL: the GPU script asks for no GPUs"; exit 1; }
if msg="$(sbatch --test-only --gpus-per-node=9 launch/slurm/gandist-gpu.sbatch 2>&1)"; then
  echo "FAIL: sbatch --test-only accepted 9 GPUs per node on an 8-GPU node: $msg"; exit 1
fi
echo "ok: 9 GPUs per node refused: $msg"

run="$tmp/run"
set +e
GANDIST="$bin" CONFIG=configs/smoke.toml RUN_DIR="$run" DATA="$data" \
  timeout 300 sbatch --wait --ntasks=2 --ntasks-per-node=2 --cpus-per-task=1 --overcommit \
  --time=10 --output="$tmp/job.out" launch/slurm/gandist.sbatch --set train.iterations=6
rc=$?
set -e
cat "$tmp/job.out"
[ "$rc" = 0 ] || { echo "FAIL: sbatch --wait exited $rc"; tail -20 "$tmp/log/slurmctld.log" "$tmp/log/slurmd.log"; exit 1; }
[ -f "$run/checkpoints/step-000000006/state.safetensors" ] || { echo "FAIL: no checkpoint at step 6"; ls -R "$run"; exit 1; }
grep -q '"world_size":2' "$run/metrics.jsonl" || { echo "FAIL: the job did not run 2 ranks"; cat "$run/metrics.jsonl"; exit 1; }
"$bin" sample --checkpoint "$run" --n 4 --out "$tmp/s.png" >/dev/null 2>&1 || { echo "FAIL: the job's checkpoint does not load"; exit 1; }
echo "PASS: slurm sbatch 2-rank training wrote a loadable checkpoint"

# Preemption: SIGTERM to the job's tasks (what --signal=TERM@120 does before the time limit).
run2="$tmp/preempted"
job=$(GANDIST="$bin" CONFIG=configs/smoke.toml RUN_DIR="$run2" DATA="$data" \
  sbatch --parsable --ntasks=2 --ntasks-per-node=2 --cpus-per-task=1 --overcommit --time=10 \
  --output="$tmp/job2.out" launch/slurm/gandist.sbatch \
  --set train.iterations=100000 --set train.checkpoint_every=2)
for _ in $(seq 600); do [ -d "$run2/checkpoints/step-000000002" ] && break; sleep 0.1; done
[ -d "$run2/checkpoints/step-000000002" ] || { echo "FAIL: preemption job wrote no checkpoint"; cat "$tmp/job2.out"; exit 1; }
scancel --signal=TERM "$job"
for _ in $(seq 300); do [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break; sleep 0.1; done
[ -z "$(squeue -h -j "$job" 2>/dev/null)" ] || { echo "FAIL: job $job still running 30 s after SIGTERM"; exit 1; }
cat "$tmp/job2.out"
grep -q "stop requested" "$tmp/job2.out" || { echo "FAIL: the ranks did not stop in agreement"; exit 1; }
last=$(ls "$run2/checkpoints" | sort | tail -1)
"$bin" sample --checkpoint "$run2/checkpoints/$last" --n 4 --out "$tmp/s2.png" >/dev/null 2>&1 || { echo "FAIL: checkpoint $last after preemption does not load"; exit 1; }
echo "PASS: SIGTERM through Slurm stopped both ranks with checkpoint $last"
