# Several "nodes" on one machine for the multi-node system tests. Source it, then
#
#   nodes_up PREFIX SUBNET N     a bridge PREFIXbr with SUBNET.1/24, and N+1 nodes: PREFIX0 (the
#                                head, for mpirun, slurmctld, Prometheus) at SUBNET.10 and
#                                PREFIX1..PREFIXN at SUBNET.11... Each node is a network namespace
#                                of that name on the bridge; commands in it run in their own UTS
#                                namespace (host name = node name) and see a private /etc/hosts
#                                that names every node. The file system is shared, like a
#                                cluster's shared storage.
#   node_exec NODE CMD...        runs CMD on NODE (in the background, $! is the shell that
#                                runs it; CMD is that shell's child, see pgrep -P)
#   node_ip NODE                 its address
#   node_kill_processes NODE     SIGKILL to every process on NODE (their sockets close: peers see it)
#   node_power_off NODE          a silent death: the link is cut first, so no peer hears a
#                                thing, then every process is killed and the node removed
#   node_restore NODE            brings a powered-off node back (same name and address, nothing
#                                running on it)
#   running PID                  whether the process runs (a zombie that its parent has not
#                                waited for yet does not count, unlike with kill -0)
#   nodes_track_pid PID          a process to stop at teardown (TERM, then KILL)
#   nodes_mpirun_args            mpirun options that start Open MPI's daemons on the nodes
#
# Teardown runs on every exit (EXIT, INT, TERM traps): it stops the tracked processes, kills
# every process left in the namespaces, and removes the namespaces, their veth pairs, the bridge
# and the working folder (NODES_KEEP=1 keeps the folder for a look), and only what nodes_up
# made. A test that needs more clean-up of its own has nodes_up's trap do it by tracking pids or
# by keeping its files in NODES_DIR. nodes_up refuses to start when
# a bridge, namespace or veth of its names, or an address or route in its /24, already exists:
# such things belong to someone else and are never touched.
#
# NODES_DIR is the nodes' shared folder (tests put their runs there); this file keeps its own
# files in NODES_DIR/.nodes.
# Needs root, iproute2 and util-linux's unshare and nsenter.

NODES_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODES_PREFIX=""
NODES_SUBNET=""
NODES_BRIDGE=""
NODES_DIR="${NODES_DIR:-}"
NODES_NAMES=()
_nodes_made_bridge=""
_nodes_made_ns=()
_nodes_pids=()

_nodes_die() { echo "nodes: $*" >&2; exit 1; }

nodes_up() {
  local prefix="$1" subnet="$2" n="$3" i
  [ "$(id -u)" = 0 ] || _nodes_die "network namespaces need root"
  [[ "$prefix" =~ ^[a-z][a-z0-9]{1,7}$ ]] || _nodes_die "prefix '$prefix': 2-8 lower-case letters or digits, starting with a letter"
  [[ "$subnet" =~ ^10\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || _nodes_die "subnet '$subnet': the first three octets of a private 10.x.y.0/24"
  [[ "$n" =~ ^[1-9]$ ]] || _nodes_die "node count '$n': 1 to 9"
  command -v ip >/dev/null && command -v unshare >/dev/null || _nodes_die "needs ip (iproute2) and unshare (util-linux)"
  NODES_PREFIX="$prefix" NODES_SUBNET="$subnet" NODES_BRIDGE="${prefix}br"
  NODES_NAMES=()
  for i in $(seq 0 "$n"); do NODES_NAMES+=("$prefix$i"); done

  # Refuse rather than clean up: whatever already has these names or addresses is not ours.
  ip link show "$NODES_BRIDGE" >/dev/null 2>&1 && _nodes_die "a link named $NODES_BRIDGE exists already: not starting (it is not this test's to remove)"
  for i in "${NODES_NAMES[@]}"; do
    [ -e "/run/netns/$i" ] && _nodes_die "network namespace $i exists already: not starting (it is not this test's to remove)"
    ip link show "${i}v" >/dev/null 2>&1 && _nodes_die "a link named ${i}v exists already: not starting"
  done
  [ -z "$(ip -4 -o addr show to "$subnet.0/24")" ] || _nodes_die "an interface already has an address in $subnet.0/24: choose another subnet"
  [ -z "$(ip -4 route show to match "$subnet.0/24" | grep -v '^default')" ] || _nodes_die "a route to $subnet.0/24 exists already: choose another subnet"

  trap _nodes_teardown EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # Shared storage for the nodes: outside /tmp so that nothing hides it.
  NODES_DIR="$(mktemp -d "${NODES_TMP:-/var/tmp}/gandist-nodes.XXXXXX")"
  export NODES_DIR
  mkdir "$NODES_DIR/.nodes" "$NODES_DIR/.nodes/ompi"
  # Open MPI's session folders (named after the host) in the test's folder, not in /tmp: ranks
  # killed with their node leave theirs behind, and a later job with the same host name and job
  # number (Slurm numbers each new cluster's jobs from 1) would find the stale files.
  export OMPI_MCA_orte_tmpdir_base="$NODES_DIR/.nodes/ompi"
  ip link add "$NODES_BRIDGE" type bridge || _nodes_die "cannot create bridge $NODES_BRIDGE"
  _nodes_made_bridge=1
  ip addr add "$subnet.1/24" dev "$NODES_BRIDGE"
  ip link set "$NODES_BRIDGE" up
  {
    echo "127.0.0.1 localhost"
    for i in $(seq 0 "$n"); do echo "$subnet.$((10 + i)) $prefix$i"; done
  } >"$NODES_DIR/.nodes/hosts"
  for i in $(seq 0 "$n"); do _node_add "$prefix$i" "$subnet.$((10 + i))"; done
}

# One node: namespace NAME, veth NAMEv on the bridge, eth0 with ADDRESS inside.
_node_add() {
  local name="$1" addr="$2"
  ip netns add "$name" || _nodes_die "cannot create network namespace $name"
  _nodes_made_ns+=("$name")
  ip link add "${name}v" type veth peer name eth0 netns "$name"
  ip link set "${name}v" master "$NODES_BRIDGE" up
  ip -n "$name" addr add "$addr/24" dev eth0
  ip -n "$name" link set eth0 up
  ip -n "$name" link set lo up
}

node_ip() {
  awk -v n="$1" '$2 == n { print $1; found = 1 } END { exit !found }' "$NODES_DIR/.nodes/hosts" || _nodes_die "no node named '$1'"
}

node_exec() {
  local name="$1"; shift
  [ -e "/run/netns/$name" ] || _nodes_die "node $name is not up"
  # nsenter rather than `ip netns exec`, which remounts /sys and so hides the cgroup file system
  # that slurmd needs.
  nsenter --net="/run/netns/$name" unshare --uts --mount \
    sh -c 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"' sh "$name" "$NODES_DIR/.nodes/hosts" "$@"
}

_node_pids() { ip netns pids "$1" 2>/dev/null || true; }

node_kill_processes() {
  local name="$1" p _
  for _ in $(seq 50); do
    p="$(_node_pids "$name")"
    [ -z "$p" ] && return 0
    # shellcheck disable=SC2086
    kill -KILL $p 2>/dev/null || true
    sleep 0.1
  done
  echo "nodes: processes on $name survive SIGKILL: $(_node_pids "$name")" >&2
  return 1
}

node_power_off() {
  local name="$1"
  ip link set "${name}v" down
  ip -n "$name" link set eth0 down
  node_kill_processes "$name" || return 1
  ip netns del "$name"
  # The namespace itself lives on, unnamed, while its closed connections still retransmit to
  # peers that cannot hear them; deleting the veth pair frees the node's names now.
  ip link del "${name}v"
}

node_restore() {
  local name="$1"
  [ -e "/run/netns/$name" ] && _nodes_die "node $name is up already"
  [[ " ${NODES_NAMES[*]} " == *" $name "* ]] || _nodes_die "no node named '$name'"
  _node_add "$name" "$(node_ip "$name")"
}

running() {
  local state
  state="$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null)"
  [ -n "$state" ] && [ "$state" != Z ]
}

nodes_track_pid() { _nodes_pids+=("$1"); }

nodes_mpirun_args() {
  echo "--mca plm_rsh_agent $NODES_LIB/node-rsh.sh --mca btl tcp,self" \
    "--mca oob_tcp_if_include $NODES_SUBNET.0/24 --mca btl_tcp_if_include $NODES_SUBNET.0/24"
}

_nodes_teardown() {
  local rc=$? p name _
  trap - EXIT INT TERM
  set +e
  for p in "${_nodes_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${_nodes_pids[@]}"; do
    for _ in $(seq 30); do running "$p" || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  for name in "${_nodes_made_ns[@]}"; do
    if [ -e "/run/netns/$name" ]; then
      node_kill_processes "$name"
      ip netns del "$name"
    fi
    # A namespace lives on, unnamed, while closed TCP connections in it still retransmit to a
    # dead peer; deleting the veth pair frees its names now.
    ip link del "${name}v" 2>/dev/null
  done
  [ -n "$_nodes_made_bridge" ] && ip link del "$NODES_BRIDGE" 2>/dev/null
  if [ -n "${NODES_KEEP:-}" ]; then echo "nodes: kept $NODES_DIR" >&2; elif [ -n "$NODES_DIR" ] && [ -d "$NODES_DIR" ]; then rm -rf "$NODES_DIR"; fi
  exit "$rc"
}
