"""Table of docs/scripts/stacked-mnist.sh's evaluations: modes covered (of 1000) and KL(mode
histogram || uniform) per seed at each checkpoint, with the mean over seeds.
  python3 docs/scripts/stacked-mnist-summary.py OUT
"""
import json
import os
import statistics
import sys

rows = {}
for line in open(os.path.join(sys.argv[1], "evals.jsonl")):
    r = json.loads(line)
    rows.setdefault(r["step"], {})[r["seed"]] = (r["eval"]["modes_covered"], r["eval"]["kl_modes"], r["eval"]["fid"])
seeds = sorted({s for per in rows.values() for s in per})


def mean_sd(xs, fmt):
    if len(xs) < 2:
        return fmt.format(xs[0]) if xs else "–"
    return (fmt + " ± " + fmt).format(statistics.mean(xs), statistics.stdev(xs))


print("| iteration | " + " | ".join(f"seed {s}: modes / KL" for s in seeds) + " | modes mean ± sd | KL mean ± sd |")
print("|---|" + "---|" * (len(seeds) + 2))
for step in sorted(rows):
    per = rows[step]
    cells = [f"{per[s][0]} / {per[s][1]:.3f}" if s in per else "–" for s in seeds]
    modes = [per[s][0] for s in seeds if s in per]
    kls = [per[s][1] for s in seeds if s in per]
    print(f"| {step} | " + " | ".join(cells) + f" | {mean_sd(modes, '{:.0f}')} | {mean_sd(kls, '{:.3f}')} |")
