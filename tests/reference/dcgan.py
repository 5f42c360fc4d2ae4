"""The DCGAN generator and critic of gandist's src/model/dcgan.rs, written independently with
torch.nn layers, and a check that they compute what gandist computed.

Usage: python dcgan.py CASE.safetensors...

Each CASE holds gandist's parameters (generator.* and critic.*, PyTorch's names and layouts), the
inputs z and x, and gandist's outputs: images = G(z), features and out = D(x), and
penalty_grad.<name>: the gradient of sum ||grad_x D(x)||^2 with respect to each critic
parameter (the penalty's double backward). Exit status 0 when everything agrees within the
tolerances printed, for every CASE; 1 otherwise.
"""
import sys

import torch
from safetensors.torch import load_file
from torch import nn


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit mean square (Karras et al. 2018)."""

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def stages(side):
    return (side // 4).bit_length() - 1


def generator(dim, latent, channels, side):
    n = stages(side)
    width = [dim * min(8, 2 ** (n - 1 - i)) for i in range(n)]
    fc = nn.Linear(latent, width[0] * 16)
    layers = []
    for i in range(1, n + 1):
        cout = channels if i == n else width[i]
        layers += [nn.ConvTranspose2d(width[i - 1], cout, 4, stride=2, padding=1)]
        layers += [nn.Tanh()] if i == n else [nn.ReLU(), PixelNorm()]
    body = nn.Sequential(*layers)
    names = ["fc"] + [f"deconv{i}" for i in range(1, n + 1)]
    convs = [m for m in body if isinstance(m, nn.ConvTranspose2d)]

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.body, self.w0 = fc, body, width[0]

        def forward(self, z):
            x = PixelNorm()(torch.relu(self.fc(z)).view(-1, self.w0, 4, 4))
            return self.body(x)

    return G(), dict(zip(names, [fc] + convs))


def critic(dim, channels, side):
    n = stages(side)
    width = [dim * min(8, 2 ** j) for j in range(n)]
    layers = []
    for j in range(n):
        layers += [nn.Conv2d(channels if j == 0 else width[j - 1], width[j], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
    body = nn.Sequential(*layers)
    fc = nn.Linear(width[-1] * 16, 1)
    convs = [m for m in body if isinstance(m, nn.Conv2d)]

    class D(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = body, fc

        def forward(self, x):
            f = self.body(x).flatten(1)
            return f, self.fc(f).view(-1)

    return D(), dict(zip([f"conv{j}" for j in range(1, n + 1)] + ["fc"], convs + [fc]))


def load(layers, t, prefix):
    for name, layer in layers.items():
        with torch.no_grad():
            layer.weight.copy_(t[f"{prefix}.{name}.weight"])
            layer.bias.copy_(t[f"{prefix}.{name}.bias"])


def close(what, got, want, tol):
    err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
    ok = err <= tol
    print(f"{what}: max relative difference {err:.2e} (tolerance {tol:.0e}) {'ok' if ok else 'FAILED'}")
    return ok


def check(path):
    print(path)
    t = load_file(path)
    z, x = t["z"], t["x"]
    latent, (channels, side) = z.shape[1], x.shape[1:3]
    dim = t["critic.conv1.weight"].shape[0]
    g, g_layers = generator(dim, latent, channels, side)
    d, d_layers = critic(dim, channels, side)
    load(g_layers, t, "generator")
    load(d_layers, t, "critic")
    ok = True
    # Float32 through a few layers: differences of a few ulps of each tensor's scale; 1e-5
    # leaves room for a different summation order in the convolutions.
    with torch.no_grad():
        ok &= close("G(z)", g(z), t["images"], 1e-5)
        f, out = d(x)
        ok &= close("D(x) features", f, t["features"], 1e-5)
        ok &= close("D(x)", out, t["out"], 1e-5)
    xr = x.clone().requires_grad_(True)
    gx = torch.autograd.grad(d(xr)[1].sum(), xr, create_graph=True)[0]
    penalty = gx.square().sum()
    params = [(n, p) for n, layer in d_layers.items() for p in [("weight", layer.weight), ("bias", layer.bias)]]
    grads = torch.autograd.grad(penalty, [p for _, (_, p) in params], allow_unused=True)
    for (name, (kind, p)), grad in zip(params, grads):
        want = t.get(f"penalty_grad.{name}.{kind}")
        if grad is None:
            grad = torch.zeros_like(p)
        # Second-order terms sum over every pixel: 1e-4 of the tensor's scale.
        ok &= close(f"d penalty / d critic.{name}.{kind}", grad, want, 1e-4)
    return ok


if __name__ == "__main__":
    results = [check(p) for p in sys.argv[1:]]
    sys.exit(0 if results and all(results) else 1)
