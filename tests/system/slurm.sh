#!/usr/bin/env bash
# Starts a single-node Slurm cluster (munge, slurmctld, slurmd) from Debian's packages, runs the
# project's own launch/slurm/gandist.sbatch for a 2-rank training, checks the checkpoint it
# wrote, and stops every daemon it started by pid.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
bin="$PWD/target/debug/gandist"
data="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
tmp="$(mktemp -d /tmp/gandist-slurm.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pkill -f "munged --foreground" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

host="$(hostname -s)"
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/log"
cat > "$tmp/slurm.conf" <<CONF
ClusterName=gandist-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MinJobAge=4
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$tmp/slurm.conf"

# munge: reuse a running daemon, else start one as the munge user.
if ! munge -n </dev/null >/dev/null 2>&1; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged --foreground >"$tmp/log/munged.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n </dev/null | unmunge >/dev/null || { echo "munge does not work"; exit 1; }

/usr/sbin/slurmctld -D -c -f "$SLURM_CONF" >"$tmp/log/slurmctld.out" 2>&1 &
pids+=($!)
/usr/sbin/slurmd -D -f "$SLURM_CONF" >"$tmp/log/slurmd.out" 2>&1 &
pids+=($!)
state=""
for _ in $(seq 150); do
  state="$(sinfo -h -o %T 2>/dev/null || true)"
  [ "$state" = idle ] && break
  sleep 0.2
done
if [ "$state" != idle ]; then
  echo "slurm node not idle (state '$state')"; cat "$tmp/log/"*; exit 1
fi
echo "slurm: node $host idle"

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
