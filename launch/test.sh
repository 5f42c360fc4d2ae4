#!/usr/bin/env bash
# The whole test suite: set-up, build, Rust unit and integration tests (the MPI ones run real
# mpirun), then the system tests in tests/system/ (Slurm, Prometheus, ...), each started for real.
# MNIST is read from GANDIST_TEST_DATA, default ../shared/data/mnist.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
. launch/env.sh
export GANDIST_TEST_DATA="${GANDIST_TEST_DATA:-$(cd .. && pwd)/shared/data/mnist}"
export RUST_BACKTRACE=1
cargo build --tests --bins
cargo test -- --test-threads=1
passed=0; failed=0
for t in tests/system/*.sh; do
  [ -e "$t" ] || continue
  echo "=== system test $t"
  if timeout 900 bash "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $t"; fi
done
echo "system: $passed passed, $failed failed"
[ "$failed" = 0 ]
