#!/usr/bin/env bash
# Requeue at the time limit, on a real single-node Slurm (tests/system/lib/slurm-local.sh):
# launch/slurm/gandist.sbatch with --time=1 (one minute) and an early SIGUSR1 to its shell
#   - stops its 2 ranks with a checkpoint and requeues itself (scontrol show job: Restarts=1);
#   - starts again under the same job id and says "resumed from ... at step N", N being the
#     step its first start checkpointed at, in the same run directory (<name>-<job id>);
#   - keeps the first start's lines in its output file (--open-mode=append);
#   - lists its ranks in metrics.sd_dir as gandist-<run>-<job id>.json, labelled slurm_job_id;
# and a second job with the same name gets a run directory of its own. Slurm holds a requeued
# job for about 2 minutes before it may start again; the test releases it at once
# (scontrol update StartTime=now). Every daemon is stopped by pid. 40-75 s, most of it waiting
# for Slurm's signal. KEEP_TMP=1 keeps the test's folder (logs, run directories).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
. tests/system/lib/slurm-local.sh
bin="$PWD/target/debug/gandist"
data="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
[ -x "$bin" ] || cargo build --bin gandist
tmp="$(mktemp -d /tmp/gandist-slurm-requeue.XXXXXX)"
job=""
cleanup() {
  [ -n "$job" ] && scancel "$job" 2>/dev/null || true
  slurm_stop
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; cat "$tmp"/*.out 2>/dev/null | tail -40; tail -20 "$tmp/cluster/log/slurmctld.log"; exit 1; }
state() { scontrol show job "$job" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }
slurm_start "$tmp/cluster"

name=requeue-test
out="$tmp/$name-%j.out"
job=$(GANDIST="$bin" CONFIG=configs/smoke.toml RUNS="$tmp/runs" DATA="$data" \
  sbatch --parsable --job-name="$name" --ntasks=2 --ntasks-per-node=2 --cpus-per-task=1 --overcommit \
  --time=1 --signal=B:USR1@20 --output="$out" launch/slurm/gandist.sbatch \
  --set train.iterations=1000000 --set train.checkpoint_every=1000000 --set train.sample_every=1000000 \
  --set train.log_every=10 --set metrics.enabled=true --set metrics.port_base=0 --set "metrics.sd_dir=$tmp/sd")
out="$tmp/$name-$job.out"
run="$tmp/runs/$name-$job"
echo "job $job submitted with --time=1; run directory $run"

# First start: the shared targets file carries the job id.
sd="$tmp/sd/gandist-$name-$job-$job.json"
for _ in $(seq 60); do [ -s "$sd" ] && break; sleep 0.5; done
[ -s "$sd" ] || fail "no $sd while the job runs: $(ls "$tmp/sd" 2>&1)"
[ "$(jq -r '[.[].labels.slurm_job_id] | unique | join(",")' "$sd")" = "$job" ] || fail "targets not labelled slurm_job_id=$job: $(cat "$sd")"
[ "$(jq length "$sd")" = 2 ] || fail "not 2 ranks in $sd"
echo "ok: $sd lists 2 ranks labelled slurm_job_id=$job"

# The time limit's signal, the stop and the requeue: Restarts goes to 1 within the minute.
for _ in $(seq 150); do [ "$(state Restarts)" = 1 ] && break; sleep 0.5; done
[ "$(state Restarts)" = 1 ] || fail "job $job not requeued (Restarts=$(state Restarts), state $(state JobState))"
echo "ok: scontrol show job $job: Restarts=$(state Restarts), JobState=$(state JobState)"
for _ in $(seq 120); do [ "$(state JobState)" = PENDING ] && break; sleep 0.5; done
[ "$(state JobState)" = PENDING ] || fail "job $job is $(state JobState) after its requeue, not PENDING"
grep -q "stop requested" "$out" || fail "the first start did not stop with a checkpoint"
stopped_at=$(sed -n 's/.*checkpoint written at step \([0-9]*\).*/\1/p' "$out" | tail -1)
[ -n "$stopped_at" ] && [ "$stopped_at" -gt 0 ] || fail "no step in the stop line"
[ -d "$run/checkpoints/$(printf 'step-%09d' "$stopped_at")" ] || fail "no checkpoint of step $stopped_at in $run"
grep -q "requeued job $job" "$out" || fail "the batch script did not say it requeued"
echo "ok: first start stopped at step $stopped_at with a checkpoint and requeued job $job"

# Slurm holds the requeued job (BeginTime about 2 minutes ahead): release it once the node has
# finished cleaning up after the first start (its step directories would clash with the
# second start's, which has the same job and step ids).
for _ in $(seq 150); do
  if ! pgrep -f "slurmstepd: \[$job\." >/dev/null && ! ls "$tmp/cluster/spool/" | grep -q "pmix.$job"; then break; fi
  sleep 0.2
done
scontrol update JobId="$job" StartTime=now
for _ in $(seq 180); do grep -q "resumed from" "$out" && break; sleep 0.5; done
line=$(grep "resumed from" "$out" | tail -1)
[ -n "$line" ] || fail "the second start did not resume"
echo "$line"
case "$line" in
  *"resumed from $run/checkpoints/$(printf 'step-%09d' "$stopped_at") at step $stopped_at"*) ;;
  *) fail "resumed from somewhere else than step $stopped_at of $run" ;;
esac
[ "$(grep -c "gandist batch: job $job (start" "$out")" = 2 ] || fail "the output file does not hold both starts (--open-mode=append)"
grep -q "gandist batch: job $job (start 2)" "$out" || fail "no second start line"
echo "ok: the second start resumed at step $stopped_at in the same run directory; the output file holds both starts"

scancel "$job"
for _ in $(seq 300); do [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break; sleep 0.1; done
[ -z "$(squeue -h -j "$job" 2>/dev/null)" ] || fail "job $job still running 30 s after scancel"
job=""

# Two jobs with one name: the second gets its own run directory.
job2=$(GANDIST="$bin" CONFIG=configs/smoke.toml RUNS="$tmp/runs" DATA="$data" \
  sbatch --parsable --wait --job-name="$name" --ntasks=1 --ntasks-per-node=1 --cpus-per-task=1 --overcommit --time=5 \
  --output="$tmp/second-%j.out" launch/slurm/gandist.sbatch --set train.iterations=2)
[ -f "$tmp/runs/$name-$job2/checkpoints/step-000000002/state.safetensors" ] || fail "job $job2 did not train in its own run directory $tmp/runs/$name-$job2"
grep -q "resumed from" "$tmp/second-$job2.out" && fail "job $job2 resumed another job's run"
echo "ok: job $job2 of the same name trained from scratch in $name-$job2"
echo "PASS: slurm requeue at the time limit"
