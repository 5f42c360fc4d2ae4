#!/usr/bin/env bash
# gandist's WGAN-GP iteration against the PyTorch reference (bench/reference.py), timed
# alternately in one run on the same machine; prints images/s of each, per round, and the
# median ratio per batch size. A benchmark: it asserts nothing about speed.
#   bash bench/compare.sh [--device cpu|cuda] [--batches "64 512"] [--rounds 3] [--iters 10]
#                         [--dim 64] [--threads 0]
# GANDIST (binary, default target/release/gandist) and PYTHON (default: the torch venv's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. launch/env.sh
device=cpu; batches="64"; rounds=3; iters=10; dim=64; threads=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --batches) batches="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --dim) dim="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
GANDIST="${GANDIST:-target/release/gandist}"
PYTHON="${PYTHON:-${LIBTORCH:+python3}}"
PYTHON="${PYTHON:-$GANDIST_TORCH_VENV/bin/python}"
[ -x "$GANDIST" ] || { echo "compare.sh: no binary at $GANDIST (cargo build --release)" >&2; exit 2; }
echo "machine: $(uname -m), $(nproc) cores; $(date -u +%F); device $device; dim $dim; threads ${threads} (0 = default)"
for b in $batches; do
  ours=(); theirs=()
  for r in $(seq "$rounds"); do
    o=$("$GANDIST" bench --device "$device" --batch "$b" --iters "$iters" --warmup 2 \
        --set critic.width="$dim" --set generator.width="$dim" --set train.threads="$threads" | grep -o '[0-9.]* images/s' | cut -d' ' -f1)
    t=$("$PYTHON" bench/reference.py --device "$device" --batch "$b" --iters "$iters" --warmup 2 \
        --dim "$dim" --threads "$threads" | grep -o 'images/s [0-9.]*' | cut -d' ' -f2)
    echo "batch $b round $r: gandist $o images/s, pytorch $t images/s"
    ours+=("$o"); theirs+=("$t")
  done
  python3 - "$b" "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
b, ours, theirs = sys.argv[1], list(map(float, sys.argv[2].split())), list(map(float, sys.argv[3].split()))
ratios = [o / t for o, t in zip(ours, theirs)]
print(f"batch {b}: gandist median {statistics.median(ours):.1f} images/s, pytorch median "
      f"{statistics.median(theirs):.1f} images/s, ratio median {statistics.median(ratios):.2f} "
      f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")
PY
done
