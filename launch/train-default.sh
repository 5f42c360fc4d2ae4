#!/usr/bin/env bash
# Set-up, release build, MNIST, and the default training run, end to end.
# MNIST comes from GANDIST_MNIST_FROM (a local folder) when set, else from the public mirrors.
# Extra arguments go to `gandist train` (e.g. --set train.iterations=100).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
. launch/env.sh
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/gandist"
data="${GANDIST_DATA:-data/mnist}"
if ! $bin data verify --data "$data" >/dev/null 2>&1; then
  if [ -n "${GANDIST_MNIST_FROM:-}" ]; then
    $bin data fetch --data "$data" --from "$GANDIST_MNIST_FROM"
  else
    $bin data fetch --data "$data"
  fi
fi
exec $bin train --config configs/cpu-default.toml --data "$data" --run-dir "${GANDIST_RUN_DIR:-runs/cpu-default}" "$@"
