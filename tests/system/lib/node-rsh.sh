#!/usr/bin/env bash
# The ssh of the test nodes (tests/system/lib/nodes.sh), for Open MPI's plm_rsh_agent and for
# launch/elastic.sh's host probe: `node-rsh.sh HOST COMMAND...` runs COMMAND through a shell on
# the node whose name or address is HOST. Like ssh, it joins the command's words for that shell,
# fails with status 255 when the node cannot be reached, stays on the calling machine while the
# command runs on the node, and when the node dies:
#   - if its processes die but its network stays (the remote sshd's socket closes), it exits 255;
#   - if the node goes silent (link cut, powered off), it hears nothing and hangs, as ssh does
#     without ServerAliveInterval, until the caller kills it.
set -u
. "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"
[ -n "${NODES_DIR:-}" ] && [ -f "$NODES_DIR/.nodes/hosts" ] || { echo "node-rsh: NODES_DIR does not name the nodes' folder" >&2; exit 255; }
host="${1:?usage: node-rsh.sh HOST COMMAND...}"; shift
name="$(awk -v h="$host" '$1 == h || $2 == h { print $2; exit }' "$NODES_DIR/.nodes/hosts")"
reachable() { [ -e "/run/netns/$name" ] && [ "$(ip -n "$name" -br link show eth0 2>/dev/null | awk '{print $2}')" = UP ]; }
if [ -z "$name" ] || ! reachable; then
  echo "ssh: connect to host $host port 22: No route to host" >&2
  exit 255
fi
node_exec "$name" sh -c "$*" &
remote=$!
trap 'kill -TERM $remote 2>/dev/null' TERM INT HUP
while :; do
  wait $remote 2>/dev/null; rc=$?
  kill -0 $remote 2>/dev/null || break
done
if [ "$rc" -gt 128 ] && ! reachable; then
  exec sleep infinity
fi
[ "$rc" -gt 128 ] && [ "$(kill -l $((rc - 128)) 2>/dev/null)" = KILL ] && exit 255
exit "$rc"
