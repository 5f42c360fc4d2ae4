#!/bin/bash
# docs/results.md, "Time to quality": trains the old and the new default, SEEDS seeds each, one
# run at a time on the whole machine (libtorch takes every core of the affinity mask), keeping
# a checkpoint every few hundred iterations; only when every run has ended does it score each
# checkpoint with `gandist eval --n 10000` (so that scoring never shares the machine with a
# timed run). Wall-clock time of a checkpoint = metrics.jsonl's elapsed_seconds at its step
# (training time since the loop started; data loading and set-up, about 1 s, excluded).
#   docs/scripts/default-timing.sh OUT CLASSIFIER [SEEDS="0 1 2"]
# Environment: GANDIST (default target/release/gandist), GANDIST_DATA (MNIST folder).
# The old default is configs/wgan-gp-cpu.toml (configs/cpu-default.toml until commit 8ed47f5:
# WGAN-GP, 2000 iterations). Table and plot: docs/scripts/default-timing-summary.py OUT [PNG].
set -euo pipefail
out=$(realpath -m "$1"); classifier=$(realpath "$2"); seeds=${3:-"0 1 2"}
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
gandist=$(realpath "${GANDIST:-target/release/gandist}")
data=$(realpath "${GANDIST_DATA:-data/mnist}")
mkdir -p "$out"
cp configs/wgan-gp-cpu.toml "$out/old-default.toml"
cp configs/cpu-default.toml "$out/new-default.toml"
runs=()
for s in $seeds; do runs+=("new $s 500") ; done
for s in $seeds; do runs+=("old $s 250") ; done
for r in "${runs[@]}"; do
  read -r which seed every <<<"$r"
  run="$out/$which-s$seed"
  [ -e "$run/checkpoints" ] && { echo "skip $run (exists)"; continue; }
  echo "$(date -u +%T) train $which seed $seed" | tee -a "$out/progress.log"
  /usr/bin/time -f "%e s wall, %U s user" "$gandist" train --config "$out/$which-default.toml" --data "$data" \
    --run-dir "$run" --set train.seed="$seed" --set train.checkpoint_every="$every" \
    --set train.keep_checkpoints=1000 > "$run.log" 2>&1
done
for r in "${runs[@]}"; do
  read -r which seed every <<<"$r"
  for ck in "$out/$which-s$seed"/checkpoints/step-*; do
    step=$((10#${ck##*step-}))
    json=$("$gandist" eval --checkpoint "$ck" --n 10000 --seed "$seed" --classifier "$classifier" --data "$data" 2>/dev/null | tail -n 1)
    echo "{\"default\":\"$which\",\"seed\":$seed,\"step\":$step,\"eval\":$json}" >> "$out/evals.jsonl"
  done
done
echo "$(date -u +%T) done" | tee -a "$out/progress.log"
