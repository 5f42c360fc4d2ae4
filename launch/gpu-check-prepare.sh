#!/usr/bin/env bash
# Prepares on a CPU machine everything the GPU check carries to the GPU machine, so that the
# check's minutes there go to GPU work only:
#   target/release/gandist     the release build (with MPI), unless GANDIST names a binary
#   data/mnist                 a verified MNIST copy (the four .gz files, 11 MB)
#   data/gpu-check/            the CPU reference run (20 iterations, checkpoints at 10 and 20),
#                              the classifier for the eval row, the release build without MPI
#                              (gandist-no-mpi), prepared.txt (the binary's fingerprint)
# and prints the carry list with its measured size (the device takes at most 64 MiB with the
# working tree). Both builds share the dependencies; each build of the gandist crate takes a
# few minutes on 2 cores, the reference run and the classifier about a minute.
#
#   bash launch/gpu-check-prepare.sh                     # before `bash launch/gpu-check.sh` on the GPU
#   GPU_CHECK_DEVICE=cpu GANDIST=target/debug/gandist DATA=... PREPARED=... bash launch/gpu-check-prepare.sh
#                                                        # CI (tests/system/gpu_check_cpu.sh): no builds
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
given_binary="${GANDIST:-}"
. launch/gpu-check-common.sh
SECONDS=0
mkdir -p "$PREPARED"
if [ -z "$given_binary" ]; then
  . launch/env.sh
  # Both builds write target/release/gandist: the one without MPI first, copied aside.
  echo "prepare: cargo build --release --no-default-features (the build without MPI)"
  cargo build -q --release --no-default-features --bin gandist
  cp target/release/gandist "$PREPARED/gandist-no-mpi"
  echo "prepare: cargo build --release"
  cargo build -q --release --bin gandist
  GANDIST=target/release/gandist
  echo "prepare: builds done at ${SECONDS} s"
fi
. launch/mnist.sh
gandist_mnist "$GANDIST" "$DATA"

echo "prepare: the CPU reference run (20 iterations on the CPU)"
rm -rf "$PREPARED/cpu"
"$GANDIST" train "${GPU_CHECK_TRAIN[@]}" --set 'train.device="cpu"' --set 'dist.backend="local"' --run-dir "$PREPARED/cpu" >"$PREPARED/cpu.log" 2>&1 \
  || { tail -n 20 "$PREPARED/cpu.log"; echo "prepare: the CPU reference run failed (log: $PREPARED/cpu.log)" >&2; exit 1; }
echo "prepare: the classifier ($CLASSIFIER_IMAGES images, 1 epoch)"
"$GANDIST" classifier train --data "$DATA" --out "$PREPARED/classifier.safetensors" --epochs 1 --limit "$CLASSIFIER_IMAGES" --min-accuracy 0.1 >"$PREPARED/classifier.log" 2>&1 \
  || { tail -n 20 "$PREPARED/classifier.log"; echo "prepare: the classifier failed (log: $PREPARED/classifier.log)" >&2; exit 1; }
cat >"$PREPARED/prepared.txt" <<EOF
binary $GANDIST
sha256 $(gpu_check_fingerprint "$GANDIST")
mode $MODE
commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')
host $(hostname) ($(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1))
date $(date -u '+%F %H:%M UTC')
EOF
carry=("$GANDIST" "$DATA" "$PREPARED")
bytes=$(du -cb "${carry[@]}" | tail -n 1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "prepare: done in ${SECONDS} s"
printf 'prepare: carry %s\n' "$(printf '"%s", ' "${carry[@]}" | sed 's/, $//')"
echo "prepare: $(mib "$bytes") carried + $(mib "$tree") of tracked files = $(mib $((bytes + tree))) (the device takes 64 MiB)"
# (In CPU mode nothing travels, and the debug binary alone is larger.)
[ "$MODE" = cpu ] || [ $((bytes + tree)) -le $((64 * 1048576)) ] || { echo "prepare: over 64 MiB: the device would refuse it" >&2; exit 1; }
