"""Compares two gandist runs at one step: the networks' parameters in the checkpoints (worst
per-tensor max|a - b| / max|a|, so that a few ulps of a tensor's scale count as such) and the
losses logged at the steps both runs logged (worst |a - b| / max(|a|, 1e-3)). Standard
library only (it runs on machines with nothing but python3).

    python3 launch/compare-runs.py RUN_A RUN_B STEP TOLERANCE

Prints one line; exits 1 when either figure is above TOLERANCE or a run lacks the step.
"""
import json
import os
import struct
import sys


def networks(run, step):
    path = os.path.join(run, "checkpoints", "step-%09d" % step, "state.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or not (name.startswith("generator.") or name.startswith("critic.")):
            continue
        a, b = t["data_offsets"]
        out[name] = struct.unpack("<%df" % ((b - a) // 4), body[a:b])
    return out


def losses(run, upto):
    got = {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "event" in r or r.get("step", 0) > upto:
                continue
            got[r["step"]] = {k: r[k] for k in ("d_loss", "g_loss", "wasserstein") if k in r}
    return got


def main():
    run_a, run_b, step, tol = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    try:
        a, b = networks(run_a, step), networks(run_b, step)
    except OSError as e:
        print("no checkpoint at step %d: %s" % (step, e))
        return 1
    if sorted(a) != sorted(b):
        print("the runs hold different tensors")
        return 1
    worst, where = 0.0, ""
    for k in a:
        scale = max(max(abs(x) for x in a[k]), 1e-12)
        d = max(abs(x - y) for x, y in zip(a[k], b[k])) / scale
        if d > worst or d != d:
            worst, where = d, k
    la, lb = losses(run_a, step), losses(run_b, step)
    common = sorted(set(la) & set(lb))
    worst_loss = 0.0
    for s in common:
        for k in set(la[s]) & set(lb[s]):
            d = abs(la[s][k] - lb[s][k]) / max(abs(la[s][k]), 1e-3)
            worst_loss = max(worst_loss, d) if d == d else float("inf")
    ok = worst <= tol and worst_loss <= tol and common
    print("parameters at step %d: worst %.2e of scale (%s); losses at steps %s: worst %.2e; tolerance %.0e"
          % (step, worst, where or "-", ",".join(map(str, common)) or "none", worst_loss, tol))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
