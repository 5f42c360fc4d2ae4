#!/usr/bin/env bash
# Elastic restart (launch/elastic.sh) when a node dies, under mpirun and under Slurm, on two test
# nodes (lib/nodes.sh). In both, the second node dies without a word (link
# cut, then every process killed) mid-run; the launcher notices, finds that only the first node
# answers, and starts again there from the newest checkpoint with the same global batch. Since
# gandist's result does not depend on the number of ranks and a resume is exact, the run must end
# with the parameters of an uninterrupted 1-process run (within 5e-5 of each tensor's scale:
# float32 summation order, compounded over 60 iterations; measured 3.2e-6 on an AVX2 Xeon and
# 1.30e-5 on an AVX-512 EPYC, so 5e-5 leaves room for other CPUs), and the launcher's log must say when it restarted, on which hosts and
# from which step (the step gandist itself reports resuming from).
#   0. Bad input to the launcher is refused with a clear message and exit status 2.
#   1. mpirun mode: --hostfile with 2 slots on the first node and 1 on the second, global batch
#      9; the probe goes through the nodes' ssh stand-in. The 2 slots that remain do not divide
#      the global batch, so the restart must take 1 rank.
#   2. Slurm mode: a 2-node `sbatch --no-kill` job (launch/slurm/gandist.sbatch with GANDIST_MAX_RESTARTS) on a real multi-node
#      Slurm cluster; the job itself ends COMPLETED on the remaining node.
#   3. A failure that a restart cannot cure (a bad configuration, every host answering) is not
#      retried.
#   4. SIGTERM to the launcher (what preemption and time limits send) is passed on to the run
#      and is not followed by a restart.
# Takes two to three minutes on 2 cores (most of it noticing the silent deaths).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
. tests/system/lib/nodes.sh
. tests/system/lib/slurm-nodes.sh
. tests/system/lib/checkpoints.sh
BIN="${GANDIST_BIN:-$PWD/target/debug/gandist}"
DATA="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
[ -x "$BIN" ] || cargo build --bin gandist
ITERS=60

say() { echo "--- $*"; }
fail() {
  echo "FAIL: $*" >&2
  for f in "$NODES_DIR"/*.log "$NODES_DIR"/*.out "$NODES_DIR"/*/elastic.log; do [ -f "$f" ] && { echo "== $f" >&2; grep -v '^step ' "$f" | tail -40 >&2; }; done
  [ -n "$SLURM_DIR" ] && slurm_logs >&2
  exit 1
}
train_sets=(--set train.iterations=$ITERS --set train.checkpoint_every=2)
# The mpirun run uses a global batch of 9: its 3 ranks divide it, the 2 left after the loss do not.
mpi_sets=("${train_sets[@]}" --set data.batch_size=9)

# Waits until RUN has a checkpoint at step 4 or later while CHECK (a command) succeeds, then
# powers NODE off; prints the step of the newest checkpoint at that moment.
kill_node_mid_run() {
  local run="$1" node="$2" check="$3" c step=0
  for _ in $(seq 1800); do
    c="$(newest_checkpoint "$run")"
    step="$(checkpoint_step "${c:-none}")"
    [ "${step:-0}" -ge 4 ] && break
    eval "$check" || fail "the run ended before $node could die"
    sleep 0.1
  done
  [ "${step:-0}" -ge 4 ] || fail "no checkpoint at step 4 or later in $run"
  [ "$step" -lt $ITERS ] || fail "the run reached step $step before $node died: raise ITERS"
  node_power_off "$node" || fail "could not power off $node"
  echo "$step"
}

# Checks RUN's elastic.log and training output after one restart onto HOST (MODE: its name).
check_restart() {
  local run="$1" out="$2" host="$3" lost="$4" killed_at="$5" ranks="$6" batch="$7" line from resumed
  line="$(grep -m1 'restart 1 of at most' "$run/elastic.log")" || fail "no restart in $run/elastic.log"
  echo "log: $line"
  [[ "$line" =~ ^elastic:\ [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z\ restart ]] || fail "the restart line carries no time: $line"
  [[ "$line" == *"hosts $host (not answering: $lost);"* ]] || fail "the restart should name $host as the host and $lost as lost: $line"
  local want="$ranks ranks, global batch $batch;"
  [ "$ranks" = 1 ] && want="1 rank, global batch $batch;"
  [[ "$line" == *"$want"* ]] || fail "the restart should keep the global batch of $batch on $ranks ranks: $line"
  from="$(sed -nE 's/.*resuming from step ([0-9]+).*/\1/p' <<<"$line")"
  [ -n "$from" ] && [ "$from" -ge "$killed_at" ] || fail "the restart resumes from step '${from}', expected the newest checkpoint (step $killed_at or later)"
  resumed="$(grep -m1 -oE 'resumed from .* at step [0-9]+' "$out" | grep -oE '[0-9]+$')" || fail "gandist did not report resuming"
  [ "$resumed" = "$from" ] || fail "gandist resumed from step $resumed, the launcher's log says $from"
  grep -q "restart 2 of" "$run/elastic.log" && fail "more than one restart: $(cat "$run/elastic.log")"
  grep -q "finished after" "$run/elastic.log" || fail "the launcher did not log the end"
  python3 tests/system/lib/params_diff.py "$work/one-$batch/checkpoints/step-$(printf %09d $ITERS)" \
    "$run/checkpoints/step-$(printf %09d $ITERS)" --tol 5e-5 || fail "the restarted run differs from an uninterrupted 1-process run"
}

# Runs launch/elastic.sh with ARGS and expects exit status 2, a message containing WANT, and
# no run directory left behind.
usage_error() {
  local want="$1" out rc=0; shift
  out="$(GANDIST="$BIN" launch/elastic.sh "$@" 2>&1)" || rc=$?
  [ "$rc" = 2 ] || fail "launch/elastic.sh $* exited $rc, expected 2: $out"
  [[ "$out" == *"$want"* ]] || fail "launch/elastic.sh $*: expected '$want' in: $out"
  [ ! -e "$work/usage-run" ] || fail "launch/elastic.sh $* created its run directory before failing"
}

nodes_up gde 10.78.3 2
work="$NODES_DIR"

say "bad input to the launcher: a clear error, exit 2, nothing written"
printf '# no hosts\n\n' >"$work/empty-hostfile"
printf 'node1 slots=2\n' >"$work/one-host"
usage_error "give --hostfile FILE (mpirun) or --slurm" -- --run-dir "$work/usage-run"
usage_error "cannot read hostfile $work/missing" --hostfile "$work/missing" -- --run-dir "$work/usage-run"
usage_error "lists no host" --hostfile "$work/empty-hostfile" -- --run-dir "$work/usage-run"
usage_error "need --run-dir DIR" --hostfile "$work/one-host" -- --config configs/smoke.toml
usage_error "leave --resume out" --hostfile "$work/one-host" -- --run-dir "$work/usage-run" --resume "$work/x"
usage_error "--max-restarts must be a whole number, got 'two'" --hostfile "$work/one-host" --max-restarts two -- --run-dir "$work/usage-run"
usage_error "unknown option '--nodes'" --nodes 2 -- --run-dir "$work/usage-run"
usage_error "SLURM_JOB_ID and SLURM_JOB_NODELIST are not set" --slurm -- --run-dir "$work/usage-run"
echo "8 kinds of bad input refused"

say "uninterrupted 1-process references, $ITERS iterations, global batch 9 and 16"
"$BIN" train --config configs/smoke.toml --data "$DATA" --run-dir "$work/one-9" "${mpi_sets[@]}" >"$work/one-9.log" 2>&1 \
  || fail "the 1-process run with batch 9 failed"
"$BIN" train --config configs/smoke.toml --data "$DATA" --run-dir "$work/one-16" "${train_sets[@]}" >"$work/one-16.log" 2>&1 \
  || fail "the 1-process run with batch 16 failed"

say "1. mpirun: gde1 with 2 slots, gde2 with 1 (3 ranks); gde2 dies mid-run"
# The 2 slots left after the death do not divide the global batch of 9: the restart takes 1 rank.
printf '%s slots=2\n%s slots=1\n' "$(node_ip gde1)" "$(node_ip gde2)" >"$work/hostfile"
node_exec gde0 env GANDIST="$BIN" ELASTIC_RSH="$NODES_LIB/node-rsh.sh" MPIRUN_ARGS="$(nodes_mpirun_args)" \
  ELASTIC_PROBE_TIMEOUT=5 launch/elastic.sh --hostfile "$work/hostfile" --max-restarts 2 -- \
  --config configs/smoke.toml --data "$DATA" --run-dir "$work/mpi" "${mpi_sets[@]}" >"$work/mpi.out" 2>&1 &
launcher=$!
nodes_track_pid $launcher
killed_at="$(kill_node_mid_run "$work/mpi" gde2 "running $launcher")"
died=$SECONDS
echo "gde2 powered off at checkpoint step $killed_at"
for _ in $(seq 1800); do running $launcher || break; sleep 0.1; done
running $launcher && fail "the launcher still runs 180 s after gde2 died"
rc=0; wait $launcher || rc=$?
[ "$rc" = 0 ] || fail "the elastic launcher exited $rc"
echo "the launcher finished $((SECONDS - died)) s after gde2 died"
check_restart "$work/mpi" "$work/mpi.out" "$(node_ip gde1)" "$(node_ip gde2)" "$killed_at" 1 9

say "3. a bad configuration fails once, without restarts"
rc=0
node_exec gde0 env GANDIST="$BIN" ELASTIC_RSH="$NODES_LIB/node-rsh.sh" MPIRUN_ARGS="$(nodes_mpirun_args)" \
  launch/elastic.sh --hostfile "$work/hostfile" --max-restarts 2 -- \
  --config configs/smoke.toml --data "$DATA" --run-dir "$work/bad" "${mpi_sets[@]}" --set train.n_critic=0 >"$work/bad.out" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "a bad configuration must fail"
grep -q "train.n_critic" "$work/bad.out" || fail "gandist's error should name train.n_critic"
grep -q "not restarting, the same failure would repeat" "$work/bad/elastic.log" || fail "the launcher should refuse to retry a failure that repeats"
grep -q "restart 1" "$work/bad/elastic.log" && fail "a bad configuration was retried"
echo "bad configuration: exit $rc, $(grep -c attempt "$work/bad/elastic.log") log lines about attempts, no restart"

say "4. SIGTERM to the launcher (preemption, a time limit): passed on to the run, no restart"
printf '%s slots=1\n' "$(node_ip gde1)" >"$work/hostfile-gde1"
node_exec gde0 env GANDIST="$BIN" ELASTIC_RSH="$NODES_LIB/node-rsh.sh" MPIRUN_ARGS="$(nodes_mpirun_args)" \
  launch/elastic.sh --hostfile "$work/hostfile-gde1" --max-restarts 2 -- \
  --config configs/smoke.toml --data "$DATA" --run-dir "$work/term" \
  --set train.iterations=100000 --set train.checkpoint_every=2 >"$work/term.out" 2>&1 &
launcher=$!
nodes_track_pid $launcher
for _ in $(seq 600); do [ -n "$(newest_checkpoint "$work/term")" ] && break; running $launcher || break; sleep 0.1; done
[ -n "$(newest_checkpoint "$work/term")" ] || fail "the run to be stopped wrote no checkpoint"
# $! is the shell that runs node_exec; the launcher is its child.
elastic_pid="$(pgrep -P $launcher)" || fail "the launcher is not running"
kill -TERM "$elastic_pid"
for _ in $(seq 600); do running $launcher || break; sleep 0.1; done
running $launcher && fail "the launcher still runs 60 s after SIGTERM"
rc=0; wait $launcher || rc=$?
[ "$rc" != 0 ] || fail "a run stopped by SIGTERM must not report success"
grep -q "received SIGTERM: passing it on, no restart" "$work/term/elastic.log" || fail "the launcher did not log the signal"
grep -q "stopped on request: no restart" "$work/term/elastic.log" || fail "the launcher did not say why it does not restart"
grep -q "restart 1" "$work/term/elastic.log" && fail "a run stopped on request was restarted"
echo "SIGTERM: launcher exit $rc, no restart"

say "2. Slurm: sbatch --no-kill, 2 nodes x 1 task; gde2 dies mid-run"
node_restore gde2
slurm_cluster_up
export OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include="$NODES_SUBNET.0/24"
# The project's own batch script, made elastic by GANDIST_MAX_RESTARTS (launch/slurm/job.sh).
job=$(GANDIST="$BIN" CONFIG=configs/smoke.toml DATA="$DATA" RUN_DIR="$work/slurm" GANDIST_MAX_RESTARTS=2 \
  sbatch --parsable --no-kill --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --overcommit --time=10 \
  --output="$work/slurm.out" launch/slurm/gandist.sbatch "${train_sets[@]}")
killed_at="$(kill_node_mid_run "$work/slurm" gde2 "[ -n \"\$(squeue -h -j $job 2>/dev/null)\" ]")"
died=$SECONDS
echo "gde2 powered off at checkpoint step $killed_at"
for _ in $(seq 1800); do [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break; sleep 0.1; done
[ -z "$(squeue -h -j "$job" 2>/dev/null)" ] || fail "job $job still runs 180 s after gde2 died"
echo "job $job ended $((SECONDS - died)) s after gde2 died"
state="$(slurm_job_field "$job" JobState)"
[ "$state" = COMPLETED ] || fail "job $job ended as '$state', expected COMPLETED (on the remaining node)"
echo "Slurm: job $job $state; node gde2 $(slurm_node_state gde2)"
check_restart "$work/slurm" "$work/slurm.out" gde1 gde2 "$killed_at" 1 16
echo "multinode elastic system test: ok"
