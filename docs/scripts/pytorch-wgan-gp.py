"""Trains the WGAN-GP paper's MNIST model in plain PyTorch, as bench/reference.py builds it (same
generator and critic, PyTorch's default initialisation, WGAN loss + lambda 10 two-sided gradient
penalty with create_graph, Adam 1e-4 (0.5, 0.9), 5 critic updates per generator update, batch
64), on real MNIST, and writes N generated images as an IDX file at each checkpoint step, for
`gandist eval --samples FILE`. The independent side of docs/results.md's comparison of gandist's
WGAN-GP against PyTorch's: same recipe, separate code, the same classifier scores both.

  python docs/scripts/pytorch-wgan-gp.py --data data/mnist --out OUT --dim 32 --iters 1000 \
      --every 200 --seed 0 [--threads 2] [--n 10000]
"""
import argparse
import gzip
import os
import struct
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from reference import Critic, Generator  # noqa: E402


def read_images(folder):
    for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            raw = (gzip.open if name.endswith(".gz") else open)(path, "rb").read()
            magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
            if magic != 0x803 or rows != 28 or cols != 28 or len(raw) != 16 + n * 784:
                sys.exit(f"{path}: not an MNIST image file (magic {magic:#x}, {n}x{rows}x{cols})")
            x = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).view(n, 1, 28, 28)
            return x.float() / 127.5 - 1.0
    sys.exit(f"no train-images-idx3-ubyte(.gz) in {folder}")


def write_idx(path, images):
    b = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).view(-1, 28, 28)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack(">IIII", 0x803, b.shape[0], 28, 28))
        f.write(bytes(b.flatten().tolist()))  # no numpy in the torch venv
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--n", type=int, default=10000, help="images written per checkpoint")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    data = read_images(a.data)
    g, d = Generator(a.dim, a.latent), Critic(a.dim)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.9))
    lam = 10.0
    perm, pos = torch.randperm(data.shape[0]), 0
    t0 = time.perf_counter()
    for it in range(1, a.iters + 1):
        for _ in range(a.n_critic):
            if pos + a.batch > data.shape[0]:
                perm, pos = torch.randperm(data.shape[0]), 0
            real = data[perm[pos:pos + a.batch]]
            pos += a.batch
            with torch.no_grad():
                fake = g(torch.randn(a.batch, a.latent))
            eps = torch.rand(a.batch, 1, 1, 1)
            x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
            grad, = torch.autograd.grad(d(x_hat).sum(), x_hat, create_graph=True)
            gp = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
            loss = d(fake).mean() - d(real).mean() + lam * gp
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
        loss_g = -d(g(torch.randn(a.batch, a.latent))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if it % a.every == 0 or it == a.iters:
            gen = torch.Generator().manual_seed(10_000 + a.seed)
            with torch.no_grad():
                imgs = torch.cat([g(torch.randn(min(1000, a.n - i), a.latent, generator=gen)) for i in range(0, a.n, 1000)])
            write_idx(os.path.join(a.out, f"step-{it:06d}.idx"), imgs)
            print(f"step {it}/{a.iters} d_loss {loss.item():.4f} g_loss {loss_g.item():.4f} "
                  f"elapsed {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
