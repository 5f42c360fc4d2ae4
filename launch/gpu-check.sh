#!/usr/bin/env bash
# The GPU check, run on a CUDA machine with a release binary built elsewhere and that
# machine's torch 2.11 libraries:
#   GANDIST=path/to/gandist DATA=path/to/mnist bash launch/gpu-check.sh
# It runs, each bounded in time:
#   1. bench of the WGAN-GP iteration on CUDA at batch 64, 512, 2048;
#   2. a short training on CUDA (losses finite, grid written);
#   3. the same short training on CPU, on CUDA with 1 rank over NCCL, and with 2 ranks sharing
#      the GPU over MPI (NCCL cannot put two ranks on one GPU), then compares parameters.
# TF32 is off (NVIDIA_TF32_OVERRIDE=0) so that CUDA and CPU agree to float32 rounding.
# It ends with a short table. Set OUT to keep the logs (default: a temp dir).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GANDIST="${GANDIST:-$here/../target/release/gandist}"
DATA="${DATA:-$here/../data/mnist}"
OUT="${OUT:-$(mktemp -d)}"
export NVIDIA_TF32_OVERRIDE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
torch_lib="$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')"
nccl_lib="$(python3 -c 'import nvidia.nccl,os;print(os.path.join(list(nvidia.nccl.__path__)[0],"lib"))' 2>/dev/null || true)"
export LD_LIBRARY_PATH="$torch_lib${nccl_lib:+:$nccl_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
rows=()
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); }

for b in 64 512 2048; do
  line=$(timeout 120 "$GANDIST" bench --device cuda --batch "$b" --iters 30 --warmup 5 2>&1 | tee "$OUT/bench-$b.txt" | grep -o '[0-9.]* images/s' || echo "failed")
  row "bench cuda batch $b" "$line"
done

common=(--config "$here/../configs/smoke.toml" --data "$DATA" --set train.iterations=20 --set train.checkpoint_every=20 --set data.batch_size=64)
timeout 120 "$GANDIST" train "${common[@]}" --set train.device='"cpu"' --run-dir "$OUT/cpu" >"$OUT/cpu.log" 2>&1; row "train cpu" "exit $?"
timeout 120 "$GANDIST" train "${common[@]}" --set train.device='"cuda"' --set dist.backend='"local"' --run-dir "$OUT/cuda" >"$OUT/cuda.log" 2>&1; row "train cuda (1 process)" "exit $?"
timeout 180 mpirun -n 1 "$GANDIST" train "${common[@]}" --set train.device='"cuda"' --set dist.backend='"nccl"' --run-dir "$OUT/nccl1" >"$OUT/nccl1.log" 2>&1; row "train cuda, 1 rank, nccl" "exit $?"
timeout 180 mpirun -n 2 --oversubscribe "$GANDIST" train "${common[@]}" --set train.device='"cuda"' --set dist.backend='"mpi"' --run-dir "$OUT/mpi2" >"$OUT/mpi2.log" 2>&1; row "train cuda, 2 ranks, mpi" "exit $?"

python3 - "$OUT" <<'PY' > "$OUT/compare.txt" 2>&1
import sys, os, json, struct
out = sys.argv[1]
def load(run):
    p = os.path.join(out, run, "checkpoints", "step-000000020", "state.safetensors")
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); d = b[8 + n:]
    return {k: struct.unpack("<%df" % ((v["data_offsets"][1] - v["data_offsets"][0]) // 4), d[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__" and not k.startswith("optim")}
ref = load("cpu")
for run in ("cuda", "nccl1", "mpi2"):
    try:
        other = load(run)
    except Exception as e:
        print(f"{run}: no checkpoint ({e})"); continue
    worst = max(max(abs(x - y) for x, y in zip(ref[k], other[k])) / max(max(abs(x) for x in ref[k]), 1e-12) for k in ref)
    print(f"{run} vs cpu: worst per-tensor max|diff|/max|p| = {worst:.3e}")
PY
while read -r l; do row "params ${l%%:*}" "${l#*: }"; done < "$OUT/compare.txt"
echo
echo "gandist GPU check ($(date -u +%F), $(cat "$OUT/gpu.txt"))"
printf '%s\n' "${rows[@]}"
echo "logs in $OUT"
