#!/usr/bin/env bash
# The GPU check: one command on a machine with one CUDA GPU, within 5 minutes of rows (7 with
# the machine's start-up), exit status 1 when any row fails, each row printed as it ends and
# the table last.
#
#   bash launch/gpu-check-prepare.sh                # first, on the CPU machine (builds, MNIST,
#                                                   # the CPU reference run, the classifier)
#   bash launch/gpu-check.sh                        # then on the GPU machine, with those carried
#   GPU_CHECK_DEVICE=cpu bash launch/gpu-check.sh   # every row on the CPU, tiny sizes (CI runs
#                                                   # it so: tests/system/gpu_check_cpu.sh)
#
# Settings (launch/gpu-check-common.sh has GANDIST, DATA, PREPARED, GPU_CHECK_DEVICE):
#   PYTHON            the python with torch, for bench/reference.py and torch's library path
#                     (python3); torch is located without importing it
#   OUT               where the results go (the device machine's $OUT): the table
#                     (gpu-check-table.txt) and one tarball of the logs and metrics.jsonl
#                     files (gpu-check-logs.tar.gz, at most 16 MiB). Two files: the device
#                     returns at most 8, two folders deep. Default: WORK/out
#   GPU_CHECK_WORK    where runs and logs are written (default: a new folder in /tmp, not OUT)
#   GPU_CHECK_BUDGET  seconds for all rows (default 300): a step never runs past it, and rows
#                     left when it is spent fail as "not run", so the table always comes out
#
# Preflight, before any row (about a second): the binary's libraries resolve (ldd, with
# torch's and NCCL's folders on the library path), libtorch's folder holds libtorch (and
# libtorch_cuda on CUDA), MNIST is there, the prepared CPU reference and classifier are there
# and were made by this binary, a GPU is visible (nvidia-smi). A missing piece fails the
# preflight row with what to do, and the check stops there. Without mpirun the rows that
# need it (the NCCL self-test, the forced-reduction training) are skipped, saying so, and the
# one-process rows still run.
#
# Rows: the collectives self-test on one rank over NCCL (in-place sum and broadcast, where
# NCCL does no device work at 1 rank; out-of-place sum and broadcast, a copy on the stream;
# the mean, NCCL's kernel; the stream order of a reduction between queued device work and its
# reader; the abort path); a 20-iteration training on CUDA with TF32 off, compared at step 20
# with the CPU reference (parameters and logged losses within 1e-3 of their scale: cuDNN's and
# oneDNN's float32 convolutions round differently, and Adam turns sign flips of near-zero
# gradient elements into differences of up to its step size, so bit equality is not expected,
# but noise and data are the same values on both devices, so a wrong draw or a lost update
# shows as differences of order 1); the same training under `mpirun -n 1` over NCCL with
# dist.force_reduce (NCCL's kernel in every update: 60 all-reduces), against the CPU
# reference (1e-3) and the plain CUDA run (1e-4: cuDNN's kernels are not bit-reproducible;
# on the CPU, 0: bit for bit); resume on CUDA from its own step-10 checkpoint (1e-4) and from
# the CPU reference's (1e-3); host reads between sync steps (0) in the plain and NCCL runs and
# in the bench's timed iterations; the build without MPI training on CUDA; sample and eval on
# CUDA; the bench at batch 64, 512, 2048 against bench/reference.py (PyTorch) in the same run.
#
# Expected time on one H200 (estimated: the check has not yet run on a GPU; CPU mode here
# takes about 2 minutes on 2 shared cores): preflight 1 s, self-test 15 s, five trainings of
# 20 iterations about 10 s each, sample and eval 15 s, bench 60 s: about 2.5 minutes. Step
# limits: self-test 45, trainings 45, sample 20, eval 30, compare 5, bench 20 each, all
# clipped to what is left of GPU_CHECK_BUDGET.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. launch/gpu-check-common.sh
PYTHON="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-300}"
WORK="${GPU_CHECK_WORK:-$(mktemp -d /tmp/gandist-gpu-check.XXXXXX)}"
OUT="${OUT:-$WORK/out}"
mkdir -p "$WORK" "$OUT"
# The table and tarball go to OUT; nothing else does.
case "$(cd "$WORK" && pwd)/" in "$(cd "$OUT" && pwd)/"*) echo "gpu-check: GPU_CHECK_WORK ($WORK) must not be inside OUT ($OUT)" >&2; exit 2 ;; esac
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
SECONDS=0

# torch's and NCCL's library folders, found without importing torch (which takes seconds).
find_dir() { "$PYTHON" -c "import importlib.util,os,sys; s=importlib.util.find_spec(sys.argv[1]); print(os.path.join(list(s.submodule_search_locations)[0], 'lib'))" "$1" 2>/dev/null; }
torch_lib="$(find_dir torch)"
nccl_lib="$(find_dir nvidia.nccl)"
export LD_LIBRARY_PATH="${torch_lib}${nccl_lib:+:$nccl_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [ "$MODE" = cuda ]; then
  DEV=cuda; SELFTEST_RANKS=1; BACKEND=nccl; BATCHES="64 512 2048"; BENCH_ITERS=20; BENCH_WARMUP=3
  BENCH_SETS=(); REF_ARGS=(); SAME_DEVICE_TOL=1e-4
else
  # The same rows through the CPU: two MPI ranks for the self-test, tiny sizes, one thread;
  # runs on one device agree bit for bit there.
  DEV=cpu; SELFTEST_RANKS=2; BACKEND=mpi; BATCHES="8 16 32"; BENCH_ITERS=1; BENCH_WARMUP=1
  BENCH_SETS=(--set critic.width=4 --set generator.width=4 --set train.threads=1); REF_ARGS=(--dim 4 --threads 1); SAME_DEVICE_TOL=0
fi

rows=()
failed=0
skipped=0
# row NAME ok|FAIL|SKIP DETAIL: printed at once, and kept for the table.
row() {
  rows+=("$1|$2|$3")
  case "$2" in ok) ;; SKIP) skipped=$((skipped + 1)) ;; *) failed=$((failed + 1)) ;; esac
  printf 'row: %-46s %-4s %s\n' "$1" "$2" "$3"
}
left() { echo $((BUDGET - SECONDS)); }
# step SECONDS LOG CMD...: runs CMD bounded by SECONDS and by what is left of the budget, its
# output in $WORK/LOG. Status 124: it ran out of time; 125: not started, the budget is spent.
step() {
  local limit="$1" log="$WORK/$2" rest
  shift 2
  rest=$(left)
  if [ "$rest" -le 0 ]; then
    echo "not started: the check's ${BUDGET} s (GPU_CHECK_BUDGET) were spent" >"$log"
    return 125
  fi
  [ "$limit" -le "$rest" ] || limit=$rest
  timeout "$limit" "$@" >"$log" 2>&1
}
# The last line of a log matching a pattern, without gandist's log prefix (time, level, rank).
last_line() { sed -E 's/^[0-9]{4}-[0-9T:.-]+Z +[A-Z]+ rank=[0-9?]+: //' "$2" 2>/dev/null | grep -h "$1" | tail -n 1; }
why() { # STATUS LOG: why a step failed, in one line
  case "$1" in
    125) echo "not run: the check's ${BUDGET} s (GPU_CHECK_BUDGET) were spent" ;;
    124) echo "timed out: $(tail -n 2 "$WORK/$2" 2>/dev/null | tr '\n' ' ')" ;;
    *) echo "exit $1: $(tail -n 2 "$WORK/$2" 2>/dev/null | tr '\n' ' ')" ;;
  esac
}

# The table and the tarball; the exit status.
finish() {
  local table="$OUT/gpu-check-table.txt"
  {
    echo "gandist GPU check, $(date -u '+%F %H:%M UTC'), mode $MODE, binary $GANDIST, $SECONDS s"
    printf '%s\n' "${rows[@]}" | awk -F'|' '{ printf "%-46s %-4s %s\n", $1, $2, $3 }'
    echo "${#rows[@]} rows, $failed failed, $skipped skipped"
  } >"$table"
  cp "$table" "$WORK/gpu-check-table.txt"
  # Logs, scalar logs, configurations, the sample grid: no checkpoints, no copies of the data.
  (cd "$WORK" && find . -path ./out -prune -o -type f \( -name '*.log' -o -name 'metrics.jsonl' -o -name 'config.toml' -o -name '*.png' -o -name '*.txt' \) -print \
    | tar -czf "$OUT/gpu-check-logs.tar.gz" -T -)
  local size
  size=$(stat -c %s "$OUT/gpu-check-logs.tar.gz" 2>/dev/null || echo 0)
  if [ "$size" -gt $((16 * 1048576)) ]; then
    rm -f "$OUT/gpu-check-logs.tar.gz"
    echo "gpu-check: the logs' tarball was $size bytes, over the device's 16 MiB a file: left in $WORK only" >&2
  fi
  echo
  cat "$table"
  echo "(table: $table; logs: $OUT/gpu-check-logs.tar.gz, $size bytes; runs in $WORK)"
  [ "$failed" -eq 0 ]
  exit $?
}

# --- Preflight --------------------------------------------------------------------------
missing=()
if [ ! -x "$GANDIST" ]; then
  missing+=("no executable gandist at $GANDIST (build it with launch/gpu-check-prepare.sh and carry it)")
else
  unresolved=$(ldd "$GANDIST" 2>&1 | awk '/not found/ { print $1 }' | tr '\n' ' ')
  [ -z "$unresolved" ] || missing+=("$GANDIST needs libraries that do not resolve: ${unresolved% }(LD_LIBRARY_PATH=$LD_LIBRARY_PATH)")
fi
want_torch="libtorch.so"; [ "$MODE" = cuda ] && want_torch="libtorch.so libtorch_cuda.so"
if [ -z "$torch_lib" ]; then
  missing+=("$PYTHON has no torch package: libtorch's folder not found (set PYTHON to the python that holds torch 2.11)")
else
  for f in $want_torch; do [ -e "$torch_lib/$f" ] || missing+=("libtorch's folder $torch_lib lacks $f"); done
fi
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -e "$DATA/$f.gz" ] || [ -e "$DATA/$f" ] || missing+=("MNIST: no $f(.gz) in $DATA (carry data/mnist, made by launch/gpu-check-prepare.sh)")
done
for f in cpu/checkpoints/step-000000010/state.safetensors cpu/checkpoints/step-000000020/state.safetensors cpu/metrics.jsonl classifier.safetensors prepared.txt; do
  [ -e "$PREPARED/$f" ] || missing+=("no $PREPARED/$f (run launch/gpu-check-prepare.sh on the CPU machine and carry $PREPARED)")
done
if [ -e "$PREPARED/prepared.txt" ] && [ -x "$GANDIST" ]; then
  made_by=$(awk '$1 == "sha256" { print $2 }' "$PREPARED/prepared.txt")
  [ "$made_by" = "$(gpu_check_fingerprint "$GANDIST")" ] \
    || missing+=("$PREPARED was prepared with another binary than $GANDIST (sha256 ${made_by:0:12}...): run launch/gpu-check-prepare.sh again")
fi
if [ "$MODE" = cuda ]; then
  if gpus=$(timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) && [ -n "$gpus" ]; then
    device_info="$gpus"
  else
    missing+=("no GPU visible: nvidia-smi says: ${gpus:-nothing}")
  fi
else
  device_info="cpu mode: $(nproc) cores, $(uname -m)"
fi
have_mpirun=1
timeout 10 mpirun --version >/dev/null 2>&1 || have_mpirun=0
if [ ${#missing[@]} -gt 0 ]; then
  row "preflight" FAIL "$(printf '%s; ' "${missing[@]}" | sed 's/; $//')"
  finish
fi
cp "$PREPARED/prepared.txt" "$WORK/prepared.txt"
row "preflight" ok "in ${SECONDS} s: binary and libraries, libtorch ($torch_lib), MNIST, prepared reference and classifier$([ $have_mpirun = 1 ] && echo ", mpirun $(command -v mpirun)" || echo "; no working mpirun (mpirun --version failed): the MPI rows are skipped")"
row "device" ok "$device_info"
skip_mpi() { row "$1" SKIP "no working mpirun on PATH (Open MPI): this row needs it"; }

# --- Collectives on $SELFTEST_RANKS rank(s): one line per check, printed as each ends ---
checks=("all-reduce" "all-reduce out of place" "all-reduce mean" "stream order" "broadcast" "broadcast out of place" "agreement" "abort path")
if [ $have_mpirun = 1 ]; then
  step 45 selftest.log mpirun -n "$SELFTEST_RANKS" "$GANDIST" selftest-collectives --device "$DEV" --set "dist.backend=\"$BACKEND\""
  st=$?
  for check in "${checks[@]}"; do
    line=$(last_line "^rank 0 selftest $check: " "$WORK/selftest.log")
    if [[ "$line" == *": ok ("* ]]; then
      detail="${line#*: ok (}"
      row "$BACKEND $check ($SELFTEST_RANKS rank)" ok "${detail%)}"
    elif [ -n "$line" ]; then
      row "$BACKEND $check ($SELFTEST_RANKS rank)" FAIL "${line#*: }"
    else
      row "$BACKEND $check ($SELFTEST_RANKS rank)" FAIL "did not run: the job ended before this row ($(why $st selftest.log))"
    fi
  done
else
  for check in "${checks[@]}"; do skip_mpi "$BACKEND $check ($SELFTEST_RANKS rank)"; done
fi

# --- Trainings: 20 iterations of the smoke model at batch 64, TF32 off ---------------------
train() { # LOG RUN DEVICE [extra...]
  local log="$1" run="$2" dev="$3"
  shift 3
  NVIDIA_TF32_OVERRIDE=0 step 45 "$log" "$GANDIST" train "${GPU_CHECK_TRAIN[@]}" --set "train.device=\"$dev\"" --set 'dist.backend="local"' --run-dir "$run" "$@"
}
train_row() { # NAME STATUS LOG
  if [ "$2" -eq 0 ]; then row "$1" ok "$(last_line '^finished' "$WORK/$3")"; else row "$1" FAIL "$(why "$2" "$3")"; fi
}
compare() { # NAME RUN_A RUN_B TOLERANCE
  local line
  if [ "$(left)" -le 0 ]; then row "$1" FAIL "$(why 125 -)"; return; fi
  line=$(timeout 5 python3 launch/compare-runs.py "$2" "$3" 20 "$4" 2>&1)
  if [ $? -eq 0 ]; then row "$1" ok "$line"; else row "$1" FAIL "$line"; fi
}
host_reads_row() { # NAME LOG
  local line
  line=$(last_line '^host reads of device data:' "$WORK/$2")
  if [[ "$line" == *", 0 between them"* ]]; then row "$1" ok "${line#host reads of device data: }"; else row "$1" FAIL "${line:-no report}"; fi
}
train train-dev.log "$WORK/dev" "$DEV"; train_row "train $DEV, 20 iterations" $? train-dev.log
compare "$DEV vs cpu reference at step 20" "$PREPARED/cpu" "$WORK/dev" 1e-3

# The reduction path at world size 1: every update through the backend (NCCL's kernel on CUDA).
if [ $have_mpirun = 1 ]; then
  NVIDIA_TF32_OVERRIDE=0 step 45 train-forced.log mpirun -n 1 "$GANDIST" train "${GPU_CHECK_TRAIN[@]}" --set "train.device=\"$DEV\"" \
    --set "dist.backend=\"$BACKEND\"" --set dist.force_reduce=true --run-dir "$WORK/forced"
  st=$?
  name="train $DEV, $BACKEND reduction forced (1 rank)"
  if [ $st -ne 0 ]; then
    row "$name" FAIL "$(why $st train-forced.log)"
  elif [ "$BACKEND" = nccl ]; then
    # 20 iterations of 2 critic updates and 1 generator update: 60 all-reduces at least.
    line=$(last_line '^NCCL communicator on ' "$WORK/train-forced.log")
    n=$(sed -nE 's/.*: ([0-9]+) all-reduces.*/\1/p' <<<"$line")
    if [ "${n:-0}" -ge 60 ]; then row "$name" ok "$line"; else row "$name" FAIL "expected at least 60 NCCL all-reduces: ${line:-no NCCL report}"; fi
  else
    line=$(last_line 'staged the MPI backend' "$WORK/train-forced.log")
    if [ -n "$line" ]; then row "$name" ok "${line#host reads of device data: }"; else row "$name" FAIL "the MPI backend reduced nothing: no staged reads reported"; fi
  fi
  compare "forced reduction vs cpu reference at step 20" "$PREPARED/cpu" "$WORK/forced" 1e-3
  compare "forced reduction vs plain $DEV at step 20" "$WORK/dev" "$WORK/forced" "$SAME_DEVICE_TOL"
  [ "$BACKEND" = nccl ] && host_reads_row "host reads between sync steps (nccl forced)" train-forced.log
else
  for r in "train $DEV, $BACKEND reduction forced (1 rank)" "forced reduction vs cpu reference at step 20" "forced reduction vs plain $DEV at step 20"; do skip_mpi "$r"; done
fi

# Resume on the device from its own step-10 checkpoint, and from the CPU reference's.
for resume in "resume-dev|$WORK/dev|resume $DEV step 10 -> 20 vs straight|$SAME_DEVICE_TOL" "resume-cpu|$PREPARED/cpu|resume cpu step 10 on $DEV -> 20 vs cpu|1e-3"; do
  IFS='|' read -r name from label tol <<<"$resume"
  to="$WORK/$name"
  mkdir -p "$to/checkpoints" && cp -r "$from/checkpoints/step-000000010" "$to/checkpoints/" 2>/dev/null
  train "$name.log" "$to" "$DEV" --resume auto
  st=$?
  if [ $st -ne 0 ] || ! grep -q "resumed from" "$WORK/$name.log"; then
    row "$label" FAIL "$(why $st "$name.log")"
  else
    compare "$label" "$from" "$to" "$tol"
  fi
done
host_reads_row "host reads between sync steps ($DEV train)" train-dev.log

# The build without MPI, when prepared: one process on the device.
if [ -x "$PREPARED/gandist-no-mpi" ]; then
  step 45 train-no-mpi.log "$PREPARED/gandist-no-mpi" train --config configs/smoke.toml --data "$DATA" --set train.iterations=5 \
    --set "train.device=\"$DEV\"" --run-dir "$WORK/no-mpi"
  st=$?
  line=$(last_line ' backend local' "$WORK/train-no-mpi.log")
  if [ $st -eq 0 ] && [[ "$line" == *"device $DEV"* ]] && ! ldd "$PREPARED/gandist-no-mpi" | grep -q libmpi; then
    row "build without MPI: train $DEV" ok "no libmpi; $line"
  else
    row "build without MPI: train $DEV" FAIL "$([ $st -ne 0 ] && why $st train-no-mpi.log || echo "unexpected start-up: ${line:-none}")"
  fi
else
  row "build without MPI: train $DEV" SKIP "no $PREPARED/gandist-no-mpi (launch/gpu-check-prepare.sh builds it)"
fi

# Sample and eval of the device run's checkpoint (both pick the GPU when there is one).
step 20 sample.log "$GANDIST" sample --checkpoint "$WORK/dev" --n 16 --out "$WORK/sample.png"
st=$?
line=$(last_line '^wrote ' "$WORK/sample.log")
if [ $st -eq 0 ] && [[ "$line" == *" on $DEV"* ]] && [ -s "$WORK/sample.png" ]; then row "sample on $DEV" ok "$line"; else row "sample on $DEV" FAIL "$(why $st sample.log)"; fi
step 30 eval.log "$GANDIST" eval --checkpoint "$WORK/dev" --n 500 --data "$DATA" --classifier "$PREPARED/classifier.safetensors"
st=$?
line=$(grep -o '"fid":[0-9.e+-]*' "$WORK/eval.log" | head -n 1)
if [ $st -eq 0 ] && grep -q ", on $DEV" "$WORK/eval.log" && [ -n "$line" ]; then row "eval on $DEV" ok "$line, n 500, the prepared classifier"; else row "eval on $DEV" FAIL "$(why $st eval.log)"; fi

# Bench against PyTorch, alternately in one run (default TF32 settings on both sides).
first=1
for b in $BATCHES; do
  step 20 "bench-$b.log" "$GANDIST" bench --device "$DEV" --batch "$b" --iters "$BENCH_ITERS" --warmup "$BENCH_WARMUP" "${BENCH_SETS[@]}"
  st=$?
  ours=$(grep -o '[0-9.]* images/s' "$WORK/bench-$b.log" | head -n 1 | cut -d' ' -f1)
  step 20 "reference-$b.log" "$PYTHON" bench/reference.py --device "$DEV" --batch "$b" --iters "$BENCH_ITERS" --warmup "$BENCH_WARMUP" "${REF_ARGS[@]}"
  rst=$?
  theirs=$(grep -o 'images/s [0-9.]*' "$WORK/reference-$b.log" | cut -d' ' -f2)
  if [ $st -eq 0 ] && [ $rst -eq 0 ] && [ -n "$ours" ] && [ -n "$theirs" ]; then
    row "bench $DEV batch $b" ok "gandist $ours images/s, pytorch $theirs images/s, ratio $(python3 -c "print(f'{$ours / $theirs:.2f}')")"
  else
    row "bench $DEV batch $b" FAIL "gandist: $(if [ $st -eq 0 ]; then echo "${ours:-no figure}"; else why $st "bench-$b.log"; fi); reference: $(if [ $rst -eq 0 ]; then echo "${theirs:-no figure}"; else why $rst "reference-$b.log"; fi)"
  fi
  if [ $first = 1 ]; then
    first=0
    line=$(last_line '^host reads of device data in the timed iterations:' "$WORK/bench-$b.log")
    if [[ "$line" == *": 0 (0.00 per update)"* ]]; then row "host reads per update ($DEV bench, batch $b)" ok "0 in $BENCH_ITERS iterations"; else row "host reads per update ($DEV bench, batch $b)" FAIL "${line:-no report ($(why $st "bench-$b.log"))}"; fi
  fi
done
finish
