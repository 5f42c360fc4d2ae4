#!/usr/bin/env python3
# Builds the IDX sample files of the FID sanity table in docs/evaluation.md:
#   python3 docs/scripts/eval-sanity-idx.py MNIST_DIR   (writes *.idx into the current folder)
import gzip, random, struct, sys
d = sys.argv[1]
def load(name):
    b = gzip.open(f"{d}/{name}.gz").read()
    nd = b[3]; dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return dims, b[4 + 4 * nd:]
def write(path, images, n):
    open(path, "wb").write(bytes([0, 0, 8, 3]) + struct.pack(">III", n, 28, 28) + images)
px = 784
(_, tr) = load("train-images-idx3-ubyte"); (_, te) = load("t10k-images-idx3-ubyte"); (_, tl) = load("t10k-labels-idx1-ubyte")
write("test.idx", te, 10000)
write("train-10k.idx", tr[50000 * px:60000 * px], 10000)
write("train-1k.idx", tr[50000 * px:51000 * px], 1000)
rnd = random.Random(0)
write("noise.idx", bytes(rnd.randrange(256) for _ in range(10000 * px)), 10000)
write("one-digit.idx", te[:px] * 10000, 10000)
ones = b"".join(te[i * px:(i + 1) * px] for i in range(10000) if tl[i] == 1)
write("class-1.idx", ones, len(ones) // px)
print("class-1 count", len(ones) // px)
