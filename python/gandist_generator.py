"""gandist's generators as PyTorch modules: the module that a file written by
`gandist export --format safetensors` loads into with `load_state_dict`.

    import torch, gandist_generator                      # this file (python/ in the repository)
    G = gandist_generator.load("generator.safetensors")  # an nn.Module in eval mode
    images = G(torch.randn(16, G.latent))                # (16, C, H, W), float32 in [-1, 1]

The file's header (`__metadata__`) holds the generator's layers, latent size, output shape
and range; `GandistGenerator` builds the layers from it, with submodules named as gandist
names its parameters ("fc", "deconv1", ...), so the file's tensors are the module's state
dict as they are. Needs torch and safetensors only. docs/export.md has the details.
"""

import json

import torch
from torch import nn

# The newest metadata schema this module reads (gandist's export::METADATA_VERSION).
METADATA_VERSION = 1
# Metadata values stored as plain strings; every other value is JSON.
_STRING_KEYS = {"gandist_version", "arch", "noise", "layout", "weights", "checkpoint"}


class GandistGenerator(nn.Module):
    """The generator described by `layers` (the metadata's list), mapping (N, latent) float32
    noise to (N, channels, height, width) images in `output_range`."""

    def __init__(self, layers, latent, channels, height, width, output_range=(-1.0, 1.0), **info):
        super().__init__()
        self.latent, self.channels, self.height, self.width = latent, channels, height, width
        self.output_range = tuple(output_range)
        self.info = info
        self.spec = [dict(layer) for layer in layers]
        for layer in self.spec:
            op = layer["op"]
            if op == "linear":
                module = nn.Linear(layer["in_features"], layer["out_features"])
            elif op == "conv_transpose2d":
                module = nn.ConvTranspose2d(
                    layer["in_channels"],
                    layer["out_channels"],
                    layer["kernel"],
                    stride=layer["stride"],
                    padding=layer["padding"],
                    output_padding=layer["output_padding"],
                )
            elif op in ("relu", "tanh", "reshape", "crop", "pixel_norm"):
                continue
            else:
                raise ValueError(f"layer kind {op!r} is unknown to this gandist_generator.py: use the one of the gandist that wrote the file")
            self.add_module(layer["name"], module)

    def forward(self, z):
        x = z
        for layer in self.spec:
            op = layer["op"]
            if op in ("linear", "conv_transpose2d"):
                x = getattr(self, layer["name"])(x)
            elif op == "relu":
                x = torch.relu(x)
            elif op == "tanh":
                x = torch.tanh(x)
            elif op == "reshape":
                x = x.view(-1, *layer["shape"])
            elif op == "crop":
                x = x[:, :, : layer["height"], : layer["width"]]
            elif op == "pixel_norm":
                x = x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + layer["eps"])
        return x


def read_metadata(path):
    """The metadata of a gandist safetensors export, as a dict of Python values."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if "gandist_metadata_version" not in raw:
        raise ValueError(f"{path}: no gandist metadata in the safetensors header (not written by gandist export?)")
    meta = {k: (v if k in _STRING_KEYS else json.loads(v)) for k, v in raw.items()}
    if meta["gandist_metadata_version"] > METADATA_VERSION:
        raise ValueError(f"{path}: metadata version {meta['gandist_metadata_version']}, newer than this module's {METADATA_VERSION}")
    return meta


def load(path, device="cpu"):
    """The generator in a gandist safetensors export, in eval mode without gradients."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    generator = GandistGenerator(**meta)
    generator.load_state_dict(load_file(str(path)))
    return generator.to(device).eval().requires_grad_(False)
