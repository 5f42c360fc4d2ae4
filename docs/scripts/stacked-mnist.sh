#!/bin/bash
# docs/results.md, "Stacked MNIST": the default's recipe (configs/cpu-default.toml) on Stacked
# MNIST (three random digits as the channels of one image: 1000 modes), SEEDS seeds one after
# the other, a checkpoint every EVERY iterations; then each checkpoint scored with
# `gandist eval --n 26000` (PacGAN's sample count): modes covered of 1000, KL to uniform.
#   docs/scripts/stacked-mnist.sh OUT CLASSIFIER [ITERS=5000] [EVERY=1000] [SEEDS="0 1 2"]
# Environment: GANDIST (default target/release/gandist), GANDIST_DATA (MNIST folder), THREADS
# (libtorch threads per run; set 1 to train seeds side by side, one script per seed), N (samples
# per evaluation, default 26000).
set -euo pipefail
out=$(realpath -m "$1"); classifier=$(realpath "$2"); iters=${3:-5000}; every=${4:-1000}; seeds=${5:-"0 1 2"}
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
gandist=$(realpath "${GANDIST:-target/release/gandist}")
data=$(realpath "${GANDIST_DATA:-data/mnist}")
mkdir -p "$out"
for s in $seeds; do
  run="$out/stacked-s$s"
  [ -e "$run/checkpoints" ] || "$gandist" train --config configs/cpu-default.toml --data "$data" --run-dir "$run" \
    --set data.dataset='"stacked-mnist"' --set train.iterations="$iters" --set train.seed="$s" \
    --set train.checkpoint_every="$every" --set train.keep_checkpoints=1000 \
    ${THREADS:+--set train.threads="$THREADS"} > "$run.log" 2>&1
  for ck in "$run"/checkpoints/step-*; do
    json=$("$gandist" eval --checkpoint "$ck" --n "${N:-26000}" --seed "$s" ${THREADS:+--threads "$THREADS"} --classifier "$classifier" --data "$data" 2>/dev/null | tail -n 1)
    echo "{\"seed\":$s,\"step\":$((10#${ck##*step-})),\"eval\":$json}" >> "$out/evals.jsonl"
  done
done
