#!/usr/bin/env bash
# The whole test suite: set-up, build, Rust unit and integration tests (the MPI ones run real
# mpirun), then the system tests in tests/system/ (set-up, Slurm, Prometheus, ...), each started
# for real.
# MNIST: GANDIST_TEST_DATA when set, else data/mnist in this clone, made the way
# launch/train-default.sh makes it (launch/mnist.sh: a verified copy already there,
# GANDIST_MNIST_FROM, ../shared/data/mnist when present, else the public mirrors).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
bash launch/test-tools.sh
. launch/env.sh
. launch/mnist.sh
export RUST_BACKTRACE=1
cargo build --tests --bins
if [ -z "${GANDIST_TEST_DATA:-}" ]; then
  gandist_mnist "${CARGO_TARGET_DIR:-target}/debug/gandist" data/mnist
  GANDIST_TEST_DATA="$PWD/data/mnist"
fi
export GANDIST_TEST_DATA
cargo test -- --test-threads=1
passed=0; failed=0
for t in tests/system/*.sh; do
  [ -e "$t" ] || continue
  echo "=== system test $t"
  if timeout 900 bash "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $t"; fi
done
echo "system: $passed passed, $failed failed"
[ "$failed" = 0 ]
