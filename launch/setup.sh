#!/usr/bin/env bash
# Installs everything gandist needs on Debian/Ubuntu x86-64, idempotently.
#
# Each need is checked by what its consumer uses (bindgen loads a libclang that exports
# clang_createIndex; mpi-sys runs mpicc and includes mpi.h; the system tests start slurmctld,
# munged, prometheus, ...), never by a file-name pattern that a neighbouring package also
# matches (libclang-cpp.so.14 is not a libclang bindgen can load). Unmet needs are installed
# with apt (as root); afterwards every need is checked again and the script stops, naming each
# missing piece and the command that installs it, if any is still unmet.
#
# Then: Rust, if cargo is missing (rustup); torch 2.11.0 from PyPI into a venv in the cache
# directory (reused when present), unless LIBTORCH points at a libtorch 2.11.0.
#
# GANDIST_SETUP_ONLY=system stops after the system packages (used by tests/system/setup.sh).
# GANDIST_SETUP_CHECK=1 installs nothing: it reports unmet needs and exits 1 if there are any.
# GANDIST_SETUP_LIST=1 prints the needs ("what|check|package") and exits.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- needs: "description|check command|apt package" ---------------------------------------
# The libclang check mirrors clang-sys (bindgen's loader): a shared library named libclang.so*
# or libclang-N.so* in LIBCLANG_PATH, an llvm lib directory or the multiarch directory, that
# loads and exports clang_createIndex.
libclang_loadable() {
  python3 - <<'EOF'
import ctypes, glob, os, sys
dirs = [os.environ.get("LIBCLANG_PATH", "")] + sorted(glob.glob("/usr/lib/llvm-*/lib")) + [
    "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"]
for d in filter(None, dirs):
    for f in sorted(glob.glob(os.path.join(d, "libclang.so*")) + glob.glob(os.path.join(d, "libclang-[0-9]*.so*"))):
        try:
            if hasattr(ctypes.CDLL(f), "clang_createIndex"):
                sys.exit(0)
        except OSError:
            pass
sys.exit(1)
EOF
}
clang_headers() { ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1; }
mpi_header() {
  local inc
  inc="$(mpicc --showme:incdirs 2>/dev/null)" || return 1
  for d in $inc; do [ -e "$d/mpi.h" ] && return 0; done
  return 1
}
python_venv() { python3 -c 'import ensurepip, venv' 2>/dev/null; }
has() { command -v "$1" >/dev/null 2>&1; }

# The newest libclang that apt offers, 14 (Debian 12) preferred so that bindgen's headers match.
clang_version() {
  local v
  for v in 14 15 16 17 18 19 13; do
    apt-cache show "libclang1-$v" >/dev/null 2>&1 && { echo "$v"; return; }
  done
  echo 14
}

needs() {
  local cv="${1:-14}"
  cat <<EOF
python3|has python3|python3
a C compiler (cc)|has cc|build-essential
pkg-config|has pkg-config|pkg-config
mpirun (Open MPI)|has mpirun|openmpi-bin
mpicc and mpi.h (mpi-sys build)|mpi_header|libopenmpi-dev
a loadable libclang exporting clang_createIndex (bindgen)|libclang_loadable|libclang1-$cv
clang's stddef.h (bindgen)|clang_headers|libclang-common-$cv-dev
slurmctld|has slurmctld|slurmctld
slurmd|has slurmd|slurmd
sbatch, srun, scontrol (Slurm client)|has sbatch|slurm-client
munged and mungekey|has munged && has mungekey|munge
prometheus|has prometheus|prometheus
promtool|has promtool|prometheus
npm (dashboard type check)|has npm|npm
jq|has jq|jq
curl|has curl|curl
ip and tc (multi-node tests)|has ip && has tc|iproute2
nsenter, unshare, setpriv (multi-node tests)|has nsenter && has unshare && has setpriv|util-linux
python3 venv and ensurepip (torch venv)|python_venv|python3-venv
EOF
}

unmet() { # prints the unmet needs' lines
  local line desc check pkg
  while IFS= read -r line; do
    IFS='|' read -r desc check pkg <<<"$line"
    eval "$check" >/dev/null 2>&1 || echo "$line"
  done < <(needs "$@")
}

if [ -n "${GANDIST_SETUP_LIST:-}" ]; then needs "$(clang_version)"; exit 0; fi
missing="$(unmet)"
if [ -n "$missing" ] && [ -z "${GANDIST_SETUP_CHECK:-}" ]; then
  if [ "$(id -u)" = 0 ] && has apt-get; then
    export DEBIAN_FRONTEND=noninteractive
    echo "setup: apt-get update"
    apt-get update -q >/dev/null
    cv="$(clang_version)"
    pkgs="$(unmet "$cv" | cut -d'|' -f3 | sort -u | tr '\n' ' ')"
    echo "setup: installing $pkgs"
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $pkgs >/dev/null
    hash -r
    missing="$(unmet "$cv")"
  fi
fi
if [ -n "$missing" ]; then
  echo "setup: these needs are not met:" >&2
  while IFS='|' read -r desc check pkg; do
    echo "setup:   $desc (package $pkg; check: $check)" >&2
  done <<<"$missing"
  echo "setup: install them with: sudo apt-get install -y --no-install-recommends $(cut -d'|' -f3 <<<"$missing" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
echo "setup: system packages ok"
[ "${GANDIST_SETUP_ONLY:-}" = system ] && exit 0

if ! has cargo && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "setup: installing Rust with rustup"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

# shellcheck source=env.sh
. "$here/env.sh"
if [ -z "${LIBTORCH:-}" ]; then
  if ! "$GANDIST_TORCH_VENV/bin/python" -W ignore -c 'import torch; assert torch.__version__.startswith("2.11.0")' 2>/dev/null; then
    echo "setup: installing torch 2.11.0 into $GANDIST_TORCH_VENV (a few GB, once)"
    mkdir -p "$GANDIST_CACHE"
    rm -rf "$GANDIST_TORCH_VENV"
    python3 -m venv "$GANDIST_TORCH_VENV"
    "$GANDIST_TORCH_VENV/bin/pip" install -q --disable-pip-version-check torch==2.11.0
  fi
  "$GANDIST_TORCH_VENV/bin/python" -W ignore -c 'import torch; assert torch.__version__.startswith("2.11.0")' || {
    echo "setup: torch 2.11.0 did not install into $GANDIST_TORCH_VENV; remove that folder and run again" >&2
    exit 1
  }
elif [ ! -e "$LIBTORCH/lib/libtorch.so" ]; then
  echo "setup: LIBTORCH=$LIBTORCH holds no lib/libtorch.so; expected an unpacked libtorch 2.11.0" >&2
  exit 1
fi
has cargo || [ -x "$HOME/.cargo/bin/cargo" ] || { echo "setup: cargo not found after rustup; open a new shell or add ~/.cargo/bin to PATH" >&2; exit 1; }
echo "setup: ok (libtorch from ${LIBTORCH:-$GANDIST_TORCH_VENV})"
