"""Physical pruning (surgery) of a model to a plan, with Torch-Pruning."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from moprune.core.layers import LAYER_RULES
from moprune.core.plan import PruningPlan
from moprune.core.space import PruningSpace


def prune_model(model: nn.Module, space: PruningSpace, plan: PruningPlan) -> nn.Module:
    """Return a physically smaller copy of ``model`` that keeps only ``plan``'s channels.

    The caller's model is never modified. The copy is in eval mode.

    Args:
        model: The full model the space was built from.
        space: Its pruning space.
        plan: Kept channels per group.

    Returns:
        The pruned copy.

    """
    plan.validate(space)
    pruned = copy.deepcopy(model).eval()
    param = next(pruned.parameters())
    example = torch.zeros((1, *space.input_shape), dtype=param.dtype, device=param.device)
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(
            pruned, example, customized_pruners=LAYER_RULES.pruners(), verbose=False
        )
    for g, group in enumerate(space.groups):
        drop = group.root_channels(np.setdiff1d(np.arange(group.size), plan.keep[g])).tolist()
        if not drop:
            continue
        root = pruned.get_submodule(group.name)
        pruner = dg.get_pruner_of_module(root)
        tp_group = dg.get_pruning_group(root, pruner.prune_out_channels, idxs=drop)
        tp_group.prune()
    return pruned
