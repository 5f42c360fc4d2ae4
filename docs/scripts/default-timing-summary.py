"""Tables (and, with matplotlib, a plot) of docs/scripts/default-timing.sh's runs: classifier FID
against wall-clock training seconds for the old and the new default, per seed.
  python3 docs/scripts/default-timing-summary.py OUT [PLOT.png]
"""
import json
import os
import statistics
import sys

out = sys.argv[1]
plot = sys.argv[2] if len(sys.argv) > 2 else None
# The target is the old default's final FID: the mean over its seeds in OUT (scored with the
# same classifier as the new default), else docs/results.md's figure (another classifier).
TARGET = 56.1


def seconds(run, step):
    for line in open(os.path.join(out, run, "metrics.jsonl")):
        r = json.loads(line)
        if r.get("step") == step and "elapsed_seconds" in r:
            return r["elapsed_seconds"]
    return None


rows = {}
for line in open(os.path.join(out, "evals.jsonl")):
    r = json.loads(line)
    run = f"{r['default']}-s{r['seed']}"
    e = r["eval"]
    rows.setdefault((r["default"], r["seed"]), []).append(
        (r["step"], seconds(run, r["step"]), e["fid"], e["classes_covered"], e["kl_uniform"]))

old_finals = [sorted(rs)[-1][2] for (d, _), rs in rows.items() if d == "old"]
if old_finals:
    TARGET = round(statistics.mean(old_finals), 1)
print(f"target: FID {TARGET} (the old default's final FID, mean of {len(old_finals) or 'docs/results.md'} seeds)")

for which in ("old", "new"):
    seeds = sorted(s for d, s in rows if d == which)
    if not seeds:
        continue
    print(f"\n### {which} default: FID / classes at (iteration, training seconds)\n")
    print("| seed | " + " | ".join(["step (s): FID, classes"] * 1) + " |")
    print("|---|---|")
    for s in seeds:
        cells = [f"{st} ({sec:.0f} s): {fid:.1f}, {c}" for st, sec, fid, c, _ in sorted(rows[(which, s)])]
        print(f"| {s} | " + "; ".join(cells) + " |")
    print(f"\n| seed | first checkpoint at FID <= {TARGET} | last step | seconds | FID | classes | KL to uniform |")
    print("|---|---|---|---|---|---|---|")
    finals = []
    for s in seeds:
        rs = sorted(rows[(which, s)])
        hit = next(((st, sec, fid) for st, sec, fid, _, _ in rs if fid <= TARGET), None)
        st, sec, fid, c, kl = rs[-1]
        finals.append((sec, fid, kl))
        hit_s = f"step {hit[0]}, {hit[1]:.0f} s (FID {hit[2]:.1f})" if hit else "never"
        print(f"| {s} | {hit_s} | {st} | {sec:.0f} | {fid:.2f} | {c} | {kl:.4f} |")
    fids = [f for _, f, _ in finals]
    sd = statistics.stdev(fids) if len(fids) > 1 else 0.0
    print(f"\n{which}: final FID {statistics.mean(fids):.2f} ± {sd:.2f} (mean ± sd over {len(fids)} seeds), "
          f"training time {statistics.mean(s for s, _, _ in finals):.0f} s on average")

if plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for (which, s), rs in sorted(rows.items()):
        rs = sorted(rs)
        ax.plot([r[1] / 60 for r in rs], [r[2] for r in rs], marker="o", ms=3,
                color="tab:blue" if which == "new" else "tab:red", alpha=0.8,
                label=f"{which} default" if s == 0 else None)
    ax.axhline(TARGET, color="grey", ls="--", lw=1)
    ax.text(0.2, TARGET * 1.1, f"old default's final FID ({TARGET})", color="grey", fontsize=8)
    ax.axvline(5, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("training time on 2 CPU cores (minutes)")
    ax.set_ylabel("classifier FID (n = 10000, log scale)")
    ax.set_title("Sample quality against wall-clock time, 3 seeds each")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(plot)
    print(f"\nplot: {plot}")
