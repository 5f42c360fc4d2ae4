#!/bin/bash
# docs/results.md, "The paper's WGAN-GP against PyTorch": gandist's configs/wgan-gp-mnist.toml and
# the same recipe in plain PyTorch (docs/scripts/pytorch-wgan-gp.py), at DIM 32 for ITERS
# iterations, SEEDS seeds each; both score every EVERY iterations with `gandist eval --n 10000`
# (same classifier). One worker per listed core, each pinned with one thread (the comparison is
# per iteration, not per second).
#   docs/scripts/paper-vs-pytorch.sh OUT CLASSIFIER [ITERS=1000] [EVERY=200] [SEEDS="0 1 2"] [CORES="0 1"]
# Environment: GANDIST (default target/release/gandist), GANDIST_DATA (MNIST folder), and the
# torch venv of launch/env.sh. Results: OUT/evals.jsonl; docs/scripts/paper-vs-pytorch-summary.py.
set -euo pipefail
out=$(realpath -m "$1"); classifier=$(realpath "$2"); iters=${3:-1000}; every=${4:-200}
seeds=${5:-"0 1 2"}; cores=${6:-"0 1"}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../launch/env.sh"
gandist=$(realpath "${GANDIST:-target/release/gandist}")
data=$(realpath "${GANDIST_DATA:-data/mnist}")
mkdir -p "$out"
: > "$out/queue.txt"
for s in $seeds; do echo "gandist $s" >> "$out/queue.txt"; echo "pytorch $s" >> "$out/queue.txt"; done
score() { # impl seed step source
  local json
  json=$(taskset -c "$core" "$gandist" eval "$4" --n 10000 --seed "$2" --classifier "$classifier" --data "$data" 2>/dev/null | tail -n 1)
  echo "{\"impl\":\"$1\",\"seed\":$2,\"step\":$3,\"eval\":$json}" >> "$out/evals.jsonl"
}
worker() {
  local core=$1 job impl seed run f step
  while :; do
    job=$(flock "$out/queue.lock" bash -c 'l=$(head -n1 "$0"); [ -n "$l" ] && sed -i 1d "$0"; echo "$l"' "$out/queue.txt")
    [ -z "$job" ] && return 0
    read -r impl seed <<<"$job"
    run="$out/$impl-s$seed"
    echo "$(date -u +%T) core $core: $impl seed $seed" >> "$out/progress.log"
    if [ "$impl" = gandist ]; then
      taskset -c "$core" "$gandist" train --config configs/wgan-gp-mnist.toml --data "$data" --run-dir "$run" \
        --set critic.width=32 --set generator.width=32 --set train.iterations="$iters" --set train.seed="$seed" --set train.threads=1 \
        --set train.device='"cpu"' --set train.checkpoint_every="$every" --set train.keep_checkpoints=100 \
        --set train.sample_every="$every" --set train.log_every=50 > "$run.log" 2>&1
      for f in "$run"/checkpoints/step-*; do score gandist "$seed" $((10#${f##*step-})) --checkpoint="$f"; done
    else
      taskset -c "$core" python -W ignore "$here/pytorch-wgan-gp.py" --data "$data" --out "$run" --dim 32 \
        --iters "$iters" --every "$every" --seed "$seed" --threads 1 > "$run.log" 2>&1
      for f in "$run"/step-*.idx; do step=${f##*step-}; score pytorch "$seed" $((10#${step%.idx})) --samples="$f"; done
    fi
    echo "$(date -u +%T) core $core: done $impl seed $seed" >> "$out/progress.log"
  done
}
for core in $cores; do worker "$core" & done
wait
