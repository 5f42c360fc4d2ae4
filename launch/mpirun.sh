#!/usr/bin/env bash
# Data-parallel training on one machine (or a hostfile's machines) with Open MPI:
#   launch/mpirun.sh 8 --config configs/wgan-gp-mnist.toml [--set ...] [--run-dir ...]
# The first argument is the number of ranks; the rest goes to `gandist train`.
# Set GANDIST to another binary, MPIRUN_ARGS for mpirun options (e.g. "--hostfile hosts").
# More ranks than cores is allowed (--oversubscribe), useful for CPU tests.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 N_RANKS gandist-train-arguments..." >&2; exit 2; }
n="$1"; shift
case "$n" in ''|*[!0-9]*) echo "$0: N_RANKS must be a positive integer, got '$n'" >&2; exit 2 ;; esac
. "$here/env.sh"
GANDIST="${GANDIST:-$here/../target/release/gandist}"
# shellcheck disable=SC2086
exec mpirun -n "$n" --oversubscribe ${MPIRUN_ARGS:-} "$GANDIST" train "$@"
