"""PyTorch reference of gandist's WGAN-GP iteration, for `bench/compare.sh`.

Same models (the WGAN-GP paper's MNIST generator and critic as gandist builds them: tanh
output, leaky ReLU 0.2 in the critic, PyTorch's default initialisation), same loss (WGAN critic
loss + lambda * two-sided gradient penalty with create_graph), same optimizer (Adam 1e-4,
betas (0.5, 0.9)), n_critic critic updates + 1 generator update per iteration, on synthetic
images. Prints one line: `reference ... images/s X` (critic images: n_critic x batch x
iterations / s), the same definition as `gandist bench`.
"""
import argparse
import time

import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, dim, latent):
        super().__init__()
        self.dim = dim
        self.fc = nn.Linear(latent, 4 * 4 * 4 * dim)
        self.deconv1 = nn.ConvTranspose2d(4 * dim, 2 * dim, 5, stride=2, padding=2, output_padding=1)
        self.deconv2 = nn.ConvTranspose2d(2 * dim, dim, 5, stride=2, padding=2, output_padding=1)
        self.deconv3 = nn.ConvTranspose2d(dim, 1, 5, stride=2, padding=2, output_padding=1)

    def forward(self, z):
        x = torch.relu(self.fc(z)).view(-1, 4 * self.dim, 4, 4)
        x = torch.relu(self.deconv1(x))[:, :, :7, :7]
        x = torch.relu(self.deconv2(x))
        return torch.tanh(self.deconv3(x))


class Critic(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv1 = nn.Conv2d(1, dim, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(dim, 2 * dim, 5, stride=2, padding=2)
        self.conv3 = nn.Conv2d(2 * dim, 4 * dim, 5, stride=2, padding=2)
        self.fc = nn.Linear(4 * 4 * 4 * dim, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.act(self.conv3(x))
        return self.fc(x.flatten(1)).view(-1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    g, d = Generator(a.dim, a.latent).to(dev), Critic(a.dim).to(dev)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.9))
    data = torch.rand(max(4 * a.batch, 1024), 1, 28, 28, device=dev) * 2 - 1
    lam = 10.0

    def iteration(i):
        for k in range(a.n_critic):
            idx = torch.randint(0, data.shape[0], (a.batch,), device=dev)
            real = data[idx]
            with torch.no_grad():
                fake = g(torch.randn(a.batch, a.latent, device=dev))
            eps = torch.rand(a.batch, 1, 1, 1, device=dev)
            x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
            out = d(x_hat)
            grad, = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
            gp = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
            loss = d(fake).mean() - d(real).mean() + lam * gp
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
        loss_g = -d(g(torch.randn(a.batch, a.latent, device=dev))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for i in range(a.warmup):
        iteration(i)
    sync()
    t0 = time.perf_counter()
    for i in range(a.iters):
        iteration(i)
    sync()
    s = time.perf_counter() - t0
    print(f"reference torch {torch.__version__} device {a.device} batch {a.batch} iterations {a.iters} "
          f"seconds {s:.3f} images/s {a.n_critic * a.batch * a.iters / s:.1f}")


if __name__ == "__main__":
    main()
