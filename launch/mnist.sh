# Source this file, then `gandist_mnist BIN DIR`: makes DIR hold a verified MNIST copy, the same
# way for the training command and the test suite. In order: DIR as it is when it verifies;
# GANDIST_MNIST_FROM (a local folder) when set; the folder ../shared/data/mnist beside the
# clone when one is there; else the public mirrors. Every copy is checked against the SHA-256
# of the decompressed bytes before it takes its place.
gandist_mnist() {
  local bin="$1" dir="$2" beside
  beside="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/shared/data/mnist"
  if "$bin" data verify --data "$dir" >/dev/null 2>&1; then
    echo "mnist: $dir verified"
  elif [ -n "${GANDIST_MNIST_FROM:-}" ]; then
    echo "mnist: importing from GANDIST_MNIST_FROM=$GANDIST_MNIST_FROM"
    "$bin" data fetch --data "$dir" --from "$GANDIST_MNIST_FROM"
  elif [ -e "$beside/train-images-idx3-ubyte.gz" ]; then
    echo "mnist: importing from $beside"
    "$bin" data fetch --data "$dir" --from "$beside"
  else
    echo "mnist: fetching from the public mirrors into $dir"
    "$bin" data fetch --data "$dir"
  fi
}
