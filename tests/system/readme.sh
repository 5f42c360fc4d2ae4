#!/usr/bin/env bash
# The README's first command, from a fresh clone: set-up, release build, MNIST import and the
# default training (shortened to 2 iterations here), end to end. (The second command,
# launch/test.sh, is what CI runs from its own fresh clone.)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
data="${GANDIST_TEST_DATA:-$repo/data/mnist}"
tmp="$(mktemp -d /tmp/gandist-readme.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
git clone -q "$repo" "$tmp/clone"
cmd="$(grep -m1 -o 'bash launch/train-default.sh' "$tmp/clone/README.md")"
[ -n "$cmd" ] || { echo "FAIL: the README does not start with launch/train-default.sh"; exit 1; }
cd "$tmp/clone"
# Share the build cache with the checkout under test: the clone's sources are what is built.
CARGO_TARGET_DIR="$repo/target" GANDIST_MNIST_FROM="$data" \
  $cmd --set train.iterations=2 --set train.sample_every=1 --set train.checkpoint_every=2 --set train.log_every=1
[ -f runs/cpu-default/samples/latest.png ] || { echo "FAIL: no sample grid"; exit 1; }
[ -f runs/cpu-default/checkpoints/step-000000002/state.safetensors ] || { echo "FAIL: no checkpoint"; exit 1; }
"$repo/target/release/gandist" data verify --data data/mnist >/dev/null
echo "PASS: README train command works from a fresh clone"
