#!/usr/bin/env bash
# Elastic data-parallel training: when a node dies, the job starts again by itself from the newest
# checkpoint on the nodes that still answer, with the same global batch, up to a number of
# restarts. gandist's result does not depend on the number of ranks, so a run that lost a node
# ends where an uninterrupted one would have.
#
#   launch/elastic.sh --hostfile hosts [--max-restarts 3] -- --config C --run-dir R [--set ...]
#       Open MPI across the hostfile's hosts ("HOST slots=N" lines; N = ranks on that host,
#       1 when absent). Before each start every host is probed through the launch agent
#       (ELASTIC_RSH, else OMPI_MCA_plm_rsh_agent, else ssh) with `AGENT HOST true`.
#   launch/elastic.sh --slurm [--max-restarts 3] -- --config C --run-dir R [--set ...]
#       Inside a Slurm allocation submitted with `sbatch --no-kill` (which keeps the allocation
#       when one of its nodes fails): srun on the allocation's nodes that answer a probe step,
#       with the job's tasks per node.
#
# Everything after `--` goes to `gandist train`; --run-dir is required (the checkpoints live
# there) and `--resume auto` is added. Environment: GANDIST (the binary, default
# target/release/gandist beside this script), MPIRUN_ARGS (more mpirun options), SRUN_ARGS (more
# srun options), ELASTIC_MAX_RESTARTS, ELASTIC_PROBE_TIMEOUT (seconds, default 20).
#
# When an attempt fails:
#   - exit 130 or 143 (the ranks stopped on SIGINT/SIGTERM, e.g. preemption or a time limit),
#     or this launcher got SIGINT/SIGTERM: no restart; the exit status is passed on;
#   - restarts are used up: no restart;
#   - every host still answers and the attempt wrote no new checkpoint: no restart (the same
#     failure would only repeat, e.g. a bad configuration);
#   - otherwise restart on the hosts that answer, from the newest usable checkpoint, with as many
#     ranks as they have slots, lowered to the largest number that divides the global batch
#     (data.batch_size). Both come from `gandist checkpoint latest` with the run's --config and
#     --set: the checkpoint `--resume auto` will take, found by the same code.
# Each start, failure and restart is logged, with the time, the hosts and the step, to stderr
# and to RUN_DIR/elastic.log.
#
# Noticing a dead node: a node whose processes die is noticed within seconds (its sockets
# close). A node that vanishes without a word (power, network) is noticed by Open MPI's TCP
# keepalive between mpirun and its daemons; this launcher shortens Open MPI's default (300 s
# idle, then 9 probes 20 s apart) to 10 s idle, then 3 probes 5 s apart, unless
# OMPI_MCA_oob_tcp_keepalive_* are set. Under Slurm, slurmctld marks the node down after
# SlurmdTimeout and ends the step.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "elastic: $*" >&2; exit 2; }

mode="" hostfile="" max_restarts="${ELASTIC_MAX_RESTARTS:-3}" probe_timeout="${ELASTIC_PROBE_TIMEOUT:-20}"
while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) [ $# -ge 2 ] || die "--hostfile needs a file"; mode=mpirun; hostfile="$2"; shift 2 ;;
    --slurm) mode=slurm; shift ;;
    --max-restarts) [ $# -ge 2 ] || die "--max-restarts needs a number"; max_restarts="$2"; shift 2 ;;
    --probe-timeout) [ $# -ge 2 ] || die "--probe-timeout needs seconds"; probe_timeout="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) die "unknown option '$1' (options: --hostfile FILE | --slurm, --max-restarts N, --probe-timeout S, then -- and gandist train's arguments)" ;;
  esac
done
[ -n "$mode" ] || die "give --hostfile FILE (mpirun) or --slurm (inside an sbatch --no-kill allocation)"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number, got '$max_restarts'"
[[ "$probe_timeout" =~ ^[1-9][0-9]*$ ]] || die "--probe-timeout must be a positive whole number of seconds, got '$probe_timeout'"
train_args=("$@")

run_dir=""
config_args=()  # the run's --config and --set, for `gandist checkpoint latest`
for ((i = 0; i < ${#train_args[@]}; i++)); do
  case "${train_args[i]}" in
    --run-dir) run_dir="${train_args[i + 1]:-}" ;;
    --run-dir=*) run_dir="${train_args[i]#--run-dir=}" ;;
    --config|--set) config_args+=("${train_args[i]}" "${train_args[i + 1]:-}") ;;
    --config=*|--set=*) config_args+=("${train_args[i]}") ;;
    --resume) [ "${train_args[i + 1]:-}" = auto ] || die "--resume ${train_args[i + 1]:-}: the launcher resumes from the newest checkpoint itself (--resume auto); leave --resume out" ;;
    --resume=*) [ "${train_args[i]}" = --resume=auto ] || die "${train_args[i]}: the launcher resumes from the newest checkpoint itself; leave --resume out" ;;
  esac
done
[ -n "$run_dir" ] || die "gandist train's arguments need --run-dir DIR: the checkpoints to restart from live there"
GANDIST="${GANDIST:-$here/../target/release/gandist}"
[ -x "$GANDIST" ] || die "no gandist binary at $GANDIST (set GANDIST)"
log_file="$run_dir/elastic.log"

log() {
  local line
  line="elastic: $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"
  echo "$line" >&2
  echo "$line" >>"$log_file"
}

# hosts[i] and slots[i]: every host the job may use, in order.
hosts=() slots=()
if [ "$mode" = mpirun ]; then
  [ -r "$hostfile" ] || die "cannot read hostfile $hostfile"
  while read -r host rest; do
    case "$host" in ''|'#'*) continue ;; esac
    n=1
    if [[ "$rest" =~ (^|[[:space:]])slots=([0-9]+) ]]; then n="${BASH_REMATCH[2]}"; fi
    [ "$n" -ge 1 ] || die "$hostfile: host $host has slots=$n; give each host at least one slot"
    hosts+=("$host"); slots+=("$n")
  done <"$hostfile"
  [ ${#hosts[@]} -gt 0 ] || die "$hostfile lists no host (expected lines like 'node1 slots=4')"
  rsh="${ELASTIC_RSH:-${OMPI_MCA_plm_rsh_agent:-ssh}}"
  # A node that vanishes silently is noticed by TCP keepalive (see above).
  export OMPI_MCA_oob_tcp_keepalive_time="${OMPI_MCA_oob_tcp_keepalive_time:-10}"
  export OMPI_MCA_oob_tcp_keepalive_intvl="${OMPI_MCA_oob_tcp_keepalive_intvl:-5}"
  export OMPI_MCA_oob_tcp_keepalive_probes="${OMPI_MCA_oob_tcp_keepalive_probes:-3}"
else
  [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ] || die "--slurm runs inside a Slurm allocation (sbatch --no-kill ...): SLURM_JOB_ID and SLURM_JOB_NODELIST are not set"
  command -v scontrol >/dev/null && command -v srun >/dev/null || die "--slurm needs scontrol and srun"
  per_node="${SLURM_NTASKS_PER_NODE:-}"
  [ -n "$per_node" ] || per_node="${SLURM_TASKS_PER_NODE%%[(,]*}"
  [[ "$per_node" =~ ^[1-9][0-9]*$ ]] || per_node=1
  while read -r host; do
    [ -n "$host" ] && { hosts+=("$host"); slots+=("$per_node"); }
  done < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  [ ${#hosts[@]} -gt 0 ] || die "no nodes in SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST"
fi

# Does HOST answer? mpirun: through the launch agent; Slurm: a one-task step on it.
probe() {
  local host="$1"
  if [ "$mode" = mpirun ]; then
    # shellcheck disable=SC2086
    case "$(basename "${rsh%% *}")" in
      ssh) timeout "$probe_timeout" $rsh -o BatchMode=yes -o ConnectTimeout="$probe_timeout" "$host" true ;;
      *) timeout "$probe_timeout" $rsh "$host" true ;;
    esac
  else
    timeout "$probe_timeout" srun --nodes=1 --ntasks=1 --nodelist="$host" --overlap --quiet true
  fi
} </dev/null >/dev/null 2>&1

# alive_idx: indices of the hosts that answer, probed in parallel.
probe_all() {
  local i pids=()
  alive_idx=()
  for i in "${!hosts[@]}"; do probe "${hosts[i]}" & pids[i]=$!; done
  for i in "${!hosts[@]}"; do wait "${pids[i]}" && alive_idx+=("$i"); done
}

# newest_step / newest_dir: the checkpoint `gandist train --resume auto` will resume from
# (empty: none), and batch: the run's global batch (empty: unknown). gandist answers with the
# code --resume auto uses (`gandist checkpoint latest`, docs/distributed.md); when it cannot
# (a bad configuration, no usable checkpoint) its reason goes to stderr and the attempt, which
# would fail the same way, reports it.
newest_checkpoint() {
  local answer key value
  newest_step="" newest_dir="" batch=""
  answer="$("$GANDIST" checkpoint latest --run-dir "$run_dir" "${config_args[@]}")" || return 0
  while IFS='=' read -r key value; do
    case "$key" in
      checkpoint) newest_dir="$value" ;;
      step) newest_step="$value" ;;
      batch_size) batch="$value" ;;
    esac
  done <<<"$answer"
}

mkdir -p "$run_dir" || die "cannot create run directory $run_dir"
child=""
stop_requested=""
on_signal() {
  stop_requested="$1"
  log "received SIG$1: passing it on, no restart"
  [ -n "$child" ] && kill "-$1" "$child" 2>/dev/null
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

attempt=0
restarts=0
probe_all
while :; do
  attempt=$((attempt + 1))
  if [ ${#alive_idx[@]} = 0 ]; then
    log "attempt $attempt: no host answers (probed: ${hosts[*]}): giving up"
    exit 1
  fi
  use_hosts=() capacity=0 lost=()
  for i in "${alive_idx[@]}"; do use_hosts+=("${hosts[i]}"); capacity=$((capacity + slots[i])); done
  for i in "${!hosts[@]}"; do [[ " ${alive_idx[*]} " == *" $i "* ]] || lost+=("${hosts[i]}"); done
  newest_checkpoint
  ranks=$capacity
  if [[ "$batch" =~ ^[1-9][0-9]*$ ]]; then
    while [ $((batch % ranks)) != 0 ]; do ranks=$((ranks - 1)); done
  fi
  from="starting at step 0 (no checkpoint yet)"
  [ -n "$newest_step" ] && from="resuming from step $newest_step ($newest_dir)"
  what="attempt $attempt"
  [ "$attempt" -gt 1 ] && what="restart $restarts of at most $max_restarts"
  noun=ranks; [ "$ranks" = 1 ] && noun=rank
  log "$what: hosts ${use_hosts[*]}${lost:+ (not answering: ${lost[*]})}; $ranks $noun${batch:+, global batch $batch}; $from"

  started_step="${newest_step:-none}"
  start_time=$SECONDS
  if [ "$mode" = mpirun ]; then
    hosts_now="$run_dir/.elastic-hosts"
    for i in "${alive_idx[@]}"; do echo "${hosts[i]} slots=${slots[i]}"; done >"$hosts_now"
    # shellcheck disable=SC2086
    mpirun -n "$ranks" --hostfile "$hosts_now" ${MPIRUN_ARGS:-} "$GANDIST" train "${train_args[@]}" --resume auto &
  else
    nodes=$(( ${#use_hosts[@]} < ranks ? ${#use_hosts[@]} : ranks ))
    # shellcheck disable=SC2086
    srun --mpi=pmix --kill-on-bad-exit=1 --nodes="$nodes" --ntasks="$ranks" \
      --nodelist="$(IFS=,; echo "${use_hosts[*]:0:$nodes}")" ${SRUN_ARGS:-} \
      "$GANDIST" train "${train_args[@]}" --resume auto &
  fi
  child=$!
  # `wait` returns early when a trapped signal arrives; wait again until the child is gone.
  while :; do
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  child=""
  took=$((SECONDS - start_time))
  if [ "$rc" = 0 ]; then
    log "attempt $attempt finished after ${took} s on ${use_hosts[*]}"
    exit 0
  fi
  newest_checkpoint
  log "attempt $attempt failed with exit status $rc after ${took} s; newest checkpoint: ${newest_step:+step }${newest_step:-none}"
  if [ -n "$stop_requested" ] || [ "$rc" = 130 ] || [ "$rc" = 143 ]; then
    log "the run was stopped on request: no restart"
    exit "$rc"
  fi
  if [ "$restarts" -ge "$max_restarts" ]; then
    log "no restarts left (--max-restarts $max_restarts): giving up"
    exit "$rc"
  fi
  probe_all
  gone=()
  for h in "${use_hosts[@]}"; do
    answers=""
    for i in "${alive_idx[@]}"; do [ "${hosts[i]}" = "$h" ] && answers=1; done
    [ -n "$answers" ] || gone+=("$h")
  done
  if [ ${#gone[@]} = 0 ] && [ "${newest_step:-none}" = "$started_step" ]; then
    log "every host still answers and the attempt wrote no checkpoint: not restarting, the same failure would repeat"
    exit "$rc"
  fi
  [ ${#gone[@]} -gt 0 ] && log "hosts that stopped answering: ${gone[*]}"
  restarts=$((restarts + 1))
done
