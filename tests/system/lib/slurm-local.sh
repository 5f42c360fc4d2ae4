# A private single-node Slurm cluster for the system tests, sourced by tests/system/slurm*.sh:
#
#   . tests/system/lib/slurm-local.sh
#   slurm_start "$tmp"        # munged, slurmctld, slurmd on free ports; exports SLURM_CONF
#   ...                       # sbatch, squeue, scontrol ...
#   slurm_stop                # also from the caller's EXIT trap: every daemon by its pid
#
# Its own munged (socket in a folder of its own), ports, state and TmpFS: tests that run at the
# same time on one machine do not share or stop each other's daemons. The node declares 64
# CPUs whatever it has (slurmd takes the configured count, `config_overrides`) and 8 GPUs of a
# GRES on stand-in device files, so that the GPU batch script passes `sbatch --test-only`; jobs
# that really run ask for --cpus-per-task=1 --overcommit and no GPU. KillWait is 5 s, and
# slurm_stop cancels the cluster's jobs and waits for their processes before it stops the
# daemons, so that a failed test leaves no job processes behind. SLURM_MPI_DEFAULT sets
# MpiDefault (default pmix; Slurm's own default is none).

slurm_pids=()
slurm_munge_dir=""

slurm_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

slurm_start() {
  local dir="$1" host ctl_port d_port
  host="$(hostname -s)"
  ctl_port="$(slurm_free_port)"; d_port="$(slurm_free_port)"
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/tmpfs"
  # munged wants every folder above its socket searchable by all: a folder of its own in /tmp.
  slurm_munge_dir="$(mktemp -d /tmp/gandist-munge.XXXXXX)"
  chown munge:munge "$slurm_munge_dir"; chmod 755 "$slurm_munge_dir"
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  local sock="$slurm_munge_dir/munge.sock"
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground --socket="$sock" \
    --key-file=/etc/munge/munge.key --log-file="$slurm_munge_dir/munged.log" --pid-file="$slurm_munge_dir/munged.pid" \
    --seed-file="$slurm_munge_dir/seed" >"$dir/log/munged.out" 2>&1 &
  slurm_pids+=($!)
  for _ in $(seq 50); do munge -S "$sock" -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  munge -S "$sock" -n </dev/null | unmunge -S "$sock" >/dev/null || { echo "munged does not work"; cat "$dir/log/munged.out"; return 1; }

  # Stand-ins for /dev/nvidia0..7 (character devices like /dev/null): sbatch --test-only only
  # counts them, and no job that runs here asks for a GPU.
  local i
  for i in 0 1 2 3 4 5 6 7; do [ -e "$dir/fake-gpu$i" ] || mknod "$dir/fake-gpu$i" c 1 3; done
  cat > "$dir/gres.conf" <<CONF
AutoDetect=off
NodeName=$host Name=gpu File=$dir/fake-gpu[0-7]
CONF
  cat > "$dir/slurm.conf" <<CONF
ClusterName=gandist-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctl_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
TmpFS=$dir/tmpfs
FirstJobId=$(( (RANDOM % 9000 + 1000) * 100 ))
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=${SLURM_MPI_DEFAULT:-pmix}
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MinJobAge=4
KillWait=5
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=64 Gres=gpu:8 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
${SLURM_EXTRA_CONF:-}
CONF
  export SLURM_CONF="$dir/slurm.conf"
  /usr/sbin/slurmctld -D -c -f "$SLURM_CONF" >"$dir/log/slurmctld.out" 2>&1 &
  slurm_pids+=($!)
  /usr/sbin/slurmd -D -f "$SLURM_CONF" >"$dir/log/slurmd.out" 2>&1 &
  slurm_pids+=($!)
  local state=""
  for _ in $(seq 150); do
    state="$(sinfo -h -o %T 2>/dev/null || true)"
    [ "$state" = idle ] && break
    sleep 0.2
  done
  if [ "$state" != idle ]; then
    echo "slurm node not idle (state '$state')"; tail -n 30 "$dir/log/"*; return 1
  fi
  echo "slurm: node $host idle (slurmctld port $ctl_port, slurmd port $d_port)"
}

# SIGKILL to a process and every process below it, children first.
slurm_kill_tree() {
  local c
  for c in $(pgrep -P "$1" || true); do slurm_kill_tree "$c"; done
  kill -9 "$1" 2>/dev/null || true
}

slurm_stop() {
  local p j jobs=""
  # Jobs first, while slurmd still runs: a job step's slurmstepd outlives slurmd otherwise.
  [ ${#slurm_pids[@]} -gt 0 ] && jobs="$(squeue -h -o %A 2>/dev/null || true)"
  if [ -n "$jobs" ]; then
    scancel $jobs 2>/dev/null || true
    for j in $jobs; do
      # KillWait (5 s here) after the SIGTERM, slurmstepd kills the tasks and ends itself.
      for _ in $(seq 150); do pgrep -f "slurmstepd: \[$j\." >/dev/null || break; sleep 0.1; done
      # These job ids are this cluster's (FirstJobId is random): end what is left of them, the
      # steps' processes first.
      for p in $(pgrep -f "slurmstepd: \[$j\." || true); do
        slurm_kill_tree "$p"
      done
    done
  fi
  for p in "${slurm_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${slurm_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  slurm_pids=()
  [ -z "$slurm_munge_dir" ] || rm -rf "$slurm_munge_dir"
  slurm_munge_dir=""
}
