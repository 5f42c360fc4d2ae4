#!/usr/bin/env bash
# Installs everything gandist needs on Debian/Ubuntu x86-64, idempotently:
#   - system packages (as root): Open MPI, libclang (for the mpi crate's bindgen), Slurm,
#     munge, Prometheus, npm, jq and curl (for the tests), python3-venv;
#   - Rust, if cargo is missing (rustup);
#   - torch 2.11.0 from PyPI into a venv in the cache directory (reused when present), unless
#     LIBTORCH points at a libtorch 2.11.0.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

need_apt=()
command -v mpirun >/dev/null || need_apt+=(openmpi-bin)
[ -e /usr/include/x86_64-linux-gnu/openmpi/mpi.h ] || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] || need_apt+=(libopenmpi-dev)
ls /usr/lib/x86_64-linux-gnu/libclang-*.so* >/dev/null 2>&1 || ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang1-14)
ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1 || need_apt+=(libclang-common-14-dev)
command -v slurmctld >/dev/null || need_apt+=(slurm-wlm)
command -v munged >/dev/null || need_apt+=(munge)
command -v prometheus >/dev/null || need_apt+=(prometheus)
# npm: tests/system/prometheus.sh type-checks the Grafana dashboard with @grafana/schema.
command -v npm >/dev/null || need_apt+=(npm)
command -v jq >/dev/null || need_apt+=(jq)
command -v curl >/dev/null || need_apt+=(curl)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v cc >/dev/null || need_apt+=(build-essential)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${need_apt[*]}" >&2
    echo "setup: run as root, or: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "setup: installing Rust with rustup"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

# shellcheck source=env.sh
. "$here/env.sh"
if [ -z "${LIBTORCH:-}" ]; then
  if ! "$GANDIST_TORCH_VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.11.0")' 2>/dev/null; then
    echo "setup: installing torch 2.11.0 into $GANDIST_TORCH_VENV (a few GB, once)"
    mkdir -p "$GANDIST_CACHE"
    python3 -m venv "$GANDIST_TORCH_VENV"
    "$GANDIST_TORCH_VENV/bin/pip" install -q --disable-pip-version-check torch==2.11.0
  fi
fi
echo "setup: ok (libtorch from ${LIBTORCH:-$GANDIST_TORCH_VENV})"
