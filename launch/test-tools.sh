#!/usr/bin/env bash
# The reference implementations the tests hold gandist against, from PyPI into the torch venv
# (made by launch/setup.sh): pytorch-fid and torch-fidelity (Inception FID, KID), onnx and
# onnxruntime (ONNX export), tensorboard (its event-file reader), safetensors, scipy, numpy,
# pillow. Pinned, so that a test compares against the same code on every machine. torchvision
# is installed without its dependencies so that pip leaves torch 2.11.0 alone.
# Skipped with LIBTORCH (no venv): the tests that need these tools then say so and fail.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
. "$here/env.sh"
if [ -n "${LIBTORCH:-}" ]; then
  echo "test-tools: LIBTORCH is set, no torch venv: install torch 2.11.0 and the tools below into a venv first on PATH" >&2
fi
py="$GANDIST_TORCH_VENV/bin/python"
[ -x "$py" ] || py=python3
pins_nodeps="torchvision==0.26.0 pytorch-fid==0.3.0 torch-fidelity==0.4.0"
pins="numpy==2.4.6 scipy==1.17.1 pillow==13.0.0 tqdm==4.70.1 onnx==1.23.2 onnxruntime==1.32.0 tensorboard==2.21.0 safetensors==0.8.0"
check='import torchvision, pytorch_fid, torch_fidelity, numpy, scipy, PIL, onnx, onnxruntime, safetensors
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator'
if "$py" -W ignore -c "$check" 2>/dev/null; then
  echo "test-tools: ok"
  exit 0
fi
echo "test-tools: installing $pins_nodeps $pins"
# shellcheck disable=SC2086
"$py" -m pip install -q --disable-pip-version-check --no-deps $pins_nodeps
# shellcheck disable=SC2086
"$py" -m pip install -q --disable-pip-version-check $pins
"$py" -W ignore -c "$check" || { echo "test-tools: the reference tools did not install into $("$py" -c 'import sys; print(sys.prefix)')" >&2; exit 1; }
echo "test-tools: ok"
