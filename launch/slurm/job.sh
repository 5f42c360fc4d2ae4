# The body of gandist's Slurm batch scripts (gandist.sbatch, gandist-gpu.sbatch), sourced by
# them from the submit directory: starts the ranks with srun, and near the time limit stops
# them with a checkpoint and requeues the job, which then resumes from that checkpoint.
#
# Why a trap: `--requeue` only covers node failure and preemption. A job that reaches its
# --time ends as TIMEOUT and never starts again. So the scripts ask Slurm for SIGUSR1 to this
# shell ahead of the limit (`--signal=B:USR1@N`; Slurm checks limits about every 30 s and may
# send it up to a minute early), and on it:
#   1. SIGTERM to every rank (`scancel --signal=TERM` on the job's steps: srun itself would
#      kill the ranks on a SIGTERM, not pass it on); the ranks agree on a stop in their next
#      all-reduce, rank 0 writes a checkpoint, and they exit;
#   2. `scontrol requeue` once srun has ended, or after GANDIST_STOP_WAIT seconds (default
#      120) if it has not: a requeue ends the job's steps at once (SIGTERM, then SIGKILL after
#      Slurm's KillWait), so the checkpoint is written first; the deadline makes sure the
#      requeue still happens before the time limit;
#   3. Slurm holds the requeued job for a while (about 2 minutes measured with Slurm 22.05),
#      then starts this script again with the same SLURM_JOB_ID and `--resume auto` picks up
#      the checkpoint; SLURM_RESTART_COUNT says how many times.
# SIGTERM to this shell (preemption, scancel) is passed on to the ranks in the same way.
#
# Settings from the environment (sbatch exports it by default):
#   GANDIST  the binary          (default: $SLURM_SUBMIT_DIR/target/release/gandist)
#   CONFIG   the configuration   (default: set by the batch script)
#   RUNS     where run directories go (default: $SLURM_SUBMIT_DIR/runs)
#   RUN_DIR  the run directory   (default: $RUNS/<job name>-<job id>: one per job, the same
#            after a requeue, never shared by two jobs of the same name)
#   DATA     the MNIST folder    (default: $GANDIST_DATA, else data/mnist), on shared storage
#   GANDIST_STOP_WAIT  seconds to wait for the ranks' checkpoint before requeueing (120)
#   GANDIST_MAX_RESTARTS  elastic restarts inside the allocation when a node dies (default 0:
#            none); submit with `sbatch --no-kill` so that the allocation outlives the node
# Arguments: gandist_job_run EXTRA_TRAIN_ARGS... (the batch script's own, then the user's).

gandist_log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) gandist batch: $*"; }

gandist_job_run() {
  local job_id="${SLURM_JOB_ID:?not inside a Slurm job}"
  [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && job_id="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  GANDIST="${GANDIST:-$PWD/target/release/gandist}"
  RUN_DIR="${RUN_DIR:-${RUNS:-$PWD/runs}/${SLURM_JOB_NAME:-gandist}-$job_id}"
  DATA="${DATA:-${GANDIST_DATA:-$PWD/data/mnist}}"
  local stop_wait="${GANDIST_STOP_WAIT:-120}"
  export OMPI_ALLOW_RUN_AS_ROOT="${OMPI_ALLOW_RUN_AS_ROOT:-1}" OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}"
  [ -x "$GANDIST" ] || { gandist_log "error: no gandist binary at $GANDIST (set GANDIST, or build with cargo build --release)"; return 2; }

  gandist_log "job $job_id (start $(( ${SLURM_RESTART_COUNT:-0} + 1 ))) with ${SLURM_NTASKS:-?} tasks on ${SLURM_JOB_NODELIST:-?}; run directory $RUN_DIR"
  srun_pid=""
  timer_pid=""
  stopping=0
  requeued=0
  gandist_requeue() {
    [ "$requeued" = 1 ] && return 0
    requeued=1
    if scontrol requeue "$SLURM_JOB_ID"; then
      gandist_log "requeued job $SLURM_JOB_ID: it will resume from the newest checkpoint in $RUN_DIR"
    else
      gandist_log "error: scontrol requeue $SLURM_JOB_ID failed: the job will not start again by itself"
    fi
  }
  # The ranks, not this shell (scancel leaves the batch step alone unless asked).
  gandist_stop_ranks() { scancel --signal=TERM "$SLURM_JOB_ID" || gandist_log "error: scancel --signal=TERM $SLURM_JOB_ID failed"; }
  gandist_time_limit() {
    [ "$stopping" = 1 ] && return 0
    stopping=1
    gandist_log "time limit near (SIGUSR1): stopping the ranks with a checkpoint, then requeueing"
    gandist_stop_ranks
    # The requeue deadline: a timer that signals this shell if the ranks take too long.
    ( sleep "$stop_wait"; kill -USR2 $$ 2>/dev/null ) &
    timer_pid=$!
    return 0
  }
  trap gandist_time_limit USR1
  trap 'gandist_log "ranks still running ${stop_wait} s after the stop: requeueing now"; gandist_requeue' USR2
  gandist_sigterm() {
    if [ "$requeued" = 1 ]; then
      gandist_log "SIGTERM from the requeue: this start ends here"
    else
      gandist_log "SIGTERM: stopping the ranks"
    fi
    [ -n "$srun_pid" ] && gandist_stop_ranks
    return 0
  }
  trap gandist_sigterm TERM

  if [ "${GANDIST_MAX_RESTARTS:-0}" -gt 0 ]; then
    # Elastic: when a node dies, start again from the newest checkpoint on the allocation's
    # nodes that still answer (launch/elastic.sh; needs `sbatch --no-kill`, else Slurm ends
    # the whole job with the node). The ranks' SIGTERM exit (143) still means "stop".
    GANDIST="$GANDIST" bash launch/elastic.sh --slurm --max-restarts "$GANDIST_MAX_RESTARTS" -- \
      --config "$CONFIG" --data "$DATA" --run-dir "$RUN_DIR" "$@" &
  else
    srun --mpi=pmix --kill-on-bad-exit=1 "$GANDIST" train --config "$CONFIG" --data "$DATA" \
      --run-dir "$RUN_DIR" --resume auto "$@" &
  fi
  srun_pid=$!
  # `wait` returns early whenever a trapped signal arrives: wait again until srun has ended.
  local rc=0
  wait "$srun_pid" || rc=$?
  while kill -0 "$srun_pid" 2>/dev/null; do
    rc=0
    wait "$srun_pid" || rc=$?
  done
  if [ "$stopping" = 1 ]; then
    [ -n "$timer_pid" ] && kill "$timer_pid" 2>/dev/null
    gandist_requeue
  fi
  gandist_log "ranks ended (srun exit code $rc)"
  return "$rc"
}
