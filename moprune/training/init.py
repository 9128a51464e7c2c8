"""Starting points of training: seeded re-initialisation, BatchNorm re-estimation."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def random_init(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with freshly initialised weights, seeded (global RNG untouched).

    Convolutions: He (Kaiming) normal, fan-out, for ReLU (as torchvision's ResNets).
    Linear layers: PyTorch's default (Kaiming uniform with ``a = sqrt(5)``, uniform bias).
    BatchNorm: weight 1, bias 0, running statistics reset.
    """
    net = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                w = torch.empty(m.weight.shape)
                nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=gen)
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Linear):
                w = torch.empty(m.weight.shape)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
                m.weight.copy_(w)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.in_features) if m.in_features else 0.0
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 2 * bound - bound)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
    return net


@torch.no_grad()
def recalibrate_bn(model: nn.Module, inputs: list[torch.Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics in place from ``inputs``.

    The statistics are reset and replaced by the plain average over the batches (as
    ``momentum=None`` does); weights are untouched. The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not inputs:
        return model.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x in inputs:
            model(x)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return model


__all__ = ["random_init", "recalibrate_bn"]
