# Sourced by launch/gpu-check.sh and launch/gpu-check-prepare.sh: what the check and its
# preparation on the CPU must agree on.
#   GPU_CHECK_DEVICE  cuda (the check proper) or cpu (every row on the CPU, tiny sizes: CI)
#   GANDIST           the binary (default target/release/gandist, else target/debug/gandist)
#   DATA              the MNIST folder (default data/mnist: the four .gz files, 11 MB)
#   PREPARED          what the preparation made (default data/gpu-check): the CPU reference
#                     run, the classifier, the build without MPI, prepared.txt
MODE="${GPU_CHECK_DEVICE:-cuda}"
case "$MODE" in cuda | cpu) ;; *) echo "gpu-check: GPU_CHECK_DEVICE must be cuda or cpu, got $MODE" >&2; exit 2 ;; esac
if [ -z "${GANDIST:-}" ]; then
  GANDIST=target/release/gandist
  [ -x "$GANDIST" ] || GANDIST=target/debug/gandist
fi
DATA="${DATA:-data/mnist}"
PREPARED="${PREPARED:-data/gpu-check}"
# The 20-iteration trainings: the smoke model at batch 64, TF32 off where it runs on CUDA;
# checkpoints at 10 (the resume rows start there) and 20 (the comparisons).
GPU_CHECK_TRAIN=(--config configs/smoke.toml --data "$DATA" --set train.iterations=20 --set train.log_every=5
  --set train.checkpoint_every=10 --set train.sample_every=20 --set data.batch_size=64 --set train.threads=4)
if [ "$MODE" = cuda ]; then CLASSIFIER_IMAGES=4000; else CLASSIFIER_IMAGES=1000; fi
# The binary's fingerprint: the CPU reference is only a reference for the binary that made it.
gpu_check_fingerprint() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }
