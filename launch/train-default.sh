#!/usr/bin/env bash
# Set-up, release build, MNIST, and the default training run, end to end.
# MNIST: data/mnist (or GANDIST_DATA) when it verifies, else GANDIST_MNIST_FROM (a local
# folder), else ../shared/data/mnist when there is one, else the public mirrors (launch/mnist.sh).
# Extra arguments go to `gandist train` (e.g. --set train.iterations=100).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
. launch/env.sh
. launch/mnist.sh
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/gandist"
data="${GANDIST_DATA:-data/mnist}"
gandist_mnist "$bin" "$data"
exec "$bin" train --config configs/cpu-default.toml --data "$data" --run-dir "${GANDIST_RUN_DIR:-runs/cpu-default}" "$@"
