#!/usr/bin/env python3
"""Turns evaluation records into the markdown tables of docs/results.md.

Input: JSON lines {"run": NAME-sSEED, "seed": S, "step": K, "eval": <the JSON line `gandist eval`
prints>} (docs/scripts/results-runs.sh writes them). Output, per configuration (NAME): one row per
step with each seed's FID and classes covered, and the mean and sample standard deviation of
the FID over the seeds; then one summary table of every configuration's last step (FID, classes
covered, KL(classes || uniform), confidence, over the seeds).

    docs/scripts/results-summary.py evals.jsonl [NAME ...]
"""
import json
import re
import statistics
import sys
from collections import defaultdict


def main():
    path, names = sys.argv[1], sys.argv[2:]
    runs = defaultdict(lambda: defaultdict(dict))  # name -> step -> seed -> eval
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            m = re.fullmatch(r"(.*)-s(\d+)", r["run"])
            if not m:
                sys.exit(f"{path}: run name {r['run']!r} does not end in -sSEED")
            runs[m.group(1)][r["step"]][int(m.group(2))] = r["eval"]
    for name in names or sorted(runs):
        if name not in runs:
            sys.exit(f"{path}: no runs named {name}-sSEED")
        steps = runs[name]
        seeds = sorted({s for per in steps.values() for s in per})
        head = " | ".join(f"seed {s}: FID / classes" for s in seeds)
        print(f"**{name}** (n = {next(iter(next(iter(steps.values())).values()))['eval_n']} samples per evaluation)\n")
        print(f"| step | {head} | FID mean ± sd |")
        print("|---" * (len(seeds) + 2) + "|")
        for step in sorted(steps):
            per = steps[step]
            cells = [f"{per[s]['fid']:.1f} / {per[s]['classes_covered']}" if s in per else "–" for s in seeds]
            fids = [per[s]["fid"] for s in seeds if s in per]
            sd = f" ± {statistics.stdev(fids):.1f}" if len(fids) > 1 else ""
            print(f"| {step} | {' | '.join(cells)} | {statistics.mean(fids):.1f}{sd} |")
        print()
    print("| configuration | step | seeds | FID mean ± sd | classes covered (per seed) | KL mean | confidence mean |")
    print("|---|---|---|---|---|---|---|")
    for name in names or sorted(runs):
        step = max(runs[name])
        per = runs[name][step]
        evs = [per[s] for s in sorted(per)]
        fids = [e["fid"] for e in evs]
        sd = f" ± {statistics.stdev(fids):.1f}" if len(fids) > 1 else ""
        classes = ", ".join(str(e["classes_covered"]) for e in evs)
        kl = statistics.mean(e["kl_uniform"] for e in evs)
        conf = statistics.mean(e["confidence"] for e in evs)
        print(f"| {name} | {step} | {len(evs)} | {statistics.mean(fids):.1f}{sd} | {classes} | {kl:.3f} | {conf:.3f} |")


if __name__ == "__main__":
    main()
