"""Layer rules for torchvision's own layer types (ConvNeXt's LayerNorm2d, layer scale, Permute).

Registered on import (``import moprune`` imports this module), like the option-A shortcut's rule
in :mod:`moprune.zoo.cifar_resnet`. Generic PyTorch layers (grouped convolutions,
``nn.LayerNorm``, ``nn.GroupNorm``) have their rules in :mod:`moprune.core.layers`; eval-time
identities such as ``StochasticDepth`` need none (the space recognises them when traced).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.ops.misc import Permute

from moprune.core.layers import LAYER_RULES, OUT, CostTerm, FreeRule, LayerNormRule, LayerRule

if TYPE_CHECKING:
    from moprune.core.space import LayerInfo


class LayerNorm2dRule(LayerNormRule):
    """torchvision's ``LayerNorm2d``: a LayerNorm over the channels of an NCHW tensor."""

    kind = "layernorm2d"
    types = (LayerNorm2d,)
    channel_axis = 1

    def describe(self) -> str:
        return "LayerNorm2d (torchvision)"


class LayerScaleRule(LayerRule):
    """ConvNeXt's ``CNBlock.layer_scale``: a per-channel scale of the block's output.

    The rule covers the block's own parameter only (``holder``); its layers are traced as
    layers of their own. Thop counts no operations for the multiplication, and neither does
    the cost model; the scale's parameters are counted.
    """

    kind = "layer_scale"
    types = (CNBlock,)
    holder = trained = True
    tensors = {"layer_scale": (OUT,)}

    def describe(self) -> str:
        return "CNBlock layer scale (torchvision)"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        scale = module.layer_scale
        assert isinstance(scale, torch.Tensor)
        return int(scale.shape[0]), None

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        scale = module.layer_scale
        assert isinstance(scale, torch.Tensor)
        return [CostTerm((OUT,), 0.0, float(scale[0].numel()))]


class PermuteRule(FreeRule):
    """torchvision's ``Permute`` module (ConvNeXt switches NCHW and NHWC with it)."""

    kind = "permute"
    types = (Permute,)


for _rule in (LayerNorm2dRule(), LayerScaleRule(), PermuteRule()):
    LAYER_RULES.register(_rule)
