#!/usr/bin/env bash
# launch/gpu-check.sh runs on a GPU machine only now and then: its plumbing runs here on every
# CI run, with every row on the CPU (GPU_CHECK_DEVICE=cpu). Four runs:
#   1. launch/gpu-check-prepare.sh makes the CPU reference run, the classifier and
#      prepared.txt, and prints the carry list with its size;
#   2. the check passes with a full table: the preflight, the collectives self-test on two MPI
#      ranks (9 rows), the trainings and their comparisons, the forced reduction at world size
#      1 (bit for bit the plain run's parameters), resume, host reads, sample, eval, the bench
#      against PyTorch; each row is printed as it ends, before the table; OUT receives exactly
#      the table and one tarball of the logs (under 16 MiB), the runs stay in the work folder;
#   3. with nothing prepared the preflight fails, naming the missing piece and the script that
#      makes it, and the check stops with its one-row table;
#   4. without mpirun (hidden in a private mount namespace) the MPI rows are skipped, saying
#      so, and with a 10-second budget the rows that do not fit fail as "not run" within it,
#      the table still printed.
# About 2.5 minutes (2 of them the full check).
set -euo pipefail
# (Checks read "$out" through here-strings: `echo "$out" | grep -q` fails under pipefail when grep
# stops reading before echo has written everything.)
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
data="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
tmp="$(mktemp -d /tmp/gandist-gpucheck.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
check_env=(GPU_CHECK_DEVICE=cpu GANDIST="$PWD/target/debug/gandist" DATA="$data" PYTHON="$GANDIST_TORCH_VENV/bin/python")

# 1. Preparation on the CPU.
out=$(env "${check_env[@]}" PREPARED="$tmp/prep" bash launch/gpu-check-prepare.sh 2>&1) || { echo "$out"; echo "FAIL: the preparation failed"; exit 1; }
echo "$out" | tail -n 3
for f in cpu/checkpoints/step-000000010/state.safetensors cpu/checkpoints/step-000000020/state.safetensors classifier.safetensors prepared.txt; do
  [ -e "$tmp/prep/$f" ] || { echo "FAIL: the preparation made no $f"; exit 1; }
done
grep -q "^prepare: carry \"" <<<"$out" && grep -q "MiB carried + " <<<"$out" || { echo "FAIL: no carry list with its size"; exit 1; }

# 2. The full check.
SECONDS=0
set +e
out=$(env "${check_env[@]}" PREPARED="$tmp/prep" OUT="$tmp/out" GPU_CHECK_WORK="$tmp/work" bash launch/gpu-check.sh 2>&1)
st=$?
set -e
echo "$out" | tail -n 30
echo "(the full check took $SECONDS s)"
[ $st -eq 0 ] || { echo "FAIL: the CPU-mode GPU check exited $st"; exit 1; }
[ "$(tail -n 2 <<<"$out" | head -n 1)" = "25 rows, 0 failed, 1 skipped" ] || { echo "FAIL: expected 25 rows, none failed, 1 skipped (the build without MPI, not prepared here)"; exit 1; }
table_at=$(grep -n "^gandist GPU check, " <<<"$out" | cut -d: -f1)
for r in "preflight" "device" "mpi all-reduce (2 rank)" "mpi all-reduce out of place (2 rank)" "mpi all-reduce mean (2 rank)" "mpi stream order (2 rank)" \
  "mpi broadcast (2 rank)" "mpi broadcast out of place (2 rank)" "mpi agreement (2 rank)" "mpi abort path (2 rank)" \
  "train cpu, 20 iterations" "cpu vs cpu reference at step 20" "train cpu, mpi reduction forced (1 rank)" \
  "forced reduction vs cpu reference at step 20" "forced reduction vs plain cpu at step 20" \
  "resume cpu step 10 -> 20 vs straight" "resume cpu step 10 on cpu -> 20 vs cpu" "host reads between sync steps (cpu train)" \
  "sample on cpu" "eval on cpu" "bench cpu batch 8" "host reads per update (cpu bench, batch 8)" "bench cpu batch 32"; do
  grep -q "^$r  *ok " <<<"$out" || { echo "FAIL: no passing row \"$r\" in the table"; exit 1; }
  at=$(grep -n "^row: $r  *ok " <<<"$out" | head -n 1 | cut -d: -f1)
  [ -n "$at" ] && [ "$at" -lt "$table_at" ] || { echo "FAIL: row \"$r\" was not printed as it ended, before the table"; exit 1; }
done
grep -q "^forced reduction vs plain cpu at step 20  *ok  *parameters at step 20: worst 0.00e+00 .*; tolerance 0e+00" <<<"$out" \
  || { echo "FAIL: the forced reduction is not bit for bit the plain run"; exit 1; }
grep -q "^train cpu, mpi reduction forced (1 rank)  *ok .* 60 more staged the MPI backend's reductions" <<<"$out" \
  || { echo "FAIL: the forced run did not reduce every update (3 updates x 20 iterations) through MPI"; exit 1; }
[ "$(ls "$tmp/out")" = "$(printf 'gpu-check-logs.tar.gz\ngpu-check-table.txt')" ] || { echo "FAIL: OUT holds $(ls "$tmp/out" | tr '\n' ' '), expected the table and the tarball alone"; exit 1; }
size=$(stat -c %s "$tmp/out/gpu-check-logs.tar.gz")
[ "$size" -lt $((16 * 1048576)) ] || { echo "FAIL: the tarball is $size bytes"; exit 1; }
listing=$(tar -tzf "$tmp/out/gpu-check-logs.tar.gz")
for f in ./selftest.log ./train-dev.log ./train-forced.log ./dev/metrics.jsonl ./forced/metrics.jsonl ./resume-cpu/metrics.jsonl ./gpu-check-table.txt ./prepared.txt; do
  grep -qx -- "$f" <<<"$listing" || { echo "FAIL: the tarball lacks $f"; exit 1; }
done
! grep -q "safetensors" <<<"$listing" || { echo "FAIL: the tarball holds checkpoints"; exit 1; }
[ -d "$tmp/work/dev/checkpoints" ] || { echo "FAIL: the runs are not in the work folder"; exit 1; }
echo "PASS: the GPU check runs every row on the CPU, prints each as it ends, and leaves the table and one $size-byte tarball in OUT"

# 3. Nothing prepared: the preflight names the missing piece and the check stops.
set +e
out=$(env "${check_env[@]}" PREPARED="$tmp/nothing" OUT="$tmp/out3" GPU_CHECK_WORK="$tmp/work3" bash launch/gpu-check.sh 2>&1)
st=$?
set -e
echo "$out" | tail -n 3
[ $st -ne 0 ] || { echo "FAIL: the check passed with nothing prepared"; exit 1; }
grep -q "^preflight  *FAIL .*no $tmp/nothing/cpu/checkpoints/step-000000010/state.safetensors (run launch/gpu-check-prepare.sh on the CPU machine and carry $tmp/nothing)" <<<"$out" \
  || { echo "FAIL: the preflight does not name the missing reference and the script that makes it"; exit 1; }
[ "$(tail -n 2 <<<"$out" | head -n 1)" = "1 rows, 1 failed, 0 skipped" ] || { echo "FAIL: the check went on after a failed preflight"; exit 1; }
[ -s "$tmp/out3/gpu-check-table.txt" ] || { echo "FAIL: no table after a failed preflight"; exit 1; }
echo "PASS: a failed preflight names what is missing and stops with the table"

# 4. No mpirun, and a budget too short for every row.
SECONDS=0
set +e
# shellcheck disable=SC2016
out=$(unshare -m bash -c 'mount --bind /dev/null "$(command -v mpirun)" && exec env "$@" bash launch/gpu-check.sh' _ \
  "${check_env[@]}" PREPARED="$tmp/prep" OUT="$tmp/out4" GPU_CHECK_WORK="$tmp/work4" GPU_CHECK_BUDGET=10 2>&1)
st=$?
took=$SECONDS
set -e
echo "$out" | tail -n 28
[ $st -ne 0 ] || { echo "FAIL: the check passed although rows did not run"; exit 1; }
grep -q "^preflight  *ok .*; no working mpirun (mpirun --version failed): the MPI rows are skipped" <<<"$out" || { echo "FAIL: the preflight does not say that mpirun is missing"; exit 1; }
for r in "mpi all-reduce (2 rank)" "mpi abort path (2 rank)" "train cpu, mpi reduction forced (1 rank)"; do
  grep -q "^$r  *SKIP no working mpirun on PATH (Open MPI): this row needs it" <<<"$out" || { echo "FAIL: row \"$r\" not skipped for want of mpirun"; exit 1; }
done
grep -q "^bench cpu batch 32  *FAIL .*not run: the check's 10 s (GPU_CHECK_BUDGET) were spent" <<<"$out" || { echo "FAIL: the last row did not fail as not run"; exit 1; }
[ "$took" -le 25 ] || { echo "FAIL: a 10-second budget took $took s"; exit 1; }
[ -s "$tmp/out4/gpu-check-table.txt" ] && [ -s "$tmp/out4/gpu-check-logs.tar.gz" ] || { echo "FAIL: no table or tarball"; exit 1; }
echo "PASS: without mpirun the MPI rows are skipped, and a spent budget ends the check in $took s with its table"
