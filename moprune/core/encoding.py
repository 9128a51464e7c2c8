"""Genome encodings and their pure decoders (numpy only, no torch): genome -> pruning plan."""

from __future__ import annotations

import math

import numpy as np

from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.space import PruningSpace
from moprune.errors import (
    ConfigError,
    GenomeError,  # noqa: F401 (re-exported)
)


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
            raise ConfigError(f"ranking has {len(ranking)} groups, the space has {space.n_groups}")
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


def keep_counts(sizes: np.ndarray, ratios: np.ndarray, min_channels: int) -> np.ndarray:
    """Channels kept per group: ``max(min_channels, ceil(n * (1 - r)))``, at most ``n``.

    The product is rounded to 9 decimals before the ceiling, so ``n * (1 - r)`` that is an
    integer up to float error (16 * (1 - 0.25)) is not rounded up.
    """
    keep = np.array([math.ceil(round(n * (1.0 - x), 9)) for n, x in zip(sizes, ratios)],
                    dtype=np.int64)
    return np.minimum(sizes, np.maximum(np.minimum(min_channels, sizes), keep))


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
            raise ConfigError(f"max_ratio must be in (0, 1); got {max_ratio}")
        if len(ranking) != space.n_groups:
            raise ConfigError(f"ranking has {len(ranking)} groups, the space has {space.n_groups}")
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
                              f"({self.space.groups[i].name}) has {float(r[i])!r}")
        return r

    def n_keep(self, r: np.ndarray) -> np.ndarray:
        return keep_counts(self.space.sizes, self.check(r), self.min_channels)

    def decode(self, r: np.ndarray) -> PruningPlan:
        counts = self.n_keep(r)
        return PruningPlan(tuple(np.sort(self.ranking[g][: counts[g]])
                                 for g in range(self.space.n_groups)))

    def decode_masks(self, R: np.ndarray) -> np.ndarray:
        """Keep-masks ``(n, n_channels)`` of a genome matrix."""
        return masks_matrix(self.space, [self.decode(r) for r in np.atleast_2d(R)])


class CriterionRatioEncoding:
    """Per group a (ratio, criterion) pair, both real-coded (EvoFC).

    The genome interleaves the pairs, ``[r_0, c_0, r_1, c_1, ...]``. ``r_g`` lies in
    ``[lower[g], max_ratio]``; ``c_g`` in ``[0, 1]`` picks one of the ``K`` criteria by
    equal-width bins (``c < 1/K`` is the first, ``c = 1`` the last). Group ``g`` keeps
    ``max(min_channels, ceil(n_g * (1 - r_g)))`` channels, the highest ranked by its
    criterion.

    Args:
        space: The pruning space.
        rankings: Per criterion name (in bin order), per group the channel indices from most
            to least important.
        lower: Per group lower bound of the ratio (see ``moprune.algorithms.evofc.lower_bounds``).
        min_channels: Channels every group keeps.
        max_ratio: Upper bound of every ratio (< 1).

    """

    def __init__(self, space: PruningSpace, rankings: dict[str, list[np.ndarray]],
                 lower: np.ndarray, min_channels: int = 1, max_ratio: float = 0.99) -> None:
        if not 0.0 < max_ratio < 1.0:
            raise ConfigError(f"max_ratio must be in (0, 1); got {max_ratio}")
        if not rankings:
            raise ConfigError("rankings must hold at least one criterion")
        for name, ranking in rankings.items():
            if len(ranking) != space.n_groups:
                raise ConfigError(f"ranking {name!r} has {len(ranking)} groups, the space has "
                                 f"{space.n_groups}")
        lower = np.asarray(lower, dtype=np.float64)
        if lower.shape != (space.n_groups,):
            raise ConfigError(f"lower must hold one bound per group ({space.n_groups}); got "
                             f"shape {lower.shape}")
        bad = ~np.isfinite(lower) | (lower < 0.0) | (lower >= max_ratio)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"lower bounds must be in [0, max_ratio={max_ratio}); group {i} "
                             f"({space.groups[i].name}) has {float(lower[i])!r}")
        self.space = space
        self.criteria = tuple(rankings)
        self.rankings = [rankings[c] for c in self.criteria]
        self.lower = lower
        self.min_channels = min_channels
        self.max_ratio = max_ratio
        self.n_var = 2 * space.n_groups
        self.xl = np.column_stack([lower, np.zeros_like(lower)]).ravel()
        self.xu = np.column_stack([np.full_like(lower, max_ratio), np.ones_like(lower)]).ravel()

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ratios, criterion indices) of one genome, after checking shape and bounds."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1 or x.shape[0] != self.n_var:
            raise GenomeError(f"criterion-ratio genome must be a vector of {self.n_var} values "
                              f"(a ratio and a criterion gene for each of {self.space.n_groups} "
                              f"groups); got shape {x.shape}")
        bad = ~np.isfinite(x) | (x < self.xl - 1e-12) | (x > self.xu + 1e-12)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            g, what = divmod(i, 2)
            gene = "criterion gene" if what else "ratio"
            raise GenomeError(f"group {g} ({self.space.groups[g].name}): {gene} "
                              f"{float(x[i])!r} is outside [{float(self.xl[i])}, "
                              f"{float(self.xu[i])}]")
        return x[0::2], self.criterion_index(x[1::2])

    def criterion_index(self, c: np.ndarray) -> np.ndarray:
        """Bin of each criterion gene: ``floor(c * K)`` clipped to ``[0, K - 1]``."""
        k = len(self.criteria)
        index = np.floor(np.asarray(c, dtype=np.float64) * k)
        return np.clip(index, 0, k - 1).astype(np.int64)

    def criterion_gene(self, index: np.ndarray) -> np.ndarray:
        """The centre of each criterion's bin (the gene a mixed-variable choice maps to)."""
        return (np.asarray(index, dtype=np.float64) + 0.5) / len(self.criteria)

    def n_keep(self, x: np.ndarray) -> np.ndarray:
        ratios, _ = self.split(x)
        return keep_counts(self.space.sizes, ratios, self.min_channels)

    def decode(self, x: np.ndarray) -> PruningPlan:
        ratios, crit = self.split(x)
        counts = keep_counts(self.space.sizes, ratios, self.min_channels)
        return PruningPlan(tuple(np.sort(self.rankings[crit[g]][g][: counts[g]])
                                 for g in range(self.space.n_groups)))

    def decode_masks(self, X: np.ndarray) -> np.ndarray:
        """Keep-masks ``(n, n_channels)`` of a genome matrix."""
        return masks_matrix(self.space, [self.decode(x) for x in np.atleast_2d(X)])

    def describe(self, x: np.ndarray) -> list[dict]:
        """Per group: name, size, ratio, criterion and channels kept (for reports)."""
        ratios, crit = self.split(x)
        counts = keep_counts(self.space.sizes, ratios, self.min_channels)
        return [{"group": g.name, "size": g.size, "ratio": float(ratios[i]),
                 "criterion": self.criteria[crit[i]], "kept": int(counts[i])}
                for i, g in enumerate(self.space.groups)]
