#!/usr/bin/env bash
# Smoke run of the benchmark harness (bench/compare.sh): tiny model, one round; it prints
# gandist's and PyTorch's images/s and their ratio, and asserts only that both ran.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=$(GANDIST=target/debug/gandist bash bench/compare.sh --rounds 1 --iters 2 --dim 8 --batches 16 --threads 1 2>&1)
echo "$out"
grep -q "^batch 16: gandist median [0-9.]* images/s, pytorch median [0-9.]* images/s, ratio median" <<<"$out" \
  || { echo "FAIL: the comparison did not produce its summary line"; exit 1; }
echo "PASS: benchmark harness ran"
