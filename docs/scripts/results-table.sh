#!/bin/bash
# Evaluates every checkpoint of the given run directories and prints one markdown table row
# per checkpoint: run, step, classifier FID, classes covered, KL to uniform, confidence.
#   docs/scripts/results-table.sh N CLASSIFIER RUN_DIR...     (gandist on PATH or $GANDIST)
set -euo pipefail
n=$1; classifier=$2; shift 2
gandist=${GANDIST:-gandist}
echo "| run | step | FID (n=$n) | classes covered | KL(classes‖uniform) | confidence |"
echo "|---|---|---|---|---|---|"
for run in "$@"; do
  seed=$(sed -n 's/^seed = \([0-9]*\)$/\1/p' "$run/config.toml" | head -n 1)
  for ck in "$run"/checkpoints/step-*; do
    step=$((10#${ck##*step-}))
    json=$("$gandist" eval --checkpoint "$ck" --n "$n" --seed "$seed" --classifier "$classifier" | tail -n 1)
    python3 -c 'import json,sys; m=json.loads(sys.argv[1]); print("| %s | %d | %.2f | %d | %.3f | %.3f |" % (sys.argv[2], int(sys.argv[3]), m["fid"], m["classes_covered"], m["kl_uniform"], m["confidence"]))' "$json" "$(basename "$run")" "$step"
  done
done
