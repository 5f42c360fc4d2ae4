"""torch-fidelity's side of tests/kid_precision_recall.rs, in one process.

Writes random features, then computes on them torch-fidelity 0.4.0's KID
(metric_kid.kid_features_to_metric) and precision/recall (metric_prc.prc_features_to_metric),
plus an independent numpy computation of both: KID's subset estimates from the same subsets
(numpy's RandomState, as torch-fidelity draws them) by explicit off-diagonal means, and
precision/recall by scipy's cdist and a sort. Prints one JSON line.
"""
import json
import os
import sys

import numpy as np
import torch
from scipy.spatial.distance import cdist

from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

out = sys.argv[1]
rng = np.random.default_rng(7)
# KID features: Inception-wide, the second set shifted and stretched.
k1 = rng.standard_normal((300, 2048))
k2 = rng.standard_normal((260, 2048)) * 1.1 + 0.05
# Precision/recall features: low-dimensional, so that the k-NN balls overlap partly.
p1 = rng.standard_normal((400, 16)) * 1.3 + 0.5
p2 = rng.standard_normal((350, 16))
for name, a in (("k1", k1), ("k2", k2), ("p1", p1), ("p2", p2)):
    np.save(os.path.join(out, name + ".npy"), a)

res = {}
cases = {"random64": (k1, k2, 10, 100), "full64": (k1[:260], k2, 1, 260), "random32": (k1.astype(np.float32), k2.astype(np.float32), 10, 100)}
for name, (a, b, subsets, size) in cases.items():
    r = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets, kid_subset_size=size, rng_seed=2020, verbose=False)
    res["kid_" + name] = [r["kernel_inception_distance_mean"], r["kernel_inception_distance_std"]]


def independent_kid(a, b, subsets, size, seed):
    rs = np.random.RandomState(seed)
    d = a.shape[1]
    vals = []
    for _ in range(subsets):
        x = a[rs.choice(len(a), size, replace=False)]
        y = b[rs.choice(len(b), size, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = ~np.eye(size, dtype=bool)
        vals.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return [float(np.mean(vals)), float(np.std(vals))]


res["kid_independent_random64"] = independent_kid(k1, k2, 10, 100, 2020)
r = prc_features_to_metric(torch.from_numpy(p1), torch.from_numpy(p2), prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
res["prc"] = [r["precision"], r["recall"]]


def independent_prc(gen, real, k):
    def radius(x):
        return np.sort(cdist(x, x), axis=1)[:, k]  # column 0 is the point itself
    rg, rr = radius(gen), radius(real)
    precision = np.mean([(cdist(g[None], real)[0] <= rr).any() for g in gen])
    recall = np.mean([(cdist(x[None], gen)[0] <= rg).any() for x in real])
    return [float(precision), float(recall)]


res["prc_independent"] = independent_prc(p1, p2, 3)
print(json.dumps(res), flush=True)
