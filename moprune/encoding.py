"""Genome encodings and their pure decoders (numpy only, no torch): genome -> pruning plan."""

from __future__ import annotations

import math

import numpy as np

from moprune.plan import PruningPlan, masks_matrix
from moprune.space import PruningSpace


class GenomeError(ValueError):
    """A genome does not fit its encoding."""


class MaskEncoding:
    """One bit per channel of every group (1 = keep).

    A group left with fewer than ``min_channels`` kept bits gets back its most important
    dropped channels (by ``ranking``), so no group ever drops to zero.

    Args:
        space: The pruning space.
        ranking: Per group, channel indices from most to least important (repair order).
        min_channels: Channels every group keeps.

    """

    def __init__(self, space: PruningSpace, ranking: list[np.ndarray], min_channels: int = 1):
        if len(ranking) != space.n_groups:
            raise ValueError(f"ranking has {len(ranking)} groups, the space has {space.n_groups}")
        self.space = space
        self.ranking = ranking
        self.min_channels = min_channels
        self.n_var = space.n_channels

    def check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 1 or x.shape[0] != self.n_var:
            raise GenomeError(f"mask genome must be a vector of {self.n_var} bits (one per "
                              f"channel of {self.space.n_groups} groups); got shape {x.shape}")
        return x.astype(bool)

    def repair(self, x: np.ndarray) -> np.ndarray:
        """The genome with every group holding at least ``min_channels`` kept bits."""
        x = self.check(x).copy()
        for g in range(self.space.n_groups):
            seg = x[self.space.group_slice(g)]  # a view
            need = min(self.min_channels, seg.size) - int(seg.sum())
            if need > 0:
                order = self.ranking[g]
                dropped = order[~seg[order]]
                seg[dropped[:need]] = True
        return x

    def decode(self, x: np.ndarray) -> PruningPlan:
        """Plan of a genome (repaired first)."""
        return PruningPlan.from_mask(self.space, self.repair(x))

    def decode_masks(self, X: np.ndarray) -> np.ndarray:
        """Keep-masks ``(n, n_channels)`` of a genome matrix: the repaired genomes themselves."""
        return np.array([self.repair(x) for x in np.atleast_2d(X)], dtype=bool)

    def encode(self, plan: PruningPlan) -> np.ndarray:
        return plan.mask(self.space)


class RatioEncoding:
    """One pruning ratio per group; channels are removed in the order of a criterion.

    A group of ``n`` channels with ratio ``r`` keeps ``max(min_channels, ceil(n * (1 - r)))``
    channels, the highest ranked ones.

    Args:
        space: The pruning space.
        ranking: Per group, channel indices from most to least important.
        min_channels: Channels every group keeps.
        max_ratio: Largest allowed ratio (< 1).

    """

    def __init__(self, space: PruningSpace, ranking: list[np.ndarray], min_channels: int = 1,
                 max_ratio: float = 0.95) -> None:
        if not 0.0 < max_ratio < 1.0:
            raise ValueError(f"max_ratio must be in (0, 1); got {max_ratio}")
        if len(ranking) != space.n_groups:
            raise ValueError(f"ranking has {len(ranking)} groups, the space has {space.n_groups}")
        self.space = space
        self.ranking = ranking
        self.min_channels = min_channels
        self.max_ratio = max_ratio
        self.n_var = space.n_groups

    def check(self, r: np.ndarray) -> np.ndarray:
        r = np.asarray(r, dtype=np.float64)
        if r.ndim != 1 or r.shape[0] != self.n_var:
            raise GenomeError(f"ratio genome must be a vector of {self.n_var} ratios (one per "
                              f"group); got shape {r.shape}")
        bad = ~np.isfinite(r) | (r < 0.0) | (r > self.max_ratio + 1e-12)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GenomeError(f"pruning ratios must be in [0, {self.max_ratio}]; group {i} "
                              f"({self.space.groups[i].name}) has {r[i]!r}")
        return r

    def n_keep(self, r: np.ndarray) -> np.ndarray:
        r = self.check(r)
        sizes = self.space.sizes
        keep = np.array([math.ceil(round(n * (1.0 - x), 9)) for n, x in zip(sizes, r)])
        return np.minimum(sizes, np.maximum(np.minimum(self.min_channels, sizes), keep))

    def decode(self, r: np.ndarray) -> PruningPlan:
        counts = self.n_keep(r)
        return PruningPlan(tuple(np.sort(self.ranking[g][: counts[g]])
                                 for g in range(self.space.n_groups)))

    def decode_masks(self, R: np.ndarray) -> np.ndarray:
        """Keep-masks ``(n, n_channels)`` of a genome matrix."""
        return masks_matrix(self.space, [self.decode(r) for r in np.atleast_2d(R)])
