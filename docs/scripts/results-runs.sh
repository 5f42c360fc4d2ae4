#!/bin/bash
# Trains and evaluates the runs of docs/results.md: one worker per CPU core, each pinned to its
# core with one libtorch thread, taking the next line of the jobs file (results-jobs.txt) until
# none is left. Every checkpoint of a run is scored with `gandist eval --n 10000` (the run's seed
# for the noise) into OUT/evals.jsonl; docs/scripts/results-summary.py makes the tables.
#   docs/scripts/results-runs.sh OUT JOBS CLASSIFIER [CORE ...]      (default cores: 0 1)
# Environment: GANDIST (the binary, default target/release/gandist), GANDIST_DATA (MNIST folder).
set -euo pipefail
out=$(realpath -m "$1"); jobs=$2; classifier=$3; shift 3
cores=("$@"); [ ${#cores[@]} -eq 0 ] && cores=(0 1)
gandist=$(realpath "${GANDIST:-target/release/gandist}")
data=${GANDIST_DATA:-data/mnist}
configs=$(realpath configs)
mkdir -p "$out/runs"
grep -v '^#' "$jobs" | grep . > "$out/queue.txt"
worker() {
  local core=$1 job name cfg iters every seed run ck step json
  while true; do
    job=$(flock "$out/queue.lock" bash -c 'l=$(head -n1 "$0"); [ -n "$l" ] && sed -i 1d "$0"; echo "$l"' "$out/queue.txt")
    [ -z "$job" ] && return 0
    set -- $job; name=$1; cfg=$2; iters=$3; every=$4; seed=$5; shift 5
    run=$out/runs/$name
    echo "$(date -u +%T) core $core: training $name" >> "$out/progress.log"
    /usr/bin/time -f "%e s wall, %U s user, %M KB peak" taskset -c "$core" "$gandist" train --config "$configs/$cfg" \
      --data "$data" --run-dir "$run" --set train.iterations="$iters" --set train.seed="$seed" --set train.threads=1 \
      --set train.device='"cpu"' --set train.checkpoint_every="$every" --set train.keep_checkpoints=100 \
      --set train.sample_every="$every" --set train.log_every=10 "$@" > "$run.log" 2>&1 \
      || echo "$(date -u +%T) core $core: $name FAILED (see $run.log)" >> "$out/progress.log"
    for ck in "$run"/checkpoints/step-*; do
      [ -d "$ck" ] || continue
      step=$((10#${ck##*step-}))
      json=$(taskset -c "$core" "$gandist" eval --checkpoint "$ck" --n 10000 --seed "$seed" --classifier "$classifier" --data "$data" | tail -n 1)
      echo "{\"run\":\"$name\",\"seed\":$seed,\"step\":$step,\"eval\":$json}" >> "$out/evals.jsonl"
    done
    echo "$(date -u +%T) core $core: done $name ($(tail -n 1 "$run.log"))" >> "$out/progress.log"
  done
}
for core in "${cores[@]}"; do worker "$core" & done
wait
