#!/usr/bin/env bash
# launch/setup.sh without root, as on a cluster's login node: run by a user this test creates
# (a home of its own under the test's folder) through setpriv, on this machine where root has
# installed the system packages. In a private mount namespace per run, the user is lent the
# libtorch of root's torch venv (LIBTORCH=its torch folder, so that nothing is downloaded; the
# venv's own python lives under /root here, which the user cannot enter) and root's ~/.cargo
# (so that rustup is not run; nothing is built), and the cluster offers Open MPI as a module
# (Environment Modules, a modulefile that puts a copy of Open MPI's compiler wrapper first on
# PATH). Six runs:
#   1. everything present: the set-up passes, says that it installs nothing system-wide and
#      what the environment provides, and never prints apt-get;
#   2. mpicc hidden (Open MPI's wrapper covered by an empty file): it stops with exactly the
#      missing piece and the ways to provide it without root, the module it found first, and no
#      apt-get;
#   3-5. each way it named then works: `module load openmpi/4.1-test`, MPICC=..., and
#      GANDIST_SETUP_NO_MPI=1 for the build without MPI;
#   6. GANDIST_TORCH_VENV naming a folder of the user's without torch: the set-up stops with
#      what to do and leaves the folder alone (it used to remove it, to make the venv there).
# Needs root (to create the user and the namespaces). About 10 seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ "$(id -u)" = 0 ] || { echo "FAIL: needs root (it creates a user)"; exit 1; }
. launch/env.sh
torch_dir="$("$GANDIST_TORCH_VENV/bin/python" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin))' 2>/dev/null)" \
  && [ -e "$torch_dir/lib/libtorch.so" ] || { echo "FAIL: no torch venv at $GANDIST_TORCH_VENV (launch/setup.sh makes it)"; exit 1; }
[ -r /usr/share/modules/init/bash ] || { echo "FAIL: no Environment Modules (launch/setup.sh installs environment-modules)"; exit 1; }
cargo_home="$(dirname "$(dirname "$(command -v cargo)")")"
wrapper="$(readlink -f "$(command -v mpicc)")"
tmp="$(mktemp -d /tmp/gandist-setup-user.XXXXXX)"
user="gandist-setup-$$"
cleanup() {
  userdel "$user" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
chmod 755 "$tmp"
useradd --create-home --home-dir "$tmp/home" --shell /bin/bash --user-group "$user"
mkdir -p "$tmp/home/.cargo" "$tmp/libtorch" "$tmp/clone"
cp -r launch "$tmp/clone/"
# The cluster's Open MPI module: a copy of the wrapper named mpicc (it finds its settings in
# /usr/share/openmpi by that name), on a PATH that the modulefile prepends.
mkdir -p "$tmp/ompi/bin" "$tmp/modulefiles/openmpi"
cp "$wrapper" "$tmp/ompi/bin/mpicc"
printf '#%%Module1.0\nprepend-path PATH %s\n' "$tmp/ompi/bin" >"$tmp/modulefiles/openmpi/4.1-test"
chmod -R a+rX "$tmp/clone" "$tmp/ompi" "$tmp/modulefiles"

# as_user HIDE_MPICC COMMAND: runs COMMAND (a bash command line, in the clone) as the user.
as_user() {
  # shellcheck disable=SC2016
  unshare -m bash -euc '
    mount --bind "$TORCH" "$TMP/libtorch"
    mount --bind "$CARGO_HOME_SRC" "$TMP/home/.cargo"
    [ "$HIDE" = 0 ] || mount --bind /dev/null "$WRAPPER"
    cd "$TMP/clone"
    exec setpriv --reuid="$U" --regid="$U" --init-groups env -i HOME="$TMP/home" USER="$U" LOGNAME="$U" \
      PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 LIBTORCH="$TMP/libtorch" MODULEPATH="$TMP/modulefiles" bash -c "$CMD"
  ' 2>&1
}
run() { # NAME HIDE COMMAND: runs it as the user; sets $out and $st
  set +e
  out="$(TORCH="$torch_dir" CARGO_HOME_SRC="$cargo_home" TMP="$tmp" U="$user" WRAPPER="$wrapper" HIDE="$2" CMD="$3" as_user)"
  st=$?
  set -e
  echo "--- $1 (exit $st)"
  echo "$out"
  ! grep -q "apt-get" <<<"$out" || { echo "FAIL: $1: printed an apt-get command to a user without root"; exit 1; }
}
want_line() { grep -Fxq -- "$2" <<<"$out" || { echo "FAIL: $1: no line: $2"; exit 1; }; }

# 1. Everything present.
SECONDS=0
run "everything present" 0 "bash launch/setup.sh"
[ $st -eq 0 ] || { echo "FAIL: the set-up without root failed with everything present"; exit 1; }
want_line 1 "setup: not running as root: nothing is installed system-wide (Rust goes to ~/.cargo, the torch venv to $tmp/home/.cache/gandist/torch-2.11.0)"
want_line 1 "setup: the environment provides: module (1 modules available on MODULEPATH=$tmp/modulefiles) LIBTORCH=$tmp/libtorch"
want_line 1 "setup: build needs ok"
want_line 1 "setup: ok (libtorch from $tmp/libtorch)"

# 2. mpicc hidden: exactly this piece, and the ways without root.
run "mpicc hidden" 1 "bash launch/setup.sh"
[ $st -ne 0 ] || { echo "FAIL: the set-up passed without mpicc"; exit 1; }
[ "$(grep -c '^setup: missing: ' <<<"$out")" = 1 ] || { echo "FAIL: expected exactly one missing piece"; exit 1; }
want_line 2 "setup: missing: mpicc and mpi.h (mpi-sys build)"
want_line 2 "setup:   provide it without root in one of these ways:"
want_line 2 "setup:   - module load openmpi/4.1-test   (the cluster's modules that match: openmpi/4.1-test)"
want_line 2 "setup:   - MPICC=/path/to/openmpi/bin/mpicc bash launch/setup.sh (an Open MPI 4 or 5 of your own or the cluster's), with its bin folder on PATH for mpirun"
want_line 2 "setup:   - or build without MPI (one process only): GANDIST_SETUP_NO_MPI=1 bash launch/setup.sh, then cargo build --release --no-default-features"
want_line 2 "setup:   - or ask the cluster's administrators for Open MPI's development files (Debian/Ubuntu package libopenmpi-dev)"

# 3-5. Each way named works.
run "mpicc hidden, module load" 1 ". /usr/share/modules/init/bash && module load openmpi/4.1-test && bash launch/setup.sh"
[ $st -eq 0 ] || { echo "FAIL: module load openmpi/4.1-test did not provide mpicc"; exit 1; }
want_line 3 "setup: ok (libtorch from $tmp/libtorch)"
run "mpicc hidden, MPICC" 1 "MPICC=$tmp/ompi/bin/mpicc bash launch/setup.sh"
[ $st -eq 0 ] || { echo "FAIL: MPICC=$tmp/ompi/bin/mpicc did not provide mpicc"; exit 1; }
grep -q "^setup: the environment provides: .*MPICC=$tmp/ompi/bin/mpicc" <<<"$out" || { echo "FAIL: MPICC not reported as provided"; exit 1; }
run "mpicc hidden, build without MPI" 1 "GANDIST_SETUP_NO_MPI=1 bash launch/setup.sh"
[ $st -eq 0 ] || { echo "FAIL: GANDIST_SETUP_NO_MPI=1 still needed mpicc"; exit 1; }
want_line 5 "setup: build needs ok for the build without MPI: cargo build --release --no-default-features"
# 6. A folder of the user's named as the venv, without torch: left alone.
mkdir -p "$tmp/home/my-env" && echo keep >"$tmp/home/my-env/mine.txt" && chown -R "$user:$user" "$tmp/home/my-env"
run "GANDIST_TORCH_VENV without torch" 0 "env -u LIBTORCH GANDIST_TORCH_VENV=$tmp/home/my-env bash launch/setup.sh"
[ $st -ne 0 ] || { echo "FAIL: the set-up passed with a venv without torch"; exit 1; }
want_line 6 "setup: GANDIST_TORCH_VENV=$tmp/home/my-env exists but its python cannot import torch 2.11.0: install it there ($tmp/home/my-env/bin/pip install torch==2.11.0), or name a folder that does not exist yet, which the set-up then makes"
[ "$(cat "$tmp/home/my-env/mine.txt")" = keep ] || { echo "FAIL: the set-up touched the user's folder"; exit 1; }
echo "PASS: the set-up without root passes with everything present, names the hidden mpicc with the ways to provide it, and each way works ($SECONDS s)"
