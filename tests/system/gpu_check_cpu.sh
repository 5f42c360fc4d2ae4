#!/usr/bin/env bash
# launch/gpu-check.sh runs on a GPU machine only now and then: its plumbing runs here on every
# CI run, with every row on the CPU (GPU_CHECK_DEVICE=cpu: the collectives self-test on two MPI
# ranks, the trainings and their comparisons, resume, host reads, sample, eval, the bench
# against PyTorch). It must pass with a full table; and with a binary that fails, it must
# still print the table and exit non-zero.
set -euo pipefail
# (Checks read "$out" through here-strings: `echo "$out" | grep -q` fails under pipefail when grep
# stops reading before echo has written everything.)
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
data="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
tmp="$(mktemp -d /tmp/gandist-gpucheck.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT

set +e
out=$(GPU_CHECK_DEVICE=cpu GANDIST="$PWD/target/debug/gandist" DATA="$data" PYTHON="$GANDIST_TORCH_VENV/bin/python" OUT="$tmp/ok" \
  bash launch/gpu-check.sh 2>&1)
st=$?
set -e
echo "$out" | tail -n 20
[ $st -eq 0 ] || { echo "FAIL: the CPU-mode GPU check exited $st"; exit 1; }
[ "$(echo "$out" | tail -n 1)" = "16 rows, 0 failed" ] || { echo "FAIL: expected 16 rows, none failed, as the last line"; exit 1; }
for r in "mpi all-reduce (2 rank)" "mpi broadcast (2 rank)" "mpi abort path (2 rank)" "cpu vs cpu at step 20" \
  "resume cpu step 10 -> 20 vs straight" "resume cpu step 10 on cpu -> 20 vs cpu" "host reads between sync steps (cpu train)" \
  "sample on cpu" "eval on cpu" "bench cpu batch 8" "host reads per update (cpu bench, batch 8)" "bench cpu batch 32"; do
  grep -q "^$r  *ok " <<<"$out" || { echo "FAIL: no passing row \"$r\""; exit 1; }
done
echo "PASS: the GPU check runs every row on the CPU and ends with its table"

set +e
out=$(GPU_CHECK_DEVICE=cpu GANDIST=/bin/false DATA="$data" PYTHON=/bin/false OUT="$tmp/bad" bash launch/gpu-check.sh 2>&1)
st=$?
set -e
echo "$out" | tail -n 3
[ $st -ne 0 ] || { echo "FAIL: the GPU check exited 0 with a failing binary"; exit 1; }
tail -n 1 <<<"$out" | grep -q "^16 rows, 1[0-9] failed$" || { echo "FAIL: expected most of 16 rows to fail, last line: $(echo "$out" | tail -n 1)"; exit 1; }
grep -q "^bench cpu batch 8  *FAIL " <<<"$out" || { echo "FAIL: no failing bench row"; exit 1; }
echo "PASS: a failing binary fails the GPU check, with the table printed"
