# Source this file: it points the Rust build at libtorch 2.11.0 (tch 0.24 needs exactly that).
# Either LIBTORCH names an unpacked libtorch 2.11, or the torch 2.11.0 wheel in the cache venv
# made by launch/setup.sh is used.
GANDIST_CACHE="${GANDIST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gandist}"
GANDIST_TORCH_VENV="${GANDIST_TORCH_VENV:-$GANDIST_CACHE/torch-2.11.0}"
export GANDIST_CACHE GANDIST_TORCH_VENV
if [ -n "${LIBTORCH:-}" ]; then
  export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  export PATH="$GANDIST_TORCH_VENV/bin:$PATH"
  export LIBTORCH_USE_PYTORCH=1
fi
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
# Open MPI refuses root without these; containers and CI run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
