#!/usr/bin/env bash
# One job, one run directory, with real launchers:
#   1. torchrun (the torch venv's `python -m torch.distributed.run --standalone
#      --nproc-per-node 2 --no-python gandist train ...`) starts two copies that MPI never
#      joins: both refuse at start, naming what they saw and `mpirun -n 2 gandist ...`; torchrun
#      exits non-zero and the run directory holds nothing of a run;
#   2. srun under Slurm's default MpiDefault=none (the project's Slurm test cluster) starts two
#      tasks without PMIx: both refuse, naming the step and `srun --mpi=pmix -n 2`; that command
#      then joins them into one job on the same cluster; a batch script that runs one process
#      itself in a 2-task allocation is not refused;
#   3. the run-directory lock: while a training runs, a second job on its run directory (two
#      ranks under mpirun) is refused, naming the holder's host and pid, and the first one goes
#      on; after SIGKILL of the holder, the next job takes the stale lock over with a warning
#      that names the dead holder, and its clean end removes the lock file.
# About 1 minute.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
. tests/system/lib/slurm-local.sh
bin="$PWD/target/debug/gandist"
data="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
[ -x "$bin" ] || cargo build --bin gandist
tmp="$(mktemp -d /tmp/gandist-launchers.XXXXXX)"
holder=""
cleanup() {
  [ -z "$holder" ] || kill -9 "$holder" 2>/dev/null || true
  slurm_stop
  rm -rf "$tmp"
}
trap cleanup EXIT
train=(train --config configs/smoke.toml --data "$data")
# A run directory that a refused job left alone: no scalar log, no checkpoint, no lock.
untouched() { [ ! -e "$1/metrics.jsonl" ] && [ ! -e "$1/checkpoints" ] && [ ! -e "$1/gandist.lock" ]; }

# 1. torchrun.
set +e
# torchrun ends the other copies as soon as it sees one fail: --monitor-interval 3 (default
# 0.1 s) gives both the time to reach their own refusal on a loaded machine.
out="$(timeout 120 "$GANDIST_TORCH_VENV/bin/python" -m torch.distributed.run --standalone --nproc-per-node 2 --monitor-interval 3 --no-python \
  "$bin" "${train[@]}" --run-dir "$tmp/torchrun" 2>&1)"
st=$?
set -e
[ $st -ne 0 ] || { echo "$out"; echo "FAIL: torchrun with 2 copies exited 0"; exit 1; }
for r in 0 1; do
  grep -q "torchrun (or another PyTorch launcher) started this process as one of 2 (WORLD_SIZE=2, RANK=$r, LOCAL_RANK=$r, LOCAL_WORLD_SIZE=2, TORCHELASTIC_RUN_ID=.*), but it would train alone" <<<"$out" \
    || { echo "$out"; echo "FAIL: the copy with RANK=$r did not refuse naming what it saw"; exit 1; }
done
[ "$(grep -c 'Refusing to start: use `mpirun -n 2 gandist ...`' <<<"$out")" -ge 2 ] || { echo "$out"; echo "FAIL: not both copies name the command that works"; exit 1; }
untouched "$tmp/torchrun" || { ls -la "$tmp/torchrun"; echo "FAIL: the refused copies wrote into the run directory"; exit 1; }
echo "ok: torchrun's 2 copies both refused (exit $st), naming WORLD_SIZE, RANK, LOCAL_RANK and mpirun -n 2"

# 2. Slurm with MpiDefault=none.
SLURM_MPI_DEFAULT=none slurm_start "$tmp/cluster"
[ "$(scontrol show config | awk '$1 == "MpiDefault" { print $3 }')" = none ] || { echo "FAIL: the cluster's MpiDefault is not none"; exit 1; }
set +e
out="$(timeout 120 srun -n 2 --overcommit "$bin" "${train[@]}" --run-dir "$tmp/srun" 2>&1)"
st=$?
set -e
[ $st -ne 0 ] || { echo "$out"; echo "FAIL: srun -n 2 without PMIx exited 0"; exit 1; }
for r in 0 1; do
  grep -q "srun started this process as one of 2 tasks (SLURM_JOB_ID=[0-9]*, SLURM_STEP_ID=0, SLURM_STEP_NUM_TASKS=2, SLURM_NTASKS=2, SLURM_PROCID=$r), but it would train alone" <<<"$out" \
    || { echo "$out"; echo "FAIL: task $r did not refuse naming its step"; exit 1; }
done
[ "$(grep -c 'Refusing to start: use `srun --mpi=pmix -n 2 gandist ...`' <<<"$out")" -ge 2 ] || { echo "$out"; echo "FAIL: not both tasks name srun --mpi=pmix"; exit 1; }
untouched "$tmp/srun" || { echo "FAIL: the refused tasks wrote into the run directory"; exit 1; }
echo "ok: srun -n 2 under MpiDefault=none: both tasks refused (exit $st), naming the step and srun --mpi=pmix -n 2"
out="$(timeout 120 srun --mpi=pmix -n 2 --overcommit "$bin" selftest-collectives --device cpu --set 'dist.backend="mpi"' 2>&1)" \
  || { echo "$out"; echo "FAIL: srun --mpi=pmix -n 2 did not run"; exit 1; }
grep -q "rank 1/2 (local 1/2)" <<<"$out" && grep -q "rank 1 selftest agreement: ok" <<<"$out" || { echo "$out"; echo "FAIL: srun --mpi=pmix did not join 2 ranks"; exit 1; }
echo "ok: the command named, srun --mpi=pmix -n 2, joins both tasks into one job on the same cluster"
timeout 120 sbatch --wait --ntasks=2 --overcommit --output="$tmp/batch.out" \
  --wrap "$bin ${train[*]} --run-dir $tmp/batch --set train.iterations=2" >/dev/null \
  || { cat "$tmp/batch.out"; echo "FAIL: one process in a batch script of a 2-task allocation was refused or failed"; exit 1; }
[ -f "$tmp/batch/checkpoints/step-000000002/state.safetensors" ] || { cat "$tmp/batch.out"; echo "FAIL: the batch script's process wrote no checkpoint"; exit 1; }
echo "ok: a batch script running one process itself (SLURM_NTASKS=2, no step) trains"
slurm_stop

# 3. The run-directory lock.
run="$tmp/locked"
"$bin" "${train[@]}" --run-dir "$run" --set train.iterations=100000 --set train.checkpoint_every=2 >"$tmp/holder.out" 2>&1 &
holder=$!
for _ in $(seq 600); do [ -d "$run/checkpoints/step-000000002" ] && break; sleep 0.1; done
[ -d "$run/checkpoints/step-000000002" ] || { cat "$tmp/holder.out"; echo "FAIL: the first job did not start"; exit 1; }
host="$(cat /proc/sys/kernel/hostname)"
set +e
out="$(OMPI_MCA_rmaps_base_oversubscribe=1 timeout 60 mpirun -n 2 "$bin" "${train[@]}" --run-dir "$run" --resume auto 2>&1)"
st=$?
set -e
[ $st -ne 0 ] || { echo "$out"; echo "FAIL: a second job on a run directory in use exited 0"; exit 1; }
grep -q "run directory $run is in use: gandist pid $holder on host $host (started [0-9]* s ago) holds its lock $run/gandist.lock" <<<"$out" \
  || { echo "$out"; echo "FAIL: the refusal does not name the holder's pid $holder and host $host"; exit 1; }
kill -0 "$holder" || { echo "FAIL: the first job died"; exit 1; }
echo "ok: a second job (2 ranks) on a run directory in use is refused (exit $st), naming pid $holder on $host; the first goes on"
kill -9 "$holder"
wait "$holder" 2>/dev/null || true
dead=$holder
holder=""
[ -e "$run/gandist.lock" ] || { echo "FAIL: SIGKILL left no lock file to take over"; exit 1; }
out="$("$bin" "${train[@]}" --run-dir "$run" --resume auto --set train.iterations=6 --set train.checkpoint_every=2 2>&1)" \
  || { echo "$out"; echo "FAIL: the job after the killed one did not take its lock over"; exit 1; }
grep -q "WARN.*run directory $run: taking over the lock left by gandist pid $dead on host $host (started [0-9]* s ago), which no longer runs" <<<"$out" \
  || { echo "$out"; echo "FAIL: no warning naming the dead holder"; exit 1; }
[ ! -e "$run/gandist.lock" ] || { echo "FAIL: the lock file is left after a clean end"; exit 1; }
echo "ok: the stale lock of the killed job was taken over with a warning, and released at the end"
echo "PASS: torchrun and srun without PMIx refuse on every process; one job per run directory"
