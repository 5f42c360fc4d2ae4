#!/usr/bin/env bash
# The GPU check: one command on a machine with one CUDA GPU, finishing within 8 minutes,
# exit status 1 when any row fails, a table last.
#
#   bash launch/gpu-check.sh                        # on the GPU machine
#   GPU_CHECK_DEVICE=cpu bash launch/gpu-check.sh   # every row on the CPU, tiny sizes (CI runs
#                                                   # it so: tests/system/gpu_check_cpu.sh)
#
# The binary is built elsewhere (cargo build --release) and the machine brings torch 2.11 in its
# python3 (see ../shared/notes/ENVIRONMENT.md). Settings from the environment:
#   GANDIST  the binary (default target/release/gandist, else target/debug/gandist)
#   DATA     the MNIST folder (default data/mnist); a classifier.safetensors in it is used,
#            else a quick one is trained for the eval row
#   PYTHON   the python with torch, for bench/reference.py and the torch library path (python3)
#   OUT      where logs and runs go (default: a new temporary folder)
#
# Rows: the collectives self-test on one rank over NCCL (all-reduce, broadcast, the abort
# path: the trainer itself skips every reduction at world size 1); a 20-iteration training on
# the CPU and on CUDA with TF32 off, compared at step 20 (parameters and logged losses within
# 1e-3 of their scale: cuDNN's and oneDNN's float32 convolutions round differently, and Adam
# turns sign flips of near-zero gradient elements into differences of up to its step size, so
# bit equality is not expected, but noise and data are the same values on both devices, so a
# wrong draw or a lost update shows as differences of order 1); resume on CUDA (within
# 1e-4 of the straight run: cuDNN's kernels are not bit-reproducible) and a CPU checkpoint
# resumed on CUDA (1e-3, as above); host reads between sync steps in that training and in the
# bench's timed iterations (must be 0); sample and eval on CUDA; the bench at batch 64, 512,
# 2048 against bench/reference.py (PyTorch) in the same run.
#
# Time budget: every step has its own timeout; they sum to 465 s, plus about 10 s of set-up
# (two python3 look-ups of library paths), under 8 minutes:
#   device 10 + self-test 45 + train cpu 45 + train cuda 45 + resume 2 x 45 + classifier 45
#   + sample 20 + eval 30 + compare 3 x 5 + bench 6 x 20 = 465.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE="${GPU_CHECK_DEVICE:-cuda}"
case "$MODE" in cuda | cpu) ;; *) echo "gpu-check: GPU_CHECK_DEVICE must be cuda or cpu, got $MODE" >&2; exit 2 ;; esac
if [ -z "${GANDIST:-}" ]; then
  GANDIST=target/release/gandist
  [ -x "$GANDIST" ] || GANDIST=target/debug/gandist
fi
DATA="${DATA:-data/mnist}"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
torch_lib="$("$PYTHON" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))' 2>/dev/null || true)"
nccl_lib="$("$PYTHON" -c 'import nvidia.nccl,os;print(os.path.join(list(nvidia.nccl.__path__)[0],"lib"))' 2>/dev/null || true)"
export LD_LIBRARY_PATH="${torch_lib}${nccl_lib:+:$nccl_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [ "$MODE" = cuda ]; then
  DEV=cuda; NCCL_RANKS=1; BACKEND=nccl; BATCHES="64 512 2048"; BENCH_ITERS=20; BENCH_WARMUP=3
  BENCH_SETS=(); REF_ARGS=(); CLASSIFIER_IMAGES=4000
else
  # The same rows through the CPU: two MPI ranks for the self-test, tiny sizes, one thread.
  DEV=cpu; NCCL_RANKS=2; BACKEND=mpi; BATCHES="8 16 32"; BENCH_ITERS=1; BENCH_WARMUP=1
  BENCH_SETS=(--set critic.width=4 --set generator.width=4 --set train.threads=1); REF_ARGS=(--dim 4 --threads 1); CLASSIFIER_IMAGES=1000
fi

rows=()
failed=0
# row NAME ok|FAIL DETAIL
row() {
  rows+=("$1|$2|$3")
  [ "$2" = ok ] || failed=$((failed + 1))
}
# step SECONDS LOG CMD...: runs CMD bounded in time, its output in $OUT/LOG.
step() {
  local limit="$1" log="$OUT/$2"
  shift 2
  timeout "$limit" "$@" >"$log" 2>&1
}
# The last line of a log matching a pattern, without gandist's log prefix (time, level, rank).
last_line() { sed -E 's/^[0-9]{4}-[0-9T:.-]+Z +[A-Z]+ rank=[0-9?]+: //' "$2" 2>/dev/null | grep -h "$1" | tail -n 1; }

# Device.
if [ "$MODE" = cuda ]; then
  if info=$(timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
    row "device" ok "$info"
  else
    row "device" FAIL "nvidia-smi: $info"
  fi
else
  row "device" ok "cpu mode: $(nproc) cores, $(uname -m)"
fi
[ -x "$GANDIST" ] || row "binary" FAIL "no executable at $GANDIST"

# Collectives on $NCCL_RANKS rank(s): the self-test prints one line per check.
step 45 selftest.log mpirun -n "$NCCL_RANKS" "$GANDIST" selftest-collectives --device "$DEV" --set "dist.backend=\"$BACKEND\""
st=$?
for check in all-reduce broadcast "abort path"; do
  line=$(last_line "rank 0 selftest $check: " "$OUT/selftest.log")
  if [ $st -eq 0 ] && [[ "$line" == *": ok ("* ]]; then
    detail="${line#*: ok (}"
    row "$BACKEND $check ($NCCL_RANKS rank)" ok "${detail%)}"
  else
    row "$BACKEND $check ($NCCL_RANKS rank)" FAIL "exit $st: ${line:-$(tail -n 2 "$OUT/selftest.log" | tr '\n' ' ')}"
  fi
done

# Trainings: 20 iterations of the smoke model at batch 64, CPU and device, TF32 off.
common=(--config configs/smoke.toml --data "$DATA" --set train.iterations=20 --set train.log_every=5
  --set train.checkpoint_every=10 --set train.sample_every=20 --set data.batch_size=64 --set train.threads=4)
train() { # LOG RUN DEVICE [extra...]
  local log="$1" run="$2" dev="$3"
  shift 3
  NVIDIA_TF32_OVERRIDE=0 step 45 "$log" "$GANDIST" train "${common[@]}" --set "train.device=\"$dev\"" --set 'dist.backend="local"' --run-dir "$run" "$@"
}
train_row() { # NAME STATUS LOG
  if [ "$2" -eq 0 ]; then row "$1" ok "$(last_line '^finished' "$OUT/$3")"; else row "$1" FAIL "exit $2: $(tail -n 2 "$OUT/$3" | tr '\n' ' ')"; fi
}
train train-cpu.log "$OUT/cpu" cpu; train_row "train cpu (reference), 20 iterations" $? train-cpu.log
train train-dev.log "$OUT/dev" "$DEV"; train_row "train $DEV, 20 iterations" $? train-dev.log
compare() { # NAME RUN_A RUN_B TOLERANCE
  local line
  line=$(timeout 5 python3 launch/compare-runs.py "$2" "$3" 20 "$4" 2>&1)
  if [ $? -eq 0 ]; then row "$1" ok "$line"; else row "$1" FAIL "$line"; fi
}
compare "$DEV vs cpu at step 20" "$OUT/cpu" "$OUT/dev" 1e-3

# Resume on the device from its own step-10 checkpoint, and from the CPU run's.
for pair in "dev:resume-dev" "cpu:resume-cpu"; do
  from="${pair%%:*}"; to="$OUT/${pair#*:}"
  mkdir -p "$to/checkpoints" && cp -r "$OUT/$from/checkpoints/step-000000010" "$to/checkpoints/" 2>/dev/null
  train "${pair#*:}.log" "$to" "$DEV" --resume auto
  st=$?
  if [ $st -ne 0 ] || ! grep -q "resumed from" "$OUT/${pair#*:}.log"; then
    row "resume $from step 10 on $DEV" FAIL "exit $st: $(tail -n 2 "$OUT/${pair#*:}.log" | tr '\n' ' ')"
  elif [ "$from" = dev ]; then
    compare "resume $DEV step 10 -> 20 vs straight" "$OUT/dev" "$to" 1e-4
  else
    compare "resume cpu step 10 on $DEV -> 20 vs cpu" "$OUT/cpu" "$to" 1e-3
  fi
done

# Host reads: none between sync steps, in training and in the bench (first bench row below).
line=$(last_line '^host reads of device data:' "$OUT/train-dev.log")
if [[ "$line" == *", 0 between them" ]]; then row "host reads between sync steps ($DEV train)" ok "${line#host reads of device data: }"; else row "host reads between sync steps ($DEV train)" FAIL "${line:-no report}"; fi

# Sample and eval of the device run's checkpoint (both pick the GPU when there is one).
step 20 sample.log "$GANDIST" sample --checkpoint "$OUT/dev" --n 16 --out "$OUT/sample.png"
st=$?
line=$(last_line '^wrote ' "$OUT/sample.log")
if [ $st -eq 0 ] && [[ "$line" == *" on $DEV"* ]] && [ -s "$OUT/sample.png" ]; then row "sample on $DEV" ok "$line"; else row "sample on $DEV" FAIL "exit $st: ${line:-$(tail -n 1 "$OUT/sample.log")}"; fi
classifier="$DATA/classifier.safetensors"
if [ ! -f "$classifier" ]; then
  classifier="$OUT/classifier.safetensors"
  step 45 classifier.log "$GANDIST" classifier train --data "$DATA" --out "$classifier" --epochs 1 --limit "$CLASSIFIER_IMAGES" --min-accuracy 0.1
fi
step 30 eval.log "$GANDIST" eval --checkpoint "$OUT/dev" --n 500 --data "$DATA" --classifier "$classifier"
st=$?
line=$(grep -o '"fid":[0-9.e+-]*' "$OUT/eval.log" | head -n 1)
if [ $st -eq 0 ] && grep -q ", on $DEV" "$OUT/eval.log" && [ -n "$line" ]; then row "eval on $DEV" ok "$line, n 500, classifier ${classifier#$OUT/}"; else row "eval on $DEV" FAIL "exit $st: $(tail -n 2 "$OUT/eval.log" | tr '\n' ' ')"; fi

# Bench against PyTorch, alternately in one run (default TF32 settings on both sides).
first=1
for b in $BATCHES; do
  step 20 "bench-$b.log" "$GANDIST" bench --device "$DEV" --batch "$b" --iters "$BENCH_ITERS" --warmup "$BENCH_WARMUP" "${BENCH_SETS[@]}"
  st=$?
  ours=$(grep -o '[0-9.]* images/s' "$OUT/bench-$b.log" | head -n 1 | cut -d' ' -f1)
  step 20 "reference-$b.log" "$PYTHON" bench/reference.py --device "$DEV" --batch "$b" --iters "$BENCH_ITERS" --warmup "$BENCH_WARMUP" "${REF_ARGS[@]}"
  rst=$?
  theirs=$(grep -o 'images/s [0-9.]*' "$OUT/reference-$b.log" | cut -d' ' -f2)
  if [ $st -eq 0 ] && [ $rst -eq 0 ] && [ -n "$ours" ] && [ -n "$theirs" ]; then
    row "bench $DEV batch $b" ok "gandist $ours images/s, pytorch $theirs images/s, ratio $(python3 -c "print(f'{$ours / $theirs:.2f}')")"
  else
    row "bench $DEV batch $b" FAIL "gandist exit $st (${ours:-no figure}), reference exit $rst (${theirs:-no figure})"
  fi
  if [ $first = 1 ]; then
    first=0
    line=$(last_line '^host reads of device data in the timed iterations:' "$OUT/bench-$b.log")
    if [[ "$line" == *": 0 (0.00 per update)" ]]; then row "host reads per update ($DEV bench, batch $b)" ok "0 in $BENCH_ITERS iterations"; else row "host reads per update ($DEV bench, batch $b)" FAIL "${line:-no report}"; fi
  fi
done

echo
echo "gandist GPU check, $(date -u '+%F %H:%M UTC'), mode $MODE, binary $GANDIST, logs in $OUT"
printf '%s\n' "${rows[@]}" | awk -F'|' '{ printf "%-44s %-5s %s\n", $1, $2, $3 }'
echo "${#rows[@]} rows, $failed failed"
[ "$failed" -eq 0 ]
