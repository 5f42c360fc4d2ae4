"""The table of docs/scripts/paper-vs-pytorch.sh's runs: classifier FID per iteration of gandist's
WGAN-GP and of the same recipe in plain PyTorch, per seed, with mean ± sd and whether the two
seed ranges overlap and whether gandist's mean lies within PyTorch's seed range at each step.
  python3 docs/scripts/paper-vs-pytorch-summary.py OUT
"""
import json
import os
import statistics
import sys

out = sys.argv[1]
fid = {}
classes = {}
for line in open(os.path.join(out, "evals.jsonl")):
    r = json.loads(line)
    fid.setdefault((r["impl"], r["step"]), {})[r["seed"]] = r["eval"]["fid"]
    classes.setdefault((r["impl"], r["step"]), {})[r["seed"]] = r["eval"]["classes_covered"]
steps = sorted({s for _, s in fid})
seeds = sorted({k for v in fid.values() for k in v})


def cell(impl, step):
    v = fid.get((impl, step), {})
    per = " / ".join(f"{v[s]:.1f}" if s in v else "–" for s in seeds)
    vals = list(v.values())
    ms = f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else "–"
    return per, ms, (min(vals), max(vals)) if vals else None


print("| iteration | gandist FID per seed | gandist mean ± sd | PyTorch FID per seed | PyTorch mean ± sd | seed ranges overlap | gandist mean in PyTorch's range |")
print("|---|---|---|---|---|---|---|")
for st in steps:
    gp, gm, gr = cell("gandist", st)
    pp, pm, pr = cell("pytorch", st)
    overlap = "–" if not (gr and pr) else ("yes" if gr[0] <= pr[1] and pr[0] <= gr[1] else "no")
    g = list(fid.get(("gandist", st), {}).values())
    inside = "–" if not (g and pr) else ("yes" if pr[0] <= statistics.mean(g) <= pr[1] else "no")
    print(f"| {st} | {gp} | {gm} | {pp} | {pm} | {overlap} | {inside} |")
print()
for impl in ("gandist", "pytorch"):
    last = classes.get((impl, steps[-1]), {})
    print(f"{impl}: classes covered at step {steps[-1]} per seed: {', '.join(str(last.get(s, '–')) for s in seeds)}")
