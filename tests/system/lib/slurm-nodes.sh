# A real multi-node Slurm cluster on the test nodes of nodes.sh. Source both, call nodes_up, then
#
#   slurm_cluster_up             munged (its own key and socket), slurmctld on the head node
#                                (PREFIX0), one slurmd per other node with its own NodeName,
#                                NodeAddr, spool, pid and log file; waits until every node is idle.
#                                Exports SLURM_CONF, so sbatch, squeue, scontrol work from here.
#   slurm_node_state NODE        the node's state as slurmctld sees it (idle, allocated, down*, ...)
#   slurm_job_field JOB FIELD    one field of `scontrol show job` (JobState, Reason, NodeList, ...)
#   slurm_logs                   the tail of every daemon's log, for failure reports
#
# The daemons run inside the node namespaces, so nodes.sh's teardown stops them with the nodes.
# The munge daemon has its own socket, key and state in the test's folder: it neither uses nor
# disturbs a munged that something else runs on this machine.

SLURM_DIR=""

slurm_cluster_up() {
  local head="${NODES_NAMES[0]}" name i state all_idle _
  local nodes=("${NODES_NAMES[@]:1}")
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    || _nodes_die "needs Slurm's slurmctld and slurmd and munge's munged (launch/setup.sh installs them)"
  SLURM_DIR="$NODES_DIR/slurm"
  mkdir -p "$SLURM_DIR/state" "$SLURM_DIR/log" "$SLURM_DIR/munge"
  for name in "${nodes[@]}"; do mkdir -p "$SLURM_DIR/spool-$name"; done
  # munged runs as the munge user and insists on private, munge-owned folders for its files.
  chmod 755 "$NODES_DIR" "$SLURM_DIR"
  chmod 755 "$SLURM_DIR/munge"
  chown munge:munge "$SLURM_DIR/munge"
  local key="$SLURM_DIR/munge/munge.key" socket="$SLURM_DIR/munge/munge.socket"
  setpriv --reuid munge --regid munge --clear-groups mungekey --create --keyfile="$key" >/dev/null \
    || _nodes_die "mungekey could not create $key"
  node_exec "$head" setpriv --reuid munge --regid munge --clear-groups \
    munged -F --socket="$socket" --key-file="$key" --pid-file="$SLURM_DIR/munge/munged.pid" \
    --log-file="$SLURM_DIR/munge/munged.log" --seed-file="$SLURM_DIR/munge/munged.seed" \
    >"$SLURM_DIR/log/munged.out" 2>&1 &
  for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
  munge -S "$socket" -n </dev/null | unmunge -S "$socket" >/dev/null \
    || { cat "$SLURM_DIR/log/munged.out" "$SLURM_DIR/munge/munged.log" >&2; _nodes_die "the test's munged does not answer on $socket"; }

  export SLURM_CONF="$SLURM_DIR/slurm.conf"
  {
    cat <<CONF
ClusterName=gandist-nodes
SlurmctldHost=$head($(node_ip "$head"))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool-%n
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd-%n.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# Finished jobs stay visible to scontrol for the checks.
MinJobAge=600
ReturnToService=2
# A node that stops answering is marked down after this many seconds (default 300).
SlurmdTimeout=10
# Ranks blocked in a collective with a dead peer ignore SIGTERM until their stop grace runs out:
# SIGKILL them 5 s after it (default 30 s).
KillWait=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
CONF
    for name in "${nodes[@]}"; do
      echo "NodeName=$name NodeAddr=$(node_ip "$name") CPUs=$(nproc) State=UNKNOWN"
    done
    echo "PartitionName=test Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
  } >"$SLURM_CONF"

  node_exec "$head" slurmctld -D -c -f "$SLURM_CONF" >"$SLURM_DIR/log/slurmctld.out" 2>&1 &
  for name in "${nodes[@]}"; do
    # Each node's own temporary folder for PMIx, which otherwise puts the same /tmp path on
    # every node of a step (on one machine the nodes would clash there). Slurm reads mpi.conf
    # beside the slurm.conf it was given, so each slurmd gets a folder with both.
    mkdir -p "$SLURM_DIR/etc-$name" "$SLURM_DIR/tmp-$name"
    ln -s "$SLURM_CONF" "$SLURM_DIR/etc-$name/slurm.conf"
    echo "PMIxCliTmpDirBase=$SLURM_DIR/tmp-$name" >"$SLURM_DIR/etc-$name/mpi.conf"
    node_exec "$name" slurmd -D -f "$SLURM_DIR/etc-$name/slurm.conf" -N "$name" >"$SLURM_DIR/log/slurmd-$name.out" 2>&1 &
  done
  for _ in $(seq 150); do
    all_idle=1
    for name in "${nodes[@]}"; do
      state="$(slurm_node_state "$name")"
      [ "$state" = idle ] || { all_idle=""; break; }
    done
    [ -n "$all_idle" ] && break
    sleep 0.2
  done
  if [ -z "$all_idle" ]; then
    slurm_logs >&2
    _nodes_die "Slurm nodes not idle within 30 s: $(sinfo -h -N -o '%N %T' 2>&1 | tr '\n' ' ')"
  fi
  echo "slurm: slurmctld on $head, slurmd on ${nodes[*]}: all idle"
}

slurm_node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -1; }

slurm_job_field() {
  scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | awk -F= -v f="$2" '$1 == f { sub(/^[^=]*=/, ""); print; exit }'
}

slurm_logs() {
  local f
  for f in "$SLURM_DIR"/log/*; do echo "== $f"; tail -25 "$f"; done
}
