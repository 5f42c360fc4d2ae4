"""pytorch-fid's side of tests/inception_fid.rs, in one process.

Phase 1: builds pytorch-fid 0.3.0's real FID Inception (its InceptionV3 with the FIDInception
blocks) from a random state dict of the right shapes, saved with torch.save in the published
weight file's format (the legacy, pre-zip stream; the published file was written by a torch
older than 1.6) and once more in the zip format; pytorch-fid's weight download is replaced by
torch.load of the saved file, so both sides compute from the same file. Writes two small image
folders (RGB with a palette and an RGBA image; grey), runs pytorch-fid's loader, model and
calculate_frechet_distance, and saves its features and statistics. Prints one JSON line.
Phase 2: reads a path from stdin (the .npz that `gandist fid --save-stats` wrote), loads it
as pytorch-fid loads statistics, compares it with its own, prints one JSON line.
"""
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

import pytorch_fid.inception as inc
from pytorch_fid import fid_score

t0 = time.time()
out = sys.argv[1]
torch.set_num_threads(2)
torch.manual_seed(0)
rng = np.random.default_rng(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from random_inception_weights import random_state_dict  # noqa: E402

sd = random_state_dict()
legacy = os.path.join(out, "pt_inception-random-legacy.pth")
zipped = os.path.join(out, "pt_inception-random-zip.pth")
torch.save(sd, legacy, _use_new_zipfile_serialization=False)
torch.save(sd, zipped)
inc.load_state_dict_from_url = lambda url, progress=True: torch.load(legacy)
model = inc.InceptionV3([inc.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

# Image folders: A holds RGB images (one stored with a palette, one RGBA), B grey ones.
side_a, side_b, n = 32, 28, 6
dir_a, dir_b, dir_j = (os.path.join(out, d) for d in ("a", "b", "jpeg"))
for d in (dir_a, dir_b, dir_j):
    os.makedirs(d)
yy, xx = np.mgrid[0:side_a, 0:side_a]
for i in range(n):
    base = np.stack([(xx * (i + 1) * 8) % 256, (yy * (7 - i) * 9) % 256, ((xx + yy) * 5 + 40 * i) % 256], -1)
    noise = rng.integers(0, 60, size=base.shape)
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    if i == 1:
        img = img.convert("P")
    if i == 2:
        a = Image.fromarray(rng.integers(0, 256, size=(side_a, side_a), dtype=np.uint8))
        img = img.convert("RGBA")
        img.putalpha(a)
    img.save(os.path.join(dir_a, f"{i:02d}.png"))
    img.convert("RGB").save(os.path.join(dir_j, f"{i:02d}.jpg"), quality=90)
for i in range(n):
    g = np.zeros((side_b, side_b), dtype=np.uint8)
    g[4 + i : 22 + i // 2, 6 + i : 9 + i] = 255
    g = np.clip(g.astype(int) + rng.integers(0, 40, size=g.shape), 0, 255).astype(np.uint8)
    Image.fromarray(g, "L").save(os.path.join(dir_b, f"{i:02d}.png"))

# PIL's decode of the JPEGs, for comparing decoders.
jpeg_pixels = np.stack([np.asarray(Image.open(os.path.join(dir_j, f"{i:02d}.jpg")).convert("RGB")) for i in range(n)])
np.save(os.path.join(out, "jpeg_pixels.npy"), jpeg_pixels)


def files(d):
    import pathlib

    p = pathlib.Path(d)
    return sorted([f for ext in fid_score.IMAGE_EXTENSIONS for f in p.glob("*.{}".format(ext))])


t1 = time.time()
act = {}
for name, d in (("a", dir_a), ("b", dir_b), ("jpeg", dir_j)):
    act[name] = fid_score.get_activations(files(d), model, batch_size=50, dims=2048, device="cpu", num_workers=0)
    np.save(os.path.join(out, f"features_{name}.npy"), act[name].astype(np.float32))
t2 = time.time()
# calculate_activation_statistics' two lines, on the activations computed once above.
mu = {k: np.mean(v, axis=0) for k, v in act.items()}
sigma = {k: np.cov(v, rowvar=False) for k, v in act.items()}
np.savez_compressed(os.path.join(out, "stats_a.npz"), mu=mu["a"], sigma=sigma["a"])
fid = float(fid_score.calculate_frechet_distance(mu["a"], sigma["a"], mu["b"], sigma["b"]))
t3 = time.time()
spread = float(np.abs(act["a"] - act["a"].mean(0)).max())
print(json.dumps({
    "phase": 1, "fid": fid, "legacy": legacy, "zip": zipped, "dir_a": dir_a, "dir_b": dir_b, "dir_jpeg": dir_j,
    "feature_spread_a": spread, "feature_max_a": float(np.abs(act["a"]).max()),
    "seconds": {"setup": t1 - t0, "features": t2 - t1, "fid": t3 - t2},
}), flush=True)

# Phase 2: gandist's statistics file, read as pytorch-fid reads one.
path = sys.stdin.readline().strip()
with np.load(path) as f:
    m2, s2 = f["mu"][:], f["sigma"][:]
print(json.dumps({
    "phase": 2, "dtype_mu": str(m2.dtype), "dtype_sigma": str(s2.dtype), "shape_sigma": list(s2.shape),
    "mu_max_abs_diff": float(np.abs(m2 - mu["a"]).max()), "sigma_max_abs_diff": float(np.abs(s2 - sigma["a"]).max()),
    "mu_max_abs": float(np.abs(mu["a"]).max()), "sigma_max_abs": float(np.abs(sigma["a"]).max()),
}), flush=True)
