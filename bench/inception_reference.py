"""Images/s of pytorch-fid's FID Inception (random weights of the right shapes) in PyTorch
eager, the reference for `gandist fid --bench`: the same input (random 64 x 64 images,
resized to 299 inside the model), batch, untimed first batch and timed batches.

    python bench/inception_reference.py [--batch 50] [--batches 4] [--threads 2] [--device cpu]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from random_inception_weights import random_state_dict  # noqa: E402
import pytorch_fid.inception as inc  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=50)
p.add_argument("--batches", type=int, default=4)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--device", default="cpu")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
sd = random_state_dict()
inc.load_state_dict_from_url = lambda url, progress=True: sd
model = inc.InceptionV3([3]).eval().to(a.device)
x = torch.rand(a.batch, 3, 64, 64, device=a.device)
with torch.no_grad():
    model(x)[0].sum().item()
    t = time.time()
    for _ in range(a.batches):
        model(x)[0].sum().item()
    s = time.time() - t
rate = a.batch * a.batches / s
print(f"pytorch-fid Inception (PyTorch {torch.__version__}) on {a.device} ({a.threads} threads), batch {a.batch}: {rate:.2f} images/s ({a.batch * a.batches} images in {s:.1f} s); 10,000 images: {10000 / rate / 60:.1f} min")
