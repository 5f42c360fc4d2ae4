"""A random state dict of pytorch-fid 0.3.0's FID Inception, of the right names and shapes,
written with torch.save in the published weight file's format (the legacy, pre-zip stream).
`python random_inception_weights.py OUT.pth` writes one (seeded); pytorch_fid_side.py imports
`random_state_dict`.
"""
import sys

import torch

import pytorch_fid.inception as inc


def random_state_dict():
    # The architecture's names and shapes, built as pytorch_fid.inception.fid_inception_v3 builds it.
    m = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    m.Mixed_5b = inc.FIDInceptionA(192, pool_features=32)
    m.Mixed_5c = inc.FIDInceptionA(256, pool_features=64)
    m.Mixed_5d = inc.FIDInceptionA(288, pool_features=64)
    m.Mixed_6b = inc.FIDInceptionC(768, channels_7x7=128)
    m.Mixed_6c = inc.FIDInceptionC(768, channels_7x7=160)
    m.Mixed_6d = inc.FIDInceptionC(768, channels_7x7=160)
    m.Mixed_6e = inc.FIDInceptionC(768, channels_7x7=192)
    m.Mixed_7b = inc.FIDInceptionE_1(1280)
    m.Mixed_7c = inc.FIDInceptionE_2(2048)

    # Random weights that keep features input-dependent through the depth: He-normal
    # convolutions, batch-norm scales and variances near 1 (docs: ENVIRONMENT.md).
    sd = {}
    for k, v in m.state_dict().items():
        if k.endswith("conv.weight"):
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape) * (2.0 / fan_in) ** 0.5
        elif k.endswith("bn.weight") or k.endswith("running_var"):
            sd[k] = torch.rand(v.shape) * 0.4 + 0.8
        elif k.endswith("bn.bias") or k.endswith("running_mean"):
            sd[k] = torch.randn(v.shape) * 0.1
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k == "fc.weight":
            # Transposed storage, as in the published file (stride (1, 1008)).
            sd[k] = (torch.randn(v.shape[1], v.shape[0]) * 0.01).t()
        else:
            sd[k] = torch.zeros(v.shape)
    return sd


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.save(random_state_dict(), sys.argv[1], _use_new_zipfile_serialization=False)
