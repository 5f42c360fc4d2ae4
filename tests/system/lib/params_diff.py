#!/usr/bin/env python3
"""Compares the network parameters of two gandist checkpoints.

    params_diff.py CHECKPOINT_A CHECKPOINT_B [--tol 1e-5]

Each argument is a checkpoint directory (holding state.safetensors) or the file itself. For every
generator.* and critic.* tensor it takes max |a - b| over the tensor, divided by the tensor's max |a|
(float32 summation order moves each value by a few ulps of the tensor's scale, not of each tiny
element; the same measure as tests/distributed.rs). Prints the worst tensor and exits 1 when it is
above the tolerance, or when the two files do not hold the same tensors. Standard library only:
the safetensors layout is an 8-byte little-endian header length, a JSON header, then the data.
"""
import array
import json
import os
import struct
import sys


def load(path):
    if os.path.isdir(path):
        path = os.path.join(path, "state.safetensors")
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        sys.exit(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        sys.exit(f"{path}: header length {n} runs past the end of the file ({len(raw)} bytes)")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or not name.startswith(("generator.", "critic.")):
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        values = array.array("f")
        values.frombytes(data[begin:end])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = (tuple(info["shape"]), values)
    if not out:
        sys.exit(f"{path}: no generator.* or critic.* tensors")
    return out


def main(argv):
    tol = 1e-5
    args = list(argv)
    if "--tol" in args:
        i = args.index("--tol")
        tol = float(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    a, b = load(args[0]), load(args[1])
    if a.keys() != b.keys():
        sys.exit(f"different tensors: only in A {sorted(a.keys() - b.keys())}, only in B {sorted(b.keys() - a.keys())}")
    worst_name, worst = "", 0.0
    for name, (shape, va) in sorted(a.items()):
        shape_b, vb = b[name]
        if shape != shape_b:
            sys.exit(f"{name}: shape {shape} in A, {shape_b} in B")
        scale = max(max((abs(x) for x in va), default=0.0), 1e-12)
        diff = max((abs(x - y) for x, y in zip(va, vb)), default=0.0)
        if diff != diff:  # NaN
            diff = float("inf")
        if diff / scale > worst:
            worst_name, worst = name, diff / scale
    n = sum(len(v) for _, v in a.values())
    verdict = "within" if worst <= tol else "ABOVE"
    print(f"params_diff: {len(a)} tensors, {n} values; worst {worst_name or '-'} differs by {worst:.3e} of its scale ({verdict} {tol:g})")
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
