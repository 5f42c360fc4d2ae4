#!/usr/bin/env bash
# The build without MPI (`cargo build --no-default-features`), for a workstation without Open
# MPI: the default binary needs libmpi.so.40 to start at all. This test builds it, checks that it
# links no libmpi, and on a machine made to lack Open MPI's library (a private mount namespace
# in which /usr/lib/.../libmpi.so.40 is an empty file) the default binary cannot start while
# this one trains one process to its checkpoint; asked for MPI (dist.backend = "mpi", or
# started under mpirun with "auto"), it refuses naming the build. It then rebuilds the default
# binary, which the other system tests use (also when it fails). About 1 minute, most of it the
# two builds of the gandist crate (its dependencies are shared with the default build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
data="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
tmp="$(mktemp -d /tmp/gandist-nompi.XXXXXX)"
restore() {
  # The other system tests run target/debug/gandist: put the default (MPI) build back.
  cargo build -q --bin gandist || echo "FAIL: could not rebuild the default binary"
  rm -rf "$tmp"
}
trap restore EXIT
SECONDS=0
cargo build -q --no-default-features --bin gandist
cp target/debug/gandist "$tmp/gandist-no-mpi"
nompi="$tmp/gandist-no-mpi"
echo "built without MPI in ${SECONDS} s"
if ldd "$nompi" | grep -q libmpi; then echo "FAIL: the build without MPI links libmpi: $(ldd "$nompi" | grep libmpi)"; exit 1; fi
libmpi="$(readlink -f "$(ldconfig -p | awk '/libmpi\.so\.40 / { print $NF; exit }')")"
[ -f "$libmpi" ] || { echo "FAIL: no libmpi.so.40 on this machine to hide"; exit 1; }
cargo build -q --bin gandist
cp target/debug/gandist "$tmp/gandist-default"

# A machine without Open MPI's library: an empty file in its place, in this namespace only.
# shellcheck disable=SC2016
unshare -m bash -euo pipefail -c '
  libmpi="$1" tmp="$2" data="$3"
  mount --bind /dev/null "$libmpi"
  if out="$("$tmp/gandist-default" --help 2>&1)"; then echo "FAIL: the default binary started without libmpi"; exit 1; fi
  grep -q "libmpi.so.40" <<<"$out" || { echo "FAIL: unexpected failure of the default binary: $out"; exit 1; }
  echo "ok: without libmpi the default binary cannot start: ${out%%$'"'"'\n'"'"'*}"
  "$tmp/gandist-no-mpi" train --config configs/smoke.toml --data "$data" --run-dir "$tmp/run" --set train.iterations=3 >"$tmp/train.out" 2>&1 \
    || { cat "$tmp/train.out"; echo "FAIL: the build without MPI did not train"; exit 1; }
  grep -q "backend local" "$tmp/train.out" || { cat "$tmp/train.out"; echo "FAIL: no start-up line naming the local backend"; exit 1; }
  [ -f "$tmp/run/checkpoints/step-000000003/state.safetensors" ] || { echo "FAIL: no checkpoint at step 3"; exit 1; }
  echo "ok: without libmpi the build without MPI trained one process to its checkpoint"
  if out="$("$tmp/gandist-no-mpi" train --config configs/smoke.toml --data "$data" --run-dir "$tmp/run2" --set dist.backend=\"mpi\" 2>&1)"; then
    echo "FAIL: dist.backend = \"mpi\" was accepted by the build without MPI"; exit 1
  fi
  grep -q "this gandist was built without MPI (cargo build --no-default-features), so it runs one process only" <<<"$out" \
    || { echo "FAIL: unclear refusal: $out"; exit 1; }
  echo "ok: dist.backend = \"mpi\" is refused, naming the build"
' _ "$libmpi" "$tmp" "$data"

# Under mpirun (Open MPI is there outside the namespace) with "auto": each process refuses.
set +e
out="$(OMPI_MCA_rmaps_base_oversubscribe=1 timeout 60 mpirun -n 2 "$nompi" train --config configs/smoke.toml --data "$data" --run-dir "$tmp/run3" 2>&1)"
st=$?
set -e
[ $st -ne 0 ] || { echo "FAIL: mpirun -n 2 of the build without MPI exited 0: $out"; exit 1; }
[ "$(grep -c "this gandist was built without MPI" <<<"$out")" -ge 2 ] || { echo "FAIL: not both processes refused: $out"; exit 1; }
[ ! -e "$tmp/run3/metrics.jsonl" ] || { echo "FAIL: a refused process wrote into the run directory"; exit 1; }
echo "ok: under mpirun both processes refuse"
echo "PASS: the build without MPI links no libmpi, trains one process without it, and refuses MPI ($SECONDS s)"
