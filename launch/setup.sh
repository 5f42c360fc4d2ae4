#!/usr/bin/env bash
# Installs everything gandist needs on Debian/Ubuntu x86-64, idempotently; without root, what
# can be installed in user space.
#
# Each need is checked by what its consumer uses (bindgen loads a libclang that exports
# clang_createIndex; mpi-sys runs mpicc (or $MPICC) and includes mpi.h; the system tests start
# slurmctld, munged, prometheus, ...), never by a file-name pattern that a neighbouring package
# also matches (libclang-cpp.so.14 is not a libclang bindgen can load).
#
# As root: unmet needs are installed with apt; afterwards every need is checked again and the
# script stops, naming each missing piece and the command that installs it, if any is still
# unmet.
#
# Without root (a cluster's login node): nothing is installed system-wide. The needs of the
# build are checked (those of the test suite, which runs as root, are only listed), using what
# the cluster provides: `module` environments (Environment Modules or Lmod), MPICC, CC,
# LIBCLANG_PATH, BINDGEN_EXTRA_CLANG_ARGS, LIBTORCH, GANDIST_TORCH_VENV; a missing piece stops
# the script with the ways to provide it without root (a module it found, a variable, a path,
# the build without MPI), and never with an apt-get command.
#
# Then, either way: Rust, if cargo is missing (rustup, into ~/.cargo); torch 2.11.0 from PyPI
# into a venv in the cache directory (reused when present), unless LIBTORCH points at a
# libtorch 2.11.0.
#
# GANDIST_SETUP_ONLY=system stops after the system packages (used by tests/system/setup.sh).
# GANDIST_SETUP_CHECK=1 installs nothing: it reports unmet needs and exits 1 if there are any.
# GANDIST_SETUP_LIST=1 prints the needs ("what|check|package|group") and exits.
# GANDIST_SETUP_NO_MPI=1 leaves out the needs of the MPI build (Open MPI, libclang): for
#   `cargo build --no-default-features`, one process only.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- needs: "description|check command|apt package|group" ---------------------------------
# Groups: build (every build), mpi (the default build, with Open MPI), suite (the test suite
# and its tools; required as root, only listed without root).
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
# clang finds its headers beside the libclang it loads (<its folder>/clang/<version>/include);
# BINDGEN_EXTRA_CLANG_ARGS may name another folder holding stddef.h (a C compiler's own).
clang_headers() {
  ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1 && return 0
  [ -n "${LIBCLANG_PATH:-}" ] && ls "$LIBCLANG_PATH"/clang/*/include/stddef.h >/dev/null 2>&1 && return 0
  local a
  for a in ${BINDGEN_EXTRA_CLANG_ARGS:-}; do
    case "$a" in -I*) [ -e "${a#-I}/stddef.h" ] && return 0 ;; esac
  done
  return 1
}
mpi_header() {
  local inc
  inc="$("${MPICC:-mpicc}" --showme:incdirs 2>/dev/null)" || return 1
  for d in $inc; do [ -e "$d/mpi.h" ] && return 0; done
  return 1
}
python_venv() { python3 -c 'import ensurepip, venv' 2>/dev/null; }
has() { command -v "$1" >/dev/null 2>&1; }
modules_tool() { [ -r /usr/share/modules/init/bash ] || [ -n "${MODULESHOME:-}" ] || [ -n "${LMOD_CMD:-}" ]; }

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
python3|has python3|python3|build
a C compiler (cc)|has "\${CC:-cc}"|build-essential|build
pkg-config|has pkg-config|pkg-config|suite
mpirun (Open MPI)|has mpirun|openmpi-bin|mpi
mpicc and mpi.h (mpi-sys build)|mpi_header|libopenmpi-dev|mpi
a loadable libclang exporting clang_createIndex (bindgen)|libclang_loadable|libclang1-$cv|mpi
clang's stddef.h (bindgen)|clang_headers|libclang-common-$cv-dev|mpi
slurmctld|has slurmctld|slurmctld|suite
slurmd|has slurmd|slurmd|suite
sbatch, srun, scontrol (Slurm client)|has sbatch|slurm-client|suite
munged and mungekey|has munged && has mungekey|munge|suite
prometheus|has prometheus|prometheus|suite
promtool|has promtool|prometheus|suite
npm (dashboard type check)|has npm|npm|suite
jq|has jq|jq|suite
curl|has curl|curl|suite
ip and tc (multi-node tests)|has ip && has tc|iproute2|suite
nsenter, unshare, setpriv (multi-node tests)|has nsenter && has unshare && has setpriv|util-linux|suite
python3 venv and ensurepip (torch venv)|python_venv|python3-venv|build
the module command (Environment Modules: the set-up test without root)|modules_tool|environment-modules|suite
EOF
}

unmet() { # [CLANG_VERSION [GROUPS]]: prints the unmet needs' lines of those groups (default all)
  local line desc check pkg group
  while IFS= read -r line; do
    IFS='|' read -r desc check pkg group <<<"$line"
    case " ${2:-build mpi suite} " in *" $group "*) ;; *) continue ;; esac
    eval "$check" >/dev/null 2>&1 || echo "$line"
  done < <(needs "${1:-14}")
}

if [ -n "${GANDIST_SETUP_LIST:-}" ]; then needs "$(clang_version)"; exit 0; fi
# Where the torch venv is (env.sh's choice), without taking env.sh's PATH for the checks.
user_venv="${GANDIST_TORCH_VENV:-}"
venv="$(. "$here/env.sh" >/dev/null 2>&1; echo "$GANDIST_TORCH_VENV")"
torch_ok() { "$venv/bin/python" -W ignore -c 'import torch; assert torch.__version__.startswith("2.11.0")' 2>/dev/null; }
groups="build mpi suite"
[ -n "${GANDIST_SETUP_NO_MPI:-}" ] && groups="build suite"

if [ "$(id -u)" = 0 ]; then
  missing="$(unmet 14 "$groups")"
  if [ -n "$missing" ] && [ -z "${GANDIST_SETUP_CHECK:-}" ] && has apt-get; then
    export DEBIAN_FRONTEND=noninteractive
    echo "setup: apt-get update"
    apt-get update -q >/dev/null
    cv="$(clang_version)"
    pkgs="$(unmet "$cv" "$groups" | cut -d'|' -f3 | sort -u | tr '\n' ' ')"
    echo "setup: installing $pkgs"
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $pkgs >/dev/null
    hash -r
    missing="$(unmet "$cv" "$groups")"
  fi
  if [ -n "$missing" ]; then
    echo "setup: these needs are not met:" >&2
    while IFS='|' read -r desc check pkg _; do
      echo "setup:   $desc (package $pkg; check: $check)" >&2
    done <<<"$missing"
    echo "setup: install them with: sudo apt-get install -y --no-install-recommends $(cut -d'|' -f3 <<<"$missing" | sort -u | tr '\n' ' ')" >&2
    exit 1
  fi
  echo "setup: system packages ok"
else
  # --- Without root ---------------------------------------------------------------------
  echo "setup: not running as root: nothing is installed system-wide (Rust goes to ~/.cargo, the torch venv to $venv)"
  # The cluster's modules, when it has a module system: its shell function, or its init file.
  have_modules=0
  if ! type -t module >/dev/null 2>&1; then
    for init in "${MODULESHOME:+$MODULESHOME/init/bash}" "${LMOD_PKG:+$LMOD_PKG/init/bash}" /usr/share/modules/init/bash /usr/share/lmod/lmod/init/bash; do
      [ -n "$init" ] && [ -r "$init" ] || continue
      set +eu
      # shellcheck disable=SC1090
      . "$init" >/dev/null 2>&1
      set -eu
      type -t module >/dev/null 2>&1 && break
    done
  fi
  type -t module >/dev/null 2>&1 && have_modules=1
  avail=""
  [ $have_modules = 1 ] && avail="$(set +eu; module -t avail 2>&1 | grep -v ':$' | grep -v '^ *$' || true)"
  matching() { grep -iE "$1" <<<"$avail" | head -n 4 | tr '\n' ' ' | sed 's/ $//'; }
  found=()
  [ $have_modules = 1 ] && found+=("module ($(grep -c . <<<"$avail") modules available${MODULEPATH:+ on MODULEPATH=$MODULEPATH})")
  for v in MPICC CC LIBCLANG_PATH BINDGEN_EXTRA_CLANG_ARGS LIBTORCH; do [ -n "${!v:-}" ] && found+=("$v=${!v}"); done
  [ -n "$user_venv" ] && found+=("GANDIST_TORCH_VENV=$user_venv")
  echo "setup: the environment provides: ${found[*]:-no module system, none of MPICC, CC, LIBCLANG_PATH, BINDGEN_EXTRA_CLANG_ARGS, LIBTORCH}"
  # The venv is needed only when it must be made.
  build_needs="$(unmet 14 "${groups/ suite/}")"
  if [ -n "${LIBTORCH:-}" ] || torch_ok; then
    build_needs="$(grep -v '|python_venv|' <<<"$build_needs" || true)"
  fi
  # ways NEED_CHECK: how to provide one missing need without root, one per line.
  ways() {
    local m
    case "$1" in
      "has python3")
        m="$(matching '^python')"; [ -n "$m" ] && echo "module load ${m%% *}   (the cluster's modules that match: $m)"
        echo "put a python3 (3.9 or newer) first on PATH" ;;
      'has "${CC:-cc}"')
        m="$(matching '^(gcc|gnu|compiler)')"; [ -n "$m" ] && echo "module load ${m%% *}   (the cluster's modules that match: $m)"
        echo "CC=/path/to/gcc bash launch/setup.sh (any C compiler; torch-sys also needs its C++ compiler)" ;;
      "has mpirun" | "mpi_header")
        m="$(matching '^(openmpi|ompi)')"; [ -n "$m" ] && echo "module load ${m%% *}   (the cluster's modules that match: $m)"
        echo "MPICC=/path/to/openmpi/bin/mpicc bash launch/setup.sh (an Open MPI 4 or 5 of your own or the cluster's), with its bin folder on PATH for mpirun"
        echo "or build without MPI (one process only): GANDIST_SETUP_NO_MPI=1 bash launch/setup.sh, then cargo build --release --no-default-features"
        echo "or ask the cluster's administrators for Open MPI$([ "$1" = mpi_header ] && echo "'s development files (Debian/Ubuntu package libopenmpi-dev)" || echo " (Debian/Ubuntu package openmpi-bin)")" ;;
      "libclang_loadable")
        m="$(matching '^(llvm|clang)')"; [ -n "$m" ] && echo "module load ${m%% *}   (the cluster's modules that match: $m)"
        echo "LIBCLANG_PATH=/folder/holding/libclang.so bash launch/setup.sh (an LLVM of your own or the cluster's)"
        echo "or python3 -m pip install --user libclang, then LIBCLANG_PATH=\$(python3 -c 'import clang, os; print(os.path.join(os.path.dirname(clang.__file__), \"native\"))')"
        echo "or build without MPI (libclang serves only the MPI bindings): GANDIST_SETUP_NO_MPI=1 bash launch/setup.sh, then cargo build --release --no-default-features" ;;
      "clang_headers")
        m="$(matching '^(llvm|clang)')"; [ -n "$m" ] && echo "module load ${m%% *}   (the cluster's modules that match: $m)"
        if has "${CC:-cc}" && [ -e "$("${CC:-cc}" -print-file-name=include)/stddef.h" ]; then
          echo "BINDGEN_EXTRA_CLANG_ARGS=-I$("${CC:-cc}" -print-file-name=include) bash launch/setup.sh (the C compiler's own stddef.h)"
        else
          echo "BINDGEN_EXTRA_CLANG_ARGS=-I/folder/holding/stddef.h bash launch/setup.sh (a C compiler's own include folder)"
        fi ;;
      "python_venv")
        m="$(matching '^python')"; [ -n "$m" ] && echo "module load ${m%% *}   (the cluster's modules that match: $m)"
        echo "GANDIST_TORCH_VENV=/path/to/a/venv bash launch/setup.sh (a venv that holds torch 2.11.0)"
        echo "or LIBTORCH=/path/to/libtorch bash launch/setup.sh (an unpacked libtorch 2.11.0)" ;;
    esac
  }
  if [ -n "$build_needs" ]; then
    while IFS='|' read -r desc check _ _; do
      echo "setup: missing: $desc" >&2
      echo "setup:   provide it without root in one of these ways:" >&2
      while IFS= read -r w; do echo "setup:   - $w" >&2; done < <(ways "$check")
    done <<<"$build_needs"
    exit 1
  fi
  suite_needs="$(unmet 14 suite | cut -d'|' -f1 | paste -sd ';' - | sed 's/;/; /g')"
  [ -z "$suite_needs" ] || echo "setup: not needed to build and train, and not checked further: the test suite's $suite_needs (launch/test.sh runs as root)"
  echo "setup: build needs ok$([ -n "${GANDIST_SETUP_NO_MPI:-}" ] && echo " for the build without MPI: cargo build --release --no-default-features")"
  [ -n "${GANDIST_SETUP_CHECK:-}" ] && exit 0
fi
[ "${GANDIST_SETUP_ONLY:-}" = system ] && exit 0

# shellcheck source=env.sh
. "$here/env.sh"

if ! has cargo && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  has curl || { echo "setup: cargo is missing, and rustup needs curl to install it: put curl on PATH (or a module with it), or install Rust from https://rustup.rs into ~/.cargo" >&2; exit 1; }
  echo "setup: installing Rust with rustup (into ~/.cargo)"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  [ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi

if [ -z "${LIBTORCH:-}" ]; then
  if ! torch_ok && [ -n "$user_venv" ] && [ -e "$user_venv" ]; then
    # A folder the user named is never removed: it may be a venv of theirs.
    echo "setup: GANDIST_TORCH_VENV=$user_venv exists but its python cannot import torch 2.11.0: install it there ($user_venv/bin/pip install torch==2.11.0), or name a folder that does not exist yet, which the set-up then makes" >&2
    exit 1
  fi
  if ! torch_ok; then
    echo "setup: installing torch 2.11.0 into $GANDIST_TORCH_VENV (a few GB, once)"
    mkdir -p "$GANDIST_CACHE"
    rm -rf "$GANDIST_TORCH_VENV"
    python3 -m venv "$GANDIST_TORCH_VENV"
    "$GANDIST_TORCH_VENV/bin/pip" install -q --disable-pip-version-check torch==2.11.0
  fi
  torch_ok || {
    echo "setup: torch 2.11.0 did not install into $GANDIST_TORCH_VENV; remove that folder and run again" >&2
    exit 1
  }
elif [ ! -e "$LIBTORCH/lib/libtorch.so" ]; then
  echo "setup: LIBTORCH=$LIBTORCH holds no lib/libtorch.so; expected an unpacked libtorch 2.11.0" >&2
  exit 1
fi
has cargo || [ -x "$HOME/.cargo/bin/cargo" ] || { echo "setup: cargo not found after rustup; open a new shell or add ~/.cargo/bin to PATH" >&2; exit 1; }
echo "setup: ok (libtorch from ${LIBTORCH:-$GANDIST_TORCH_VENV})"
