"""Channel importance criteria behind one strict registry (higher score = more important)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from moprune.registry import Registry
from moprune.space import CONV, DEPTHWISE, LINEAR, PruningSpace

ScoreFn = Callable[[nn.Module, PruningSpace], np.ndarray]


@dataclass(frozen=True)
class Criterion:
    """A registered importance criterion.

    Attributes:
        name: Registry name.
        score: ``(model, space) -> (n_channels,)`` float64 scores over the flat channel vector.
        description: Formula and source, shown in docs and ``--help``.

    """

    name: str
    score: ScoreFn
    description: str


CRITERIA: Registry[Criterion] = Registry("criterion")


def _filter_norm(model: nn.Module, space: PruningSpace, p: int) -> np.ndarray:
    """Per channel: (sum over the group's writer layers of ||filter||_p^p)^(1/p)."""
    total = np.zeros(space.n_channels, dtype=np.float64)
    with torch.no_grad():
        for (name, dim), own in space.owner.items():
            if dim != "out" or space.layers[name].kind not in (CONV, DEPTHWISE, LINEAR):
                continue
            sel = own >= 0
            if not sel.any():
                continue
            weight = model.get_submodule(name).weight.detach().double().flatten(1).cpu()
            norms = weight.abs().pow(p).sum(1).numpy()
            np.add.at(total, own[sel], norms[sel])
    return total ** (1.0 / p)


def l1_norm(model: nn.Module, space: PruningSpace) -> np.ndarray:
    """L1 norm of each channel's filters (Li et al., ICLR 2017)."""
    return _filter_norm(model, space, 1)


def l2_norm(model: nn.Module, space: PruningSpace) -> np.ndarray:
    """L2 norm of each channel's filters (He et al., 2018, soft filter pruning)."""
    return _filter_norm(model, space, 2)


CRITERIA.register("l1", Criterion("l1", l1_norm, "sum_k |W[c,k]| over the group's filters "
                                   "(Li et al., ICLR 2017)"))
CRITERIA.register("l2", Criterion("l2", l2_norm, "sqrt(sum_k W[c,k]^2) over the group's filters "
                                   "(He et al., IJCAI 2018)"))


def rank_channels(space: PruningSpace, scores: np.ndarray) -> list[np.ndarray]:
    """Per group, channel indices from most to least important (stable: ties by index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (space.n_channels,):
        raise ValueError(f"scores must have shape ({space.n_channels},), got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("criterion scores contain NaN or infinity")
    return [np.argsort(-scores[space.group_slice(g)], kind="stable").astype(np.int64)
            for g in range(space.n_groups)]
