"""Weight criteria: L1, L2, FPGM, BatchNorm scale, and random scores (registered here)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from moprune.core.space import PruningSpace
from moprune.criteria.base import (
    CRITERIA,
    Criterion,
    ScoreContext,
    _accumulate,
    _group_distance_sums,
    _weights,
    writer_rows,
)


def _filter_norm(model: nn.Module, space: PruningSpace, p: int) -> np.ndarray:
    """Per channel: (sum over the group's writer layers of ||filter||_p^p)^(1/p)."""
    with torch.no_grad():
        rows = writer_rows(space, _weights(model, space))
    total = _accumulate(space, [(ids, (np.abs(r) ** p).sum(1)) for ids, r in rows])
    return total ** (1.0 / p)


def l1_norm(model: nn.Module, space: PruningSpace,
            context: ScoreContext | None = None) -> np.ndarray:
    """L1 norm of each channel's filters (Li et al., ICLR 2017)."""
    return _filter_norm(model, space, 1)


def l2_norm(model: nn.Module, space: PruningSpace,
            context: ScoreContext | None = None) -> np.ndarray:
    """L2 norm of each channel's filters (He et al., 2018, soft filter pruning)."""
    return _filter_norm(model, space, 2)


def fpgm(model: nn.Module, space: PruningSpace,
         context: ScoreContext | None = None) -> np.ndarray:
    """Sum of distances to the group's other filters (He et al., CVPR 2019).

    A filter close to the geometric median of its layer is replaceable by the others, so it
    scores low.
    """
    with torch.no_grad():
        return _group_distance_sums(space, writer_rows(space, _weights(model, space)))


def bn_scale(model: nn.Module, space: PruningSpace,
             context: ScoreContext | None = None) -> np.ndarray:
    """Sum of ``|gamma|`` of the BatchNorms on each channel (network slimming).

    Channels of groups without a BatchNorm score their filters' L1 norm instead.
    """
    total = np.zeros(space.n_channels, dtype=np.float64)
    covered = np.zeros(space.n_channels, dtype=bool)
    for (name, dim), own in space.owner.items():
        module = model.get_submodule(name)
        if dim != "out" or not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if module.weight is None:
            continue
        sel = own >= 0
        gamma = module.weight.detach().double().abs().cpu().numpy()
        np.add.at(total, own[sel], gamma[sel])
        covered[own[sel]] = True
    l1 = None
    for g in range(space.n_groups):
        sl = space.group_slice(g)
        if not covered[sl].any():
            l1 = l1_norm(model, space) if l1 is None else l1
            total[sl] = l1[sl]
    return total


def random_scores(model: nn.Module, space: PruningSpace,
                  context: ScoreContext | None = None) -> np.ndarray:
    """Uniform random scores from ``context.seed`` (the baseline every criterion must beat)."""
    seed = 0 if context is None else context.seed
    return np.random.default_rng(seed).random(space.n_channels)


CRITERIA.register("l1", Criterion("l1", l1_norm, "sum_k |W[c,k]| over the group's filters "
                                   "(Li et al., ICLR 2017)"))
CRITERIA.register("l2", Criterion("l2", l2_norm, "sqrt(sum_k W[c,k]^2) over the group's filters "
                                   "(He et al., IJCAI 2018)"))
CRITERIA.register("fpgm", Criterion("fpgm", fpgm, "sum_j ||W_c - W_j||_2 over the group's "
                                    "filters: near the geometric median = redundant (He et al., "
                                    "CVPR 2019)"))
CRITERIA.register("bn_scale", Criterion("bn_scale", bn_scale, "sum |gamma_c| of the channel's "
                                        "BatchNorms (Liu et al., ICCV 2017); L1 without BN"))
CRITERIA.register("random", Criterion("random", random_scores, "uniform random scores from the "
                                      "context's seed"))


__all__ = ["bn_scale", "fpgm", "l1_norm", "l2_norm", "random_scores"]
